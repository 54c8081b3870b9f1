"""The compiled loops of `--mode async` (the protocol: mpimem.run.async_driver).

Both sides run their per-message work in numba-compiled code, MPI included (mpimem.comm.mpicall),
over the step functions of mpimem.core.step, and return to Python only at a pause point (worker) or
at the end of a segment of grants (server):

  worker_segment   Recv(reply) -> PAUSE: return the pause point; CONTINUE: overwrite z[C] and s
                   with the pull, compare the digest when the reply carries one, step 1-1.2
                   (step.worker_step, eta at the reply's clock), sleep (MPIMEM_SLOW_WORKER),
                   Send(u_w) -> Recv(reply) ...
  server_segment   answer every worker, then until every grant is applied: MPI_Waitany over one
                   pre-posted MPI_Irecv per granted message (into that worker's inbox row; the
                   request's index is the worker), apply, move the pause point down once the
                   time budget is spent, answer that worker (CONTINUE + the exact pull, or
                   PAUSE), prune the change log.

Reply layout (bytes): int64 kind, int64 |C| (-1 = dense), float64 s, int64 updates applied
(CONTINUE) or the pause point (PAUSE), int64 check (-1, or digest(z, s) of the server), then
|C| float64 z values + |C| int32 indices (the float64 values first, so that they are 8-aligned),
or the d float64 values of z.

The change log (mpimem.run.server_state.ChangeLog arrays: numbers, starts, sizes, indices, ptr =
[head, tail, index end]) holds, for every update since the oldest worker's last pull, the
coordinates of z it changed (-1: all of them). The pull of worker w is the union of the entries
numbered after its last pull, found with a mark array; a dense entry, or a union with
12 |C| >= 8 d, makes the reply the whole z. Appending compacts the arrays in place; when they
(or the staleness histogram, which needs a slot per update the log spans) are still too small
the server segment returns NEED_ROOM and Python grows them (AsyncCounters.grow) and calls again.
"""
import numpy as np
from numba import njit, typeof

from mpimem.core import layout, step
from mpimem.core.kernels import CACHE
from mpimem.comm.mpicall import irecv, recv, received_bytes, send, waitany
from mpimem.core.clock import now, sleep

TAG_UP, TAG_DOWN = 11, 12
CONTINUE, PAUSE = 0, 1
HEADER = 40
CHECK_SECONDS = 0.02        # a pull carries a digest at most this often (mpimem.run.async_driver)
DONE, NEED_ROOM = 0, 1      # what server_segment returns
# slots of the server's segment state `st` (int64) and clocks `clk` (float64)
ST_GRANTED, ST_TARGET, ST_OPEN = range(3)
CLK_STARTED, CLK_NEXT_CHECK = range(2)
# slots of a ChangeLog's ptr
LOG_HEAD, LOG_TAIL, LOG_END = range(3)


def preload(fn, *args):
    """Load fn's compiled code for these argument types from numba's cache (compiling it if
    needed) without running it, so that the first segment does not pay for it."""
    fn.compile(tuple(typeof(a) for a in args))


# ---------------------------------------------------------------- the pull check
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)


@njit(cache=CACHE)
def _mix(h):
    """splitmix64's finaliser: a bijection of 64-bit words with full avalanche."""
    h = (h ^ (h >> np.uint64(30))) * _K2
    h = (h ^ (h >> np.uint64(27))) * _K3
    return h ^ (h >> np.uint64(31))


@njit(cache=CACHE)
def digest(z, scale):
    """A 63-bit hash of the bytes of z and s = scale[0]: h = mix(h + K1 ^ word) over the 64-bit
    words, d and s included; equal replicas (bit for bit) have equal digests, and a replica that
    differs in any bit has the server's digest with probability about 2^-63."""
    h = _mix(np.uint64(z.size) + _K1)
    for w in z.view(np.uint64):
        h = _mix((h + _K1) ^ w)
    h = _mix((h + _K1) ^ scale.view(np.uint64)[0])
    return np.int64(h >> np.uint64(1))


# ---------------------------------------------------------------- the change log
@njit(cache=CACHE)
def log_room(log, need):
    """Whether one more entry of up to `need` indices fits, after moving the live entries and
    their indices to the front of the arrays when they do not fit behind them."""
    numbers, starts, sizes, indices, ptr = log
    head, tail, end = ptr[LOG_HEAD], ptr[LOG_TAIL], ptr[LOG_END]
    if tail < numbers.size and end + need <= indices.size:
        return True
    base = starts[head] if head < tail else end
    for e in range(head, tail):
        numbers[e - head] = numbers[e]
        starts[e - head] = starts[e] - base
        sizes[e - head] = sizes[e]
    for i in range(base, end):
        indices[i - base] = indices[i]
    ptr[LOG_HEAD], ptr[LOG_TAIL], ptr[LOG_END] = 0, tail - head, end - base
    return tail - head < numbers.size and end - base + need <= indices.size


