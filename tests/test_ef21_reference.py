"""EF21, EF21-BC, the Mem-SGD top-K downlink and the sparsity warm-up against the independent
oracle mpimem.reference (plain numpy, written without mpimem's kernels; tests/test_reference.py
does Algorithm 1 itself).

First the oracle alone (its limits: EF21 without compression is plain SGD up to float32
rounding, top-k with k = d is no compression, a downlink with K = d changes nothing but the
float32 rounding), then mpimem's `--l2 worker` trajectory (x, xbar, every worker's memory:
h_w under EF21) against it to 1e-10 relative after 300 rounds, in-process through the
simulator and once through a real mpiexec.
"""
import json
from dataclasses import replace

import numpy as np
import pytest

from mpimem.data.dataset import read_meta
from mpimem.reference import Reference, Settings, k_schedule
from test_reference import (DENSE, ROUNDS, SPARSE, assert_close, assert_same_trajectory, both,
                            mpi_against_reference, shards_of)


def oracle(data, workers, rounds=ROUNDS, **settings):
    """The reference alone on `data` split over `workers`, after `rounds` rounds."""
    d = data[0].shape[1]
    settings = dict(dict(lam=1e-3, shift=float(d), seed=3), **settings)
    return Reference(Settings(**settings), shards_of(data, workers), d).run(rounds)


