"""Compiled segments: many rounds of the MPI loops without returning to Python.

A segment runs rounds r0 .. r1-1 of a topology entirely in compiled code, MPI included
(mpimem.comm.mpicall), over the step functions of mpimem.core.step. Python (mpimem.driver) runs set-up,
evaluation points, checkpoints, signals and the NaN stop between segments. A segment ends at r1
(the next event, planned identically on every rank) or earlier when rank 0 has spent `budget`
seconds in it: rank 0 then marks the round's downlink header, every rank stops after that same
round, and the signal flags are polled about every `budget` seconds (docs/checkpoints.md).

Synchronous parameter server (mpimem.run.driver), per round r:
  worker:  step 1-1.2 -> Send(u_w) to rank 0                      (bytes_up += |u_w|)
           Bcast(header) -> Bcast(U) -> step 3 on its replica      (bytes_down += 8 + |U|)
  server:  Recv u_1 .. u_W in worker order (length from MPI_Get_count), aggregate (step 2),
           Bcast(header = |U|, or -(|U| + 1) to end the segment after this round), Bcast(U),
           step 3 with the averager. When U has the same size every round
           (Algorithm.fixed_downlink_bytes) header and U travel as one Bcast.
Timing columns (mpimem.run.algorithm.TIMING_COLUMNS) as before: the worker's gradient/compression
(inside step.worker_step), communication = Send, waiting = the two Bcasts; the server's
compression = aggregate + apply, waiting = the Recvs, communication = the Bcasts.

`--topology allgather` (`mpiexec -n W`: no server, rank r is worker r+1 with shard r), per round:
  every rank:  step 1-1.2 -> its message u_w (nbytes_w)
               Allgather(nbytes_w)          (8 bytes per rank; ~nbytes_w, negative, from rank 0
                                             ends the segment after this round; "waiting")
               Allgatherv(u_w bytes)        (every rank receives every message, each at an
                                             8-aligned offset; "communication")
               (when every message has the same size every round, one Allgather of
               [size, message] slots does both: Algorithm.fixed_message_bytes)
               U = aggregate(u_1..u_W)      (worker = rank order, as the server does)
               x <- factor x - U            (rank 0 also keeps xbar)
Every rank runs the very aggregation and float32 rounding of the sync server on the same
messages in the same order, so every replica is bit-identical and the trajectory equals
`mpimem.run.simulate.simulate` on the same W shards (tests/test_allgather.py). Bytes, as handed
to MPI (`allgather_bytes`): up = what the rank contributes (its 8-byte size and its message;
on the fixed-size path its whole slot, 8 + the message padded to 8 bytes), down = what it
receives from the other ranks (their sizes and messages, or their slots).

Test hook: MPIMEM_SLOW_WORKER=RANK:SECONDS (mpimem.errors.slow_worker_delay) makes a
rank sleep before each exchange (allgather) or send (async).
"""
import numpy as np
from numba import njit

from mpimem.core import layout, step
from mpimem.core.kernels import CACHE
from mpimem.comm.mpicall import allgather, allgatherv, bcast, recv, received_bytes, send
from mpimem.core.clock import now, sleep

TAG_UP = 11


@njit(inline="always")
def _account(timing, compression, communication, waiting):
    """Add a round's seconds to the timing columns (mpimem.run.algorithm.TIMING_COLUMNS)."""
    timing[layout.T_COMPRESSION] += compression
    timing[layout.T_COMMUNICATION] += communication
    timing[layout.T_WAITING] += waiting


@njit(cache=CACHE)
def _header(n, stop):
    """The downlink header: the payload length, negative (-(n + 1)) when the segment ends."""
    return -(n + 1) if stop else n


@njit(cache=CACHE)
def _send_downlink(mpi, message, n, fixed, stop, hdr):
    """Rank 0: Bcast the header and the payload message[8:8 + n]: one message when every
    round's payload has the same size `fixed`, else the header first (the length)."""
    head = _header(n, stop)
    if fixed >= 0:
        if n != fixed:
            raise RuntimeError("mpimem: internal error: a fixed-size downlink changed its size")
        message[:8].view(np.int64)[0] = head
        bcast(mpi, message, 8 + n, 0)
    else:
        hdr[0] = head
        bcast(mpi, hdr.view(np.uint8), 8, 0)
        bcast(mpi, message[8:], n, 0)


