"""The MPI choreography of `mpimem train` (synchronous parameter server).

Rank 0 is the server, ranks 1..W the workers (one shard each). Per round r (mpimem.run.algorithm):
  worker: step 1-1.2, Send(u_w) to rank 0                    (bytes_up += len(u_w))
  server: Probe+Recv u_1..u_W in worker order; U = aggregate  (waiting: time in Probe/Recv)
  all:    Bcast(len U), Bcast(U); apply U to the replica      (bytes_down += 8 + len(U))
Evaluation points: Bcast(xbar) from the server; each worker sums the loss terms over its
shard at its replica of x and at xbar; Reduce to rank 0, which records and prints.

Set-up runs on every rank and is agreed collectively before any work: if any rank finds a
problem, rank 0 prints that one line and every rank exits with status 2.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from mpimem import __version__
from mpimem.run.config import has_server, resolve, row_norm_sum, scale_note
from mpimem.run.algorithm import (TIMING_COLUMNS, TREE_TOPOLOGIES, Algorithm, ShardData,
                                  compressor_for, eval_rounds, make_averager, total_rounds,
                                  xbar_of)
from mpimem.errors import (MpimemError, at_abort, expected_ranks, fault_point, report,
                           slow_worker_delay)
from mpimem.errors import note as say_note
from mpimem.core.metrics import (EX_DIVERGED, Diverged, divergence, eval_point, negative_gap,
                                 shard_sums)
from mpimem.core.model import NO_AVERAGER, averager_arrays
from mpimem.comm.mpicall import table
from mpimem.comm.segments import allgather_segment, server_segment, worker_segment
from mpimem.comm.tree import tree_segment
from mpimem.run.runfile import RunWriter, check_run_path, new_run_id



def segment_seconds() -> float:
    """How often a compiled segment returns to Python at least (signals, time-based
    checkpoints): 0.5 s, or MPIMEM_SEGMENT_SECONDS (0: after every round; the trajectory never
    depends on it)."""
    text = os.environ.get("MPIMEM_SEGMENT_SECONDS", "0.5")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise MpimemError(f"MPIMEM_SEGMENT_SECONDS must be a number of seconds >= 0, got '{text}'")
    return value


def agree(comm, fn):
    """Run fn() on every rank; if any raised MpimemError, stop all ranks (rank 0 reports)."""
    try:
        result, err = fn(), None
    except MpimemError as exc:
        result, err = None, str(exc)
    except Exception as exc:  # a bug must stop every rank too, not leave them waiting here
        result, err = None, f"internal error on rank {comm.Get_rank()}: {type(exc).__name__}: {exc}"
    errors = comm.allgather(err)
    first = next((e for e in errors if e), None)
    if first is not None:
        if comm.Get_rank() == 0:
            raise MpimemError(first, agreed=True)
        raise SystemExit(2)
    return result


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def message_slot(comp) -> int:
    """Bytes of one message slot: the operator's largest message, at least 8, 8-aligned (the
    server's inbox rows, allgather's slots, the tree's inbox)."""
    return -(-max(8, comp.max_message_bytes()) // 8) * 8


def attach_buffers(run, dense: bool) -> int:
    """The state and buffers the segments of `run` take (Run.__init__; mpimem.cli.warm builds
    the same on a stand-in to compile them): replica, timing, the downlink message and its
    header, rank 0's averager, the aggregator (server or peers), the server's inbox, and
    allgather's exchange (own [size, message] slot, sizes, received, counts, displs). Reads
    run.cfg, rule, comp, rank, peer, workers, d; returns the message slot."""
    rule, W = run.rule, run.workers
    run.replica = rule.new_replica()
    run.timing = np.zeros(len(TIMING_COLUMNS))
    run.down = np.zeros(8 + 4 * run.d, np.uint8)   # a worker's downlink message
    run.fixed = rule.fixed_downlink_bytes(dense)
    run.hdr = np.zeros(1, np.int64)
    run.averager = make_averager(run.cfg, run.d) if run.rank == 0 else None
    if run.rank == 0 or run.peer:
        run.agg = rule.make_aggregator()
    slot = message_slot(run.comp)
    if run.rank == 0 and not run.peer:
        run.inbox = np.zeros((W, slot), np.uint8)
        run.sizes = np.zeros(W, np.int64)
    if run.cfg.topology == "allgather":
        run.fixed_up = rule.fixed_message_bytes(dense)
        run.exchange = (np.zeros(8 + slot, np.uint8), np.zeros(W, np.int64),
                        np.zeros(W * (8 + slot), np.uint8), np.zeros(W, np.int32),
                        np.zeros(W, np.int32))
    return slot


def tree_buffers(group_table, plan, rank: int, slot: int, d: int) -> tuple:
    """The tree segment's tuple (mpimem.comm.tree.tree_segment): the group communicator's
    table, this rank's plan row and group members, its inbox, the send and receive buffers of
    the float64 partial sums."""
    return (group_table, plan.row(rank), plan.members(rank), np.zeros(slot, np.uint8),
            np.zeros(8 + 8 * d, np.uint8), np.zeros(8 + 8 * d, np.uint8))


class Run:
    """One rank's part of a training run: the resolved rules, its state, and the loop."""

    def __init__(self, comm, cfg):
        from mpimem.data.dataset import read_meta, read_shard

        self.comm = comm
        self.rank = comm.Get_rank()
        # allgather and the tree topologies: no server, every rank is a worker (worker id
        # rank+1, shard rank); otherwise rank 0 is the server and ranks 1..W the workers
        self.peer = not has_server(getattr(cfg, "topology", "server"))
        self.workers = comm.Get_size() - (0 if self.peer else 1)
        self.worker_id = self.rank + 1 if self.peer else self.rank
        if self.workers < 1:
            raise MpimemError("mpimem train needs at least 2 MPI ranks (rank 0 is the server, "
                              "ranks 1..W the workers); run it with mpiexec -n W+1")
        self.meta = read_meta(cfg.data)
        self.n, self.d = self.meta.n, self.meta.d
        self.cfg = resolve(cfg, self.n, self.d, self.workers)
        self.fstar = self.meta.fstar_for(self.cfg.lam)
        self.comp = compressor_for(self.cfg, self.d)
        self.rule = Algorithm(self.cfg, self.d, self.workers, self.comp, self.n)
        fault_point("warm-up", self.rank)
        self.rule.warm_up(self.meta.storage == "dense", np.dtype(self.meta.dtype))
        self.rounds = total_rounds(self.cfg, self.n, self.workers)
        self.evals = eval_rounds(self.cfg, self.n, self.workers, self.rounds)
        self.mpi = table()
        self.segment_seconds = segment_seconds()
        self.ck, self.start_round, self.elapsed0 = None, 0, 0.0  # set by train() (checkpoints)
        self.run_id = None          # rank 0: this run's id (mpimem.run.runfile), set by train()
        self.gap_warned = False   # rank 0: negative f(xbar) - f* said once
        slot = attach_buffers(self, self.meta.storage == "dense")
        if self.peer:
            self.delay = slow_worker_delay(self.rank)
        if self.cfg.topology in TREE_TOPOLOGIES:
            self.tree_setup(slot)
        if self.worker_id:
            shard = read_shard(cfg.data, self.worker_id - 1, self.workers)
            self.shard = ShardData(shard.X, shard.y)
            self.ws = self.rule.new_worker(self.worker_id, self.shard)
        if self.cfg.mode == "sync":
            self.segment(0, 0)   # loads the compiled segment (no round, no message)

    def tree_setup(self, slot):
        """The tree topologies (mpimem.comm.tree): the groups (per node from Split_type shared, or
        --group-size), this rank's plan, its group's communicator and the buffers."""
        from mpi4py import MPI

        from mpimem.comm.tree import TreePlan

        comm, cfg = self.comm, self.cfg
        nodes = None
        if cfg.topology == "hierarchical" and not cfg.group_size:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            nodes = comm.allgather(node.bcast(self.rank, root=0))   # each rank's node leader
            node.Free()
        plan = TreePlan.for_run(cfg.topology, comm.Get_size(), cfg.group_size, nodes)
        self.group_comm = comm.Split(plan.group_of[self.rank], key=self.rank)
        self.tree = tree_buffers(table(comm=self.group_comm), plan, self.rank, slot, self.d)
        self.groups = plan.groups

    # ------------------------------------------------------------------ rounds
    def segment(self, r0, r1):
        """Rounds r0 .. r1-1 (or fewer: mpimem.comm.segments) in compiled code; the next round."""
        self.rule.set_round(r0)
        if self.cfg.topology in TREE_TOPOLOGIES:
            gmpi, row, members, inbox, sbuf, rbuf = self.tree
            return tree_segment(self.rule.P, self.mpi, gmpi, self.shard.arrays, self.ws.arrays,
                                self.rule.cs, self.agg.arrays, self.replica.z, self.replica.scale,
                                self.replica.g, averager_arrays(self.averager),
                                self.averager is not None, row, members, inbox, sbuf, rbuf,
                                self.agg.message, self.hdr, self.worker_id, r0, r1,
                                self.segment_seconds, self.delay)
        if self.peer:
            own, sizes, recv, counts, displs = self.exchange
            slot = own if self.fixed_up < 0 else own[: 8 + -(-self.fixed_up // 8) * 8]
            return allgather_segment(self.rule.P, self.mpi, self.shard.arrays, self.ws.arrays,
                                     self.rule.cs, self.agg.arrays, self.replica.z,
                                     self.replica.scale, self.replica.g,
                                     averager_arrays(self.averager),
                                     self.averager is not None, slot, self.fixed_up, sizes,
                                     recv, counts, displs, self.worker_id, r0, r1,
                                     self.segment_seconds, self.delay)
        if self.rank == 0:
            return server_segment(self.rule.P, self.mpi, self.agg.arrays, self.rule.cs,
                                  self.inbox, self.sizes, self.replica.z, self.replica.scale,
                                  self.replica.g, averager_arrays(self.averager), self.averager is not None,
                                  self.agg.message, self.fixed, self.hdr, self.timing, r0, r1,
                                  self.segment_seconds)
        return worker_segment(self.rule.P, self.mpi, self.shard.arrays, self.ws.arrays,
                              self.rule.cs, self.replica.z, self.replica.scale, self.replica.g,
                              self.down,
                              self.fixed, self.hdr, NO_AVERAGER, self.worker_id, r0, r1)

    def next_event(self, r):
        """The first round after r at which Python must act: an evaluation point, a checkpoint
        due by round count, a change of k (--k-warmup), or the end (the same on every rank)."""
        nxt = min([e for e in self.evals if e > r] + [self.rounds])
        change = self.rule.next_k_change(r)
        if change is not None:
            nxt = min(nxt, change)
        every = self.ck.every_rounds if self.ck.enabled else None
        if every:
            nxt = min(nxt, (r // every + 1) * every)
        return nxt

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, r, started, samples=None, sync_replicas=False):
        """Collective: f(x), f(xbar), accuracy and byte totals at round r; the row on rank 0.

        samples: the samples processed so far (default r W b). sync_replicas: first broadcast
        rank 0's replica (z, s) and overwrite every rank's with it (loops whose replicas drift
        between evaluation points, e.g. --mode async), so all ranks evaluate the same x.
        """
        from mpi4py import MPI

        fault_point("evaluate", self.rank)
        t0 = time.perf_counter()
        comm = self.comm
        if sync_replicas:
            comm.Bcast(self.replica.z, root=0)
            self.replica.s = comm.bcast(self.replica.s, root=0)
        xbar = xbar_of(self.replica, self.averager) if self.rank == 0 else np.empty(self.d)
        comm.Bcast(xbar, root=0)
        if not self.worker_id:
            local = np.zeros(6)
        else:
            local = np.concatenate([shard_sums(self.shard, self.replica.x(), xbar),
                                    [self.ws.bytes_up, self.ws.bytes_down]])
        total = np.zeros(6) if self.rank == 0 else None
        comm.Reduce(local, total, op=MPI.SUM, root=0)
        elapsed = time.perf_counter() - t0
        (self.ws.timing if self.worker_id else self.timing)[4] += elapsed
        if self.rank != 0:
            return None
        row = eval_point(total[:4], self.n, self.cfg.lam, self.replica.x(), xbar, self.fstar)
        if samples is None:
            samples = r * self.workers * self.cfg.batch_size
        wall = time.perf_counter() - started
        evaluating = (self.ws.timing if self.worker_id else self.timing)[4]
        row.update(round=r, epoch=samples / self.n, samples=samples, wall_time=wall,
                   train_time=wall - evaluating, bytes_up=total[4], bytes_down=total[5])
        return row

    def record(self, row, writer):
        """Collective, right after evaluate: rank 0 appends the row (`write_row`), then every
        rank stops together, raising Diverged, when the row shows a diverged run
        (mpimem.core.metrics.divergence: f(x) or f(xbar) not finite or above 100 f(x_0))."""
        message = None
        if row is not None:
            self.write_row(row, writer)
            first = self.ck.history[0] if self.ck.history else {}
            f0 = first.get("loss_x", np.nan) if first.get("round") == 0 else np.nan
            message = divergence(row, f0 if np.isfinite(f0) else np.log(2.0))
            if message:
                message += (f"; stopped (step size too large? --gamma {self.cfg.gamma:g}; rows "
                            f"far from unit norm? mpimem data convert --normalize)")
        message = self.comm.bcast(message, root=0)
        if message:
            raise Diverged(message)

    def write_row(self, row, writer):
        """Rank 0: append an evaluation row to RUN.h5 (and the checkpoint history) and print
        it; the time this takes counts as evaluation, not training."""
        t0 = time.perf_counter()
        try:
            writer.append(row)
        except OSError as err:  # e.g. a full disk: every rank stops at the next sync point
            self.ck.failure = f"cannot write the run file {writer.path} ({err.strerror or err})"
        self.ck.record(row)
        self.warn_negative_gap(row)
        self.progress(row)
        (self.ws.timing if self.worker_id else self.timing)[4] += time.perf_counter() - t0

    def warn_negative_gap(self, row):
        """Rank 0, once a run: a gap below zero means the stored f* is wrong (always said,
        --quiet or not, on stderr)."""
        if self.gap_warned:
            return
        message = negative_gap(row)
        if message:
            self.gap_warned = True
            print(f"mpimem: warning: {message}", file=sys.stderr, flush=True)

    def progress(self, row):
        """Rank 0, one line per evaluation point (not with --quiet): epoch, round, loss,
        accuracy, MB up, "wall S s" (wall-clock seconds since the start of the run, evaluation
        included, across resumptions), and the pace of this process so far: rounds/s =
        (round - start round) / (wall time - time before a resume), ETA = rounds left / that
        rate (h:mm:ss; "-" before the first round of this process)."""
        if self.cfg.quiet:
            return
        gap = row["subopt_xbar"]
        loss = f"f(xbar)-f* {gap:10.3e}" if np.isfinite(gap) else f"f(xbar) {row['loss_xbar']:.6f}"
        done, spent = row["round"] - self.start_round, row["wall_time"] - self.elapsed0
        pace = f"rounds/s {'-':>9}  ETA -"
        if done > 0 and spent > 0:
            minutes, secs = divmod(int(np.ceil((self.rounds - row["round"]) * spent / done)), 60)
            pace = (f"rounds/s {done / spent:9.1f}  "
                    f"ETA {minutes // 60}:{minutes % 60:02d}:{secs:02d}")
        print(f"epoch {row['epoch']:7.3f}  round {int(row['round']):9d}  {loss}  "
              f"acc {row['acc_xbar']:.4f}  MB up {row['bytes_up'] / 1e6:9.3f}  "
              f"wall {row['wall_time']:7.1f} s  {pace}", flush=True)

    # ------------------------------------------------------------------ the whole run
    def loop(self, writer):
        """The rounds of the sync server and of allgather as compiled segments
        (mpimem.comm.segments); between two segments the
        evaluation points, checkpoints, signals and the NaN stop (mpimem.run.checkpoint). Returns
        "preempted" when a signal stopped the run."""
        ck = self.ck
        start = self.start_round
        started = time.perf_counter() - self.elapsed0
        evals = set(self.evals)
        r = start
        while True:
            if r in evals and not (r == start and self.cfg.resume):  # a resumed run has it
                self.record(self.evaluate(r, started), writer)
            if r == self.rounds:
                break
            if ck.boundary(r, started, r in evals, first=r == start, always=True) == "preempted":
                return "preempted"
            r = self.segment(r, self.next_event(r))
        ck.final(self.rounds, started)
        fault_point("shutdown", self.rank)  # a signal from here on is ignored: the run completes
        return None

    def gather_final(self):
        """Memories and timings to rank 0 by one buffer Gather into a preallocated table (no
        pickles): rank r sends [m (d), timing, bytes up, bytes down, same], where same = 1 when
        its replica (z, s) equals rank 0's, which is broadcast first. Returns (the workers'
        memories in worker order, whether every replica equals rank 0's, each rank's timing,
        each rank's [bytes up, bytes down]: 0 for a server, whose traffic is its workers') on
        rank 0."""
        comm, d, t = self.comm, self.d, len(TIMING_COLUMNS)
        ref = np.append(self.replica.z, self.replica.s)
        comm.Bcast(ref, root=0)
        row = np.zeros(d + t + 3)
        if self.worker_id:
            row[:d] = self.ws.m
            row[d + t: d + t + 2] = self.ws.bytes_up, self.ws.bytes_down
        row[d: d + t] = self.ws.timing if self.worker_id else self.timing
        row[-1] = np.array_equal(self.replica.z, ref[:d]) and self.replica.s == ref[d]
        table = np.empty((comm.Get_size(), row.size)) if self.rank == 0 else None
        comm.Gather(row, table, root=0)
        if self.rank != 0:
            return None
        memories = table[0 if self.peer else 1:, :d]
        return (memories, bool(table[:, -1].all()), table[:, d: d + t],
                table[:, d + t: d + t + 2].astype(np.int64))

    def attrs(self):
        from mpi4py import MPI

        fault_point("attrs", self.rank)
        hosts = self.comm.gather(socket.gethostname(), root=0)
        return {
            "config": self.cfg.to_json(),
            "mpimem_version": __version__,
            "git_commit": git_commit(),
            "mpi_version": MPI.Get_library_version().replace("\0", "").strip().splitlines()[0],
            "workers": self.workers,
            "ranks": self.comm.Get_size(),
            "hosts": sorted(set(hosts or [])),
            "dataset": os.path.abspath(self.cfg.data),
            "dataset_fingerprint": self.meta.fingerprint,
            "n": self.n, "d": self.d, "lam": self.cfg.lam,
            "fstar": self.fstar if self.fstar is not None else float("nan"),
            "rounds": self.rounds,
            "compressor": self.comp.name,
            "method": self.cfg.method,
            "k_schedule": json.dumps(self.rule.k_schedule),
            # the tree topologies' groups of ranks, leader first (mpimem.comm.tree)
            "groups": json.dumps(getattr(self, "groups", [])),
        }


def check_world_size(comm) -> None:
    """With MPIMEM_EXPECT_RANKS=N set (job scripts, the tests), refuse a world of another size:
    a wrong `srun --mpi` starts N separate size-1 programs that would otherwise each train."""
    expect = expected_ranks()
    if expect is not None and expect != comm.Get_size():
        raise MpimemError(f"MPI world has {comm.Get_size()} rank(s) but MPIMEM_EXPECT_RANKS={expect}: "
                          "the launcher did not start one MPI program (check srun --mpi=pmi2/pmix)")


def select_loop(cfg):
    """The round loop for the configured mode and topology (sync parameter server by default)."""
    if cfg.mode == "async":
        from mpimem.run.async_driver import async_loop
        return async_loop
    return Run.loop


def train(cfg, explicit=()) -> int:
    """Entry point of `mpimem train` on every rank."""
    from mpi4py import MPI

    from mpimem.run import checkpoint as CK

    comm = MPI.COMM_WORLD
    agree(comm, lambda: check_world_size(comm))
    CK.write_pidfile(comm.Get_rank())
    ckpt = None
    if cfg.resume:  # rank 0 finds and verifies the checkpoint; every rank takes its settings
        def find():
            if comm.Get_rank() != 0:
                return None
            found, notes, run_file = CK.locate(cfg.resume)
            for note in notes:
                print(f"mpimem train: skipping a checkpoint: {note}", file=sys.stderr)
            return dict(found, run_file=run_file)
        ckpt = agree(comm, find)
        head = comm.bcast(dict(ckpt["attrs"], path=ckpt["path"], resume_run_file=ckpt["run_file"])
                          if ckpt else None, root=0)
        cfg = agree(comm, lambda: CK.resume_config(head, cfg, explicit, comm.Get_size()))
    # rank 0 locks the run before it creates or changes anything of it (mpimem.run.lock)
    lock = agree(comm, lambda: CK.lock_run(cfg, head if cfg.resume else None)
                 if comm.Get_rank() == 0 else None)
    if lock is not None:    # a failure of any rank from here on frees the run (at exit otherwise)
        at_abort(lambda message: lock.release())
    run = agree(comm, lambda: Run(comm, cfg))
    norm_sum = comm.reduce(row_norm_sum(run.shard.X) if run.worker_id else 0.0, root=0)
    positives = comm.reduce(int(np.count_nonzero(run.shard.y > 0)) if run.worker_id else 0,
                            root=0)   # rows labelled +1: a single class is said at start

    def setup():
        if cfg.resume:
            CK.check_compatible(run, head)
            if run.rank == 0:   # under the lock: a complete run is not resumed
                CK.refuse_complete(run.cfg.out, head, cfg.resume)
        if run.rank == 0:  # the output path, before anything is created
            run.run_id = str(head.get("run_id", "")) if cfg.resume else new_run_id()
            check_run_path(run.cfg.out, run.cfg.overwrite, run.run_id if cfg.resume else None)
        every = run.cfg.checkpoint_every or CK.DEFAULT_EVERY
        run.ck = CK.Checkpointing(run, every, run.cfg.keep_checkpoints)
    agree(comm, setup)
    if cfg.resume and run.rank == 0:
        print(f"mpimem train: resuming from {head['path']} (round {head['round']}); writing "
              f"{os.path.abspath(run.cfg.out)}" + (f" and {CK.checkpoint_dir(run.cfg.out)}/"
                                                   if run.ck.enabled else ""),
              file=sys.stderr, flush=True)
    if ckpt is not None or cfg.resume:
        run.start_round, run.elapsed0 = run.ck.restore(ckpt)
    attrs = dict(run.attrs(), run_id=str(run.run_id))
    if run.ck.enabled:
        attrs["checkpoint_dir"] = CK.checkpoint_dir(run.cfg.out)
    resume_rows = run.ck.metrics_so_far() if cfg.resume and run.rank == 0 else None
    writer = agree(comm, lambda: RunWriter(run.cfg.out, attrs, resume=resume_rows,
                                           replace=run.cfg.overwrite) if run.rank == 0 else None)
    if writer is not None:  # a failure of any rank from here on marks the run file failed
        at_abort(lambda message: writer.finish("failed", error=message))
    if run.rank == 0 and not run.cfg.quiet:
        print(f"mpimem train: {run.workers} workers, {run.comp.name}"
              f"{' k=%d' % run.cfg.k if run.comp.sparsifier else ''}, "
              f"memory {'on' if run.rule.memory else 'off'}, n={run.n} d={run.d}, "
              f"{run.rounds} rounds of b={run.cfg.batch_size} -> {run.cfg.out}", flush=True)
    for note in run.cfg.extra.get("notes", []) if run.rank == 0 else ():  # settings chosen for the user
        print(f"mpimem train: note: {note}", file=sys.stderr, flush=True)
    hint = scale_note(norm_sum / run.n) if run.rank == 0 else None   # data far from unit norm
    if hint:
        print(f"mpimem train: note: {hint}", file=sys.stderr, flush=True)
    from mpimem.data.dataset import single_class_note
    one_class = single_class_note(positives, run.n) if run.rank == 0 else None
    if one_class:
        say_note(one_class)
    try:
        outcome = select_loop(run.cfg)(run, writer)
        final = run.gather_final() if outcome != "preempted" else None
    except (CK.CollectiveStop, Diverged) as stop:  # every rank stops here together (NaN,
        # divergence, checkpoint I/O); a NaN iterate found between evaluation points diverged too
        diverged = comm.bcast(run.rank == 0 and (isinstance(stop, Diverged) or not (
            np.isfinite(run.replica.s) and np.isfinite(run.replica.z).all())), root=0)
        if run.rank == 0:
            message = str(stop)
            try:
                writer.finish("diverged" if diverged else "failed", error=message)
            except MpimemError as err:  # the disk refused even that: one line says both
                message = f"{message}; {err}"
            report(message)
        return EX_DIVERGED if diverged else stop.status
    if outcome == "preempted":
        agree(comm, lambda: run.rank == 0 and writer.finish(
            "preempted", extra_attrs={"preempted_round": run.ck.stopped_at}))
        if run.rank == 0:
            print(f"mpimem train: stopped by a signal at round {run.ck.stopped_at}; checkpoint "
                  f"{run.ck.last_path}; resume with: mpiexec -n {comm.Get_size()} mpimem train "
                  f"--resume {os.path.abspath(run.cfg.out)} (exit {CK.EX_TEMPFAIL})",
                  file=sys.stderr, flush=True)
        return CK.EX_TEMPFAIL

    def complete():  # every rank exits 2 if the disk refuses the final run file
        if run.rank == 0:
            memories, identical, timing, traffic = final
            writer.finish("complete", x=run.replica.x(), xbar=xbar_of(run.replica, run.averager),
                          memories=memories, timing=timing, timing_columns=TIMING_COLUMNS,
                          extra_attrs={"replicas_identical": identical,
                                       "bytes_per_rank": json.dumps(traffic.tolist())})
    agree(comm, complete)
    return 0