@njit(cache=CACHE)
def log_append(log, number, idx, n):
    """Entry `number` changed the n coordinates idx[:n] (n < 0: every coordinate); log_room
    must have said it fits."""
    numbers, starts, sizes, indices, ptr = log
    tail, end = ptr[LOG_TAIL], ptr[LOG_END]
    numbers[tail], starts[tail], sizes[tail] = number, end, n
    for i in range(max(n, 0)):
        indices[end + i] = idx[i]
    ptr[LOG_TAIL] = tail + 1
    ptr[LOG_END] = end + max(n, 0)


@njit(cache=CACHE)
def log_prune(log, oldest):
    """Drop the entries every worker has pulled (numbers <= oldest)."""
    numbers, ptr = log[0], log[4]
    head = ptr[LOG_HEAD]
    while head < ptr[LOG_TAIL] and numbers[head] <= oldest:
        head += 1
    ptr[LOG_HEAD] = head


@njit(cache=CACHE)
def changed_since(log, since, d, mark, union):
    """The coordinates changed by the updates numbered after `since`, into union[:returned
    count] (each once, newest update first), or -1 when the whole z is the cheaper reply: a
    dense entry, or 12 |C| >= 8 d. mark (d flags) is all zero before and after."""
    numbers, starts, sizes, indices, ptr = log
    c, dense = 0, False
    e = ptr[LOG_TAIL] - 1
    while e >= ptr[LOG_HEAD] and numbers[e] > since:
        if sizes[e] < 0:
            dense = True
            break
        for i in range(starts[e], starts[e] + sizes[e]):
            j = indices[i]
            if mark[j] == 0:
                mark[j] = 1
                union[c] = j
                c += 1
        if 12 * c >= 8 * d:
            dense = True
            break
        e -= 1
    for i in range(c):
        mark[union[i]] = 0
    return -1 if dense else c


# ---------------------------------------------------------------- the server
@njit(cache=CACHE)
def _reply(mpi, w, kind, count, clk, z, scale, log, last_pull, mark, union, reply, drop):
    """Send worker w a CONTINUE reply (its exact pull; the first one that changes z, and then
    one every CHECK_SECONDS, with a digest) or a PAUSE reply (count = the pause point)."""
    d = z.size
    head = reply[:HEADER].view(np.int64)
    size, n, check = HEADER, 0, -1
    if kind == CONTINUE:
        n = changed_since(log, last_pull[w], d, mark, union)
        changes = n != 0
        if n < 0:
            reply[HEADER: HEADER + 8 * d].view(np.float64)[:] = z
            size += 8 * d
        else:
            if drop and n > 0:   # the MPIMEM_FAULT=drop-pull-coordinate test hook
                n -= 1
            vals = reply[HEADER: HEADER + 8 * n].view(np.float64)
            idx = reply[HEADER + 8 * n: HEADER + 12 * n].view(np.int32)
            for i in range(n):
                j = union[i]
                idx[i] = j
                vals[i] = z[j]
            size += 12 * n
        last_pull[w] = count
        t = now(mpi)
        if changes and t >= clk[CLK_NEXT_CHECK]:
            clk[CLK_NEXT_CHECK] = t + CHECK_SECONDS
            check = digest(z, scale)
    head[0], head[1], head[3], head[4] = kind, n, count, check
    reply[16:24].view(np.float64)[0] = scale[0]
    send(mpi, reply, size, w, TAG_DOWN)


@njit(cache=CACHE)
def _answer(mpi, w, st, clk, cnt, z, scale, log, mark, union, reply, inbox, requests, drop):
    """Grant worker w another message (post its Irecv, reply CONTINUE) while grants remain
    before the pause point st[ST_TARGET], else reply PAUSE at it."""
    applied, last_pull = cnt[0], cnt[2]
    if st[ST_GRANTED] < st[ST_TARGET]:
        st[ST_GRANTED] += 1
        rsize = requests.size // inbox.shape[0]
        irecv(mpi, inbox[w - 1], inbox.shape[1], w, TAG_UP, requests[(w - 1) * rsize:])
        _reply(mpi, w, CONTINUE, applied[0], clk, z, scale, log, last_pull, mark, union,
               reply, drop)
    else:
        _reply(mpi, w, PAUSE, st[ST_TARGET], clk, z, scale, log, last_pull, mark, union,
               reply, drop)


