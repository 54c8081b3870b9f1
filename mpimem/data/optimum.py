"""`mpimem data optimum`: f* = min_x f(x) (SPEC "Problem") to a gradient norm of about 1e-10.

1. L-BFGS-B (scipy) on `objective_and_grad` with gtol and ftol at zero, so it runs until the
   line search can make no more progress (in float64 that leaves ||grad|| around 1e-7..1e-9);
2. Newton polish: up to NEWTON_STEPS steps x <- x - H^{-1} g, each solved by conjugate
   gradients on Hessian-vector products (no d x d matrix; fine for d = 47,236), kept only if
   the gradient norm drops, stopping once ||grad f(x)|| <= GTOL. f is strongly convex
   (lam > 0), so near the optimum the full Newton step converges quadratically.
The result is stored in the file's /optimum group: attrs lam, fstar, grad_norm, solver,
iterations; dataset x (d,) float64.
"""
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.optimize
import scipy.sparse.linalg

from ..errors import MpimemError
from ..objective import hessian_vector, objective_and_grad

GTOL = 1e-10
LBFGS_MAXITER = 100_000
NEWTON_STEPS = 5
SOLVER = "L-BFGS-B + Newton-CG polish"


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
    res = scipy.optimize.minimize(lambda x: objective_and_grad(X, y, x, lam), np.zeros(d),
                                  jac=True, method="L-BFGS-B",
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
    return Optimum(x=x, fstar=f, grad_norm=float(np.linalg.norm(g)), lam=lam,
                   iterations=iterations)


def store_optimum(path, opt: Optimum) -> None:
    """Write (or replace) the /optimum group of data-set file `path`."""
    try:
        with h5py.File(path, "r+") as f:
            if "optimum" in f:
                del f["optimum"]
            group = f.create_group("optimum")
            group.create_dataset("x", data=opt.x.astype(np.float64))
            group.attrs.update(lam=opt.lam, fstar=opt.fstar, grad_norm=opt.grad_norm,
                               solver=opt.solver, iterations=opt.iterations)
    except OSError as exc:
        raise MpimemError(f"{path}: cannot store the optimum ({exc.strerror or exc})") from None
