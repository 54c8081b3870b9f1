"""`--mode async`: an asynchronous parameter server (rank 0) and W free-running workers.

Protocol (request/reply, one outstanding message per worker, so MPI's non-overtaking rule
keeps every worker's messages in order):

  worker w:  Recv(reply) -> if CONTINUE: overwrite the replica coordinates in the reply,
             step 1-1.2 of mpimem.engine on its replica (step size from the server's clock
             in the reply), Send(u_w) -> Recv(reply) ...
             PAUSE: every rank meets at the pause point named in the reply (below).
  server:    Probe(ANY_SOURCE) + Recv the next message from whichever worker is first; apply it
             at once: x <- factor * x - u_w (or - u_w / W with --async-step mean); reply to that
             worker with what it has not yet seen.

The reply ("pull") is exact: the set C of coordinates whose z changed since worker w's last
pull, with their current float64 z values, plus the current scale s (x = s z). The worker
overwrites z[C] and s, so after a pull its replica equals the server's x bit for bit. When
12 |C| >= 8 d (or after a dense update / renormalisation of z) the reply is the whole z.
Reply layout (bytes): int64 kind, int64 |C| (-1 = dense), float64 s, int64 updates applied
(CONTINUE) or the pause point (PAUSE), int64 check (-1, or the CRC-32 of the server's z and s
bytes), then |C| int32 indices + |C| float64 z values, or d float64 z values.

Pull check: the first reply and then one every CHECK_SECONDS carries the CRC-32 of the
server's (z, s) at that update count (an O(d) cost at most 50 times a second); the worker compares it with its own replica right after applying
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
round-interval checkpoints, the end, and wherever a segment has run SEGMENT_SECONDS (or rank 0
wants a sync point: a signal, a time-based checkpoint); such a segment ends at the next
multiple of W grants. At a pause point every rank evaluates (evaluation rounds; this also
re-synchronises every replica), then takes the collective decision of mpimem.checkpoint
(signals: checkpoint and exit 75; NaN stop; checkpoints) as the sync loop does at a round
boundary; after the last one, the final check and checkpoint. A signal is thus honoured
within about SEGMENT_SECONDS plus one message per worker. Only evaluation points
re-synchronise the replicas and clear the change log, so the other pause points, which fall
where the clock says, change no pull. Checkpoints hold the server's state (mpimem.server_state:
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

Waiting: the server blocks in MPI Probe(ANY_SOURCE) (MPICH progresses a blocking call by
polling, which uses the core that the server owns anyway, and there is no Python busy loop).
Set MPIMEM_ASYNC_POLL=SECONDS to poll with Iprobe + time.sleep instead, which frees the core
on an oversubscribed node at the cost of up to SECONDS latency per message.

Test hook: MPIMEM_SLOW_WORKER=RANK:SECONDS makes worker RANK sleep SECONDS before each send.
"""
import os
import time
import zlib

import numpy as np

from .compressors import Aggregator, decode_downlink
from .engine import RoundRule
from .errors import fault_point, slow_worker_delay
from .model import apply_update

TAG_UP, TAG_DOWN = 11, 12
CONTINUE, PAUSE = 0, 1
HEADER = 40
SEGMENT_SECONDS = 0.25      # a segment of grants ends after this long (signals, time checkpoints)
CHECK_SECONDS = 0.02        # a pull is checked this often (module docstring)


class AsyncRule(RoundRule):
    """RoundRule whose clock is the server's update counter (set by the caller), not the round."""

    def __init__(self, cfg, d, workers, compressor):
        super().__init__(cfg, d, workers, compressor)
        self.full = cfg.async_step == "full"
        self.share = 1 if self.full else workers
        self.t = 0.0          # the schedule's clock (samples), set from the update count

    def clock_of(self, applied):
        return applied * self.b / self.share

    def eta(self, r):  # r is the worker's message counter (rand-k indices); eta uses the clock
        return self.schedule.eta(self.t)

    def factor(self, r):
        """Per message 1 - b eta lam / share (server-side L2; module docstring), else 1."""
        return 1.0 - self.b * self.eta(r) * self.lam / self.share if self.l2_on_server else 1.0


def digest(z, s):
    """CRC-32 of the bytes of z and s: equal replicas (bit for bit) have equal digests."""
    return zlib.crc32(np.float64(s).tobytes(), zlib.crc32(memoryview(z).cast("B")))


