"""`--mode async`: an asynchronous parameter server (rank 0) and W free-running workers.

Protocol (request/reply, one outstanding message per worker, so MPI's non-overtaking rule
keeps every worker's messages in order):

  worker w:  Recv(reply) -> if CONTINUE: overwrite the replica coordinates in the reply,
             step 1-1.2 of mpimem.run.algorithm on its replica (step size from the server's clock
             in the reply), Send(u_w) -> Recv(reply) ...
             PAUSE: every rank meets at the pause point named in the reply (below).
  server:    receive the next message from whichever worker is first (MPI_Waitany over one
             pre-posted MPI_Irecv per granted message); apply it at once: x <- factor * x - u_w
             (or - u_w / W with --async-step mean); reply to that worker with what it has not
             yet seen.
The per-message work of both sides is compiled (mpimem.comm.async_segments); Python runs the pause
points (evaluation, checkpoints, signals) between segments.

The reply ("pull") is exact: the set C of coordinates whose z changed since worker w's last
pull, with their current float64 z values, plus the current scale s (x = s z). The worker
overwrites z[C] and s, so after a pull its replica equals the server's x bit for bit. When
12 |C| >= 8 d (or after a dense update / renormalisation of z) the reply is the whole z.
Reply layout: mpimem.comm.async_segments.

Pull check: the first reply that changes z and then one every CHECK_SECONDS carries a 64-bit
digest of the server's (z, s) bytes (async_segments.digest) at that update count (an O(d) cost
at most 50 times a second); the worker compares it with its own replica right after applying
the reply (before any re-synchronisation), so a reply that dropped or garbled a coordinate is
found. RUN.h5 gets attrs pull_checks and pull_checks_failed (0 in a correct run). Test hook:
MPIMEM_FAULT=drop-pull-coordinate makes the server leave the last coordinate out of every
sparse reply.

Budget and pause points: the sample budget is M = rounds * W messages of b samples (the same
samples as the sync loop). The server hands out grants: every CONTINUE reply grants one
message; once the grants reach the segment's end (the pause point P) a worker is answered
PAUSE. So exactly M messages are sent and applied, whatever the shard sizes or worker speeds
(a slow worker only holds its one grant), and at a pause point no message is in flight. Pause
points are multiples of W updates, i.e. whole rounds r = P / W: the evaluation rounds, the
round-interval checkpoints, the end, and wherever a segment has run SEGMENT_SECONDS (after
its first message when rank 0 wants a sync point as the segment starts: a signal, a time-based
checkpoint); such a segment ends at the next multiple of W grants. At a pause point every rank evaluates (evaluation rounds; this also
re-synchronises every replica), then takes the collective decision of mpimem.run.checkpoint
(signals: checkpoint and exit 75; NaN stop; checkpoints) as the sync loop does at a round
boundary; after the last one, the final check and checkpoint. A signal is thus honoured
within about SEGMENT_SECONDS plus one message per worker. Only evaluation points
re-synchronise the replicas and clear the change log, so the other pause points, which fall
where the clock says, change no pull. Checkpoints hold the server's state (mpimem.run.server_state:
the updates applied, every worker's message counter and last pull, the change log) and the
workers' states; a resumed run starts from the server's x on every replica and its next pulls
carry what they would have carried. At W = 1 a pull leaves the worker's replica equal to the
server's x, so a resumed run equals an uninterrupted one bit for bit (bytes included: a
worker's bytes_down counts its pulls, not the PAUSE control replies, whose number depends on
the clock); at W >= 2 the interleaving is not deterministic anyway.

Step schedule: the server's update counter A drives eta. With --async-step full (default, the
paper's lock-free workers that each apply their full step) the clock is t = A b, the sample
count of a sequential run, so W = 1 is sequential Mem-SGD; with "mean" the server applies
u_w / W and t = A b / W, so without staleness W messages equal one sync round. The L2 factor
of server-side L2 uses the clock at application; per message it is 1 - b eta_t lam / share,
share = 1 (full) or W (mean): with "mean" W messages carry one round's shrinkage, (1 - b eta
lam / W)^W = 1 - b eta lam + O((b eta lam)^2), exactly as the worker-side L2 term (b eta lam x
inside u_w, divided by W by the server) does; a factor 1 - b eta lam per message would shrink
W times a round's and optimise W lam. The worker's v uses the clock of its last pull. The
averaged iterate counts every applied update with weight w_t.

Staleness of a message = updates the server applied between the worker's pull (read) and the
application of its message (write); it is 0 for W = 1. RUN.h5 gets /async/staleness (histogram,
counts of staleness 0, 1, ...), /async/updates_per_worker and attrs updates_applied,
updates_sent, staleness_mean, staleness_max.

Waiting: the server blocks in MPI_Waitany (MPICH progresses a blocking call by polling, which
uses the core that the server owns anyway). The former MPIMEM_ASYNC_POLL (Iprobe + sleep, to
free the core on an oversubscribed node) is gone with the Python loop.

Test hook: MPIMEM_SLOW_WORKER=RANK:SECONDS makes worker RANK sleep SECONDS before each send.

A worker's time split (/timing/seconds) sums to the run's wall time, every second counted once:
every rank starts its clock at one Barrier after loading its compiled loop (before, a worker's
first evaluation counted the seconds it waited for rank 0 to load the server's loop: with a cold
kernel cache more than the whole run's wall, e.g. evaluation 57.8 s + waiting 52.8 s against a
56.4 s wall); inside the compiled segment the seconds its clock does not time (applying a
pull to the replica, the pull check, the MPIMEM_SLOW_WORKER sleep) count as communication, and
at the pause points the seconds outside the evaluation (the checkpoint decision, waiting for
rank 0's checkpoint) count as waiting (`counted`).
"""
import os
import time

