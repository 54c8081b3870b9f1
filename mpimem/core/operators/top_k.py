"""top_k: the k entries of largest magnitude (SPEC "Compression operators"), a k-contraction,
delta = k/d: ||top_k(v) - v||^2 <= (1 - k/d) ||v||^2.

Ranking: coordinate i ranks above j when |v_i| > |v_j|, or |v_i| == |v_j| and i < j; the
selection is emitted in that order, by the full scan (mpimem.core.kernels.top_k_scan, also the
downlink's top-K) or, on CSR rows, by the incremental index (mpimem.core.topk_index), byte for
byte the same.

Wire: k int32 indices, then k float32 values (8 k bytes); m := v - u keeps the exact residual.
"""
import numpy as np
from numba import njit

from mpimem.core import kernels as K
from mpimem.core import topk_index
from mpimem.core.kernels import CACHE
from mpimem.core.layout import C_NCAND, P_K, W_CAND, W_COUNTERS, W_MSG, W_TOPK
from mpimem.core.operators.sparsifier import Sparsifier
from mpimem.core.wire import agg_add_sparse, emit_sparse

CODE = 1


class TopK(Sparsifier):
    """top-k: the k entries of largest magnitude (ties: smaller index), SPEC; 8k bytes."""

    name, code = "top_k", CODE

    def __init__(self, d, k):
        super().__init__(d)
        self.k = k
        self.hkey = np.zeros(k)
        self.hidx = np.zeros(k, np.int64)
        self.sel = np.zeros(k, np.int64)

    @classmethod
    def build(cls, d, k=None, levels=None, memory=True, seed=0):
        cls.check_k(d, k)
        return cls(d, k)

    def max_message_bytes(self):
        return 8 * self.k

    def fixed_size(self, every_coordinate, memory):
        """k entries, except without memory on CSR rows with server-side L2, where it scans the
        touched coordinates alone (fewer when fewer changed)."""
        return every_coordinate or memory


@njit(cache=CACHE)
def encode(P, m, ws, cs, worker, r):
    """u = top_k(v) into the message (idx, then vals); m := v - u; bytes."""
    cand, msg, topk, counters = ws[W_CAND], ws[W_MSG], ws[W_TOPK], ws[W_COUNTERS]
    sel, hkey, hidx, floyd_mark, bases = cs
    k = np.int64(P[P_K])
    ncand = counters[C_NCAND]
    bucket, links, head, icand, held, ikey, iidx, meta = topk
    if bucket.size:   # sparse rows: the incremental index, O(touched + k) a round
        n = topk_index.select(m, cand, ncand, bucket, links, head, icand, held, ikey, iidx,
                              meta, k, sel)
    else:
        n = K.top_k_scan(m, cand, ncand, k, sel, hkey, hidx)
    idx = msg[: 4 * n].view(np.int32)
    for i in range(n):
        idx[i] = sel[i]
    emit_sparse(m, sel, n, msg[4 * n: 8 * n].view(np.float32))
    return 8 * n


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """acc += u (the server's union of coordinates)."""
    n = nbytes // 8
    agg_add_sparse(agg, msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32), n)


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u from its (idx, vals)."""
    n = nbytes // 8
    idx, vals = msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32)
    for i in range(n):
        acc[idx[i]] += np.float64(vals[i])
