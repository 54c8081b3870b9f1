"""mpimem against an independent oracle: mpimem.reference, Algorithm 1 in plain numpy (dense
float64, paper-exact L2 placement, xbar kept directly), written without mpimem's kernels.

mpimem's `--l2 worker` trajectory (x, xbar, every worker's memory) must equal the reference's
to 1e-10 relative after a few hundred rounds, for every operator, with and without memory,
b = 1 and 4, W = 1 and 2; in-process through the simulator and once through a real mpiexec.
"""
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import run_mpi
from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.reference import Reference, Settings, Xoshiro, top_k_indices
from mpimem.run.runfile import read_run
from mpimem.run.simulate import simulate

RTOL = 1e-10
ROUNDS = 300


def assert_close(actual, expected, what):
    """max |actual - expected| <= RTOL max |expected| (exact equality when expected is 0)."""
    err, scale = np.abs(actual - expected).max(), np.abs(expected).max()
    assert err <= RTOL * scale, f"{what}: max error {err:.3e} against scale {scale:.3e}"


def make_data(n, d, density=1.0, seed=0):
    """Unit-norm rows (dense, or CSR at `density`), labels from a noisy linear model."""
    rng = np.random.default_rng(seed)
    if density < 1.0:
        X = sp.random(n, d, density=density, format="csr", random_state=seed,
                      data_rvs=rng.standard_normal)
        X = sp.diags(1.0 / np.maximum(sp.linalg.norm(X, axis=1), 1e-12)) @ X
        margin = X @ rng.standard_normal(d)
        X = X.tocsr()
    else:
        X = rng.standard_normal((n, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        margin = X @ rng.standard_normal(d)
    y = np.where(margin + 0.3 * rng.standard_normal(n) > 0, 1.0, -1.0)
    return X, y


DENSE = make_data(400, 24)
SPARSE = make_data(400, 300, density=0.05, seed=1)


def shards_of(data, workers):
    X, y = data
    n = y.size
    return [(X[w * n // workers:(w + 1) * n // workers], y[w * n // workers:(w + 1) * n // workers])
            for w in range(workers)]


def both(data, workers, **opts):
    """(simulator result, reference) after ROUNDS rounds of the same resolved settings."""
    shards = shards_of(data, workers)
    n, d = data[1].size, data[0].shape[1]
    opts = dict(dict(l2="worker", seed=3, samples=ROUNDS * workers * opts.get("batch_size", 1)), **opts)
    cfg = resolve(merge(dict(data="-", **opts)), n, d, workers)
    sim = simulate(cfg, shards, d, evaluate=False)
    assert sim.rounds == ROUNDS
    return sim, Reference(Settings.from_config(cfg), shards, d).run(ROUNDS)


def assert_same_trajectory(sim, ref):
    assert_close(sim.x, ref.x, "x")
    assert_close(sim.xbar, ref.xbar, "xbar")
    assert_close(sim.memories, ref.memories, "memories")


OPERATORS = [dict(compressor="top_k", k=2), dict(compressor="rand_k", k=3),
             dict(compressor="qsgd", levels=4), dict(compressor="sign")]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("memory", [True, False], ids=["mem", "nomem"])
@pytest.mark.parametrize("op", OPERATORS, ids=[o["compressor"] for o in OPERATORS])
def test_simulator_equals_reference(op, memory, batch, workers):
    sim, ref = both(DENSE, workers, memory=memory, batch_size=batch, **op)
    assert_same_trajectory(sim, ref)
    assert np.abs(ref.x).max() > 0.1  # it moved


@pytest.mark.parametrize("opts", [
    dict(compressor="ternary"),
    dict(compressor="ternary", memory=False, schedule="bottou", gamma=1.0, averaging="uniform"),
    dict(compressor="none", schedule="constant", gamma=0.5, averaging="none"),
    dict(compressor="top_k", k=3, shift="5d/k", gamma=8.0),
], ids=["ternary", "ternary-nomem-bottou", "sgd-constant", "top_k-theory"])
def test_other_operators_and_schedules_equal_reference(opts):
    sim, ref = both(DENSE, 2, batch_size=2, **opts)
    assert_same_trajectory(sim, ref)


@pytest.mark.parametrize("opts", [dict(compressor="top_k", k=5), dict(compressor="rand_k", k=5)],
                         ids=["top_k", "rand_k"])
def test_sparse_rows_equal_reference(opts):
    sim, ref = both(SPARSE, 2, **opts)
    assert_same_trajectory(sim, ref)


def test_fast_path_equals_reference_when_lam_is_zero():
    """With lam = 0 both L2 placements are the same algorithm, so the `--l2 server` fast path
    (x = s z, the incremental top-k index over the touched coordinates of CSR rows) must match too."""
    sim, ref = both(SPARSE, 2, compressor="top_k", k=5, l2="server", lam=0.0, schedule="bottou",
                    gamma=1.0)
    assert_same_trajectory(sim, ref)


def test_reference_tells_the_l2_placements_apart():
    """The oracle has teeth: the server-side L2 placement is another algorithm, and differs
    (tests/test_reference_l2_server.py checks it against mpimem's `--l2 server`)."""
    sim, ref = both(DENSE, 1, compressor="top_k", k=2, l2="server")
    worker = Reference(replace(ref.cfg, l2="worker"), shards_of(DENSE, 1), ref.d).run(ROUNDS)
    assert np.abs(sim.x - worker.x).max() > 1e-6 * np.abs(worker.x).max()
    assert np.abs(ref.x - worker.x).max() > 1e-6 * np.abs(worker.x).max()


def test_xoshiro_known_answers():
    """xoshiro256** from state (1, 2, 3, 4): the generator's published first outputs."""
    rng = Xoshiro([1, 2, 3, 4])
    assert [rng.next() for _ in range(4)] == [11520, 0, 1509978240, 1215971899390074240]


def test_top_k_ties_go_to_the_smaller_index():
    assert sorted(top_k_indices(np.array([1.0, -3.0, 3.0, 2.0, -3.0]), 2)) == [1, 2]


def mpi_against_reference(workers, opts, data, tmp_path):
    """(run file, reference) after ROUNDS rounds of the same settings (`--l2 worker` unless
    opts say otherwise, seed 11): a real `mpiexec -n W+1 mpimem train` and
    mpimem.reference; checks the run completed."""
    opts = dict(dict(l2="worker"), **opts)
    opts.update(seed=11, samples=ROUNDS * workers * opts.get("batch_size", 1))
    args = []
    for key, value in opts.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):          # --memory / --no-memory
            args.append(("--" if value else "--no-") + flag)
        else:
            args += ["--" + flag, value]
    out = tmp_path / "run.h5"
    run_mpi(workers + 1, ["train", data, "--out", out, "--quiet", *args], timeout=180, check=True)
    run = read_run(out)
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, **opts)), meta.n, meta.d, workers)
    shards = [read_shard(data, w, workers) for w in range(workers)]
    ref = Reference(Settings.from_config(cfg), [(s.X, s.y) for s in shards], meta.d).run(ROUNDS)
    assert run["attrs"]["status"] == "complete" and run["attrs"]["rounds"] == ROUNDS
    return run, ref


@pytest.mark.parametrize("workers,opts", [
    (2, dict(compressor="top_k", k=3, batch_size=4)),
    (1, dict(compressor="qsgd", levels=4)),
], ids=["W2-top_k-b4", "W1-qsgd"])
def test_mpi_run_equals_reference(workers, opts, eps, tmp_path):
    """A real `mpiexec -n W+1 mpimem train --l2 worker` against the reference."""
    run, ref = mpi_against_reference(workers, opts, eps, tmp_path)
    assert_close(run["final"]["x"], ref.x, "x")
    assert_close(run["final"]["xbar"], ref.xbar, "xbar")
    assert_close(run["final"]["memory"], ref.memories, "memories")
