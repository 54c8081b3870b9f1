"""The compiled step functions of a round, shared by every loop (sync, async, allgather, simulator).

Round r of Algorithm 1 as distributed in docs/spec.md "Distributed setting" (clock t = r b):

  worker_step   1-1.2  v = m + eta_t sum_{i in batch} grad f_i(x_r) [+ eta_t b lam x_r],
                       u = comp(v), m := v - u; writes the wire bytes of u
  agg_add       2      acc += decode(u_w)             (worker order: the sum is deterministic)
  agg_finish    2      U = acc / W as the downlink (or D = top-K(m_s + U) with --downlink-k)
  apply_payload 3      x_{r+1} = factor x_r - U; the server also counts w_r x_r into xbar

Everything is numba-compiled over plain arrays grouped in tuples (cacheable, unlike jitclass):

  P      float64 parameters of the run (rule_params: operator, k, d, b, lam, schedule, ...)
  shard  (X, data, indices, indptr, y): dense X, or CSR arrays (the unused ones are empty)
  ws     a worker's state (mpimem.engine.WorkerState.arrays)
  cs     the operator's scratch (mpimem.compressors.Compressor.scratch)
  agg    the server's aggregation scratch (mpimem.compressors.Aggregator.arrays)
  avg    the averager (S, Cmark, [C, wsum]) and the replica (z, [s]) (mpimem.model)
  clk    the clock/MPI table of mpimem.mpicall (timing columns: gradient, compression)

Wire formats and operators are those of mpimem.compressors; the kernels are mpimem.kernels.
"""
import numpy as np
from numba import njit

from . import kernels as K
from . import topk_index
from .kernels import CACHE
from .mpicall import now

# operators
OP_NONE, OP_TOP_K, OP_RAND_K, OP_QUANT, OP_SIGN = range(5)
OP_CODES = {"none": OP_NONE, "top_k": OP_TOP_K, "rand_k": OP_RAND_K, "qsgd": OP_QUANT,
            "ternary": OP_QUANT, "sign": OP_SIGN}
# schedules and averaging weights (mpimem.schedule)
SCHEDULE_CODES = {"decay": 0, "bottou": 1, "constant": 2}
AVERAGING_CODES = {"quadratic": 0, "uniform": 1, "none": 2}
# the band of the lazy scale s (mpimem.model: x = s z)
BAND_LOW, BAND_HIGH = 0.5, 2.0
# slots of P
(P_OP, P_K, P_D, P_B, P_LAM, P_L2_SERVER, P_MEMORY, P_SCHEDULE, P_GAMMA, P_SHIFT, P_AVERAGING,
 P_LEVELS, P_BITS, P_DIVISOR, P_WORKERS, P_MSG_BYTES, P_SIZE) = range(17)
# a worker's state tuple `ws` (mpimem.engine.WorkerState.arrays): where segments find these
W_MSG, W_COUNTERS, W_TIMING = 8, 10, 11
# slots of a worker's counters (int64)
C_UP, C_DOWN, C_NCAND = range(3)
# timing columns (mpimem.engine.TIMING_COLUMNS)
T_GRADIENT, T_COMPRESSION, T_COMMUNICATION, T_WAITING, T_EVALUATION = range(5)


# ---------------------------------------------------------------- steps and weights (SPEC)
@njit(cache=CACHE)
def eta_at(kind, gamma, lam, shift, t):
    """eta_t: decay gamma / (lam (t + a)), bottou gamma / (1 + gamma lam t), constant gamma."""
    if kind == 0:
        return gamma / (lam * (t + shift))
    if kind == 1:
        return gamma / (1.0 + gamma * lam * t)
    return gamma


@njit(cache=CACHE)
def weight_at(kind, shift, t):
    """w_t of the averaged iterate: quadratic (a + t)^2, else 1."""
    if kind == 0:
        return (shift + t) * (shift + t)
    return 1.0


