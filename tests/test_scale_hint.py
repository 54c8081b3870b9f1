"""The scale hint: rows far from unit norm (raw LIBSVM features) make the default steps
diverge, so rank 0 says so once at start; the mean row norm is summed by the workers over their
shards (dense and CSR) and checked against an independent numpy oracle."""
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import run_cli, run_mpi
from mpimem.run.config import NORM_RANGE, row_norm_sum, scale_note
from mpimem.data.dataset import read_shard

NOTE = "mpimem train: note: rows have mean norm"


def test_row_norm_sum_dense_and_csr_against_numpy():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, 5)).astype(np.float32) * 1e3
    X[2] = 0.0                                     # an empty row counts as norm 0
    want = np.linalg.norm(X.astype(np.float64), axis=1).sum()
    assert row_norm_sum(X) == pytest.approx(want, rel=1e-12)
    assert row_norm_sum(sp.csr_matrix(X)) == pytest.approx(want, rel=1e-12)
    assert row_norm_sum(sp.csr_matrix((0, 5))) == 0.0


def test_the_note_is_given_outside_the_range_only():
    lo, hi = NORM_RANGE
    assert scale_note(1.0) is None and scale_note(lo) is None and scale_note(hi) is None
    assert scale_note(30.0).startswith("rows have mean norm 30 (not ~1): the default steps assume "
                                       "unit-norm rows; normalise the data (mpimem data convert "
                                       "--normalize) or lower --gamma")
    assert scale_note(0.01) and scale_note(hi * 1.01)


def write_libsvm(path, X, y):
    """X (dense) and y as LIBSVM text, 1-based indices, values by repr (exact)."""
    with open(path, "w") as fh:
        for row, label in zip(X, y):
            cols = np.flatnonzero(row)
            fh.write(f"{int(label)} " + " ".join(f"{j + 1}:{float(row[j])!r}" for j in cols) + "\n")


@pytest.fixture(scope="module")
def scaled(eps, tmp_path_factory):
    """The eps rows (unit norm) times 30, through LIBSVM text and `mpimem data convert`."""
    folder = tmp_path_factory.mktemp("scaled")
    shard = read_shard(eps)
    X = np.asarray(shard.X, dtype=np.float64) * 30.0
    write_libsvm(folder / "scaled.txt", X, shard.y)
    out = folder / "scaled.h5"
    run_cli(["data", "convert", folder / "scaled.txt", out], check=True)
    return str(out)


def test_raw_scale_data_is_noted_once_at_start(scaled, tmp_path):
    proc = run_mpi(3, ["train", scaled, "--gamma", "0.002", "--epochs", "0.05",
                       "--out", tmp_path / "s.h5"], timeout=180, check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith(NOTE)]
    assert notes == ["mpimem train: note: rows have mean norm 30 (not ~1): the default steps "
                     "assume unit-norm rows; normalise the data (mpimem data convert "
                     "--normalize) or lower --gamma"], proc.stderr
    assert NOTE not in proc.stdout


def test_unit_norm_data_gets_no_note(eps, tmp_path):
    proc = run_mpi(3, ["train", eps, "--epochs", "0.05", "--out", tmp_path / "u.h5"],
                   timeout=180, check=True)
    assert "mean norm" not in proc.stderr + proc.stdout, proc.stderr
