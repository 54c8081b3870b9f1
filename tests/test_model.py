"""The lazy iterate x = s z and the lazy average xbar (mpimem.core.model) against a direct dense
computation, x_{r+1} = f_r x_r - U_r and xbar = sum_r w_r x_r / sum_r w_r, under factor
sequences chosen to break a lazy scale: exactly 0, about 1e-16 (what 1 - 2/(1+1) rounds to),
negative, 1e-300, huge, alternating, and a slow decay over 1e5 rounds."""
import numpy as np
import pytest

from mpimem.core.model import Averager, Replica, apply_update

D = 7
TOL = 1e-10


def decay(rounds):
    """The decay schedule's factors with a = 1 round, gamma = 2: -1, 1 - 2/2 (rounded), ..."""
    return [1.0 - 2.0 / (r + 1.0) for r in range(rounds)]


SEQUENCES = {
    "zero": [-1.0, 0.0] + [0.999] * 60,
    "1e-16": [-1.0, 1.1102230246251565e-16] + [0.99] * 60,   # the n = 161
    "-1e-16": [0.9, 0.9, -1.1e-16] + [1.0] * 60,
    "negative": [-0.9, -1.1, -1.0, -3.0, -0.3] * 12,
    "1e-300": [1e-300, 1.0, 1e-300, 1e-300, 0.5] * 12,     # z underflows to 0 too
    "huge": [1e200, 1.0, 1e-200, 1e150, 1e-150, 0.7] * 10,
    "alternating": [0.3, 3.0] * 30,
    "random": list(np.random.default_rng(5).choice([-1.0, 1.0], 60)
                   * 10.0 ** np.random.default_rng(6).uniform(-20, 20, 60)),
    "decay": decay(200),
}


def updates(rounds, sparse, seed=0):
    """(idx, vals) per round as decoded from the wire: int32 idx (None: dense), float32 vals."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        size = 3 if sparse else D
        vals = (rng.standard_normal(size) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        idx = rng.choice(D, 3, replace=False).astype(np.int32) if sparse else None
        out.append((idx, vals))
    return out


def run_lazy(factors, ups, weights):
    """(x, xbar) by mpimem.core.model; a second replica without averager (a worker's) must agree."""
    replica, worker, averager = Replica(D), Replica(D), Averager(D)
    for f, (idx, vals), w in zip(factors, ups, weights):
        averager.add_weight(replica, w)
        apply_update(replica, f, idx, vals, averager)
        apply_update(worker, f, idx, vals)
        assert 0.5 <= replica.s <= 2.0
    assert np.array_equal(worker.z, replica.z) and worker.s == replica.s
    return replica.x(), averager.xbar(replica)


def run_dense(factors, ups, weights):
    """(x, xbar) directly, and the magnitudes the rounding errors are relative to: the
    forward error bound of x_{r+1} = f x_r - U grows like eps * (|f| scale_r + |U_r|)."""
    x, scale = np.zeros(D), np.zeros(D)
    total, total_scale, wsum = np.zeros(D), np.zeros(D), 0.0
    for f, (idx, vals), w in zip(factors, ups, weights):
        total += w * x
        total_scale += w * scale
        wsum += w
        u = np.zeros(D)
        if idx is None:
            u[:] = vals
        else:
            u[idx] = vals
        x = f * x - u
        scale = abs(f) * scale + np.abs(u)
    return x, total / wsum, scale, total_scale / wsum


def check(factors, sparse, weights):
    ups = updates(len(factors), sparse)
    x, xbar = run_lazy(factors, ups, weights)
    x_ref, xbar_ref, scale, scale_bar = run_dense(factors, ups, weights)
    assert np.all(np.abs(x - x_ref) <= TOL * scale), (x, x_ref)
    assert np.all(np.abs(xbar - xbar_ref) <= TOL * scale_bar), (xbar, xbar_ref)


@pytest.mark.parametrize("name", SEQUENCES)
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("averaging", ["quadratic", "uniform"])
def test_lazy_iterate_and_average_equal_the_direct_computation(name, sparse, averaging):
    """x and xbar within 1e-10 of the direct computation, relative to the magnitude of the terms
    (for x and xbar that do not cancel, that is their own magnitude)."""
    factors = SEQUENCES[name]
    rounds = np.arange(len(factors), dtype=float)
    weights = (1.0 + rounds) ** 2 if averaging == "quadratic" else np.ones(len(factors))
    check(factors, sparse, weights)


def test_slow_decay_over_many_rounds():
    """1e5 rounds of the decay schedule (s would fall to about 4e-10 and fold about 30 times):
    no increment of the average is lost."""
    rounds = 100_000
    check(decay(rounds), True, (1.0 + np.arange(rounds, dtype=float)) ** 2)


def test_a_fold_changes_neither_x_nor_xbar():
    """A factor outside [1/2, 2] folds s into z: x and xbar before and after agree to 1 ulp-ish,
    and s returns to 1."""
    replica, averager = Replica(D), Averager(D)
    rng = np.random.default_rng(2)
    for f in (1.0, 0.9, 0.8, 0.7):
        averager.add_weight(replica, 1.0)
        apply_update(replica, f, None, rng.standard_normal(D).astype(np.float32), averager)
    assert replica.s == 0.9 * 0.8 * 0.7
    x, xbar = replica.x(), averager.xbar(replica)
    apply_update(replica, 0.5, np.zeros(0, np.int32), np.zeros(0, np.float32), averager)
    assert replica.s == 1.0
    assert np.allclose(replica.x(), 0.5 * x, rtol=1e-15, atol=0)
    assert np.allclose(averager.xbar(replica), xbar, rtol=1e-15, atol=0)
