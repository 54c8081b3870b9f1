"""A run whose f(x) or f(xbar) becomes non-finite or exceeds 100 x f(x_0) stops there, on every
rank together, as status "diverged" (exit status 3), instead of completing with f - f* = 1e56
(issue 18); `mpimem info` and `mpimem compare` show the status."""
import math

import h5py
import pytest

from conftest import run_cli, run_mpi
from datasets import make_dataset
from mpimem.core.metrics import DIVERGE_FACTOR, EX_DIVERGED, divergence

F0 = math.log(2.0)   # f(x_0) at x_0 = 0


@pytest.mark.parametrize("row,why", [
    (dict(loss_x=float("nan"), loss_xbar=0.5), "f(x) = nan"),
    (dict(loss_x=0.5, loss_xbar=float("inf")), "f(xbar) = inf"),
    (dict(loss_x=DIVERGE_FACTOR * F0 * 1.01, loss_xbar=0.5), "exceeds 100 x f(x_0) = 69.31"),
    (dict(loss_x=0.5, loss_xbar=1.4e56), "f(xbar) = 1.4e+56"),
])
def test_the_rule(row, why):
    message = divergence(dict(row, round=7, epoch=0.25), F0)
    assert message.startswith("the run diverged: ") and why in message
    assert "at round 7 (epoch 0.250)" in message


def test_a_run_that_makes_progress_or_stays_below_the_bound_is_not_diverged():
    assert divergence(dict(loss_x=0.3, loss_xbar=0.4, round=1, epoch=0.1), F0) is None
    assert divergence(dict(loss_x=DIVERGE_FACTOR * F0, loss_xbar=60.0, round=1), F0) is None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("div") / "eps.h5", "epsilon", 200, 20)


@pytest.mark.parametrize("topology,ranks", [("server", 3), ("allgather", 2)])
def test_a_diverging_run_stops_as_diverged_on_every_rank(data, tmp_path, topology, ranks):
    out = tmp_path / "run.h5"
    proc = run_mpi(ranks, ["train", data, "--out", out, "--schedule", "constant", "--gamma", "1e6",
                           "--epochs", "1", "--topology", topology, "--quiet"], timeout=120)
    assert proc.returncode == EX_DIVERGED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert lines[0].startswith("mpimem: error: the run diverged: f(")
    assert "exceeds 100 x f(x_0) = 69.31; stopped (step size too large? --gamma 1e+06" in lines[0]
    with h5py.File(out) as f:
        assert f.attrs["status"] == "diverged"
        assert f.attrs["error"].startswith("the run diverged: ")
        assert "final" not in f                       # nothing after the diverged point
        rounds = f["metrics/round"][()]
        assert 0 < len(rounds) < 11 and f["metrics/loss_x"][-1] > 100 * math.log(2)
    info = run_cli(["info", out], check=True).stdout
    assert f"{out}: status diverged" in info and "  diverged: the run diverged: " in info
    compare = run_cli(["compare", out], check=True).stdout
    assert "diverged" in compare
    assert not (tmp_path / "run.ckpt").exists() or not list((tmp_path / "run.ckpt").glob("*final*"))


def test_a_run_with_good_steps_is_complete(data, tmp_path):
    out = tmp_path / "run.h5"
    run_mpi(3, ["train", data, "--out", out, "--epochs", "1", "--quiet"], timeout=120, check=True)
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete"


def test_async_mode_stops_as_diverged_in_one_line(data, tmp_path):
    """--mode async evaluates at its pause points: the same rule, the same single line (NaN
    losses included: no RuntimeWarning lines from the evaluation)."""
    out = tmp_path / "run.h5"
    proc = run_mpi(3, ["train", data, "--out", out, "--mode", "async", "--schedule", "constant",
                       "--gamma", "1e6", "--epochs", "1", "--quiet"], timeout=120)
    assert proc.returncode == EX_DIVERGED, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "note:" not in line]
    assert len(lines) == 1 and lines[0].startswith("mpimem: error: the run diverged: "), proc.stderr
    with h5py.File(out) as f:
        assert f.attrs["status"] == "diverged"


def test_evaluating_a_diverged_state_warns_nothing():
    """A diverged iterate (inf, NaN) goes through xbar, the evaluation point and the negative-gap
    check without a numpy RuntimeWarning: the run's one line is the divergence rule's. Old code:
    `invalid value encountered` lines beside it (seen in an async run under CI)."""
    import warnings

    import numpy as np

    from mpimem.core.metrics import eval_point, negative_gap
    from mpimem.core.model import Averager, Replica

    replica, averager = Replica(3), Averager(3)
    replica.z[:] = [np.inf, -np.inf, 1.0]
    averager.S[:] = [np.inf, np.inf, 0.0]
    averager.c[:] = [np.inf, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xbar = averager.xbar(replica)
        row = eval_point(np.array([np.inf, 1.0, np.nan, 1.0]), 10, 0.1, replica.x(), xbar, 0.5)
        row.update(round=10)
        assert negative_gap(row) is None
    assert not np.isfinite(row["loss_x"]) and not np.isfinite(xbar).all()
