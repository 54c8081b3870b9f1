"""Bad input: one line on stderr naming the file (and line), exit 2, no OUT.h5 left behind."""
import bz2
import os

import h5py
import numpy as np
import pytest

from conftest import run_cli
from mpimem.data.convert import convert

GOOD = b"+1 1:0.5 2:1\n-1 3:2\n"
CASES = {
    "non-numeric label": (b"+1 1:1\nabc 1:1\n", 2, "non-numeric label"),
    "non-numeric value": (b"+1 1:1\n-1 2:x1\n", 2, "non-numeric value"),
    "non-numeric index": (b"+1 a:1\n", 1, "non-numeric index"),
    "missing colon": (b"+1 1:1\n-1 1:1 2 3:1\n", 2, "missing colon"),
    "missing label": (b"1:1 2:1\n", 1, "missing label"),
    "index 0 one-based": (b"+1 1:1\n+1 0:1 2:1\n", 2, "index 0 in a one-based file"),
    "unsorted": (b"# c\n+1 3:1 2:1\n", 2, "indices not increasing (2 after 3)"),
    "duplicate": (b"+1 3:1 3:1\n", 1, "duplicate index 3"),
    "nan": (b"+1 1:nan\n", 1, "NaN and Inf are not allowed"),
    "inf": (b"+1 1:1\n\n-1 2:-Inf\n", 3, "NaN and Inf are not allowed"),
    "overflow": (b"+1 1:1e999\n", 1, "overflows"),
    "multi-label": (b"1,2 3:1\n", 1, "multi-label"),
    "three classes": (b"0 1:1\n1 1:1\n2 1:1\n", 3, "more than two classes"),
    "bad label pair": (b"-1 1:1\n0 1:1\n", 2, "are not one of the pairs"),
    "label 3": (b"3 1:1\n", 1, "label '3' is not one of"),
    "empty file": (b"", None, "empty file"),
    "only comments": (b"# nothing\n\n", None, "empty file"),
    "beyond --d": (b"+1 1:1\n-1 9:1\n", 2, "beyond --d 4"),
}


def assert_one_line_error(proc, name, line, problem):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and name in lines[0] and problem in lines[0], lines
    if line is not None:
        assert f"{name}:{line}:" in lines[0], lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_text_input(tmp_path, case):
    text, line, problem = CASES[case]
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(text)
    proc = run_cli(["data", "convert", src, out, "--d", "4", "--chunk-mb", "0.01"])
    assert_one_line_error(proc, str(src), line, problem)
    assert os.listdir(tmp_path) == ["in.svm"]


def test_error_found_by_fast_path_block_has_global_line_number(tmp_path):
    """A bad line far into the file, after many blocks: the line number is counted globally."""
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(GOOD * 5000 + b"+1 2:1 1:1\n" + GOOD * 10)
    proc = run_cli(["data", "convert", src, out, "--chunk-mb", "0.01"])
    assert_one_line_error(proc, str(src), 10001, "indices not increasing")
    assert not out.exists()


