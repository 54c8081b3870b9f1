"""`--topology allgather`: no server; every rank is a worker and every rank applies the same sum.

Launch with `mpiexec -n W` (W workers; rank r is worker r+1 with shard r). Per round r:

  every rank:  step 1-1.2 of mpimem.engine -> its message u_w (nbytes_w)
               Allgather(nbytes_w)                 (8 bytes per rank; the "waiting" column)
               Allgatherv(u_w bytes)               (every rank receives every message)
               U = RoundRule.aggregate(u_1..u_W)   (worker = rank order, as the server does)
               x <- factor x - U                   (rank 0 also keeps xbar)

Because every rank runs the very aggregation and float32 rounding of the sync server on the
same messages in the same order, every replica is bit-identical, and the trajectory equals
`mpimem.simulate.simulate` on the same W shards (tests/test_allgather.py). Rank 0 writes
RUN.h5 and prints. Bytes: up = the rank's own messages; down = the bytes it receives, the
other ranks' messages plus their 8-byte sizes (an allgather moves (W-1) messages into each rank).
"""
import time

import numpy as np


def allgather_loop(run, writer):
    from mpi4py import MPI

    comm, rule, ws, W = run.comm, run.rule, run.ws, run.workers
    size = np.zeros(1, np.int64)
    sizes = np.zeros(W, np.int64)
    recv = np.zeros(W * max(8, run.comp.max_message_bytes()), np.uint8)
    started = time.perf_counter()
    evals = set(run.evals)
    for r in range(run.rounds + 1):
        if r in evals:
            run.record(run.evaluate(r, started), writer)
        if r == run.rounds:
            break
        nbytes = rule.worker_step(ws, run.shard, run.replica, r)
        t0 = time.perf_counter()
        size[0] = nbytes
        comm.Allgather(size, sizes)
        t1 = time.perf_counter()
        displs = np.zeros(W, np.int64)
        np.cumsum(sizes[:-1], out=displs[1:])
        comm.Allgatherv([ws.msg, nbytes, MPI.BYTE], [recv, sizes, displs, MPI.BYTE])
        t2 = time.perf_counter()
        messages = [recv[displs[w]: displs[w] + sizes[w]] for w in range(W)]
        payload = rule.aggregate(run.agg, messages, r)
        rule.apply(run.replica, payload, r, run.averager)
        ws.bytes_down += int(sizes.sum()) - nbytes + 8 * (W - 1)
        ws.timing[1] += time.perf_counter() - t2
        ws.timing[2] += t2 - t1
        ws.timing[3] += t1 - t0
