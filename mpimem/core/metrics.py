"""Evaluation points: f(x), f(xbar), suboptimality and accuracy from per-shard sums.

f(x) = (1/n) sum_i log(1 + exp(-b_i a_i^T x)) + (lam/2) ||x||^2 (SPEC "Problem"); each worker
sums the logistic terms over its shard, the sums are reduced on rank 0, which adds the L2 term.

f(x) - f* >= 0 for every x when f* is the true minimum. A gap below -GAP_RTOL max(1, |f*|)
cannot come from rounding (the float64 sums of n terms agree to about n eps, 2e-10 relative for
n = 10^6): the stored f* is above the minimum. `negative_gap` says so in one line; the caller
(rank 0) prints it once.

A run whose f(x) or f(xbar) at an evaluation point is not finite or exceeds DIVERGE_FACTOR
(100) times its value at x_0 has diverged (`divergence`): every rank stops there together,
RUN.h5 gets status "diverged" (the message in attr error) and every rank exits EX_DIVERGED (3).
"""
import numpy as np

from mpimem.core.objective import loss_terms

METRICS = ("round", "epoch", "samples", "wall_time", "train_time", "bytes_up", "bytes_down",
           "loss_xbar", "loss_x", "subopt_xbar", "subopt_x", "acc_xbar", "acc_x")


GAP_RTOL = 1e-9


def shard_sums(shard, x, xbar) -> np.ndarray:
    """[sum of losses at x, correct at x, sum of losses at xbar, correct at xbar] on one shard."""
    with np.errstate(invalid="ignore", over="ignore"):   # a diverged x: `divergence` says it
        lx, cx = loss_terms(shard.X, shard.y, x)
        lb, cb = loss_terms(shard.X, shard.y, xbar)
    return np.array([lx, cx, lb, cb], dtype=np.float64)


def eval_point(sums, n, lam, x, xbar, fstar) -> dict:
    """The loss/accuracy columns of one evaluation point from the summed shard terms."""
    with np.errstate(invalid="ignore", over="ignore"):   # a diverged x: `divergence` says it
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
        with np.errstate(invalid="ignore"):   # inf - inf of a diverged run: NaN, no warning
            fstar = row[loss] - gap
        if gap < -GAP_RTOL * max(1.0, abs(fstar)):
            point = "f(xbar)" if name == "subopt_xbar" else "f(x)"
            return (f"{point} - f* = {gap:.3e} < 0 at round {int(row.get('round', -1))}: the "
                    f"stored f* = {fstar:.17g} is above the minimum; run `mpimem data optimum` "
                    f"again (the suboptimality columns are understated)")
    return None


# ---------------------------------------------------------------------- divergence
DIVERGE_FACTOR = 100.0   # f(x) or f(xbar) above this many times f(x_0): the run diverged
EX_DIVERGED = 3          # exit status of a run stopped as diverged (RUN.h5 status "diverged")


class Diverged(Exception):
    """Raised on every rank at the same evaluation point (mpimem.run.driver.Run.record): f(x) or
    f(xbar) is not finite or above DIVERGE_FACTOR f(x_0). The run file is marked "diverged"
    and every rank exits EX_DIVERGED."""

    status = EX_DIVERGED


def divergence(row, f0: float) -> str | None:
    """Why the evaluation point `row` shows a diverged run, or None: f(x) or f(xbar) not finite,
    or above DIVERGE_FACTOR * f0, f0 = f(x_0) (the first evaluation point; log 2 at x_0 = 0)."""
    limit = DIVERGE_FACTOR * f0
    for name, point in (("loss_x", "f(x)"), ("loss_xbar", "f(xbar)")):
        value = float(row.get(name, float("nan")))
        where = f"at round {int(row.get('round', -1))} (epoch {float(row.get('epoch', 0.0)):.3f})"
        if not np.isfinite(value):
            return f"the run diverged: {point} = {value} {where} is not finite"
        if np.isfinite(limit) and value > limit:
            return (f"the run diverged: {point} = {value:.4g} {where} exceeds "
                    f"{DIVERGE_FACTOR:g} x f(x_0) = {limit:.4g}")
    return None