@njit(cache=CACHE)
def _receive_downlink(mpi, message, fixed, hdr):
    """A worker's side of _send_downlink: (payload length, whether the segment ends)."""
    if fixed >= 0:
        bcast(mpi, message, 8 + fixed, 0)
        head = message[:8].view(np.int64)[0]
    else:
        bcast(mpi, hdr.view(np.uint8), 8, 0)
        head = hdr[0]
    stop = head < 0
    n = -head - 1 if stop else head
    if fixed < 0:
        bcast(mpi, message[8:], n, 0)
    return n, stop


@njit(cache=CACHE)
def server_segment(P, mpi, agg, cs, inbox, sizes, z, scale, G, avg, track, message, fixed,
                   hdr, timing, r0, r1, budget):
    """Rank 0 of the sync server for rounds r0 .. r1-1; returns the next round to run.
    message: the aggregator's downlink buffer (8-byte header, then agg's out)."""
    workers = np.int64(P[layout.P_WORKERS])
    out = agg[4]
    cap = inbox.shape[1]
    started = now(mpi)
    for r in range(r0, r1):
        t0 = now(mpi)
        for w in range(1, workers + 1):
            recv(mpi, inbox[w - 1], cap, w, TAG_UP)
            sizes[w - 1] = received_bytes(mpi)
        t1 = now(mpi)
        for w in range(1, workers + 1):
            step.agg_add(P, agg, cs, inbox[w - 1], sizes[w - 1], w, r)
        n = step.round_finish(P, agg, G, np.float64(workers), r)
        t2 = now(mpi)
        stop = r + 1 < r1 and t2 - started >= budget
        _send_downlink(mpi, message, n, fixed, stop, hdr)
        t3 = now(mpi)
        step.server_apply(P, z, scale, G, out, n, avg, track, r)
        _account(timing, (t2 - t1) + (now(mpi) - t3), t3 - t2, t1 - t0)
        if stop:
            return r + 1
    return r1


@njit(cache=CACHE)
def worker_segment(P, mpi, shard, ws, cs, z, scale, G, message, fixed, hdr, noavg, worker, r0,
                   r1):
    """Worker `worker` of the sync server for rounds r0 .. r1-1; returns the next round.
    message: 8 + 4 d bytes for the downlink (header, payload)."""
    msg, counters, timing = ws[layout.W_MSG], ws[layout.W_COUNTERS], ws[layout.W_TIMING]
    payload = message[8:]
    for r in range(r0, r1):
        eta = step.eta_of(P, r * P[layout.P_B])
        nbytes = step.worker_step(P, shard, ws, cs, z, scale, worker, r, eta, mpi)
        t0 = now(mpi)
        send(mpi, msg, nbytes, 0, TAG_UP)
        t1 = now(mpi)
        n, stop = _receive_downlink(mpi, message, fixed, hdr)
        t2 = now(mpi)
        counters[layout.C_DOWN] += 8 + n
        step.replica_apply(P, z, scale, G, payload, n, noavg, False, eta, step.factor_of(P, eta))
        _account(timing, now(mpi) - t2, t1 - t0, t2 - t1)
        if stop:
            return r + 1
    return r1


@njit(cache=CACHE)
def _exchange_sizes(mpi, slot, fixed, msg, nbytes, ask, sizes, recv, counts, displs):
    """Allgather of every rank's message size (~size when `ask`), and, when every message has
    the same size `fixed`, of the messages themselves in the same call: each rank's slot is
    [8-byte size, message]. Returns (whether any rank asked, bytes of all messages)."""
    workers = sizes.size
    if fixed >= 0:
        if nbytes != fixed:
            raise RuntimeError("mpimem: internal error: a fixed-size message changed its size")
        slot[:8].view(np.int64)[0] = ~nbytes if ask else nbytes
        slot[8: 8 + nbytes] = msg[:nbytes]
        allgather(mpi, slot, slot.size, recv)
        for w in range(workers):
            sizes[w] = recv[w * slot.size: w * slot.size + 8].view(np.int64)[0]
    else:
        slot[:8].view(np.int64)[0] = ~nbytes if ask else nbytes
        allgather(mpi, slot[:8], 8, sizes.view(np.uint8))
    stop = False
    received = 0
    offset = 0
    for w in range(workers):
        n = sizes[w]
        if n < 0:
            stop = True
            n = ~n
        counts[w] = n
        displs[w] = w * slot.size + 8 if fixed >= 0 else offset
        offset += (n + 7) // 8 * 8
        received += n
    return stop, received