@njit(cache=CACHE)
def eta_of(P, t):
    return eta_at(np.int64(P[P_SCHEDULE]), P[P_GAMMA], P[P_LAM], P[P_SHIFT], t)


@njit(cache=CACHE)
def factor_of(P, eta, share=1.0):
    """The scale of x in step 3: 1 - b eta lam / share (server-side L2) or 1 (paper-exact L2);
    share = 1, or W for the async server's `--async-step mean` (W messages, one round)."""
    if P[P_L2_SERVER] != 0.0:
        return 1.0 - P[P_B] * eta * P[P_LAM] / share
    return 1.0


# ---------------------------------------------------------------- encodings (compressors.py)
@njit(cache=CACHE)
def emit_vector(m, sel, n, out):
    """Send u = m restricted to sel[:n] (all of m when n < 0), keep m := m - u; bytes written.

    int32 idx + float32 vals (8 n bytes) when 8 n < 4 d, else the dense float32 vector (4 d
    bytes, zeros off sel): the rule `compressors.sparse_is_smaller`, decoded by size."""
    d = m.size
    if n >= 0 and 8 * n < 4 * d:
        idx = out[: 4 * n].view(np.int32)
        for i in range(n):
            idx[i] = sel[i]
        K.emit_sparse(m, idx, n, out[4 * n: 8 * n].view(np.float32))
        return 8 * n
    dense = out[: 4 * d].view(np.float32)
    dense[:] = 0.0
    count = d if n < 0 else n
    for i in range(count):
        j = i if n < 0 else sel[i]
        v32 = np.float32(m[j])
        dense[j] = v32
        m[j] -= np.float64(v32)
    return 4 * d


@njit(cache=CACHE)
def compress(P, ws, cs, worker, r):
    """u = comp(v) of the worker's v (in m) into its message buffer; m := v - u; bytes."""
    m, perm, cursor, rng_sample, rng_quant, rows, mark, cand, msg, topk, counters, timing = ws
    sel, hkey, hidx, floyd_mark, bases = cs
    op = np.int64(P[P_OP])
    k = np.int64(P[P_K])
    ncand = counters[C_NCAND]
    if op == OP_NONE:
        return emit_vector(m, cand, ncand, msg)
    if op == OP_TOP_K:
        bucket, links, head, icand, held, ikey, iidx, meta = topk
        if bucket.size:   # sparse rows: the incremental index, O(touched + k) a round
            n = topk_index.select(m, cand, ncand, bucket, links, head, icand, held, ikey, iidx,
                                  meta, k, sel)
        else:
            n = K.top_k_scan(m, cand, ncand, k, sel, hkey, hidx)
        idx = msg[: 4 * n].view(np.int32)
        for i in range(n):
            idx[i] = sel[i]
        K.emit_sparse(m, sel, n, msg[4 * n: 8 * n].view(np.float32))
        return 8 * n
    if op == OP_RAND_K:
        K.rand_k_indices(bases[worker], r, m.size, k, sel, floyd_mark)
        K.emit_sparse(m, sel, k, msg[: 4 * k].view(np.float32))
        return 4 * k
    nbytes = np.int64(P[P_MSG_BYTES])
    if op == OP_QUANT:
        K.qsgd_encode(m, P[P_LEVELS], np.int64(P[P_BITS]), P[P_DIVISOR], rng_quant,
                      msg[:4].view(np.float32), msg[4:nbytes])
    else:
        K.sign_encode(m, msg[:4].view(np.float32), msg[4:nbytes])
    return nbytes


