"""The replicated iterate x and the server's lazily kept averaged iterate xbar.

x is stored as x = s * z with a scalar s, so that the L2 shrinkage x <- (1 - b eta_t lam) x of
the server-side fast path is one scalar multiply, and a round that changes k coordinates costs
O(k), not O(d). The averaged iterate (SPEC "Step sizes and averaging")

    xbar_R = sum_{r<R} w_r x_r / sum_{r<R} w_r

is kept per coordinate as (S_j + z_j * (C - Cmark_j)) / wsum, where C = sum_r w_r s_r runs over
the rounds since the last fold (below) and (S_j, Cmark_j) are brought up to date only when z_j
changes: C - Cmark_j is the weight sum_r w_r s_r of the rounds in which x_j was s_r z_j.

The scale band. The factor of a round may be anything: with the decay schedule and a = 1 round
it is 1 - 2/(1+1), which rounds to 0, about 1e-16 or about -2e-16; a user's schedule may make it
negative, tiny or huge. s is therefore kept in the band [1/2, 2]: whenever s * factor leaves it
(or is 0, negative or not finite) the round first folds, an O(d) step that changes no x and no
xbar: the averager settles its pending sums, S_j += z_j (C - Cmark_j), then C = Cmark_j = 0
(only differences count); then z := (s * factor) z and s := 1. The decision reads s and the
factor only, so every replica (server, workers) folds in the same rounds and stays bit-identical.

Precision. Between folds s lies in [1/2, 2], so every increment w_r s_r of C is positive and at
least a quarter of w_r, and |z_j| <= 2 |x_j|. C is a sum of R_f positive terms (R_f rounds since
the fold); with non-decreasing weights (quadratic, uniform) each new term is at least C / (4 R_f),
so no increment is lost, and C - Cmark_j carries an absolute error <= 2 R_f eps C <= 4 R_f eps
W_f (W_f = sum of w_r since the fold). Its contribution to xbar_j is then off by at most
8 R_f eps max_r |x_{r,j}| W_f / wsum, the same order as a direct float64 sum of the w_r x_r; s
itself is a product of at most R_f factors (relative error R_f eps), as x would be if scaled
in place. Without the band (folding only at s < 1e-100, as before) a factor of 1e-16 left C
dominated by the terms of s ~ 1, every later w_r s_r fell below eps * C, and xbar froze.
Cost: a fold needs s to move by a factor 2 since the last one (or a factor outside the band):
a decay schedule, s ~ (a/t)^2, folds about 2 log2(T/a) times in T rounds (40 in 1e6).
"""
import numpy as np
from numba import njit

from .kernels import CACHE

BAND_LOW, BAND_HIGH = 0.5, 2.0


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

    def settle(self, replica: Replica) -> None:
        """S_j += z_j (C - Cmark_j) for every j, then C = Cmark = 0: xbar unchanged, O(d)."""
        self.S += replica.z * (self.C - self.Cmark)
        self.Cmark[:] = 0.0
        self.C = 0.0

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


def apply_update(replica: Replica, factor: float, idx, vals, averager: Averager = None) -> bool:
    """x <- factor * x - U, with U the decoded downlink (sparse idx/vals, or dense when idx is None).

    factor = 1 - b eta_t lam on the server-side L2 path, 1 on the paper-exact path. When
    s * factor leaves the band [1/2, 2] the scale is first folded into z (module docstring).
    Returns whether it folded (every coordinate of z then changed).
    """
    s_new = replica.s * factor
    folded = not BAND_LOW <= s_new <= BAND_HIGH  # also 0, negative, nan, inf
    if folded:
        if averager is not None:
            averager.settle(replica)
        replica.z *= s_new
        s_new = 1.0
    replica.s = s_new
    track = averager is not None
    S, Cmark, C = (averager.S, averager.Cmark, averager.C) if track else (_EMPTY, _EMPTY, 0.0)
    if idx is None:
        _apply_dense(replica.z, s_new, vals, S, Cmark, C, track)
    else:
        _apply_sparse(replica.z, s_new, idx, vals, S, Cmark, C, track)
    return folded
