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

from mpimem.core import step



class Replica:
    """One copy of the iterate: x = s * z. Every worker and the server hold one, bit-identical.
    s lives in a one-element array (`scale`) so that compiled loops update it in place.
    g: EF21's aggregate gradient estimate G (docs/spec.md "EF21"), replicated like x (for
    EF21-BC only the server's is used); empty for Mem-SGD."""

    __slots__ = ("z", "scale", "g")

    def __init__(self, d: int, gradient: bool = False):
        self.z = np.zeros(d)
        self.scale = np.ones(1)
        self.g = np.zeros(d if gradient else 0)

    @property
    def s(self) -> float:
        return float(self.scale[0])

    @s.setter
    def s(self, value: float) -> None:
        self.scale[0] = value

    def x(self) -> np.ndarray:
        return self.s * self.z


class Averager:
    """The server's lazy weighted average of the iterates (state a checkpoint must save).
    `arrays` = (S, Cmark, [C, wsum]) is what the compiled step functions take."""

    __slots__ = ("S", "Cmark", "c")

    def __init__(self, d: int):
        self.S = np.zeros(d)
        self.Cmark = np.zeros(d)
        self.c = np.zeros(2)

    @property
    def arrays(self):
        return self.S, self.Cmark, self.c

    C = property(lambda self: float(self.c[0]), lambda self, v: self.c.__setitem__(0, v))
    wsum = property(lambda self: float(self.c[1]), lambda self, v: self.c.__setitem__(1, v))

    def add_weight(self, replica: Replica, w: float) -> None:
        """Count the current iterate x_r with weight w_r (before round r's update is applied)."""
        step.add_weight(self.arrays, replica.scale, w)

    def settle(self, replica: Replica) -> None:
        """S_j += z_j (C - Cmark_j) for every j, then C = Cmark = 0: xbar unchanged, O(d)."""
        step.settle(self.arrays, replica.z)

    def xbar(self, replica: Replica) -> np.ndarray:
        if self.wsum == 0.0:
            return replica.x()
        with np.errstate(invalid="ignore", over="ignore"):   # a diverged run: the divergence
            return (self.S + replica.z * (self.C - self.Cmark)) / self.wsum   # rule says it


NO_AVERAGER = (np.zeros(0), np.zeros(0), np.zeros(2))
_NO_INDEX = np.zeros(0, np.int32)


def averager_arrays(averager: Averager):
    """The averager's arrays for the compiled steps (placeholders when there is none)."""
    return NO_AVERAGER if averager is None else averager.arrays


def apply_update(replica: Replica, factor: float, idx, vals, averager: Averager = None) -> bool:
    """x <- factor * x - U, with U the decoded downlink (sparse idx/vals, or dense when idx is None).

    factor = 1 - b eta_t lam on the server-side L2 path, 1 on the paper-exact path. When
    s * factor leaves the band [1/2, 2] the scale is first folded into z (module docstring).
    Returns whether it folded (every coordinate of z then changed).
    """
    dense = idx is None
    return step.apply_decoded(replica.z, replica.scale, float(factor),
                              _NO_INDEX if dense else idx, vals, dense,
                              averager_arrays(averager), averager is not None)
