"""`--mode async`: an asynchronous parameter server (rank 0) and W free-running workers.

Protocol (request/reply, one outstanding message per worker, so MPI's non-overtaking rule
keeps every worker's messages in order):

  worker w:  Recv(reply) -> if CONTINUE: overwrite the replica coordinates in the reply,
             step 1-1.2 of mpimem.engine on its replica (step size from the server's clock
             in the reply), Send(u_w) -> Recv(reply) ...
             PAUSE: join the collective evaluation (which also resynchronises every replica);
             STOP: join the final evaluation and leave.
  server:    Probe(ANY_SOURCE) + Recv the next message from whichever worker is first; apply it
             at once: x <- factor * x - u_w (or - u_w / W with --async-step mean); reply to that
             worker with what it has not yet seen.

The reply ("pull") is exact: the set C of coordinates whose z changed since worker w's last
pull, with their current float64 z values, plus the current scale s (x = s z). The worker
overwrites z[C] and s, so after a pull its replica equals the server's x bit for bit. When
12 |C| >= 8 d (or after a dense update / renormalisation of z) the reply is the whole z.
Reply layout (bytes): int64 kind, int64 |C| (-1 = dense), float64 s, int64 updates applied,
then |C| int32 indices + |C| float64 z values, or d float64 z values.

Budget and termination: the sample budget is M = rounds * W messages of b samples (the same
samples as the sync loop). The server hands out M grants: every CONTINUE reply grants one
message; once the grants reach the next evaluation point (or M) a worker is answered PAUSE
(or, after the last point, STOP). So exactly M messages are sent and applied, whatever the
shard sizes or worker speeds (a slow worker only holds its one grant); evaluation happens
when no message is in flight, at exactly the planned update counts.

Step schedule: the server's update counter A drives eta. With --async-step full (default, the
paper's lock-free workers that each apply their full step) the clock is t = A b, the sample
count of a sequential run, so W = 1 is sequential Mem-SGD; with "mean" the server applies
u_w / W and t = A b / W, so without staleness W messages equal one sync round. The L2 factor
1 - b eta_t lam (server-side L2) uses the clock at application; the worker's v uses the clock
of its last pull. The averaged iterate counts every applied update with weight w_t.

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

import numpy as np

from .compressors import Aggregator, decode_downlink
from .engine import RoundRule
from .model import apply_update

TAG_UP, TAG_DOWN = 11, 12
CONTINUE, PAUSE, STOP = 0, 1, 2
HEADER = 32


class AsyncRule(RoundRule):
    """RoundRule whose clock is the server's update counter (set by the caller), not the round."""

    def __init__(self, cfg, d, workers, compressor):
        super().__init__(cfg, d, workers, compressor)
        self.full = cfg.async_step == "full"
        self.clock = 0.0

    def clock_of(self, applied):
        return applied * self.b if self.full else applied * self.b / self.workers

    def eta(self, r):  # r is the worker's message counter (rand-k indices); eta uses the clock
        return self.schedule.eta(self.clock)


def slow_worker_delay(rank):
    spec = os.environ.get("MPIMEM_SLOW_WORKER", "")
    if ":" in spec:
        who, seconds = spec.split(":", 1)
        if int(who) == rank:
            return float(seconds)
    return 0.0


