"""Evaluation points: f(x), f(xbar), suboptimality and accuracy from per-shard sums.

f(x) = (1/n) sum_i log(1 + exp(-b_i a_i^T x)) + (lam/2) ||x||^2 (SPEC "Problem"); each worker
sums the logistic terms over its shard, the sums are reduced on rank 0, which adds the L2 term.

f(x) - f* >= 0 for every x when f* is the true minimum. A gap below -GAP_RTOL max(1, |f*|)
cannot come from rounding (the float64 sums of n terms agree to about n eps, 2e-10 relative for
n = 10^6): the stored f* is above the minimum. `negative_gap` says so in one line; the caller
(rank 0) prints it once.
"""
import numpy as np

from .objective import loss_terms

METRICS = ("round", "epoch", "samples", "wall_time", "train_time", "bytes_up", "bytes_down",
           "loss_xbar", "loss_x", "subopt_xbar", "subopt_x", "acc_xbar", "acc_x")


GAP_RTOL = 1e-9


def shard_sums(shard, x, xbar) -> np.ndarray:
    """[sum of losses at x, correct at x, sum of losses at xbar, correct at xbar] on one shard."""
    lx, cx = loss_terms(shard.X, shard.y, x)
    lb, cb = loss_terms(shard.X, shard.y, xbar)
    return np.array([lx, cx, lb, cb], dtype=np.float64)


def eval_point(sums, n, lam, x, xbar, fstar) -> dict:
    """The loss/accuracy columns of one evaluation point from the summed shard terms."""
    fx = sums[0] / n + 0.5 * lam * float(x @ x)
    fb = sums[2] / n + 0.5 * lam * float(xbar @ xbar)
    nan = float("nan")
    return {
        "loss_x": fx, "loss_xbar": fb,
        "subopt_x": fx - fstar if fstar is not None else nan,
        "subopt_xbar": fb - fstar if fstar is not None else nan,
        "acc_x": sums[1] / n, "acc_xbar": sums[3] / n,
    }


def negative_gap(row) -> str | None:
    """A one-line warning when a suboptimality in `row` is negative beyond rounding (f* is
    above the true minimum, so every gap of the run is understated), else None."""
    for name, loss in (("subopt_xbar", "loss_xbar"), ("subopt_x", "loss_x")):
        gap = row.get(name, float("nan"))
        fstar = row[loss] - gap
        if gap < -GAP_RTOL * max(1.0, abs(fstar)):
            point = "f(xbar)" if name == "subopt_xbar" else "f(x)"
            return (f"{point} - f* = {gap:.3e} < 0 at round {int(row.get('round', -1))}: the "
                    f"stored f* = {fstar:.17g} is above the minimum; run `mpimem data optimum` "
                    f"again (the suboptimality columns are understated)")
    return None
