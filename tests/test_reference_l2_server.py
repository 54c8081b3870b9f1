"""mpimem's `--l2 server` against the independent oracle mpimem.reference (plain numpy, written
without mpimem's kernels; tests/test_reference.py and tests/test_ef21_reference.py do `--l2
worker`).

With `--l2 server` the L2 term is not in the compressed vector: v = m + eta_t sum grad of the
logistic loss only, and step 3 shrinks the iterate, x_{r+1} = (1 - b eta_t lam) x_r - U (D with
a downlink; eta_t G under EF21), with the eta_t of the round (t = r b). mpimem keeps x = s z with
a lazy scale and, on CSR rows, works on the touched coordinates only (the incremental top-k
index, sparse no-memory messages): the reference does the dense float64 arithmetic. Every
operator, with and without memory, dense and CSR rows, with and without the sparsity warm-up
and the top-K downlink: x, xbar and every worker's memory to 1e-10 relative after 300 rounds
(a memory that must be 0 must be exactly 0), in-process through the simulator and through a
few real mpiexec runs.
"""
import numpy as np
import pytest

from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.run.algorithm import Algorithm, ShardData, compressor_for
from mpimem.reference import Reference, Settings
from mpimem.run.simulate import simulate
from test_reference import (DENSE, ROUNDS, SPARSE, assert_close, assert_same_trajectory, both,
                            make_data, mpi_against_reference, shards_of)

# (operator, memory) pairs: plain SGD has no memory; the quantisers and sign both ways
OPERATORS = [dict(compressor="none"),
             *[dict(op, memory=mem) for op in (dict(compressor="top_k"), dict(compressor="rand_k"),
                                               dict(compressor="qsgd", levels=4),
                                               dict(compressor="ternary"), dict(compressor="sign"))
               for mem in (True, False)]]
OP_IDS = [o["compressor"] + ("" if o.get("memory", False) else "-nomem") for o in OPERATORS]
DATA = {"dense": (DENSE, 2), "csr": (SPARSE, 5)}     # data set and its k


def server(data, workers=2, **opts):
    """both() with --l2 server; k from DATA for the sparsifiers."""
    X, k = DATA[data]
    if opts.get("compressor") in ("top_k", "rand_k"):
        opts.setdefault("k", k)
    return both(X, workers, l2="server", **opts)


def check(sim, ref):
    assert_same_trajectory(sim, ref)
    assert np.all(np.isfinite(ref.x)) and np.abs(ref.x).max() > 1e-2   # it moved
    if not ref.memory:
        assert not np.any(sim.memories)            # no memory: m = 0, every entry


# ---------------------------------------------------------------- the oracle alone
def test_oracle_l2_server_is_the_shrink():
    """The oracle's --l2 server is x_{r+1} = (1 - b eta_t lam) x_r - U, by hand for three
    rounds of plain SGD (W = 1, b = 2, constant steps, no compression but float32), and so is
    mpimem's."""
    X, y = DENSE
    cfg = resolve(merge(dict(data="-", l2="server", compressor="none", schedule="constant",
                             gamma=0.5, batch_size=2, samples=6, seed=3)), 400, 24, 1)
    ref = Reference(Settings.from_config(cfg), shards_of(DENSE, 1), 24)
    perm = list(ref.workers[0].sampler.perm)
    x, lam = np.zeros(24), cfg.lam
    assert lam == 1 / 400
    for r in range(3):
        rows = perm[2 * r: 2 * r + 2]
        A, b = X[rows], y[rows]
        g = (-b / (1.0 + np.exp(b * (A @ x)))) @ A                  # no lam x in the gradient
        x = (1.0 - 2 * 0.5 * lam) * x - np.float32(0.5 * g).astype(np.float64)
    ref.run(3)
    assert np.abs(x).max() > 0.1 and np.allclose(ref.x, x, rtol=1e-12, atol=0.0)
    assert_close(simulate(cfg, shards_of(DENSE, 1), 24, evaluate=False).x, ref.x, "x")


# ---------------------------------------------------------------- mpimem against the oracle
@pytest.mark.parametrize("downlink", [None, 3], ids=["", "downlink"])
@pytest.mark.parametrize("data", ["dense", "csr"])
@pytest.mark.parametrize("op", OPERATORS, ids=OP_IDS)
def test_l2_server_equals_reference(op, data, downlink):
    """Every operator x memory x dense/CSR x top-K downlink (W = 2, b = 1; the decay
    schedule's factor 1 - 2/(r + d/k) folds the scale band many times)."""
    check(*server(data, downlink_k=downlink, **op))


