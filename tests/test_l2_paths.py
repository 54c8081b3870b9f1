"""`--l2 server` (L2 applied as the scale x = s z, factor 1 - b eta_t lam) against `--l2 worker`
(the paper's placement, factor 1) over a sweep of n that includes sizes where the decay
schedule's round-1 factor 1 - 2/(1+1) rounds to 1.1e-16 instead of 0 (issue 10, item 0).

Two oracles: for plain SGD both placements are the same algorithm (up to the float32 rounding
of the update on the wire), so f(xbar) must agree; for every run the server's lazily kept xbar
must equal the weighted average sum_r w_r x_r / sum_r w_r computed directly from the iterates."""
import numpy as np
import pytest

from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import block_range, read_shard
from mpimem.data.optimum import solve_optimum
from mpimem.data.synth import synthesize
from mpimem.run.algorithm import Algorithm
from mpimem.core.schedule import StepSchedule
from mpimem.run.simulate import simulate

D = 20
N_MAX = 700
SWEEP = (160, 161, 186, 211, 322, 561, 569, 644)
OPERATORS = [dict(compressor="top_k", k=10), dict(compressor="rand_k", k=10),
             dict(compressor="qsgd", bits=4), dict(compressor="ternary"), dict(compressor="sign")]


def round_one_factor(n):
    """1 - b eta_1 lam for b = 1, a = 1 round, gamma = 2, lam = 1/n (0 in exact arithmetic)."""
    lam = 1.0 / n
    return 1.0 - StepSchedule("decay", 2.0, lam, 1.0).eta(1) * lam


def test_the_sweep_contains_sizes_that_round_the_factor_to_1e16():
    assert round_one_factor(160) == 0.0
    assert all(0 < round_one_factor(n) < 1e-15 for n in SWEEP[1:])


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Epsilon-like rows, d = 20 (every n below is a prefix: synth's rows do not depend on n),
    and f* of each prefix."""
    path = tmp_path_factory.mktemp("l2") / "eps20.h5"
    synthesize(path, "epsilon", n=N_MAX, d=D, seed=1)
    shard = read_shard(path)
    X, y = shard.X, shard.y
    return X, y, {n: solve_optimum(X[:n], y[:n], 1.0 / n).fstar for n in SWEEP}


def run(rows, n, workers, monkeypatch, **opts):
    """The simulator's run on the first n rows (1 epoch), f(xbar) - f*, and xbar recomputed
    directly from the iterates x_0 .. x_{R-1} it went through, with their weights."""
    X, y, fstar = rows[0][:n], rows[1][:n], rows[2][n]
    parts = [(X[a:b], y[a:b]) for a, b in (block_range(n, workers, w) for w in range(workers))]
    cfg = resolve(merge(dict(data="-", epochs=1.0, seed=3, **opts)), n, D, workers)
    seen = []
    apply = Algorithm.apply

    def recording_apply(rule, replica, payload, r, averager=None):
        if averager is not None:  # the server's call: x_r enters xbar with weight w_r
            seen.append((rule.weights.weight(r * rule.b), replica.x()))
        apply(rule, replica, payload, r, averager)

    with monkeypatch.context() as patch:
        patch.setattr(Algorithm, "apply", recording_apply)
        sim = simulate(cfg, parts, D, fstar=fstar)
    w = np.array([s[0] for s in seen])
    xs = np.array([s[1] for s in seen])
    assert len(seen) == sim.rounds
    return sim, (w @ xs) / w.sum(), (w @ np.abs(xs)) / w.sum()


def assert_direct_average(sim, direct, scale):
    """xbar equals the direct average to 1e-10 of the magnitude of the averaged terms."""
    assert np.all(np.abs(sim.xbar - direct) <= 1e-10 * scale), np.abs(sim.xbar - direct).max()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("n", SWEEP)
def test_sgd_gives_the_same_xbar_with_l2_on_server_or_worker(rows, n, workers, monkeypatch):
    """Plain SGD: the two placements differ only by the float32 rounding of the update on the wire
    (2^-24 relative per round); measured: f(xbar) - f* agrees to <= 2e-7 relative over this
    sweep, so 1e-5 is safe. (Before the band, n = 161 .. 644 gave 12-24 times the worker's.)"""
    gaps = {}
    for l2 in ("server", "worker"):
        sim, direct, scale = run(rows, n, workers, monkeypatch, compressor="none", memory=False,
                                 l2=l2)
        assert_direct_average(sim, direct, scale)
        gaps[l2] = sim.history[-1]["subopt_xbar"]
    assert 0 < gaps["worker"] < sim.history[0]["subopt_xbar"]
    assert abs(gaps["server"] - gaps["worker"]) <= 1e-5 * gaps["worker"], gaps


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("n", (160, 161, 569, 644))
@pytest.mark.parametrize("opts", OPERATORS, ids=[o["compressor"] for o in OPERATORS])
def test_every_operator_averages_exactly_and_both_placements_converge_alike(
        rows, n, workers, opts, monkeypatch):
    """With memory the placements are different algorithms (lam x compressed or not), so only
    within a factor: measured server/worker ratios of f(xbar) - f* lie in 0.48 .. 1.4 here
    (ternary the widest); the bound is 3 (before the band: 4.5 .. 36 at n != 160)."""
    gaps = {}
    for l2 in ("server", "worker"):
        sim, direct, scale = run(rows, n, workers, monkeypatch, l2=l2, **opts)
        assert_direct_average(sim, direct, scale)
        gaps[l2] = sim.history[-1]["subopt_xbar"]
        assert 0 < gaps[l2] < sim.history[0]["subopt_xbar"]
    assert 1 / 3 <= gaps["server"] / gaps["worker"] <= 3, gaps
