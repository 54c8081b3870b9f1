"""The tree topologies (mpimem.comm.tree): `--topology sparse-allreduce` and `--topology hierarchical`.

Real `mpiexec -n W` runs (W = 2..5, oversubscribed: correctness only) against the in-process
simulator bit for bit (x, xbar, every memory, byte counts; every replica equal to rank 0's);
the tree's sum against the server's (1/W) sum_w u_w to 1e-12; byte counts against the formula;
hierarchical with --group-size 2 at W = 4 against the flat sparse allreduce; bad settings."""
import json

import numpy as np
import pytest

from conftest import run_mpi
from mpimem.run.config import TrainConfig, resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.run.algorithm import Algorithm, ShardData, compressor_for
from mpimem.errors import MpimemError
from mpimem.run.runfile import read_run
from mpimem.comm.tree import TreePlan, tree_sum
from test_train_mpi import assert_equals_simulator, cli_args, oracle


CASES = [
    ("eps", 2, dict(topology="sparse-allreduce", compressor="top_k", k=3, batch_size=2)),
    ("rcv", 3, dict(topology="sparse-allreduce", compressor="rand_k", k=20)),
    ("eps", 4, dict(topology="sparse-allreduce", compressor="qsgd", bits=4)),
    ("rcv", 5, dict(topology="sparse-allreduce", compressor="top_k", k=10, l2="server")),
    ("rcv", 4, dict(topology="hierarchical", group_size=2, compressor="top_k", k=10)),
    ("eps", 3, dict(topology="hierarchical", compressor="top_k", k=2, method="ef21")),
    ("eps", 3, dict(topology="hierarchical", group_size=2, compressor="sign",
                    schedule="constant", gamma=0.05)),
    ("rcv", 2, dict(topology="sparse-allreduce", compressor="none", l2="server",
                    schedule="bottou", gamma=1.0)),   # plain SGD: sparse messages of any size
]


@pytest.mark.mpi_core
@pytest.mark.parametrize("which,workers,opts", CASES,
                         ids=[f"{c[0]}-W{c[1]}-{c[2]['topology']}-{c[2]['compressor']}"
                              for c in CASES])
def test_tree_run_equals_simulator_bit_for_bit(which, workers, opts, eps, rcv, tmp_path):
    data = {"eps": eps, "rcv": rcv}[which]
    opts = dict(opts, epochs=0.5, seed=4)
    out = tmp_path / "run.h5"
    run_mpi(workers, ["train", data, "--out", out, "--quiet", *cli_args(opts)], timeout=180,
            check=True)
    run, sim = read_run(out), oracle(data, workers, opts)
    assert_equals_simulator(run, sim, workers)
    per_rank = json.loads(run["attrs"]["bytes_per_rank"])   # [up, down] of each rank
    assert per_rank == [[int(u), int(d)] for u, d in zip(sim.bytes_up, sim.bytes_down)]
    if opts["topology"] == "hierarchical":   # no --group-size: every rank on this one node
        size = opts.get("group_size", workers)
        assert run["attrs"]["groups"] == str([list(range(g, min(g + size, workers)))
                                              for g in range(0, workers, size)]).replace("'", "")


def messages_of(data, workers, opts, rounds):
    """Round `rounds`' W messages of a simulated run (the state after rounds - 1 rounds)."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, **opts)), meta.n, meta.d, workers)
    rule = Algorithm(cfg, meta.d, workers, compressor_for(cfg, meta.d), meta.n)
    shards = [ShardData(s.X, s.y) for s in (read_shard(data, w, workers) for w in range(workers))]
    states = [rule.new_worker(w + 1, s) for w, s in enumerate(shards)]
    replica = rule.new_replica()
    for r in range(rounds):
        msgs = [ws.msg[: rule.worker_step(ws, s, replica, r)].copy()
                for ws, s in zip(states, shards)]
    return rule, msgs


@pytest.mark.parametrize("workers", [2, 3, 4, 5])
@pytest.mark.parametrize("compressor,k", [("top_k", 10), ("rand_k", 50), ("qsgd", None)])
def test_tree_sum_is_the_servers_sum(workers, compressor, k, rcv):
    """Every leader's allreduced sum is bit-identical across leaders and equals the server's
    sum of the same messages (worker order) to 1e-12 relative; U then equals the server's."""
    opts = dict(compressor=compressor, topology="sparse-allreduce", seed=2)
    if k:
        opts["k"] = k
    rule, msgs = messages_of(rcv, workers, opts, 3)
    server = rule.make_aggregator()
    for w, msg in enumerate(msgs, start=1):
        from mpimem.core import step
        step.agg_add(rule.P, server.arrays, rule.cs, msg, msg.size, w, 2)
    plan = TreePlan.for_run("sparse-allreduce", workers)
    aggs = [rule.make_aggregator() for _ in plan.groups]
    tree_sum(rule, plan, aggs, msgs, 2, [[0, 0] for _ in msgs])
    for agg in aggs[1:]:
        assert np.array_equal(agg.acc, aggs[0].acc)
    err = np.abs(aggs[0].acc - server.acc).max()
    assert err <= 1e-12 * np.abs(server.acc).max(), err


@pytest.mark.parametrize("workers,ups", [(4, [2, 2, 2, 2]), (3, [2, 1, 1]), (5, [3, 2, 2, 2, 1])])
def test_dense_byte_counts_follow_the_formula(workers, ups, eps):
    """QSGD decodes dense, so every partial sum travels dense (8 + 8 d bytes): leader i sends
    one per stage (log2 p of them) plus the pre/post messages of the non-power-of-two W; the
    downlink is not sent (groups of one). Per round, each rank receives as much as it sends."""
    d = read_meta(eps).d
    sim = oracle(eps, workers, dict(topology="sparse-allreduce", compressor="qsgd", samples=60,
                                    seed=1))
    per = (8 + 8 * d) * sim.rounds
    assert list(sim.bytes_up) == [u * per for u in ups]
    assert list(sim.bytes_down) == [u * per for u in ups]


def test_hierarchical_groups_of_two_equal_the_flat_allreduce(rcv):
    """W = 4, --group-size 2: the groups sum (u1 + u2), (u3 + u4), the two leaders exchange:
    the same additions as the flat recursive doubling's first two stages, so the trajectories
    are bit-identical; the hierarchical run sends fewer bytes between groups."""
    flat = oracle(rcv, 4, dict(topology="sparse-allreduce", k=10, epochs=0.5, seed=6))
    tree = oracle(rcv, 4, dict(topology="hierarchical", group_size=2, k=10, epochs=0.5, seed=6))
    assert np.array_equal(flat.x, tree.x) and np.array_equal(flat.xbar, tree.xbar)
    assert tree.bytes_up[1] < flat.bytes_up[1]     # a member sends only its message


@pytest.mark.parametrize("opts,message", [
    (dict(topology="sparse-allreduce", group_size=2), "--group-size needs --topology hierarchical"),
    (dict(topology="hierarchical", group_size=5), "--group-size must satisfy 1 <= G <= W = 4"),
    (dict(topology="sparse-allreduce", mode="async"), "--mode async needs --topology server"),
    (dict(topology="hierarchical", downlink_k=3), "--downlink-k (server memory) needs"),
])
def test_bad_tree_settings_are_refused(opts, message):
    with pytest.raises(MpimemError) as err:
        resolve(TrainConfig(data="-", **opts), 100, 20, 4)
    assert message in str(err.value)