@njit(cache=CACHE)
def _apply(P, agg, cs, msg, nbytes, w, z, scale, avg, track, cnt, log, share):
    """Apply worker w's message at once (the clock t = A b / share of A updates applied):
    xbar counts w_t x, x <- factor x - u_w / share with factor = 1 - b eta_t lam / share
    (server-side L2) or 1; the staleness A - (A at w's last pull) into the histogram; the
    changed coordinates into the change log as update A + 1."""
    applied, msg_count, last_pull, hist = cnt
    a = applied[0]
    t = a * P[layout.P_B] / share
    step.agg_add(P, agg, cs, msg, nbytes, w, msg_count[w])
    n = step.agg_finish(agg, share)
    out = agg[4]
    folded = step.apply_at(P, z, scale, z[:0], out, n, avg, track, t, share)  # no EF21 G
    hist[a - last_pull[w]] += 1
    applied[0] = a + 1
    msg_count[w] += 1
    m = -1 if n == 4 * z.size or folded else n // 8
    log_append(log, a + 1, out[: 4 * max(m, 0)].view(np.int32), m)


@njit(cache=CACHE)
def server_segment(P, mpi, agg, cs, inbox, requests, z, scale, avg, track, reply, cnt, log,
                   mark, union, st, clk, timing, budget, share, drop):
    """Rank 0: grant and apply messages up to the pause point st[ST_TARGET] (updates), which
    moves down to the next multiple of W grants once `budget` seconds have passed; DONE when
    every grant is applied (no message in flight), NEED_ROOM when the change log or the
    staleness histogram must grow first (call again after AsyncCounters.grow: the segment
    continues where it stopped). cnt = (applied, msg_count, last_pull, staleness histogram);
    timing gets the waiting (Waitany) and compression (apply, answer, prune) seconds."""
    W = inbox.shape[0]
    applied, last_pull, hist = cnt[0], cnt[2], cnt[3]
    need = agg[2].size
    if st[ST_OPEN] == 0:
        st[ST_OPEN] = 1
        clk[CLK_STARTED] = now(mpi)
        for w in range(1, W + 1):
            _answer(mpi, w, st, clk, cnt, z, scale, log, mark, union, reply, inbox, requests,
                    drop)
    while st[ST_GRANTED] > applied[0]:
        if applied[0] - last_pull[1:].min() >= hist.size or not log_room(log, need):
            return NEED_ROOM
        t0 = now(mpi)
        i = waitany(mpi, W, requests)
        nbytes = received_bytes(mpi)
        t1 = now(mpi)
        w = i + 1
        _apply(P, agg, cs, inbox[i], nbytes, w, z, scale, avg, track, cnt, log, share)
        if t1 - clk[CLK_STARTED] > budget:
            st[ST_TARGET] = min(st[ST_TARGET], -(-st[ST_GRANTED] // W) * W)
        _answer(mpi, w, st, clk, cnt, z, scale, log, mark, union, reply, inbox, requests, drop)
        log_prune(log, last_pull[1:].min())
        timing[layout.T_WAITING] += t1 - t0
        timing[layout.T_COMPRESSION] += now(mpi) - t1
    st[ST_OPEN] = 0
    return DONE


# ---------------------------------------------------------------- a worker
@njit(cache=CACHE)
def _pull(reply, n, z, scale):
    """Overwrite z[C] (n = |C|) or all of z (n < 0), and s, with the reply's values."""
    d = z.size
    if n < 0:
        z[:] = reply[HEADER: HEADER + 8 * d].view(np.float64)
    else:
        vals = reply[HEADER: HEADER + 8 * n].view(np.float64)
        idx = reply[HEADER + 8 * n: HEADER + 12 * n].view(np.int32)
        for i in range(n):
            z[idx[i]] = vals[i]
    scale[0] = reply[16:24].view(np.float64)[0]


@njit(cache=CACHE)
def worker_segment(P, mpi, shard, ws, cs, z, scale, reply, tally, worker, share, delay):
    """Worker `worker`: pull, check, step, send until a PAUSE reply; returns its pause point.
    tally = [messages sent (the message counter), pulls checked, checks failed]; bytes_down
    counts the pulls (not the PAUSE control replies); timing: waiting = Recv, communication =
    Send (gradient and compression inside step.worker_step)."""
    msg, counters, timing = ws[layout.W_MSG], ws[layout.W_COUNTERS], ws[layout.W_TIMING]
    head = reply[:HEADER].view(np.int64)
    while True:
        t0 = now(mpi)
        recv(mpi, reply, reply.size, 0, TAG_DOWN)
        size = received_bytes(mpi)
        timing[layout.T_WAITING] += now(mpi) - t0
        kind, n, count, check = head[0], head[1], head[3], head[4]
        if kind == PAUSE:
            return count
        counters[layout.C_DOWN] += size
        _pull(reply, n, z, scale)
        if check >= 0:
            tally[1] += 1
            tally[2] += digest(z, scale) != check
        eta = step.eta_of(P, count * P[layout.P_B] / share)
        nbytes = step.worker_step(P, shard, ws, cs, z, scale, worker, tally[0], eta, mpi)
        tally[0] += 1
        sleep(mpi, delay)
        t2 = now(mpi)
        send(mpi, msg, nbytes, 0, TAG_UP)
        timing[layout.T_COMMUNICATION] += now(mpi) - t2
