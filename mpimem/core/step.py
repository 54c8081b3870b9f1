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
  ws     a worker's state (mpimem.run.algorithm.WorkerState.arrays)
  cs     the operator's scratch (mpimem.core.operators.base.Compressor.scratch)
  agg    the server's aggregation scratch (mpimem.core.wire.Aggregator.arrays)
  avg    the averager (S, Cmark, [C, wsum]) and the replica (z, [s]) (mpimem.core.model)
  clk    the clock/MPI table of mpimem.comm.mpicall (timing columns: gradient, compression)

The slots of P, ws and the counters are mpimem.core.layout. Wire rules are mpimem.core.wire;
each operator's encoding is its module of mpimem.core.operators, reached through the dispatch
below (compress, agg_add, decode_add: one branch per operator, on its op code P[P_OP]); the
other kernels are mpimem.core.kernels.
"""
import numpy as np
from numba import njit

from mpimem.core import kernels as K
from mpimem.core import wire
from mpimem.core.clock import now
from mpimem.core.kernels import CACHE
from mpimem.core.layout import (C_NCAND, C_UP, P_AVERAGING, P_B, P_BC, P_GAMMA, P_L2_SERVER,
                                P_LAM, P_MEMORY, P_METHOD, P_OP, P_SCHEDULE, P_SHIFT, T_COMPRESSION,
                                T_GRADIENT)
from mpimem.core.operators import identity, quantiser, rand_k, sign, top_k

# methods: Algorithm 1 (error memory) and EF21 (gradient-estimate feedback)
METHOD_MEMSGD, METHOD_EF21 = 0, 1
METHOD_CODES = {"memsgd": METHOD_MEMSGD, "ef21": METHOD_EF21}
# schedules and averaging weights (mpimem.core.schedule)
SCHEDULE_CODES = {"decay": 0, "bottou": 1, "constant": 2}
AVERAGING_CODES = {"quadratic": 0, "uniform": 1, "none": 2}
# the band of the lazy scale s (mpimem.core.model: x = s z)
BAND_LOW, BAND_HIGH = 0.5, 2.0


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


# ---------------------------------------------------------------- the operators' dispatch
@njit(cache=CACHE)
def compress(P, m, ws, cs, worker, r):
    """u = comp(v) of the vector v held in m (Mem-SGD: the worker's memory; EF21: its scratch)
    into the worker's message buffer; m := v - u; bytes.

    counters[C_NCAND] >= 0: v may be nonzero, or have changed since the last selection, only
    on cand[:ncand] (worker_step's rule); plain SGD sends those entries and the top-k scan
    ranks only them (then v is 0 elsewhere), the incremental index takes them as the change."""
    op = np.int64(P[P_OP])
    if op == identity.CODE:
        return identity.encode(P, m, ws, cs, worker, r)
    if op == top_k.CODE:
        return top_k.encode(P, m, ws, cs, worker, r)
    if op == rand_k.CODE:
        return rand_k.encode(P, m, ws, cs, worker, r)
    if op == quantiser.CODE:
        return quantiser.encode(P, m, ws, cs, worker, r)
    if op == sign.CODE:
        return sign.encode(P, m, ws, cs, worker, r)
    return 0


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """Step 2 for one message: acc += u_w, decoded from its wire bytes (worker w, its round r);
    sparse messages keep the union of touched coordinates (mpimem.core.wire.agg_add_sparse)."""
    op = np.int64(P[P_OP])
    if op == identity.CODE:
        identity.agg_add(P, agg, cs, msg, nbytes, worker, r)
    elif op == top_k.CODE:
        top_k.agg_add(P, agg, cs, msg, nbytes, worker, r)
    elif op == rand_k.CODE:
        rand_k.agg_add(P, agg, cs, msg, nbytes, worker, r)
    elif op == quantiser.CODE:
        quantiser.agg_add(P, agg, cs, msg, nbytes, worker, r)
    elif op == sign.CODE:
        sign.agg_add(P, agg, cs, msg, nbytes, worker, r)


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u, the dense float64 vector that message msg (worker w, round r) stands for."""
    op = np.int64(P[P_OP])
    if op == identity.CODE:
        identity.decode_add(P, cs, msg, nbytes, worker, r, acc)
    elif op == top_k.CODE:
        top_k.decode_add(P, cs, msg, nbytes, worker, r, acc)
    elif op == rand_k.CODE:
        rand_k.decode_add(P, cs, msg, nbytes, worker, r, acc)
    elif op == quantiser.CODE:
        quantiser.decode_add(P, cs, msg, nbytes, worker, r, acc)
    elif op == sign.CODE:
        sign.decode_add(P, cs, msg, nbytes, worker, r, acc)


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
    zero_all = not memory and (ncand < 0 or op == quantiser.CODE or op == sign.CODE)
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
    return wire.emit_vector(dmem, dsel, c, out)


@njit(cache=CACHE)
def _mean_payload(agg, workers):
    """U = float32(acc / workers) into out, sparse (idx, vals) when smaller; resets the scratch."""
    acc, mark, union, st, out = agg[0], agg[1], agg[2], agg[3], agg[4]
    n, dense, d = st[0], st[1] != 0, acc.size
    st[0] = 0
    st[1] = 0
    if not dense and 8 * n < 4 * d:
        wire.sparse_finish(acc, mark, union, n, workers, out[: 4 * n].view(np.int32),
                        out[4 * n: 8 * n].view(np.float32))
        return 8 * n
    if not dense:
        for t in range(n):
            mark[union[t]] = 0
    wire.dense_finish(acc, workers, out[: 4 * d].view(np.float32))
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
    eta_t); mpimem.core.model explains the scale band [1/2, 2] and the fold. Returns whether it
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
    the factor of clock t (share: mpimem.core.step.factor_of). Returns whether it folded."""
    if track:
        add_weight(avg, scale, weight_at(np.int64(P[P_AVERAGING]), P[P_SHIFT], t))
    eta = eta_of(P, t)
    return replica_apply(P, z, scale, G, payload, nbytes, avg, track, eta,
                         factor_of(P, eta, share))


@njit(cache=CACHE)
def server_apply(P, z, scale, G, payload, nbytes, avg, track, r):
    """Step 3 on the server for sync round r (clock t = r b)."""
    return apply_at(P, z, scale, G, payload, nbytes, avg, track, r * P[P_B], 1.0)
