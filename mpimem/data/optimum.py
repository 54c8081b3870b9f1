"""`mpimem data optimum`: f* = min_x f(x) (SPEC "Problem") to a gradient norm of about 1e-10.

1. L-BFGS-B (scipy) on `objective_and_grad` with gtol and ftol at zero, so it runs until the
   line search can make no more progress (in float64 that leaves ||grad|| around 1e-7..1e-9);
2. Newton polish: up to NEWTON_STEPS steps x <- x - H^{-1} g, each solved by conjugate
   gradients on Hessian-vector products (no d x d matrix; fine for d = 47,236), kept only if
   the gradient norm drops, stopping once ||grad f(x)|| <= GTOL. f is strongly convex
   (lam > 0), so near the optimum the full Newton step converges quadratically.
The result is stored in the file's /optimum group: attrs lam, fstar, grad_norm, solver,
iterations and stamp (`checksum.optimum_stamp`: binds them and x* to the data's digest);
dataset x (d,) float64. The group is built complete under another name and then moved into
place, so a kill leaves the old optimum, none, or the new one, never a part of one.
A long solve says how far it is on stderr (`progress`): the L-BFGS iteration and f, then each
Newton step's gradient norm.
"""
import os
import stat
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.optimize
import scipy.sparse.linalg

from mpimem.errors import MpimemError, note
from mpimem.core.objective import hessian_vector, objective_and_grad
from mpimem.outputs import kind_of
from mpimem.data.checksum import optimum_stamp
from mpimem.data.dataset import single_class_note
from mpimem.data.h5write import FORMAT, write_failure
from mpimem.data.progress import Ticker

GTOL = 1e-10
LBFGS_MAXITER = 100_000
NEWTON_STEPS = 5
SOLVER = "L-BFGS-B + Newton-CG polish"
PARTIAL = "optimum_partial"          # where the next /optimum is built
HEADROOM = 1 << 20                   # bytes of HDF5 metadata allowed for beyond x*


@dataclass
class Optimum:
    """x* and f(x*) for one lambda, with the final gradient norm and total iterations."""

    x: np.ndarray
    fstar: float
    grad_norm: float
    lam: float
    iterations: int
    solver: str = SOLVER


def solve_optimum(X, y, lam: float, gtol: float = GTOL) -> Optimum:
    """Minimise f over x in R^d from x = 0 (steps 1 and 2 of the module docstring)."""
    d = X.shape[1]
    said = single_class_note(int(np.count_nonzero(np.asarray(y) > 0)), len(y))
    if said:
        note(said)
    ticker = Ticker("mpimem data optimum")
    done = iter(range(1, LBFGS_MAXITER + 1))

    def callback(intermediate_result):   # scipy passes the iterate's result by this name
        ticker.say(f"L-BFGS iteration {next(done)}, f = {intermediate_result.fun:.12g}")

    res = scipy.optimize.minimize(lambda x: objective_and_grad(X, y, x, lam), np.zeros(d),
                                  jac=True, method="L-BFGS-B", callback=callback,
                                  options=dict(maxiter=LBFGS_MAXITER, maxfun=2 * LBFGS_MAXITER,
                                               gtol=0.0, ftol=0.0, maxcor=20))
    x = res.x
    f, g = objective_and_grad(X, y, x, lam)
    iterations = int(res.nit)
    for _ in range(NEWTON_STEPS):
        if np.linalg.norm(g) <= gtol:
            break
        hess = scipy.sparse.linalg.LinearOperator((d, d), hessian_vector(X, y, x, lam),
                                                  dtype=np.float64)
        step, _ = scipy.sparse.linalg.cg(hess, -g, rtol=1e-12, maxiter=10 * d)
        f_new, g_new = objective_and_grad(X, y, x + step, lam)
        if np.linalg.norm(g_new) >= np.linalg.norm(g):
            break
        x, f, g = x + step, f_new, g_new
        iterations += 1
        ticker.say(f"Newton step {iterations - int(res.nit)}, |grad f| = {np.linalg.norm(g):.3g}")
    return Optimum(x=x, fstar=f, grad_norm=float(np.linalg.norm(g)), lam=lam,
                   iterations=iterations)


def check_dataset_file(path) -> None:
    """`data optimum` writes into FILE by design: refuse (one line, before it is opened) anything
    that is not a regular file (a FIFO would block the open, a device is never written); that
    it is an mpimem data set is checked by read_meta, and again by store_optimum."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise MpimemError(f"{path}: cannot read the data set ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise MpimemError(f"{path}: is {kind_of(mode)}, not an mpimem data-set file; "
                          f"`data optimum` writes only into a data set")


ACCEPT_GTOL = 1e-8   # the largest |grad f(x*)| stored: f(x*) - min f <= |grad|^2 / (2 lam)


def check_converged(path, opt: Optimum, tol: float = ACCEPT_GTOL) -> None:
    """MpimemError (nothing is stored) unless the solve converged: f* and the gradient finite
    and |grad f(x*)| <= tol (the solve aims at GTOL; the data sets of the tests and the
    benchmarks end near 1e-11). Data whose features are far from unit scale (e.g. raw values of
    1e30) make f too ill-conditioned for that; normalising them is the cure."""
    if np.isfinite(opt.fstar) and opt.grad_norm <= tol:
        return
    raise MpimemError(f"{path}: the optimum did not converge: |grad f(x)| = {opt.grad_norm:.3g} "
                      f"after {opt.iterations} iterations, above the tolerance {tol:g} "
                      f"(f = {opt.fstar:.6g}); nothing stored (features far from unit scale? "
                      f"convert with --normalize)")


def check_room(path, d: int) -> None:
    """MpimemError unless the file system of `path` has room for an x* of length d and
    HEADROOM bytes of HDF5 metadata (checked before solving, and again before writing)."""
    stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    needed = 8 * d + HEADROOM
    if stats.f_bavail * stats.f_frsize < needed:
        raise MpimemError(f"{path}: cannot store the optimum (no space left on device: "
                          f"{needed} bytes needed)")


def store_optimum(path, opt: Optimum) -> None:
    """Write (or replace) the /optimum group of data-set file `path`: built and stamped as
    /optimum_partial, then moved to /optimum. Refused, with the file untouched, when its file
    system has no room for x* and the metadata (HDF5 cannot close a file cleanly once a
    write failed for lack of space)."""
    check_converged(path, opt)
    x = np.ascontiguousarray(opt.x, np.float64)
    check_dataset_file(path)
    check_room(path, x.size)
    try:
        with h5py.File(path, "r+", rdcc_nbytes=0) as f:
            kind = f.attrs.get("format")
            if (kind.decode() if isinstance(kind, bytes) else kind) != FORMAT:
                raise MpimemError(f"{path}: not an mpimem data set (root attribute format is "
                                  f"{kind!r}); `data optimum` writes only into a data set")
            stamp = optimum_stamp(f.attrs["content_sha256"], opt.lam, opt.fstar,
                                  opt.grad_norm, x)
            if PARTIAL in f:
                del f[PARTIAL]
            group = f.create_group(PARTIAL)
            group.create_dataset("x", data=x)
            group.attrs.update(lam=opt.lam, fstar=opt.fstar, grad_norm=opt.grad_norm,
                               solver=opt.solver, iterations=opt.iterations, stamp=stamp)
            f.flush()
            if "optimum" in f:
                del f["optimum"]
            f.move(PARTIAL, "optimum")
    except OSError as exc:
        raise write_failure(path, exc, "store the optimum") from None
