"""rand_k: k coordinates uniform without replacement, unscaled (SPEC "Compression operators"),
a k-contraction in expectation, E||rand_k(v) - v||^2 = (1 - k/d) ||v||^2.

The indices of worker w in round r come from the stream (seed, w, RAND_K, r), which the server
derives too, so they are not sent. Wire: k float32 values (4 k bytes).
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE
from mpimem.core.layout import P_K, W_MSG
from mpimem.core.operators.sparsifier import Sparsifier
from mpimem.core.rng import RAND_K, below, seed_round, stream_state
from mpimem.core.wire import agg_add_sparse, emit_sparse

CODE = 2


class RandK(Sparsifier):
    """rand-k: k coordinates uniform without replacement, unscaled (SPEC); 4k bytes of values.

    The indices of worker w in round r come from the stream (seed, w, RAND_K, r), which the
    server derives too, so they are not sent.
    """

    name, code = "rand_k", CODE
    steps = (("bottou", 1.0), ("bottou", 1.0))   # the paper's Experiment 3

    def __init__(self, d, k, seed):
        super().__init__(d)
        self.k, self.seed = k, seed
        self.sel = np.zeros(k, np.int64)
        self.floyd_mark = np.zeros(d, np.uint8)

    @classmethod
    def build(cls, d, k=None, levels=None, memory=True, seed=0):
        cls.check_k(d, k)
        return cls(d, k, seed)

    def max_message_bytes(self):
        return 4 * self.k

    def scratch(self, workers: int = 1) -> tuple:
        if self.bases.shape[0] <= workers:
            self.bases = np.array([stream_state(self.seed, w, RAND_K) for w in range(workers + 1)])
        return super().scratch(workers)


@njit(cache=CACHE)
def rand_k_indices(base, round_index, d, k, out, mark):
    """k distinct coordinates uniform on [0, d) for (shared seed, worker, round), sorted.

    Floyd's algorithm on the stateless per-round stream: worker and server derive the same
    indices, so the message carries only the k values.
    """
    state = np.empty(4, np.uint64)
    seed_round(state, base, round_index)
    for i, j in enumerate(range(d - k, d)):
        t = below(state, j + 1)
        if mark[t]:
            t = j
        mark[t] = 1
        out[i] = t
    for i in range(k):
        mark[out[i]] = 0
    out[:k].sort()


@njit(cache=CACHE)
def encode(P, m, ws, cs, worker, r):
    """u = v on the round's k indices, values into the message; m := v - u; bytes."""
    msg = ws[W_MSG]
    sel, hkey, hidx, floyd_mark, bases = cs
    k = np.int64(P[P_K])
    rand_k_indices(bases[worker], r, m.size, k, sel, floyd_mark)
    emit_sparse(m, sel, k, msg[: 4 * k].view(np.float32))
    return 4 * k


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """acc += u: the indices derived again from (seed, worker, round)."""
    d = agg[0].size
    sel, hkey, hidx, floyd_mark, bases = cs
    k = np.int64(P[P_K])
    rand_k_indices(bases[worker], r, d, k, sel, floyd_mark)
    agg_add_sparse(agg, sel, msg[: 4 * k].view(np.float32), k)


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u: the indices derived again, the values from the message."""
    d = acc.size
    sel, hkey, hidx, floyd_mark, bases = cs
    k = np.int64(P[P_K])
    rand_k_indices(bases[worker], r, d, k, sel, floyd_mark)
    vals = msg[: 4 * k].view(np.float32)
    for i in range(k):
        acc[sel[i]] += np.float64(vals[i])