class AsyncServer:
    """Rank 0's protocol state: the change log behind the exact pulls and the grants; the
    counters a checkpoint saves live in the ServerState (mpimem.server_state.AsyncCounters)."""

    def __init__(self, run, rule, counters):
        self.run, self.rule, self.counters = run, rule, counters
        W, d = run.workers, run.d
        self.W, self.d = W, d
        # one message per aggregate: its entries bound the union
        self.agg = Aggregator(d, rule.share, run.comp.max_message_bytes() // 4)
        self.inbox = np.zeros(max(8, run.comp.max_message_bytes()), np.uint8)
        self.reply = np.zeros(HEADER + 8 * d, np.uint8)
        self.granted = counters.applied
        self.last_pull, self.log = counters.last_pull, counters.log
        poll = os.environ.get("MPIMEM_ASYNC_POLL", "")
        self.poll = float(poll) if poll else 0.0
        self.drop = os.environ.get("MPIMEM_FAULT") == "drop-pull-coordinate"
        self.next_check = 0.0                          # perf_counter time of the next pull check

    @property
    def applied(self):
        return self.counters.applied

    # ---------------------------------------------------------------- receive and apply
    def receive(self):
        from mpi4py import MPI

        comm, status = self.run.comm, MPI.Status()
        if self.poll > 0:
            while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_UP, status=status):
                time.sleep(self.poll)
        else:
            comm.Probe(source=MPI.ANY_SOURCE, tag=TAG_UP, status=status)
        w, nbytes = status.Get_source(), status.Get_count(MPI.BYTE)
        comm.Recv([self.inbox, nbytes, MPI.BYTE], source=w, tag=TAG_UP)
        return w, self.inbox[:nbytes]

    def apply(self, w, msg):
        run, rule, c = self.run, self.rule, self.counters
        rule.t = rule.clock_of(c.applied)
        rule.comp.add_to(self.agg, msg, w, int(c.msg_count[w]))
        payload = self.agg.finish()
        idx, vals = decode_downlink(payload, self.d)
        if run.averager is not None:
            run.averager.add_weight(run.replica, rule.weights.weight(rule.t))
        folded = apply_update(run.replica, rule.factor(0), idx, vals, run.averager)
        c.count_staleness(int(c.applied - self.last_pull[w]))
        c.applied += 1
        c.msg_count[w] += 1
        dense = idx is None or folded
        self.log.append((c.applied, None if dense else np.array(idx, np.int64)))

    # ---------------------------------------------------------------- replies (pulls)
    def changed_since(self, since):
        """Coordinates changed by updates after `since`, or None when the whole z is cheaper."""
        parts = []
        for number, idx in reversed(self.log):
            if number <= since:
                break
            if idx is None:
                return None
            parts.append(idx)
        if not parts:
            return np.zeros(0, np.int64)
        union = np.unique(np.concatenate(parts))
        return None if 12 * union.size >= 8 * self.d else union

    def send_reply(self, w, kind, count):
        """CONTINUE: the pull (checked every CHECK_SECONDS); PAUSE: the pause point."""
        from mpi4py import MPI

        run, out = self.run, self.reply
        n, check, size = 0, -1, HEADER
        if kind == CONTINUE:
            changed = self.changed_since(int(self.last_pull[w]))
            if changed is None:
                n = -1
                out[HEADER: HEADER + 8 * self.d].view(np.float64)[:] = run.replica.z
                size = HEADER + 8 * self.d
            else:
                n = changed.size - (self.drop and changed.size > 0)
                out[HEADER: HEADER + 4 * n].view(np.int32)[:] = changed[:n]
                out[HEADER + 4 * n: HEADER + 12 * n].view(np.float64)[:] = run.replica.z[changed[:n]]
                size = HEADER + 12 * n
            self.last_pull[w] = self.applied
            now = time.perf_counter()
            if now >= self.next_check:
                self.next_check = now + CHECK_SECONDS
                check = digest(run.replica.z, run.replica.s)
        out[:40].view(np.int64)[[0, 1, 3, 4]] = kind, n, count, check
        out[16:24].view(np.float64)[0] = run.replica.s
        run.comm.Send([out, size, MPI.BYTE], dest=w, tag=TAG_DOWN)

    def prune(self):
        oldest = int(self.last_pull[1:].min())
        while self.log and self.log[0][0] <= oldest:
            self.log.pop(0)

    def synced(self):
        """After a collective evaluation every replica equals x: nothing is pending."""
        self.last_pull[:] = self.applied
        self.log.clear()

    def answer(self, w, target):
        """Grant w another message while grants remain before `target`, else PAUSE at target."""
        if self.granted < target:
            self.granted += 1
            self.send_reply(w, CONTINUE, self.applied)
        else:
            self.send_reply(w, PAUSE, target)

    def segment(self, target, urgent):
        """Grant and apply messages up to the pause point `target` (updates), which moves down
        to the next multiple of W grants once SEGMENT_SECONDS have passed or urgent() is true.
        Returns (seconds waiting, seconds applying); at return no message is in flight."""
        W, t_wait, t_apply = self.W, 0.0, 0.0
        deadline = time.perf_counter() + SEGMENT_SECONDS
        for w in range(1, W + 1):
            self.answer(w, target)
        while self.granted > self.applied:
            t0 = time.perf_counter()
            w, msg = self.receive()
            t1 = time.perf_counter()
            self.apply(w, msg)
            if t1 > deadline or urgent():
                target = min(target, -(-self.granted // W) * W)
            self.answer(w, target)
            self.prune()
            t_wait += t1 - t0
            t_apply += time.perf_counter() - t1
        return t_wait, t_apply


class PausePoints:
    """Where the segments end (updates applied, multiples of W) and what every rank does there."""

    def __init__(self, run, writer):
        self.run, self.writer, self.W = run, writer, run.workers
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
        return applied in self.evals and not (applied == self.start and self.start > 0)

    def meet(self, applied):
        """Collective at pause point `applied`: evaluate (re-synchronising the replicas) if it
        is an evaluation round, then the end ("final") or the boundary decision of
        mpimem.checkpoint (None, or "preempted")."""
        run, r, is_eval = self.run, applied // self.W, self.is_eval(applied)
        if is_eval:
            run.record(run.evaluate(r, self.started, sync_replicas=True), self.writer)
        if applied == self.total:
            run.ck.final(run.rounds, self.started)
            fault_point("shutdown", run.rank)  # a signal from here on is ignored
            return "final"
        return run.ck.boundary(r, self.started, is_eval, first=applied == self.start, always=True)


def async_loop(run, writer):
    """The `--mode async` loop on every rank (select_loop returns it); "preempted" when a
    signal stopped the run at a pause point."""
    points = PausePoints(run, writer)
    counters = run.ck.server.counters if run.rank == 0 else None
    msg_count = counters.msg_count if run.rank == 0 else np.zeros(run.workers + 1, np.int64)
    run.comm.Bcast(msg_count, root=0)    # worker w's message counter (a resumed run's too)
    if run.rank == 0:
        return serve(run, writer, points, counters)
    return work(run, points, int(msg_count[run.rank]))


def serve(run, writer, points, counters):
    """Rank 0: segments of grants between pause points, then the statistics."""
    server = AsyncServer(run, AsyncRule(run.cfg, run.d, run.workers, run.comp), counters)
    while True:
        outcome = points.meet(server.applied)
        if points.is_eval(server.applied):
            server.synced()
        if outcome == "final":
            break
        if outcome == "preempted":
            return outcome
        t_wait, t_apply = server.segment(points.next_after(server.applied), run.ck.urgent)
        run.timing[1] += t_apply
        run.timing[3] += t_wait
    tally = np.zeros(3, np.int64)          # the workers' sums: messages sent, checks, failed
    run.comm.Reduce(np.zeros(3, np.int64), tally, root=0)
    sent, checks, failed = tally
    record(writer, server, sent, points.total, checks, failed)
    return None


def work(run, points, j):
    """A worker from its message counter j: pull, step, send until PAUSE; meet at the pause."""
    from mpi4py import MPI

    comm, ws, replica, d = run.comm, run.ws, run.replica, run.d
    rule = AsyncRule(run.cfg, d, run.workers, run.comp)
    delay = slow_worker_delay(run.rank)
    reply = np.zeros(HEADER + 8 * d, np.uint8)
    head = reply[:40].view(np.int64)
    status = MPI.Status()
    tally = np.zeros(3, np.int64)          # messages sent, pulls checked, checks failed
    tally[0] = j
    applied = points.start
    while True:
        outcome = points.meet(applied)
        if outcome is not None:
            break
        while True:
            t0 = time.perf_counter()
            comm.Recv(reply, source=0, tag=TAG_DOWN, status=status)
            t1 = time.perf_counter()
            ws.timing[3] += t1 - t0
            kind, n, count, check = (int(head[i]) for i in (0, 1, 3, 4))
            if kind == PAUSE:
                applied = count
                break
            ws.bytes_down += status.Get_count(MPI.BYTE)   # pulls only: pauses are control
            if n < 0:
                replica.z[:] = reply[HEADER: HEADER + 8 * d].view(np.float64)
            elif n:
                idx = reply[HEADER: HEADER + 4 * n].view(np.int32)
                replica.z[idx] = reply[HEADER + 4 * n: HEADER + 12 * n].view(np.float64)
            replica.s = float(reply[16:24].view(np.float64)[0])
            if check >= 0:
                tally[1] += 1
                tally[2] += digest(replica.z, replica.s) != check
            rule.t = rule.clock_of(count)
            nbytes = rule.worker_step(ws, run.shard, replica, int(tally[0]))
            tally[0] += 1
            if delay:
                time.sleep(delay)
            t2 = time.perf_counter()
            comm.Send([ws.msg, nbytes, MPI.BYTE], dest=0, tag=TAG_UP)
            ws.timing[2] += time.perf_counter() - t2
    if outcome == "preempted":
        return outcome
    comm.Reduce(tally, None, root=0)
    return None


def record(writer, server, sent, total, checks, failed):
    """The async statistics into RUN.h5 (rank 0; the writer's file is still open)."""
    c = server.counters
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
                           async_step=server.rule.cfg.async_step,
                           pull_checks=int(checks), pull_checks_failed=int(failed))
    writer.h5.flush()