# ---------------------------------------------------------------- step 1: a worker's round
@njit(cache=CACHE)
def worker_step(P, shard, ws, cs, z, scale, worker, r, eta, clk):
    """Steps 1-1.2 of round r (message counter r; eta given: the sync clock or async's);
    the message is ws's msg[:returned bytes]. Adds gradient and compression seconds."""
    X, data, indices, indptr, y = shard
    m, perm, cursor, rng_sample, rng_quant, rows, mark, cand, msg, topk, counters, timing = ws
    t0 = now(clk)
    s = scale[0]
    K.next_batch(perm, cursor, rng_sample, rows)
    touched = -1
    if X.shape[0] > 0:
        K.grad_dense_into(X, y, rows, z, s, m, eta)
    else:
        touched = K.grad_csr_into(data, indices, indptr, y, rows, z, s, m, eta, mark, cand, 0)
    counters[C_NCAND] = touched
    if P[P_L2_SERVER] == 0.0:
        K.add_l2_into(m, z, s, eta * P[P_B] * P[P_LAM])
        counters[C_NCAND] = -1
    t1 = now(clk)
    nbytes = compress(P, ws, cs, worker, r)
    memory = P[P_MEMORY] != 0.0
    if touched >= 0:
        for i in range(touched):
            j = cand[i]
            mark[j] = 0
            if not memory and counters[C_NCAND] >= 0:
                m[j] = 0.0
    if not memory and counters[C_NCAND] < 0:
        m[:] = 0.0
    timing[T_GRADIENT] += t1 - t0
    timing[T_COMPRESSION] += now(clk) - t1
    counters[C_UP] += nbytes
    return nbytes


# ---------------------------------------------------------------- step 2: the server's sum
@njit(cache=CACHE)
def agg_add_sparse(agg, idx, vals, n):
    """acc[idx] += vals; the union of touched coordinates is kept until it cannot beat dense."""
    acc, mark, union, st, out, dmem, dsel, dhkey, dhidx = agg
    if st[1] == 0 and st[0] + n > union.size:  # the union can no longer beat dense
        agg_set_dense(agg)
    if st[1] != 0:
        for i in range(n):
            acc[idx[i]] += np.float64(vals[i])
        return
    st[0] = K.sparse_add(acc, mark, union, st[0], idx, vals, n)


@njit(cache=CACHE)
def agg_set_dense(agg):
    acc, mark, union, st, out, dmem, dsel, dhkey, dhidx = agg
    if st[1] == 0:
        for t in range(st[0]):
            mark[union[t]] = 0
        st[1] = 1


@njit(cache=CACHE)
def agg_add_dense(agg, vals):
    agg_set_dense(agg)
    acc = agg[0]
    for j in range(acc.size):
        acc[j] += np.float64(vals[j])


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """Step 2 for one message: acc += u_w, decoded from its wire bytes (worker w, its round r)."""
    op = np.int64(P[P_OP])
    acc = agg[0]
    d = acc.size
    if op == OP_TOP_K or (op == OP_NONE and nbytes != 4 * d):
        n = nbytes // 8
        agg_add_sparse(agg, msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32), n)
    elif op == OP_NONE:
        agg_add_dense(agg, msg[: 4 * d].view(np.float32))
    elif op == OP_RAND_K:
        sel, hkey, hidx, floyd_mark, bases = cs
        k = np.int64(P[P_K])
        K.rand_k_indices(bases[worker], r, d, k, sel, floyd_mark)
        agg_add_sparse(agg, sel, msg[: 4 * k].view(np.float32), k)
    else:
        agg_set_dense(agg)
        K.quant_decode_add(msg[:4].view(np.float32), msg[4:nbytes], np.int64(P[P_BITS]),
                           P[P_LEVELS], P[P_DIVISOR], acc)