class AsyncServer:
    """Rank 0's state: the change log behind the exact pulls, grants and the statistics."""

    def __init__(self, run, rule):
        self.run, self.rule = run, rule
        W, d = run.workers, run.d
        self.W, self.d = W, d
        # one message per aggregate: its entries bound the union
        self.agg = Aggregator(d, 1 if rule.full else W, run.comp.max_message_bytes() // 4)
        self.inbox = np.zeros(max(8, run.comp.max_message_bytes()), np.uint8)
        self.reply = np.zeros(HEADER + 8 * d, np.uint8)
        self.applied = 0
        self.granted = 0
        self.last_pull = np.zeros(W + 1, np.int64)     # update count at worker w's last pull
        self.msg_count = np.zeros(W + 1, np.int64)     # messages applied per worker
        self.log = []                                  # (update number, idx array or None)
        self.mark = np.zeros(d, np.uint8)
        self.staleness = []
        self.bytes_up = 0
        self.bytes_down = 0
        poll = os.environ.get("MPIMEM_ASYNC_POLL", "")
        self.poll = float(poll) if poll else 0.0

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
        run, rule = self.run, self.rule
        rule.clock = rule.clock_of(self.applied)
        rule.comp.add_to(self.agg, msg, w, int(self.msg_count[w]))
        payload = self.agg.finish()
        idx, vals = decode_downlink(payload, self.d)
        if run.averager is not None:
            run.averager.add_weight(run.replica, rule.weights.weight(rule.clock))
        folded = apply_update(run.replica, rule.factor(0), idx, vals, run.averager)
        self.staleness.append(self.applied - self.last_pull[w])
        self.applied += 1
        self.msg_count[w] += 1
        self.bytes_up += msg.size
        dense = idx is None or folded
        self.log.append((self.applied, None if dense else np.array(idx, np.int64)))

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

    def send_reply(self, w, kind):
        from mpi4py import MPI

        run, out = self.run, self.reply
        n = 0
        if kind == CONTINUE:
            changed = self.changed_since(int(self.last_pull[w]))
            if changed is None:
                n = -1
                out[HEADER: HEADER + 8 * self.d].view(np.float64)[:] = run.replica.z
                size = HEADER + 8 * self.d
            else:
                n = changed.size
                out[HEADER: HEADER + 4 * n].view(np.int32)[:] = changed
                out[HEADER + 4 * n: HEADER + 12 * n].view(np.float64)[:] = run.replica.z[changed]
                size = HEADER + 12 * n
            self.last_pull[w] = self.applied
        else:
            size = HEADER
        out[:8].view(np.int64)[0] = kind
        out[8:16].view(np.int64)[0] = n
        out[16:24].view(np.float64)[0] = run.replica.s
        out[24:32].view(np.int64)[0] = self.applied
        run.comm.Send([out, size, MPI.BYTE], dest=w, tag=TAG_DOWN)
        self.bytes_down += size

    def prune(self):
        oldest = int(self.last_pull[1:].min())
        while self.log and self.log[0][0] <= oldest:
            self.log.pop(0)

    def synced(self):
        """After a collective evaluation every replica equals x: nothing is pending."""
        self.last_pull[:] = self.applied
        self.log.clear()

    def answer(self, w, target):
        """Grant w another message while grants remain before `target`, else PAUSE."""
        if self.granted < target:
            self.granted += 1
            self.send_reply(w, CONTINUE)
        else:
            self.send_reply(w, PAUSE)


def async_loop(run, writer):
    """The `--mode async` loop on every rank (select_loop returns it)."""
    rule = AsyncRule(run.cfg, run.d, run.workers, run.comp)
    W = run.workers
    total = run.rounds * W                        # messages: same samples as the sync loop
    points = [r * W for r in run.evals]           # evaluation points in updates applied
    started = time.perf_counter()
    b = run.cfg.batch_size

    def evaluate(applied):
        row = run.evaluate(applied // W, started, samples=applied * b, sync_replicas=True)
        if row is not None:
            row["round"] = applied / W
        run.record(row, writer)

    if run.rank == 0:
        server = AsyncServer(run, rule)
        evaluate(0)
        server.synced()
        t_wait = t_apply = 0.0
        for target in [p for p in points if p > 0]:
            for w in range(1, W + 1):
                server.answer(w, target)
            while server.granted > server.applied:
                t0 = time.perf_counter()
                w, msg = server.receive()
                t1 = time.perf_counter()
                server.apply(w, msg)
                server.answer(w, target)
                server.prune()
                t_wait += t1 - t0
                t_apply += time.perf_counter() - t1
            evaluate(server.applied)
            server.synced()
        for w in range(1, W + 1):
            server.send_reply(w, STOP)
        run.timing[1] += t_apply
        run.timing[3] += t_wait
        sent = run.comm.reduce(0, root=0)
        record(writer, server, sent, total)
        return
    # ---------------------------------------------------------------- a worker
    from mpi4py import MPI

    comm, ws, replica = run.comm, run.ws, run.replica
    delay = slow_worker_delay(run.rank)
    reply = np.zeros(HEADER + 8 * run.d, np.uint8)
    status = MPI.Status()
    evaluate(0)
    j = 0                                          # this worker's message counter
    while True:
        t0 = time.perf_counter()
        comm.Recv(reply, source=0, tag=TAG_DOWN, status=status)
        t1 = time.perf_counter()
        ws.timing[3] += t1 - t0
        ws.bytes_down += status.Get_count(MPI.BYTE)
        kind, n = (int(v) for v in reply[:16].view(np.int64))
        if kind == STOP:
            break
        if kind == PAUSE:
            evaluate(0)
            continue
        if n < 0:
            replica.z[:] = reply[HEADER: HEADER + 8 * run.d].view(np.float64)
        elif n:
            idx = reply[HEADER: HEADER + 4 * n].view(np.int32)
            replica.z[idx] = reply[HEADER + 4 * n: HEADER + 12 * n].view(np.float64)
        replica.s = float(reply[16:24].view(np.float64)[0])
        rule.clock = rule.clock_of(int(reply[24:32].view(np.int64)[0]))
        nbytes = rule.worker_step(ws, run.shard, replica, j)
        j += 1
        if delay:
            time.sleep(delay)
        t2 = time.perf_counter()
        comm.Send([ws.msg, nbytes, MPI.BYTE], dest=0, tag=TAG_UP)
        ws.timing[2] += time.perf_counter() - t2
    comm.reduce(j, root=0)   # STOP comes right after the final evaluation (a PAUSE)


def record(writer, server, sent, total):
    """The async statistics into RUN.h5 (rank 0; the writer's file is still open)."""
    stale = np.asarray(server.staleness, np.int64)
    hist = np.bincount(stale) if stale.size else np.zeros(1, np.int64)
    group = writer.h5.require_group("async")
    ds = group.create_dataset("staleness", data=hist)
    ds.attrs["meaning"] = "count of applied messages by staleness 0, 1, 2, ... (updates)"
    group.create_dataset("updates_per_worker", data=server.msg_count[1:])
    writer.h5.attrs.update(updates_applied=server.applied, updates_sent=sent,
                           updates_planned=total,
                           staleness_mean=float(stale.mean()) if stale.size else 0.0,
                           staleness_max=int(stale.max()) if stale.size else 0,
                           async_step=server.rule.cfg.async_step)
    writer.h5.flush()