import numpy as np

from mpimem.comm import async_segments as A
from mpimem.errors import fault_point, slow_worker_delay
from mpimem.core.model import averager_arrays
from mpimem.run.algorithm import TIMING_COLUMNS

COMMUNICATION, WAITING = TIMING_COLUMNS.index("communication"), TIMING_COLUMNS.index("waiting")

SEGMENT_SECONDS = 0.25      # a segment of grants ends after this long (signals, time checkpoints)


def share_of(run):
    """1 with --async-step full (each message a full step), W with mean (module docstring)."""
    return 1.0 if run.cfg.async_step == "full" else float(run.workers)


class AsyncServer:
    """Rank 0's protocol state for the compiled server (mpimem.comm.async_segments.server_segment):
    the grants and the segment's pause point, one MPI request per worker, the reply buffer and
    the scratch of the pulls; the counters a checkpoint saves live in the ServerState
    (mpimem.run.server_state.AsyncCounters)."""

    def __init__(self, run, counters):
        from mpi4py import MPI

        self.run, self.counters = run, counters
        W, d = run.workers, run.d
        rsize = MPI._sizeof(MPI.Request)
        null = np.array([MPI._handleof(MPI.REQUEST_NULL)], np.int64 if rsize == 8 else np.int32)
        self.requests = np.tile(null.view(np.uint8), W)
        self.reply = np.zeros(A.HEADER + 8 * d, np.uint8)
        self.mark, self.union = np.zeros(d, np.uint8), np.zeros(d, np.int32)
        self.st = np.zeros(3, np.int64)                # [granted, pause point, segment open]
        self.st[A.ST_GRANTED] = counters.applied
        self.clk = np.zeros(2)                         # [segment start, next pull check]
        self.drop = os.environ.get("MPIMEM_FAULT") == "drop-pull-coordinate"
        self.share = share_of(run)
        A.preload(A.server_segment, *self.args(0.0))

    @property
    def applied(self):
        return self.counters.applied

    def args(self, budget):
        run = self.run
        return (run.rule.P, run.mpi, run.agg.arrays, run.rule.cs, run.inbox, self.requests,
                run.replica.z, run.replica.scale, averager_arrays(run.averager),
                run.averager is not None, self.reply, self.counters.arrays,
                self.counters.log.arrays, self.mark, self.union, self.st, self.clk, run.timing,
                budget, self.share, self.drop)

    def segment(self, target, urgent):
        """Grant and apply messages up to the pause point `target` (updates), which moves down
        to the next multiple of W grants once SEGMENT_SECONDS have passed (at once when urgent()
        is true now); the log and histogram grow whenever the compiled segment asks. At return
        no message is in flight."""
        self.st[A.ST_TARGET] = target
        budget = 0.0 if urgent() else SEGMENT_SECONDS
        while A.server_segment(*self.args(budget)) == A.NEED_ROOM:
            self.counters.grow(self.run.agg.arrays[2].size)

    def synced(self):
        """After a collective evaluation every replica equals x: nothing is pending."""
        self.counters.last_pull[:] = self.applied
        self.counters.log.clear()