@pytest.mark.parametrize("downlink", [None, 20], ids=["", "downlink"])
@pytest.mark.parametrize("memory", [True, False], ids=["mem", "nomem"])
@pytest.mark.parametrize("data", ["dense", "csr"])
@pytest.mark.parametrize("compressor", ["top_k", "rand_k"])
def test_l2_server_k_warmup_equals_reference(compressor, data, memory, downlink):
    """--k-warmup 2 (b = 4: the warm-up ends in round 100 of the 300). On CSR rows top-k with
    memory must rank every coordinate of v = m + eta grad once k < d (issue 18: it ranked the
    round's touched coordinates alone, 95% off after the first epoch)."""
    sim, ref = server(data, compressor=compressor, memory=memory, batch_size=4, k_warmup=2,
                      downlink_k=downlink)
    check(sim, ref)
    assert ref.k_at(0) == ref.d and ref.k_at(ROUNDS - 1) == DATA[data][1]


@pytest.mark.parametrize("opts", [
    dict(data="dense", compressor="top_k", batch_size=4),
    dict(data="csr", compressor="top_k", downlink_k=8),
    dict(data="csr", compressor="rand_k", batch_size=4, k_warmup=2),
    dict(data="dense", compressor="qsgd", levels=4, workers=1),
    dict(data="csr", compressor="sign", downlink_k=5),
], ids=["dense-top_k-b4", "csr-top_k-bc", "csr-rand_k-warmup", "dense-qsgd-W1", "csr-sign-bc"])
def test_ef21_l2_server_equals_reference(opts):
    """EF21 (and EF21-BC with downlink_k): x_{r+1} = (1 - b eta_t lam) x_r - eta_t G."""
    opts = dict(opts)
    check(*server(opts.pop("data"), opts.pop("workers", 2), method="ef21", **opts))


# ---------------------------------------------------------------- the two defects, directly
def test_no_memory_means_zero_memory_everywhere():
    """--no-memory: m = 0 in every coordinate after a round, for every operator, on CSR rows
    with either L2 placement (issue 18: scaled sign left -scale on every untouched entry)."""
    for op in OPERATORS:
        if op.get("memory", False):
            continue
        for l2 in ("server", "worker"):
            opts = dict(op, l2=l2, samples=20, seed=3)
            if op["compressor"] in ("top_k", "rand_k"):
                opts["k"] = 5
            cfg = resolve(merge(dict(data="-", **opts)), 400, 300, 2)
            sim = simulate(cfg, shards_of(SPARSE, 2), 300, evaluate=False)
            assert not np.any(sim.memories), (op, l2, np.count_nonzero(sim.memories))


@pytest.mark.parametrize("k_warmup", [0, 1])
def test_top_k_sends_a_large_untouched_memory_entry(k_warmup):
    """CSR rows, --l2 server, memory: m_7 = 100 on a coordinate no row touches must be sent by
    top-k, with and without the warm-up (issue 18: with one, k < d ranked the touched
    coordinates alone and never sent it)."""
    X, y = make_data(40, 30, density=0.1, seed=4)
    X = X.tolil()
    X[:, 7] = 0.0
    X = X.tocsr()
    X.eliminate_zeros()
    cfg = resolve(merge(dict(data="-", compressor="top_k", k=2, l2="server",
                             k_warmup=k_warmup, seed=1)), 40, 30, 1)
    rule = Algorithm(cfg, 30, 1, compressor_for(cfg, 30), 40)
    shard = ShardData(X, y)
    ws, replica = rule.new_worker(1, shard), rule.new_replica()
    r = 50                                   # epoch 1: the warm-up is over, k = 2 < d
    rule.set_round(r)
    assert rule.k_at(r) == 2
    ws.m[7] = 100.0
    nbytes = rule.worker_step(ws, shard, replica, r)
    idx = ws.msg[: nbytes // 2].view(np.int32)
    assert 7 in idx and ws.m[7] == 0.0


# ---------------------------------------------------------------- real mpiexec runs
@pytest.fixture(scope="module")
def rcv_small(tmp_path_factory):
    """RCV1-like CSR, n = 400, d = 600 (no f*: the trajectory is what is compared)."""
    from datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("rcv_small") / "rcv.h5", "rcv1", 400, 600,
                        seed=2, optimum=False)


@pytest.mark.parametrize("workers,opts", [
    (2, dict(compressor="top_k", k=5, k_warmup=1, batch_size=2)),
    (2, dict(compressor="sign", memory=False)),
    (1, dict(compressor="qsgd", levels=4, downlink_k=50)),
], ids=["W2-top_k-warmup", "W2-sign-nomem", "W1-qsgd-downlink"])
def test_mpi_l2_server_run_equals_reference(workers, opts, rcv_small, tmp_path):
    """A real `mpiexec -n W+1 mpimem train --l2 server` on CSR rows against the reference:
    x, xbar and every worker's memory (the two issue-18 cases among them)."""
    run, ref = mpi_against_reference(workers, dict(opts, l2="server"), rcv_small, tmp_path)
    assert_close(run["final"]["x"], ref.x, "x")
    assert_close(run["final"]["xbar"], ref.xbar, "xbar")
    assert_close(run["final"]["memory"], ref.memories, "memories")