def relative(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


# ---------------------------------------------------------------- the oracle alone
SGD = dict(schedule="constant", gamma=0.5, batch_size=2)


@pytest.mark.parametrize("data", [DENSE, SPARSE], ids=["dense", "sparse"])
@pytest.mark.parametrize("workers", [1, 2])
def test_oracle_limits(data, workers):
    """EF21 with no compression is SGD: G = (1/W) sum_w h_w and h_w = the last gradient, up to
    float32 rounding (exact for W = 1 but for P's sum of the increments; W = 2 also rounds the
    mean of two float32 values, and G keeps that rounding); top-k with k = d is none, bit for
    bit; the top-K downlink with K = d only moves float32 rounding into the server's memory."""
    d = data[0].shape[1]
    sgd = oracle(data, workers, compressor="none", memory=False, **SGD)
    ef21 = oracle(data, workers, compressor="none", method="ef21", **SGD)
    assert np.abs(sgd.x).max() > 0.5
    assert relative(ef21.x, sgd.x) < 1e-5 and relative(ef21.xbar, sgd.xbar) < 1e-5
    top_d = oracle(data, workers, compressor="top_k", k=d, method="ef21", **SGD)
    assert np.array_equal(top_d.x, ef21.x) and np.array_equal(top_d.memories, ef21.memories)
    bc = oracle(data, workers, compressor="none", method="ef21", downlink_k=d, **SGD)
    assert relative(bc.x, ef21.x) < 1e-5 and np.abs(bc.e).max() < 1e-6
    memsgd = oracle(data, workers, compressor="top_k", k=2)
    down = oracle(data, workers, compressor="top_k", k=2, downlink_k=d)
    assert relative(down.x, memsgd.x) < 1e-6 and np.abs(down.e).max() < 1e-6
    assert relative(down.memories, memsgd.memories) < 1e-6


def test_oracle_bc_and_downlink_compress():
    """A small K moves less than EF21 or Mem-SGD a round and keeps the rest in e."""
    ef21 = oracle(DENSE, 2, compressor="top_k", k=2, method="ef21", rounds=50)
    bc = oracle(DENSE, 2, compressor="top_k", k=2, method="ef21", downlink_k=1, rounds=50)
    down = oracle(DENSE, 2, compressor="top_k", k=2, downlink_k=1, rounds=50)
    assert relative(bc.x, ef21.x) > 1e-3 and np.abs(bc.e).max() > 1e-3
    assert np.count_nonzero(down.x) <= 50 and np.abs(down.e).max() > 1e-3


def test_k_schedule_known_values():
    """k_e = max(k, min(d, round(d (k/d)^(e/E)))): d in epoch 0, geometric down to k."""
    assert k_schedule(2, 24, 4) == [24, 13, 7, 4]
    assert k_schedule(5, 300, 4) == [300, 108, 39, 14]
    assert k_schedule(3, 24, 1) == [24] and k_schedule(3, 24, 0) == []
    assert k_schedule(24, 24, 3) == [24, 24, 24]


def test_k_of_a_round_follows_the_epoch():
    """Round r is in epoch (r W b) // n; after E epochs k is the target; other operators keep k."""
    s = Settings(compressor="rand_k", k=2, batch_size=4, k_warmup=2)
    assert [s.k_at(r, 400, 2, 24) for r in (0, 49, 50, 99, 100, 1000)] == [24, 24, 7, 7, 2, 2]
    assert Settings(compressor="top_k", k=2).k_at(0, 400, 2, 24) == 2
    assert Settings(compressor="sign", k=2, k_warmup=3).k_at(0, 400, 2, 24) == 2


# ---------------------------------------------------------------- mpimem against the oracle
OPERATORS = [dict(compressor="top_k", k=2), dict(compressor="rand_k", k=3),
             dict(compressor="qsgd", levels=4), dict(compressor="sign")]


def check(sim, ref):
    assert_same_trajectory(sim, ref)
    assert np.all(np.isfinite(ref.x)) and np.abs(ref.x).max() > 0.1  # it moved


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("op", OPERATORS, ids=[o["compressor"] for o in OPERATORS])
def test_ef21_equals_reference(op, batch, workers):
    check(*both(DENSE, workers, method="ef21", batch_size=batch, **op))


@pytest.mark.parametrize("workers,opts", [
    (2, dict(compressor="top_k", k=5)),
    (2, dict(compressor="rand_k", k=5, batch_size=4)),
    (1, dict(compressor="qsgd", levels=4, batch_size=4)),
    (2, dict(compressor="sign")),
], ids=["top_k", "rand_k-b4", "qsgd-W1-b4", "sign"])
def test_ef21_sparse_rows_equal_reference(workers, opts):
    check(*both(SPARSE, workers, method="ef21", **opts))


@pytest.mark.parametrize("opts", [
    dict(compressor="ternary"),
    dict(compressor="none", schedule="constant", gamma=0.5, averaging="none"),
    dict(compressor="top_k", k=3, schedule="bottou", gamma=1.0, averaging="uniform"),
], ids=["ternary", "none-constant", "top_k-bottou-uniform"])
def test_ef21_other_operators_and_schedules_equal_reference(opts):
    check(*both(DENSE, 2, method="ef21", batch_size=2, **opts))


def test_ef21_l2_server_equals_reference_when_lam_is_zero():
    """lam = 0: both L2 placements are the same algorithm (factor 1)."""
    check(*both(SPARSE, 2, method="ef21", compressor="top_k", k=5, l2="server", lam=0.0,
                schedule="bottou", gamma=1.0))


@pytest.mark.parametrize("data,workers,opts", [
    (DENSE, 2, dict(compressor="top_k", k=2, downlink_k=3)),
    (DENSE, 1, dict(compressor="qsgd", levels=4, downlink_k=5, batch_size=4)),
    (DENSE, 2, dict(compressor="sign", downlink_k=1, batch_size=4)),
    (SPARSE, 2, dict(compressor="rand_k", k=5, downlink_k=8)),
], ids=["top_k-W2", "qsgd-W1-b4", "sign-K1-b4", "sparse-rand_k"])
@pytest.mark.parametrize("method", ["ef21", "memsgd"])
def test_downlink_equals_reference(method, data, workers, opts):
    """EF21-BC (ef21 + downlink_k) and Mem-SGD's top-K downlink with a server memory."""
    check(*both(data, workers, method=method, **opts))


@pytest.mark.parametrize("data,workers,opts", [
    (DENSE, 2, dict(compressor="top_k", k=2, batch_size=4, k_warmup=4)),
    (DENSE, 2, dict(compressor="rand_k", k=2, batch_size=4, k_warmup=4)),
    (DENSE, 1, dict(compressor="top_k", k=1, batch_size=4, k_warmup=2)),
    (SPARSE, 2, dict(compressor="rand_k", k=5, batch_size=4, k_warmup=3)),
    (SPARSE, 2, dict(compressor="top_k", k=5, batch_size=4, k_warmup=3, downlink_k=20)),
], ids=["top_k", "rand_k", "top_k-W1", "sparse-rand_k", "sparse-top_k-downlink"])
@pytest.mark.parametrize("method", ["memsgd", "ef21"])
def test_k_warmup_equals_reference(method, data, workers, opts):
    """The warm-up ends inside the 300 rounds (of W b samples; n = 400) and changes the run."""
    sim, ref = both(data, workers, method=method, **opts)
    check(sim, ref)
    ks = [ref.k_at(r) for r in range(ROUNDS)]
    assert ks[0] == data[0].shape[1] and ks[-1] == opts["k"]   # the warm-up is inside the run
    no_warmup = Reference(replace(ref.cfg, k_warmup=0), shards_of(data, workers), ref.d)
    assert relative(no_warmup.run(ROUNDS).x, ref.x) > 1e-3       # and it changed the trajectory


def test_mpi_ef21_run_equals_reference(eps, tmp_path):
    """A real `mpiexec -n 3 mpimem train --method ef21 --k-warmup 2 --l2 worker` against the
    reference: x, xbar, every h_w, and the warm-up's k schedule in RUN.h5."""
    run, ref = mpi_against_reference(2, dict(method="ef21", compressor="top_k", k=3,
                                             batch_size=6, k_warmup=2), eps, tmp_path)
    meta = read_meta(eps)
    assert [ref.k_at(r) for r in (0, 100, ROUNDS - 1)] == [meta.d, 19, 3]   # 3 epochs of 1200
    assert json.loads(run["attrs"]["k_schedule"]) == k_schedule(3, meta.d, 2)
    assert_close(run["final"]["x"], ref.x, "x")
    assert_close(run["final"]["xbar"], ref.xbar, "xbar")
    assert_close(run["final"]["memory"], ref.memories, "memories")
