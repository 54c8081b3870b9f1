"""The logistic objective against finite differences and the optimum against scikit-learn."""
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from mpimem.data.dataset import read_shard
from mpimem.data.optimum import solve_optimum
from mpimem.data.synth import synthesize
from mpimem.core.objective import hessian_vector, loss_terms, objective, objective_and_grad


def problem(sparse, n=300, d=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < (0.2 if sparse else 1.0))
    y = np.where(X @ rng.normal(size=d) + rng.normal(size=n) > 0, 1.0, -1.0)
    return (sp.csr_matrix(X) if sparse else X), y


@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_and_hessian_match_finite_differences(sparse):
    X, y = problem(sparse)
    rng = np.random.default_rng(1)
    x, v, lam, h = rng.normal(size=40), rng.normal(size=40), 0.03, 1e-6
    f, g = objective_and_grad(X, y, x, lam)
    assert f == pytest.approx(objective(X, y, x, lam), rel=1e-14)
    central = (objective(X, y, x + h * v, lam) - objective(X, y, x - h * v, lam)) / (2 * h)
    assert g @ v == pytest.approx(central, rel=1e-7)
    hv = hessian_vector(X, y, x, lam)(v)
    fd = (objective_and_grad(X, y, x + h * v, lam)[1] - objective_and_grad(X, y, x - h * v, lam)[1]) / (2 * h)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-9)


def test_loss_terms_sum_over_blocks_and_are_stable():
    X, y = problem(False)
    x = np.random.default_rng(2).normal(size=40)
    whole = loss_terms(X, y, x)
    parts = [loss_terms(X[a:b], y[a:b], x) for a, b in ((0, 100), (100, 300))]
    assert sum(p[0] for p in parts) == pytest.approx(whole[0], rel=1e-13)
    assert sum(p[1] for p in parts) == whole[1] == np.count_nonzero(np.sign(X @ x) == y)
    big = loss_terms(np.array([[1.0], [1.0]]), np.array([1.0, -1.0]), np.array([1000.0]))
    assert big == (pytest.approx(1000.0), 1)                    # log(1+e^-1000) + log(1+e^1000)
    assert loss_terms(np.zeros((1, 2)), np.ones(1), np.zeros(2)) == (pytest.approx(np.log(2)), 0)


@pytest.mark.filterwarnings("ignore:Line Search failed")   # sklearn at tol=1e-12
@pytest.mark.parametrize("like,d", [("epsilon", 50), ("rcv1", 400)])
def test_optimum_matches_sklearn(tmp_path, like, d):
    synthesize(tmp_path / "s.h5", like, n=2000, seed=5, d=d)
    shard = read_shard(tmp_path / "s.h5")
    lam = 1.0 / 2000
    opt = solve_optimum(shard.X, shard.y, lam)
    assert opt.grad_norm <= 1e-10
    assert np.linalg.norm(objective_and_grad(shard.X, shard.y, opt.x, lam)[1]) == opt.grad_norm
    ref = LogisticRegression(C=1.0 / (lam * 2000), fit_intercept=False, tol=1e-12,
                             max_iter=10_000, solver="newton-cg").fit(shard.X.astype(np.float64), shard.y)
    x_ref = ref.coef_.ravel()
    np.testing.assert_allclose(opt.x, x_ref, rtol=1e-6, atol=1e-6 * np.abs(x_ref).max())
    assert opt.fstar == pytest.approx(objective(shard.X, shard.y, x_ref, lam), rel=1e-12)
    assert opt.fstar <= objective(shard.X, shard.y, x_ref, lam)
