"""In-process simulator of W synchronous workers: no MPI, same seeds, same kernels.

It calls the very functions the MPI program calls (mpimem.run.algorithm.Algorithm), in the same order,
so its trajectory (x, xbar, every memory, byte counts) is bit-identical to `mpiexec -n W+1
mpimem train` with the same settings (and to `mpiexec -n W` with allgather). For the tree
topologies (sparse-allreduce, hierarchical: mpimem.comm.tree) it sums in the tree's order with the
tree's compiled functions (mpimem.comm.tree.tree_round; hierarchical without --group-size as one
node). The tests use it as the oracle for the MPI runs.
"""
from dataclasses import dataclass

import numpy as np

from mpimem.run.algorithm import (TREE_TOPOLOGIES, Algorithm, ShardData, compressor_for,
                                  eval_rounds, make_averager, total_rounds, xbar_of)
from mpimem.core.metrics import eval_point, shard_sums
from mpimem.comm.segments import allgather_bytes


@dataclass
class SimResult:
    x: np.ndarray
    xbar: np.ndarray
    memories: np.ndarray          # (W, d)
    bytes_up: np.ndarray          # (W,) per worker
    bytes_down: np.ndarray        # (W,) per worker
    rounds: int
    history: list                 # one dict per evaluation point


def simulate(cfg, shards, d, fstar=None, evaluate=True) -> SimResult:
    """Run a resolved configuration `cfg` on `shards` (one (X, y) pair per worker)."""
    workers = len(shards)
    data = [ShardData(X, y) for X, y in shards]
    n = sum(s.n for s in data)
    rule = Algorithm(cfg, d, workers, compressor_for(cfg, d), n)
    states = [rule.new_worker(w, s) for w, s in enumerate(data, start=1)]
    replica = rule.new_replica()
    averager = make_averager(cfg, d)
    tree = cfg.topology in TREE_TOPOLOGIES
    if tree:
        from mpimem.comm.tree import TreePlan, tree_round
        plan = TreePlan.for_run(cfg.topology, workers, cfg.group_size)
        aggs = [rule.make_aggregator() for _ in plan.groups]
    else:
        agg = rule.make_aggregator()
        fixed_up = rule.fixed_message_bytes(data[0].dense)   # allgather's one-Allgather path
    rounds = total_rounds(cfg, n, workers)
    evals = set(eval_rounds(cfg, n, workers, rounds)) if evaluate else set()
    history = []
    for r in range(rounds + 1):
        if r in evals:
            x, xbar = replica.x(), xbar_of(replica, averager)
            sums = sum(shard_sums(s, x, xbar) for s in data)
            row = eval_point(sums, n, cfg.lam, x, xbar, fstar)
            samples = r * workers * cfg.batch_size
            row.update(round=r, samples=samples, epoch=samples / n,
                       bytes_up=sum(ws.bytes_up for ws in states),
                       bytes_down=sum(ws.bytes_down for ws in states))
            history.append(row)
        if r == rounds:
            break
        rule.set_round(r)
        messages = [ws.msg[: rule.worker_step(ws, s, replica, r)].copy()
                    for ws, s in zip(states, data)]
        if tree:
            counters = [[0, 0] for _ in states]
            payload = tree_round(rule, plan, aggs, messages, r, replica, counters)
            for ws, (up, down) in zip(states, counters):
                ws.bytes_up += up
                ws.bytes_down += down
        else:
            payload = rule.aggregate(agg, messages, r, replica)
            if cfg.topology == "allgather":   # what each rank hands MPI (mpimem.comm.segments)
                up, down = allgather_bytes([m.size for m in messages], fixed_up)
                for ws, m, u, dn in zip(states, messages, up, down):
                    ws.bytes_up += u - m.size      # worker_step counted the message itself
                    ws.bytes_down += dn
            else:
                for ws in states:
                    ws.bytes_down += 8 + payload.size
        rule.apply(replica, payload, r, averager)
    return SimResult(replica.x(), xbar_of(replica, averager),
                     np.array([ws.m for ws in states]),
                     np.array([ws.bytes_up for ws in states]),
                     np.array([ws.bytes_down for ws in states]), rounds, history)