def test_truncated_compressed_stream(tmp_path):
    src, out = tmp_path / "in.svm.bz2", tmp_path / "out.h5"
    whole = bz2.compress(GOOD * 20000)
    src.write_bytes(whole[:len(whole) // 2])
    proc = run_cli(["data", "convert", src, out])
    assert_one_line_error(proc, str(src), None, "truncated or corrupt bzip2 stream")
    assert os.listdir(tmp_path) == ["in.svm.bz2"]


def test_output_not_writable(tmp_path):
    src = tmp_path / "in.svm"
    src.write_bytes(GOOD)
    out = tmp_path / "no-such-dir" / "out.h5"
    proc = run_cli(["data", "convert", src, out])
    assert_one_line_error(proc, str(out), None, "cannot write output")


def test_missing_input(tmp_path):
    proc = run_cli(["data", "convert", tmp_path / "nope.svm", tmp_path / "out.h5"])
    assert_one_line_error(proc, str(tmp_path / "nope.svm"), None, "cannot read input")
    assert not (tmp_path / "out.h5").exists()


def broken_h5(path, how):
    """A data-set file damaged in one way (after a valid conversion)."""
    with h5py.File(path, "r+") as f:
        if how == "no format":
            del f.attrs["format"]
        elif how == "missing y":
            del f["y"]
        elif how == "wrong shape":
            del f["indptr"]
            f["indptr"] = np.zeros(5, np.int64)
        elif how == "bad label":
            f["y"][0] = 3


@pytest.mark.parametrize("how,problem", [
    ("no format", "not an mpimem data set"), ("missing y", "/y is missing"),
    ("wrong shape", "/indptr has shape (5,), expected (3,)"), ("bad label", "label 3 in row 0"),
    ("not hdf5", "not an HDF5 file")])
def test_bad_dataset_file(tmp_path, how, problem):
    src, data = tmp_path / "in.svm", tmp_path / "d.h5"
    src.write_bytes(GOOD)
    convert(src, data, storage="csr")
    if how == "not hdf5":
        data.write_bytes(GOOD)
    else:
        broken_h5(data, how)
    command = "optimum" if how in ("missing y", "not hdf5") else "info"
    assert_one_line_error(run_cli(["data", command, data]), str(data), None, problem)


# -- issue 18: numbers in errors, a single class, an optimum that did not converge --------------
def test_a_numpy_attribute_in_an_error_is_printed_as_a_plain_number(tmp_path):
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(GOOD)
    run_cli(["data", "convert", src, out], check=True)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = np.int64(9)
    proc = run_cli(["data", "info", out])
    assert proc.returncode == 2
    assert proc.stderr == (f"mpimem: error: {out}: unsupported data-set format_version 9 (this "
                           f"mpimem reads 2)\n")


@pytest.mark.parametrize("label", ["+1", "-1"])
def test_single_class_data_is_said_in_one_note(tmp_path, label):
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_text(f"{label} 1:0.5 2:1\n{label} 3:2\n{label} 1:1\n")
    run_cli(["data", "convert", src, out], check=True)
    note = (f"mpimem: note: all 3 labels are {label}: the data set has a single class (logistic "
            f"regression then only learns to push every row to {label}; accuracy is trivially 1)")
    for command in ("info", "optimum"):
        proc = run_cli(["data", command, out])
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines() == [note], (command, proc.stderr)
    proc = run_cli(["data", "info", out])
    assert "|grad f(x*)|" in proc.stdout   # the optimum was stored: a note, not an error


def test_two_classes_have_no_note(tmp_path):
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(GOOD)
    run_cli(["data", "convert", src, out], check=True)
    assert run_cli(["data", "info", out], check=True).stderr == ""


def test_an_optimum_that_did_not_converge_is_refused_and_nothing_stored(tmp_path):
    """A feature of 1e30 (within float32): L-BFGS stops with |grad| ~ 1e12..1e25; that used to be
    stored as f*, and every run's f(xbar) - f* measured against it."""
    rng = np.random.default_rng(0)
    src, out = tmp_path / "big.svm", tmp_path / "big.h5"
    src.write_text("".join(
        f"{'+1' if i % 2 else '-1'} 1:{rng.standard_normal() * 1e30:.6g} "
        + " ".join(f"{j}:{rng.standard_normal():.6g}" for j in range(2, 5)) + "\n"
        for i in range(40)))
    run_cli(["data", "convert", src, out], check=True)
    proc = run_cli(["data", "optimum", out])
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"mpimem: error: {out}: the optimum did not converge: |grad f(x)| = ")
    assert "above the tolerance 1e-08" in lines[0] and "nothing stored" in lines[0]
    with h5py.File(out) as f:
        assert "optimum" not in f and "optimum_partial" not in f


def test_check_converged_states_norm_and_tolerance():
    from mpimem.data.optimum import Optimum, check_converged

    good = Optimum(x=np.zeros(2), fstar=0.5, grad_norm=1e-11, lam=0.1, iterations=3)
    check_converged("f.h5", good)
    for bad in (dict(grad_norm=2e-8), dict(grad_norm=float("nan")), dict(fstar=float("inf"))):
        opt = Optimum(**{**good.__dict__, **bad})
        with pytest.raises(Exception, match="the optimum did not converge"):
            check_converged("f.h5", opt)
