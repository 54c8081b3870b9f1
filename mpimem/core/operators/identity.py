"""none: comp(v) = v, plain SGD (SPEC "Compression operators"). Memory is meaningless here and
kept at zero.

Wire: the float32 dense v (4 d bytes), or int32 idx + float32 vals of its nonzeros when that is
smaller (8 nnz bytes: mpimem.core.wire.sparse_is_smaller); decoded by size.
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE
from mpimem.core.layout import C_NCAND, W_CAND, W_COUNTERS, W_MSG
from mpimem.core.operators.base import Compressor
from mpimem.core.wire import agg_add_sparse, agg_set_dense, emit_vector

CODE = 0


class Identity(Compressor):
    """comp(v) = v (plain SGD). Memory is meaningless here and kept at zero."""

    name, code = "none", CODE
    keeps_memory = False

    def max_message_bytes(self):
        return 4 * self.d

    def fixed_size(self, every_coordinate, memory):
        return every_coordinate          # else its nonzeros, sparse when smaller

    @classmethod
    def label(cls, cfg, bits):
        return "SGD"


@njit(cache=CACHE)
def encode(P, m, ws, cs, worker, r):
    """u = v: the candidates cand[:ncand] (all of v when ncand < 0) into the message; m := v - u."""
    cand, msg, counters = ws[W_CAND], ws[W_MSG], ws[W_COUNTERS]
    ncand = counters[C_NCAND]
    return emit_vector(m, cand, ncand, msg)


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """acc += u: sparse messages keep the server's union of coordinates, dense ones set it dense."""
    d = agg[0].size
    if nbytes != 4 * d:
        n = nbytes // 8
        agg_add_sparse(agg, msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32), n)
    else:
        agg_set_dense(agg)
        decode_add(P, cs, msg, nbytes, worker, r, agg[0])


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u, decoded by size (4 d bytes dense, else idx + vals)."""
    d = acc.size
    if nbytes != 4 * d:
        n = nbytes // 8
        idx, vals = msg[: 4 * n].view(np.int32), msg[4 * n: 8 * n].view(np.float32)
        for i in range(n):
            acc[idx[i]] += np.float64(vals[i])
    else:
        vals = msg[: 4 * d].view(np.float32)
        for j in range(d):
            acc[j] += np.float64(vals[j])