class PausePoints:
    """Where the segments end (updates applied, multiples of W) and what every rank does there."""

    def __init__(self, run, writer, synced=None):
        """synced: rank 0's AsyncServer.synced, called right after each evaluation has
        re-synchronised the replicas, so that a checkpoint at that pause point saves the
        counters as the run goes on from them (no pull then resends coordinates)."""
        self.run, self.writer, self.W = run, writer, run.workers
        self.synced = synced
        self.start = run.start_round * run.workers
        self.total = run.rounds * run.workers     # messages: same samples as the sync loop
        self.evals = [r * run.workers for r in run.evals]
        self.started = time.perf_counter() - run.elapsed0

    def next_after(self, applied):
        """The next planned pause point: an evaluation, a round-interval checkpoint, the end."""
        every = self.run.ck.every_rounds
        points = [p for p in self.evals if p > applied] + [self.total]
        if every:
            points.append((applied // self.W // every + 1) * every * self.W)
        return min(points)

    def is_eval(self, applied):
        # a resumed run's checkpoint at its first pause point has that row (and was taken
        # after the re-synchronisation), also when it is round 0 (a signal during start-up)
        return applied in self.evals and not (applied == self.start and self.run.cfg.resume)

    def meet(self, applied):
        """Collective at pause point `applied`: evaluate (re-synchronising the replicas) if it
        is an evaluation round, then the end ("final") or the boundary decision of
        mpimem.run.checkpoint (None, or "preempted")."""
        run, r, is_eval = self.run, applied // self.W, self.is_eval(applied)
        if is_eval:
            run.record(run.evaluate(r, self.started, sync_replicas=True), self.writer)
            if self.synced is not None:
                self.synced()
        if applied == self.total:
            run.ck.final(run.rounds, self.started)
            fault_point("shutdown", run.rank)  # a signal from here on is ignored
            return "final"
        return run.ck.boundary(r, self.started, is_eval, first=applied == self.start, always=True)


def async_loop(run, writer):
    """The `--mode async` loop on every rank (select_loop returns it); "preempted" when a
    signal stopped the run at a pause point."""
    counters = run.ck.server.counters if run.rank == 0 else None
    msg_count = counters.msg_count if run.rank == 0 else np.zeros(run.workers + 1, np.int64)
    run.comm.Bcast(msg_count, root=0)    # worker w's message counter (a resumed run's too)
    if run.rank == 0:
        return serve(run, writer, counters)
    return work(run, writer, int(msg_count[run.rank]))


def serve(run, writer, counters):
    """Rank 0: segments of grants between pause points, then the statistics."""
    server = AsyncServer(run, counters)       # loads the compiled loop before the clock starts
    run.comm.Barrier()                        # every rank's clock starts here (module docstring)
    points = PausePoints(run, writer, server.synced)
    while True:
        outcome = points.meet(server.applied)
        if outcome == "final":
            break
        if outcome == "preempted":
            return outcome
        server.segment(points.next_after(server.applied), run.ck.urgent)
    tally = np.zeros(3, np.int64)          # the workers' sums: messages sent, checks, failed
    run.comm.Reduce(np.zeros(3, np.int64), tally, root=0)
    sent, checks, failed = tally
    record(writer, run, counters, sent, points.total, checks, failed)
    return None


def work(run, writer, j):
    """A worker from its message counter j: compiled segments (pull, step, send until PAUSE,
    mpimem.comm.async_segments.worker_segment); every rank meets at each pause point."""
    reply = np.zeros(A.HEADER + 8 * run.d, np.uint8)
    tally = np.zeros(3, np.int64)          # messages sent, pulls checked, checks failed
    tally[0] = j
    args = (run.rule.P, run.mpi, run.shard.arrays, run.ws.arrays, run.rule.cs, run.replica.z,
            run.replica.scale, reply, tally, run.worker_id, share_of(run),
            slow_worker_delay(run.rank))
    A.preload(A.worker_segment, *args)     # before the clock starts
    run.comm.Barrier()                     # every rank's clock starts here (module docstring)
    points = PausePoints(run, writer)
    applied = points.start
    timing = run.ws.timing
    while True:
        outcome = counted(timing, WAITING, points.meet, applied)
        if outcome is not None:
            break
        applied = counted(timing, COMMUNICATION, A.worker_segment, *args)
    if outcome == "preempted":
        return outcome
    run.comm.Reduce(tally, None, root=0)
    return None


def counted(timing, column, fn, *args):
    """fn(*args), the seconds of it that no column of `timing` took added to `column`."""
    before, t0 = float(timing.sum()), time.perf_counter()
    out = fn(*args)
    rest = time.perf_counter() - t0 - (float(timing.sum()) - before)
    if rest > 0:
        timing[column] += rest
    return out


def record(writer, run, c, sent, total, checks, failed):
    """The async statistics into RUN.h5 (rank 0; the writer's file is still open)."""
    hist = c.staleness
    count = int(hist.sum())
    mean = float(np.arange(hist.size) @ hist) / count if count else 0.0
    group = writer.h5.require_group("async")
    ds = group.create_dataset("staleness", data=hist)
    ds.attrs["meaning"] = "count of applied messages by staleness 0, 1, 2, ... (updates)"
    group.create_dataset("updates_per_worker", data=c.msg_count[1:])
    writer.h5.attrs.update(updates_applied=c.applied, updates_sent=int(sent),
                           updates_planned=total, staleness_mean=mean,
                           staleness_max=int(np.flatnonzero(hist).max(initial=0)),
                           async_step=run.cfg.async_step,
                           pull_checks=int(checks), pull_checks_failed=int(failed))
    writer.h5.flush()
