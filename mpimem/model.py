"""The replicated iterate x and the server's lazily kept averaged iterate xbar.

x is stored as x = s * z with a scalar s, so that the L2 shrinkage x <- (1 - b eta_t lam) x of
the server-side fast path is one scalar multiply, and a round that changes k coordinates costs
O(k), not O(d). The averaged iterate (SPEC "Step sizes and averaging")

    xbar_R = sum_{r<R} w_r x_r / sum_{r<R} w_r

is kept per coordinate as S_j + z_j * (C - Cmark_j), where C = sum_{r} w_r s_r runs over all
rounds so far and (S_j, Cmark_j) are brought up to date only when z_j changes.
"""
import numpy as np
from numba import njit

from .kernels import CACHE

RENORM_LOW, RENORM_HIGH = 1e-100, 1e100


class Replica:
    """One copy of the iterate: x = s * z. Every worker and the server hold one, bit-identical."""

    __slots__ = ("z", "s")

    def __init__(self, d: int):
        self.z = np.zeros(d)
        self.s = 1.0

    def x(self) -> np.ndarray:
        return self.s * self.z


class Averager:
    """The server's lazy weighted average of the iterates (state a checkpoint must save)."""

    __slots__ = ("S", "Cmark", "C", "wsum")

    def __init__(self, d: int):
        self.S = np.zeros(d)
        self.Cmark = np.zeros(d)
        self.C = 0.0
        self.wsum = 0.0

    def add_weight(self, replica: Replica, w: float) -> None:
        """Count the current iterate x_r with weight w_r (before round r's update is applied)."""
        self.C += w * replica.s
        self.wsum += w

    def xbar(self, replica: Replica) -> np.ndarray:
        if self.wsum == 0.0:
            return replica.x()
        return (self.S + replica.z * (self.C - self.Cmark)) / self.wsum


@njit(cache=CACHE)
def _apply_sparse(z, s_new, idx, vals, S, Cmark, C, track):
    for i in range(idx.size):
        j = idx[i]
        if track:
            S[j] += z[j] * (C - Cmark[j])
            Cmark[j] = C
        z[j] -= np.float64(vals[i]) / s_new


@njit(cache=CACHE)
def _apply_dense(z, s_new, vals, S, Cmark, C, track):
    for j in range(z.size):
        if track:
            S[j] += z[j] * (C - Cmark[j])
            Cmark[j] = C
        z[j] -= np.float64(vals[j]) / s_new


_EMPTY = np.zeros(0)


def apply_update(replica: Replica, factor: float, idx, vals, averager: Averager = None) -> None:
    """x <- factor * x - U, with U the decoded downlink (sparse idx/vals, or dense when idx is None).

    factor = 1 - b eta_t lam on the server-side L2 path, 1 on the paper-exact path. When s would
    leave [1e-100, 1e100] the scale is folded into z (an O(d) renormalisation, rare).
    """
    s_new = replica.s * factor
    track = averager is not None
    S, Cmark, C = (averager.S, averager.Cmark, averager.C) if track else (_EMPTY, _EMPTY, 0.0)
    if not (RENORM_LOW < abs(s_new) < RENORM_HIGH):
        if track:
            averager.S += replica.z * (C - averager.Cmark)
            averager.Cmark[:] = C
        replica.z *= s_new
        s_new = 1.0
    replica.s = s_new
    if idx is None:
        _apply_dense(replica.z, s_new, vals, S, Cmark, C, track)
    else:
        _apply_sparse(replica.z, s_new, idx, vals, S, Cmark, C, track)