def allgather_bytes(nbytes, fixed):
    """(up, down) bytes of one allgather round for every rank (a list of W message sizes):
    what each rank hands MPI and receives from the others, as allgather_segment counts them.
    fixed >= 0: one Allgather of slots of 8 + the message rounded up to 8 bytes; else an
    Allgather of 8-byte sizes and an Allgatherv of the messages."""
    W = len(nbytes)
    if fixed >= 0:
        slot = 8 + -(-fixed // 8) * 8
        return [slot] * W, [(W - 1) * slot] * W
    total = sum(nbytes)
    return [8 + n for n in nbytes], [total - n + 8 * (W - 1) for n in nbytes]


@njit(cache=CACHE)
def peer_step(P, mpi, shard, ws, cs, z, scale, worker, r, r1, started, budget, delay):
    """A serverless rank's steps 1-1.2 of round r (the sync clock's eta), the test hook's sleep,
    and whether it asks the segment to end after this round (rank 0, its `budget` seconds
    since `started` spent). Returns (the message's bytes, the clock after the sleep, ask)."""
    eta = step.eta_of(P, r * P[layout.P_B])
    nbytes = step.worker_step(P, shard, ws, cs, z, scale, worker, r, eta, mpi)
    sleep(mpi, delay)
    t0 = now(mpi)
    return nbytes, t0, worker == 1 and r + 1 < r1 and t0 - started >= budget


@njit(cache=CACHE)
def allgather_segment(P, mpi, shard, ws, cs, agg, z, scale, G, avg, track, slot, fixed, sizes,
                      recv, counts, displs, worker, r0, r1, budget, delay):
    """Every rank of `--topology allgather` for rounds r0 .. r1-1 (module docstring); fixed:
    the message size when it is the same every round (Algorithm.fixed_message_bytes: then one
    Allgather carries sizes and messages), else -1; delay: seconds to sleep before each
    exchange (the MPIMEM_SLOW_WORKER test hook)."""
    workers = np.int64(P[layout.P_WORKERS])
    msg, counters, timing = ws[layout.W_MSG], ws[layout.W_COUNTERS], ws[layout.W_TIMING]
    out = agg[4]
    started = now(mpi)
    for r in range(r0, r1):
        nbytes, t0, ask = peer_step(P, mpi, shard, ws, cs, z, scale, worker, r, r1, started,
                                    budget, delay)
        stop, received = _exchange_sizes(mpi, slot, fixed, msg, nbytes, ask, sizes, recv,
                                         counts, displs)
        t1 = now(mpi)
        if fixed < 0:
            allgatherv(mpi, msg, nbytes, recv, counts, displs)
        t2 = now(mpi)
        for w in range(workers):
            lo = np.int64(displs[w])
            step.agg_add(P, agg, cs, recv[lo: lo + counts[w]], np.int64(counts[w]), w + 1, r)
        n = step.round_finish(P, agg, G, np.float64(workers), r)
        step.server_apply(P, z, scale, G, out, n, avg, track, r)
        if fixed >= 0:    # one Allgather of slots: this rank's slot out, the others' in
            counters[layout.C_UP] += slot.size - nbytes
            counters[layout.C_DOWN] += (workers - 1) * slot.size
        else:             # Allgather of 8-byte sizes, Allgatherv of the messages
            counters[layout.C_UP] += 8
            counters[layout.C_DOWN] += received - nbytes + 8 * (workers - 1)
        _account(timing, now(mpi) - t2, t2 - t1, t1 - t0)
        if stop:
            return r + 1
    return r1


@njit(cache=CACHE)
def local_segment(P, clk, shard, ws, cs, agg, z, scale, G, avg, track, worker, r0, r1,
                  server_time):
    """One worker and the server in one process, no MPI, rounds r0 .. r1-1: the same steps
    as the sync server's round (the downlink is applied once, on the server's replica, which
    the worker shares). For the benchmarks and the cost model (analysis/costmodel.py): the
    worker's timing columns give c, server_time[0] accumulates the aggregate + apply seconds
    (c_a per message)."""
    msg, counters = ws[layout.W_MSG], ws[layout.W_COUNTERS]
    out = agg[4]
    for r in range(r0, r1):
        eta = step.eta_of(P, r * P[layout.P_B])
        nbytes = step.worker_step(P, shard, ws, cs, z, scale, worker, r, eta, clk)
        t0 = now(clk)
        step.agg_add(P, agg, cs, msg, nbytes, worker, r)
        n = step.round_finish(P, agg, G, 1.0, r)
        step.server_apply(P, z, scale, G, out, n, avg, track, r)
        counters[layout.C_DOWN] += 8 + n
        server_time[0] += now(clk) - t0
    return r1
