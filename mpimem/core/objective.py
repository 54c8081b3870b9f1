"""L2-regularised logistic regression (SPEC "Problem"), dense or CSR rows.

    f(x) = (1/n) sum_i log(1 + exp(-b_i a_i^T x)) + (lam/2) ||x||^2
    grad f(x) = -(1/n) sum_i b_i sigma(-b_i a_i^T x) a_i + lam x,    sigma(t) = 1/(1+exp(-t))

with rows a_i of X and labels b_i in {-1, +1}. log(1+exp(-m)) is evaluated as
logaddexp(0, -m) and sigma by scipy's expit, so no margin overflows. x is taken as float64,
so the sums are float64 even when X is stored float32.
"""
import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.special import expit


_SIMD = {"reassoc", "nsz", "arcp", "contract"}  # lets the dense dot products vectorise


@njit(cache=True, fastmath=_SIMD)
def _matvec_dense(X, v, out):
    for i in range(X.shape[0]):
        acc = 0.0
        for j in range(X.shape[1]):
            acc += X[i, j] * v[j]
        out[i] = acc


@njit(cache=True, fastmath=_SIMD)
def _rmatvec_dense(X, w, out):
    for i in range(X.shape[0]):
        wi = w[i]
        for j in range(X.shape[1]):
            out[j] += X[i, j] * wi


@njit(cache=True)
def _matvec_csr(data, indices, indptr, v, out):
    for i in range(indptr.size - 1):
        acc = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            acc += data[p] * v[indices[p]]
        out[i] = acc


@njit(cache=True)
def _rmatvec_csr(data, indices, indptr, w, out):
    for i in range(indptr.size - 1):
        wi = w[i]
        for p in range(indptr[i], indptr[i + 1]):
            out[indices[p]] += data[p] * wi


def _product(X, v, transpose):
    v = np.ascontiguousarray(v, np.float64)
    out = np.zeros(X.shape[1] if transpose else X.shape[0])
    if sp.issparse(X):
        X = X.tocsr()
        (_rmatvec_csr if transpose else _matvec_csr)(X.data, X.indices, X.indptr, v, out)
    else:
        (_rmatvec_dense if transpose else _matvec_dense)(np.ascontiguousarray(X), v, out)
    return out


def matvec(X, v) -> np.ndarray:
    """X v in float64 without converting X (a float32 X is never copied to float64)."""
    return _product(X, v, transpose=False)


def rmatvec(X, w) -> np.ndarray:
    """X^T w in float64, likewise without converting X."""
    return _product(X, w, transpose=True)


def _margins(X, y, x):
    """m_i = b_i a_i^T x, in float64."""
    return y * matvec(X, x)


def loss_terms(X, y, x) -> tuple[float, int]:
    """(sum_i log(1 + exp(-b_i a_i^T x)), #{i : b_i a_i^T x > 0}) over the rows of this block.

    No L2 term and no division by n: ranks add their sums up. A row is correct when
    sign(a_i^T x) = b_i, a zero margin counting as wrong."""
    m = _margins(X, y, x)
    return float(np.logaddexp(0.0, -m).sum()), int(np.count_nonzero(m > 0))


def objective(X, y, x, lam) -> float:
    """f(x) over all rows of X."""
    loss, _ = loss_terms(X, y, x)
    x = np.asarray(x, np.float64)
    return loss / X.shape[0] + 0.5 * lam * float(x @ x)


def objective_and_grad(X, y, x, lam) -> tuple[float, np.ndarray]:
    """(f(x), grad f(x)) over all rows of X; the gradient is float64 of length d."""
    n, x = X.shape[0], np.asarray(x, np.float64)
    m = _margins(X, y, x)
    f = np.logaddexp(0.0, -m).sum() / n + 0.5 * lam * float(x @ x)
    g = rmatvec(X, -y * expit(-m) / n) + lam * x
    return float(f), g


def hessian_vector(X, y, x, lam):
    """v -> Hessian(f)(x) v = (1/n) X^T diag(s_i (1 - s_i)) X v + lam v, s_i = sigma(m_i)."""
    s = expit(_margins(X, y, x))
    weight = s * (1.0 - s) / X.shape[0]
    return lambda v: rmatvec(X, weight * matvec(X, v)) + lam * v
