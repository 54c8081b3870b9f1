"""The compiled step functions of a round, shared by every loop (sync, async, allgather, simulator).

Round r of Algorithm 1 as distributed in docs/spec.md "Distributed setting" (clock t = r b):

  worker_step   1-1.2  v = m + eta_t sum_{i in batch} grad f_i(x_r) [+ eta_t b lam x_r],
                       u = comp(v), m := v - u (without memory: m := 0, every coordinate);
                       writes the wire bytes of u
  agg_add       2      acc += decode(u_w)             (worker order: the sum is deterministic)
  agg_finish    2      U = acc / W as the downlink (or D = top-K(m_s + U) with --downlink-k)
  apply_payload 3      x_{r+1} = factor x_r - U; the server also counts w_r x_r into xbar

`--method ef21` (docs/spec.md "EF21"; P[P_METHOD] = METHOD_EF21), same wire and operators:

  worker_step   1'     v = sum_{i in batch} grad f_i(x_r) [+ b lam x_r] - h_w, c_w = comp(v),
                       h_w += c_w (h_w lives in the memory slot m; v is scratch)
  round_finish  2'     P = U as above; EF21-BC (--downlink-k K): G += P, e += eta_t G,
                       D = top-K(e), e := e - D on the server, and D is the downlink
  replica_apply 3'     EF21: G += P, x_{r+1} = factor x_r - eta_t G on every replica;
                       EF21-BC: x_{r+1} = factor x_r - D

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
# methods: Algorithm 1 (error memory) and EF21 (gradient-estimate feedback)
METHOD_MEMSGD, METHOD_EF21 = 0, 1
METHOD_CODES = {"memsgd": METHOD_MEMSGD, "ef21": METHOD_EF21}
# schedules and averaging weights (mpimem.schedule)
SCHEDULE_CODES = {"decay": 0, "bottou": 1, "constant": 2}
AVERAGING_CODES = {"quadratic": 0, "uniform": 1, "none": 2}
# the band of the lazy scale s (mpimem.model: x = s z)
BAND_LOW, BAND_HIGH = 0.5, 2.0
# slots of P
(P_OP, P_K, P_D, P_B, P_LAM, P_L2_SERVER, P_MEMORY, P_SCHEDULE, P_GAMMA, P_SHIFT, P_AVERAGING,
 P_LEVELS, P_BITS, P_DIVISOR, P_WORKERS, P_MSG_BYTES, P_METHOD, P_BC, P_SIZE) = range(19)
# P_BC: 1 for EF21-BC (EF21 with the --downlink-k memory), else 0
# a worker's state tuple `ws` (mpimem.engine.WorkerState.arrays): where segments find these
W_RNG_QUANT, W_CAND, W_MSG, W_TOPK, W_COUNTERS, W_TIMING, W_V = 4, 7, 8, 9, 10, 11, 12
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
def compress(P, m, ws, cs, worker, r):
    """u = comp(v) of the vector v held in m (Mem-SGD: the worker's memory; EF21: its scratch)
    into the worker's message buffer; m := v - u; bytes.

    counters[C_NCAND] >= 0: v may be nonzero, or have changed since the last selection, only
    on cand[:ncand] (worker_step's rule); plain SGD sends those entries and the top-k scan
    ranks only them (then v is 0 elsewhere), the incremental index takes them as the change."""
    cand, msg, topk, counters = ws[W_CAND], ws[W_MSG], ws[W_TOPK], ws[W_COUNTERS]
    rng_quant = ws[W_RNG_QUANT]
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
    if P[P_METHOD] == METHOD_EF21:
        return ef21_worker_step(P, shard, ws, cs, z, scale, worker, r, clk)
    X, data, indices, indptr, y = shard
    m, perm, cursor, rng_sample, rng_quant, rows, mark, cand, msg, topk, counters, timing, v = ws
    t0 = now(clk)
    s = scale[0]
    K.next_batch(perm, cursor, rng_sample, rows)
    touched = -1
    if X.shape[0] > 0:
        K.grad_dense_into(X, y, rows, z, s, m, eta)
    else:
        touched = K.grad_csr_into(data, indices, indptr, y, rows, z, s, m, eta, mark, cand, 0)
    memory = P[P_MEMORY] != 0.0
    # The candidates of compress: the touched coordinates (CSR rows, --l2 server) are the
    # only nonzeros of v without memory, and, with memory, the only change since the last
    # selection, which the incremental top-k index needs; a top-k scan without the index
    # (--k-warmup: the index is for one k) must see every coordinate of v = m + eta grad.
    ncand = touched
    if P[P_L2_SERVER] == 0.0:
        K.add_l2_into(m, z, s, eta * P[P_B] * P[P_LAM])
        ncand = -1
    elif memory and topk[0].size == 0:
        ncand = -1
    counters[C_NCAND] = ncand
    t1 = now(clk)
    nbytes = compress(P, m, ws, cs, worker, r)
    # Without memory m := 0 in every coordinate. The sparse operators change m only on the
    # candidates when there are candidates (v is 0 elsewhere); the quantisers and sign write
    # every coordinate (scaled sign sends sign(0) = +1 there: the residual is -scale).
    op = np.int64(P[P_OP])
    zero_all = not memory and (ncand < 0 or op == OP_QUANT or op == OP_SIGN)
    if touched >= 0:
        for i in range(touched):
            j = cand[i]
            mark[j] = 0
            if not memory and not zero_all:
                m[j] = 0.0
    if zero_all:
        m[:] = 0.0
    timing[T_GRADIENT] += t1 - t0
    timing[T_COMPRESSION] += now(clk) - t1
    counters[C_UP] += nbytes
    return nbytes


@njit(cache=CACHE)
def ef21_worker_step(P, shard, ws, cs, z, scale, worker, r, clk):
    """Step 1' of EF21 (module docstring): v = sum_{i in batch} grad f_i(x_r) [+ b lam x_r]
    - h_w in the scratch v (O(d)), c_w = comp(v) into the message, h_w += c_w decoded from
    the message (so h_w is exactly the sum of what was sent). Returns the message's bytes."""
    X, data, indices, indptr, y = shard
    h, perm, cursor, rng_sample, rng_quant, rows, mark, cand, msg, topk, counters, timing, v = ws
    t0 = now(clk)
    s = scale[0]
    K.next_batch(perm, cursor, rng_sample, rows)
    for j in range(v.size):
        v[j] = -h[j]
    if X.shape[0] > 0:
        K.grad_dense_into(X, y, rows, z, s, v, 1.0)
    else:
        touched = K.grad_csr_into(data, indices, indptr, y, rows, z, s, v, 1.0, mark, cand, 0)
        for i in range(touched):
            mark[cand[i]] = 0
    if P[P_L2_SERVER] == 0.0:
        K.add_l2_into(v, z, s, P[P_B] * P[P_LAM])
    counters[C_NCAND] = -1
    t1 = now(clk)
    nbytes = compress(P, v, ws, cs, worker, r)
    decode_add(P, cs, msg, nbytes, worker, r, h)
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
    """Step 2 for one message: acc += u_w, decoded from its wire bytes (worker w, its round r);
    sparse messages keep the union of touched coordinates (agg_add_sparse)."""
    op = np.int64(P[P_OP])
    d = agg[0].size
    if op == OP_TOP_K or (op == OP_NONE and nbytes != 4 * d):
        n = nbytes // 8
        agg_add_sparse(agg, msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32), n)
    elif op == OP_RAND_K:
        sel, hkey, hidx, floyd_mark, bases = cs
        k = np.int64(P[P_K])
        K.rand_k_indices(bases[worker], r, d, k, sel, floyd_mark)
        agg_add_sparse(agg, sel, msg[: 4 * k].view(np.float32), k)
    else:
        agg_set_dense(agg)
        decode_add(P, cs, msg, nbytes, worker, r, agg[0])


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u, the dense float64 vector that message msg (worker w, round r) stands for."""
    op = np.int64(P[P_OP])
    d = acc.size
    if op == OP_TOP_K or (op == OP_NONE and nbytes != 4 * d):
        n = nbytes // 8
        idx, vals = msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32)
        for i in range(n):
            acc[idx[i]] += np.float64(vals[i])
    elif op == OP_NONE:
        vals = msg[: 4 * d].view(np.float32)
        for j in range(d):
            acc[j] += np.float64(vals[j])
    elif op == OP_RAND_K:
        sel, hkey, hidx, floyd_mark, bases = cs
        k = np.int64(P[P_K])
        K.rand_k_indices(bases[worker], r, d, k, sel, floyd_mark)
        vals = msg[: 4 * k].view(np.float32)
        for i in range(k):
            acc[sel[i]] += np.float64(vals[i])
    else:
        K.quant_decode_add(msg[:4].view(np.float32), msg[4:nbytes], np.int64(P[P_BITS]),
                           P[P_LEVELS], P[P_DIVISOR], acc)


@njit(cache=CACHE)
def payload_add(payload, nbytes, acc):
    """acc += U, the downlink payload decoded by size (4 d bytes dense, else idx + vals)."""
    d = acc.size
    if nbytes == 4 * d:
        vals = payload[: 4 * d].view(np.float32)
        for j in range(d):
            acc[j] += np.float64(vals[j])
        return
    n = nbytes // 8
    idx, vals = payload[: 4 * n].view(np.int32), payload[4 * n: 8 * n].view(np.float32)
    for i in range(n):
        acc[idx[i]] += np.float64(vals[i])


@njit(cache=CACHE)
def agg_finish(agg, workers):
    """U = acc / workers as the downlink payload in out[:returned bytes]; resets the scratch.

    With a downlink memory m_s (--downlink-k K, dsel.size = K): D = top-K(m_s + U) is sent
    and m_s := m_s + U - D (the workers' error feedback on the server-to-worker link)."""
    dmem = agg[5]
    if dmem.size:
        _fold_mean(agg, workers, dmem)
        return _emit_downlink(agg)
    return _mean_payload(agg, workers)


@njit(cache=CACHE)
def _fold_mean(agg, workers, into):
    """into += acc / workers (over the union, or every coordinate); resets the scratch."""
    acc, mark, union, st = agg[0], agg[1], agg[2], agg[3]
    n, dense = st[0], st[1] != 0
    st[0] = 0
    st[1] = 0
    if dense:
        for j in range(acc.size):
            into[j] += acc[j] / workers
            acc[j] = 0.0
    else:
        for t in range(n):
            j = union[t]
            into[j] += acc[j] / workers
            acc[j] = 0.0
            mark[j] = 0


@njit(cache=CACHE)
def _emit_downlink(agg):
    """D = top-K(m_s) into out, m_s := m_s - D (float32 values); the payload's bytes."""
    out, dmem, dsel, dhkey, dhidx = agg[4], agg[5], agg[6], agg[7], agg[8]
    c = K.top_k_scan(dmem, dsel, -1, dsel.size, dsel, dhkey, dhidx)
    return emit_vector(dmem, dsel, c, out)


@njit(cache=CACHE)
def _mean_payload(agg, workers):
    """U = float32(acc / workers) into out, sparse (idx, vals) when smaller; resets the scratch."""
    acc, mark, union, st, out = agg[0], agg[1], agg[2], agg[3], agg[4]
    n, dense, d = st[0], st[1] != 0, acc.size
    st[0] = 0
    st[1] = 0
    if not dense and 8 * n < 4 * d:
        K.sparse_finish(acc, mark, union, n, workers, out[: 4 * n].view(np.int32),
                        out[4 * n: 8 * n].view(np.float32))
        return 8 * n
    if not dense:
        for t in range(n):
            mark[union[t]] = 0
    K.dense_finish(acc, workers, out[: 4 * d].view(np.float32))
    return 4 * d


@njit(cache=CACHE)
def round_finish(P, agg, G, workers, r):
    """The downlink of round r (step 2 / 2'): agg_finish, except for EF21-BC, where the server
    adds P = float32(mean c) to its G, then e += eta_t G and sends D = top-K(e), e := e - D."""
    if P[P_BC] == 0.0:
        return agg_finish(agg, workers)
    out, dmem = agg[4], agg[5]
    payload_add(out, _mean_payload(agg, workers), G)
    eta = eta_of(P, r * P[P_B])
    for j in range(G.size):
        dmem[j] += eta * G[j]
    return _emit_downlink(agg)


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
def apply_decoded(z, scale, factor, idx, vals, dense, avg, track, mult=1.0):
    """x <- factor x - mult U with U given as (idx, vals), or dense vals (mult: 1, or EF21's
    eta_t); mpimem.model explains the scale band [1/2, 2] and the fold. Returns whether it
    folded (every z_j then changed)."""
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
            z[j] -= mult * np.float64(vals[j]) / s_new
    else:
        for i in range(idx.size):
            j = idx[i]
            if track:
                S[j] += z[j] * (C - Cmark[j])
                Cmark[j] = C
            z[j] -= mult * np.float64(vals[i]) / s_new
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
def replica_apply(P, z, scale, G, payload, nbytes, avg, track, eta, factor):
    """Step 3 on one replica: x <- factor x - U (Mem-SGD, EF21-BC: U = D), or EF21's
    G += U, x <- factor x - eta_t G (G: the replicated gradient estimate)."""
    if P[P_METHOD] == METHOD_EF21 and P[P_BC] == 0.0:
        payload_add(payload, nbytes, G)
        return apply_decoded(z, scale, factor, payload[:0].view(np.int32), G, True, avg, track,
                             eta)
    return apply_payload(z, scale, factor, payload, nbytes, avg, track)


@njit(cache=CACHE)
def apply_at(P, z, scale, G, payload, nbytes, avg, track, t, share):
    """Step 3 on the server at schedule clock t: counts w_t x into xbar, then applies U with
    the factor of clock t (share: mpimem.step.factor_of). Returns whether it folded."""
    if track:
        add_weight(avg, scale, weight_at(np.int64(P[P_AVERAGING]), P[P_SHIFT], t))
    eta = eta_of(P, t)
    return replica_apply(P, z, scale, G, payload, nbytes, avg, track, eta,
                         factor_of(P, eta, share))


@njit(cache=CACHE)
def server_apply(P, z, scale, G, payload, nbytes, avg, track, r):
    """Step 3 on the server for sync round r (clock t = r b)."""
    return apply_at(P, z, scale, G, payload, nbytes, avg, track, r * P[P_B], 1.0)
