"""What every operator's message and the downlink share on the wire: the sparse-or-dense rule,
the encoder of variable-size vectors, and the server's aggregation scratch.

The uplink of each operator is in its own module; their wire formats are tabled in
mpimem.core.operators.

The downlink (U, or D = top-K(m_s + U) with --downlink-k) and the uplink of `none` follow one
rule, `sparse_is_smaller`: int32 idx + float32 vals (8 nnz bytes) when 8 nnz < 4 d, else the
dense float32 vector (4 d bytes). A sparse payload is therefore always shorter than a dense one,
and the receiver decodes by size (`decode_downlink`).
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE


def sparse_is_smaller(nnz: int, d: int) -> bool:
    """The encoding rule of every variable-size vector on the wire: int32 idx + float32 vals
    (8 nnz bytes) when that is smaller than the dense float32 vector (4 d bytes)."""
    return 8 * nnz < 4 * d


def sparse_or_dense_nbytes(nnz: int, d: int) -> int:
    """Bytes of a vector with nnz nonzeros under `sparse_is_smaller`."""
    return 8 * nnz if sparse_is_smaller(nnz, d) else 4 * d


def sparse_views(buf: np.ndarray, n: int):
    """(int32 idx, float32 vals) views of a sparse message of n entries in a uint8 buffer."""
    return buf[: 4 * n].view(np.int32), buf[4 * n: 8 * n].view(np.float32)


def decode_downlink(payload: np.ndarray, d: int):
    """(idx, vals) of a downlink payload (or of the uplink of `none`); idx is None for the dense
    encoding (4 d bytes). Unambiguous because every encoder follows `sparse_is_smaller`."""
    if payload.size == 4 * d:
        return None, payload.view(np.float32)
    n = payload.size // 8
    return sparse_views(payload, n)


# ---------------------------------------------------------------- sparse messages
@njit(cache=CACHE)
def emit_sparse(m, idx, k, vals):
    """u = m restricted to idx (float32 on the wire); m := m - u.

    The residual m - float32(m) is exact in float64, so v = u + m holds bit for bit.
    """
    for i in range(k):
        j = idx[i]
        v32 = np.float32(m[j])
        vals[i] = v32
        m[j] -= np.float64(v32)


@njit(cache=CACHE)
def emit_vector(m, sel, n, out):
    """Send u = m restricted to sel[:n] (all of m when n < 0), keep m := m - u; bytes written.

    u is float32 on the wire, so m keeps the exact residual m - float32(m) (emit_sparse).
    int32 idx + float32 vals (8 n bytes) when 8 n < 4 d, else the dense float32 vector (4 d
    bytes, zeros off sel): the rule `sparse_is_smaller`. A sparse payload is thus always
    shorter than a dense one, `decode_downlink` tells them apart by size alone, and out never
    needs more than 4 d bytes."""
    d = m.size
    if n >= 0 and 8 * n < 4 * d:
        idx = out[: 4 * n].view(np.int32)
        for i in range(n):
            idx[i] = sel[i]
        emit_sparse(m, idx, n, out[4 * n: 8 * n].view(np.float32))
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


# ---------------------------------------------------------------- server aggregation
class Aggregator:
    """The server's scratch for sum_w u_w and the downlink encoding of U = (1/W) sum_w u_w
    (mpimem.core.step.agg_add / agg_finish run on `arrays`).

    Downlink: int32 idx + float32 vals of the union of coordinates (8 n bytes) when that is
    smaller than the dense float32 vector (4 d bytes); every party applies exactly these values.

    With downlink compression (`downlink_k` = K, the paper's "compression of the state"), the
    server keeps a memory m_s of its own and sends D = top-K(m_s + U), m_s := m_s + U - D: the
    same error feedback as the workers', on the server-to-worker link. D is encoded by the same
    rule (`emit_vector`): 8 K bytes while 8 K < 4 d, else the dense 4 d bytes (K >= d/2).
    """

    def __init__(self, d: int, workers: int, max_entries: int, downlink_k: int = None):
        self.d, self.workers = d, workers
        self.acc = np.zeros(d)
        # the downlink message: an 8-byte header (mpimem.comm.segments) then the payload, `out`
        self.message = np.zeros(8 + 4 * d, np.uint8)
        self.out = self.message[8:]
        K = downlink_k or 0
        self.memory = np.zeros(d) if downlink_k else None  # server state: checkpointed
        self.arrays = (self.acc, np.zeros(d, np.uint8),
                       np.zeros(max(1, min(d, max_entries)), np.int64),
                       np.zeros(2, np.int64),             # [union size, dense flag]
                       self.out, self.memory if downlink_k else np.zeros(0),
                       np.zeros(K, np.int64), np.zeros(K), np.zeros(K, np.int64))

    def add_sparse(self, idx, vals):
        agg_add_sparse(self.arrays, idx, vals, idx.size)


@njit(cache=CACHE)
def sparse_add(acc, mark, union, nunion, idx, vals, k):
    """acc[idx] += vals, recording each newly touched coordinate in `union` (first-seen order)."""
    for i in range(k):
        j = idx[i]
        if mark[j] == 0:
            mark[j] = 1
            union[nunion] = j
            nunion += 1
        acc[j] += np.float64(vals[i])
    return nunion


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
    st[0] = sparse_add(acc, mark, union, st[0], idx, vals, n)


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
def sparse_finish(acc, mark, union, n, workers, out_idx, out_vals):
    """Downlink entries (idx, float32(sum/W)) of the union; clears acc and mark for the next round."""
    for i in range(n):
        j = union[i]
        out_idx[i] = j
        out_vals[i] = np.float32(acc[j] / workers)
        acc[j] = 0.0
        mark[j] = 0


@njit(cache=CACHE)
def dense_finish(acc, workers, out_vals):
    """Dense downlink float32(sum/W); clears acc."""
    for j in range(acc.size):
        out_vals[j] = np.float32(acc[j] / workers)
        acc[j] = 0.0