@njit(cache=CACHE)
def agg_finish(agg, workers):
    """U = acc / workers as the downlink payload in out[:returned bytes]; resets the scratch.

    With a downlink memory m_s (--downlink-k K, dsel.size = K): D = top-K(m_s + U) is sent
    and m_s := m_s + U - D (the workers' error feedback on the server-to-worker link)."""
    acc, mark, union, st, out, dmem, dsel, dhkey, dhidx = agg
    n, dense, d = st[0], st[1] != 0, acc.size
    st[0] = 0
    st[1] = 0
    if dmem.size:
        if dense:
            for j in range(d):
                dmem[j] += acc[j] / workers
                acc[j] = 0.0
        else:
            for t in range(n):
                j = union[t]
                dmem[j] += acc[j] / workers
                acc[j] = 0.0
                mark[j] = 0
        c = K.top_k_scan(dmem, dsel, -1, dsel.size, dsel, dhkey, dhidx)
        return emit_vector(dmem, dsel, c, out)
    if not dense and 8 * n < 4 * d:
        K.sparse_finish(acc, mark, union, n, workers, out[: 4 * n].view(np.int32),
                        out[4 * n: 8 * n].view(np.float32))
        return 8 * n
    if not dense:
        for t in range(n):
            mark[union[t]] = 0
    K.dense_finish(acc, workers, out[: 4 * d].view(np.float32))
    return 4 * d


# ---------------------------------------------------------------- step 3: everyone applies
@njit(cache=CACHE)
def add_weight(avg, scale, w):
    """Count the current iterate x_r = s z with weight w_r: C += w s, wsum += w."""
    c = avg[2]
    c[0] += w * scale[0]
    c[1] += w


@njit(cache=CACHE)
def settle(avg, z):
    """S_j += z_j (C - Cmark_j) for every j, then C = Cmark = 0: xbar unchanged, O(d)."""
    S, Cmark, c = avg
    C = c[0]
    for j in range(z.size):
        S[j] += z[j] * (C - Cmark[j])
        Cmark[j] = 0.0
    c[0] = 0.0


@njit(cache=CACHE)
def apply_decoded(z, scale, factor, idx, vals, dense, avg, track):
    """x <- factor x - U with U given as (idx, vals), or dense vals; mpimem.model explains the
    scale band [1/2, 2] and the fold. Returns whether it folded (every z_j then changed)."""
    s_new = scale[0] * factor
    folded = not (BAND_LOW <= s_new <= BAND_HIGH)   # also 0, negative, nan, inf
    if folded:
        if track:
            settle(avg, z)
        for j in range(z.size):
            z[j] *= s_new
        s_new = 1.0
    scale[0] = s_new
    S, Cmark, c = avg
    C = c[0]
    if dense:
        for j in range(z.size):
            if track:
                S[j] += z[j] * (C - Cmark[j])
                Cmark[j] = C
            z[j] -= np.float64(vals[j]) / s_new
    else:
        for i in range(idx.size):
            j = idx[i]
            if track:
                S[j] += z[j] * (C - Cmark[j])
                Cmark[j] = C
            z[j] -= np.float64(vals[i]) / s_new
    return folded


@njit(cache=CACHE)
def apply_payload(z, scale, factor, payload, nbytes, avg, track):
    """Step 3 from the downlink bytes (decoded by size: 4 d bytes dense, else idx + vals)."""
    d = z.size
    if nbytes == 4 * d:
        return apply_decoded(z, scale, factor, payload[:0].view(np.int32),
                             payload[: 4 * d].view(np.float32), True, avg, track)
    n = nbytes // 8
    return apply_decoded(z, scale, factor, payload[: 4 * n].view(np.int32),
                         payload[4 * n: 8 * n].view(np.float32), False, avg, track)


@njit(cache=CACHE)
def apply_at(P, z, scale, payload, nbytes, avg, track, t, share):
    """Step 3 on the server at schedule clock t: counts w_t x into xbar, then applies U with
    the factor of clock t (share: mpimem.step.factor_of). Returns whether it folded."""
    if track:
        add_weight(avg, scale, weight_at(np.int64(P[P_AVERAGING]), P[P_SHIFT], t))
    return apply_payload(z, scale, factor_of(P, eta_of(P, t), share), payload, nbytes, avg,
                         track)


@njit(cache=CACHE)
def server_apply(P, z, scale, payload, nbytes, avg, track, r):
    """Step 3 on the server for sync round r (clock t = r b)."""
    return apply_at(P, z, scale, payload, nbytes, avg, track, r * P[P_B], 1.0)
