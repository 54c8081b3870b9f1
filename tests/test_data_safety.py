"""Data safety: no silent acceptance, no data loss, one line instead of a traceback.

Each test reproduces one finding of issue 13 (items 1, 8, 10, 11, the data parts of
"Tracebacks where a line is due", ENOSPC for convert/synth/optimum) or issue 10 ("each rank
reads only its row block") under real conditions: real pipes and FIFOs, real signals, a real
full tmpfs, byte counts of real HDF5 reads.
"""
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from conftest import mpimem_cmd, run, run_cli, run_mpi
from mpimem.data.checksum import row_checksums_csr
from mpimem.data.convert import convert
from mpimem.data.dataset import read_meta, read_shard
from mpimem.data.h5write import CSRWriter, write_header
from mpimem.data.synth import synthesize
from mpimem.errors import MpimemError
from mpimem.core.metrics import eval_point, negative_gap
from test_data_dataset import CountingFile
from test_data_errors import assert_one_line_error

TEXT = b"+1 1:0.5 3:-2\n-1 2:1.5\n+1 1:1 2:2 3:3\n-1 3:0.25\n"


def lines_of(n, seed=0):
    """n LIBSVM lines, 6 features each out of 40, labels +-1."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cols = np.sort(rng.choice(40, 6, replace=False)) + 1
        out.append(f"{1 if i % 2 else -1} " + " ".join(f"{j}:{v:.6g}" for j, v in
                                                        zip(cols, rng.normal(size=6))))
    return ("\n".join(out) + "\n").encode()


# ---------------------------------------------------------------- 13.1 OUT is IN
@pytest.mark.parametrize("how", ["same path", "relative path", "symlink", "hard link"])
def test_convert_refuses_to_overwrite_its_input(tmp_path, how):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    out, cwd = src, None
    if how == "relative path":
        out, cwd = "../a.txt", tmp_path / "sub"
        cwd.mkdir()
    elif how == "symlink":
        out = tmp_path / "link.h5"
        out.symlink_to(src)
    elif how == "hard link":
        out = tmp_path / "hard.h5"
        os.link(src, out)
    proc = run(mpimem_cmd("data", "convert", src, out), cwd=cwd)
    assert_one_line_error(proc, str(out), None, "is the input file")
    assert src.read_bytes() == TEXT


# ---------------------------------------------------------------- 13.8 fingerprint = content
def test_fingerprint_tells_index_bases_apart(tmp_path):
    """The same text read with base 0 and base 1 is different data (every column shifts);
    before, (n, d, nnz, storage, dtype, source checksum) were equal and so the fingerprints."""
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    metas = []
    for base in "01":
        out = tmp_path / f"b{base}.h5"
        run_cli(["data", "convert", src, out, "--index-base", base, "--d", "5"], check=True)
        metas.append(read_meta(out))
    assert (metas[0].n, metas[0].d, metas[0].nnz) == (metas[1].n, metas[1].d, metas[1].nnz)
    assert metas[0].fingerprint != metas[1].fingerprint


@pytest.mark.parametrize("like,edit", [("epsilon", "X"), ("rcv1", "data"), ("rcv1", "y")])
def test_in_place_edits_are_refused_by_the_rank_that_reads_them(tmp_path, like, edit):
    path = tmp_path / "s.h5"
    synthesize(path, like, n=300, d=200, seed=1)
    before = read_meta(path).fingerprint
    with h5py.File(path, "r+") as f:
        if edit == "X":
            f["X"][250, 7] = f["X"][250, 7] * 1.5
        elif edit == "data":
            row = f["indptr"][250]
            f["data"][row] = -f["data"][row]
        else:
            f["y"][250] = -f["y"][250]             # still a valid label: only the checksum sees it
    read_shard(path, 0, 2)                          # rows 0..149 are untouched
    with pytest.raises(MpimemError, match=r"s.h5: row 250 does not match its checksum"):
        read_shard(path, 1, 2)
    assert read_meta(path).fingerprint == before    # the identity is the one written
    proc = run_cli(["data", "optimum", path])
    assert_one_line_error(proc, str(path), None, "row 250 does not match its checksum")


# ---------------------------------------------------------------- 13.10 float32 range
@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_convert_float32_refuses_values_beyond_its_range(tmp_path, storage):
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(b"+1 1:1 2:3e38\n-1 2:1\n+1 1:-4e38 2:1\n")
    proc = run_cli(["data", "convert", src, out, "--dtype", "float32", "--storage", storage])
    assert_one_line_error(proc, str(src), 3, "value -4e+38 of feature 1 overflows float32")
    assert os.listdir(tmp_path) == ["in.svm"]
    run_cli(["data", "convert", src, out, "--dtype", "float64"], check=True)
    assert read_shard(out).X.max() == 3e38


# ---------------------------------------------------------------- 13.11 crafted CSR, f*
def restamp(f, rows):
    """Recompute the stored checksums of `rows` (a crafted file that carries valid ones)."""
    indptr = f["indptr"][rows.start:rows.stop + 1]
    lo, hi = int(indptr[0]), int(indptr[-1])
    f["checksum"][rows] = row_checksums_csr(indptr - lo, f["indices"][lo:hi], f["data"][lo:hi],
                                            f["y"][rows])


def crafted(tmp_path, problem):
    """A CSR file whose row 30 has its first two column indices swapped or repeated, with
    valid checksums (so only the structure check can see it)."""
    src, path = tmp_path / "in.svm", tmp_path / "d.h5"
    src.write_bytes(lines_of(40))
    convert(src, path, storage="csr")
    with h5py.File(path, "r+") as f:
        p = int(f["indptr"][30])
        cols = f["indices"][p:p + 2]
        f["indices"][p:p + 2] = cols[::-1] if problem == "unsorted" else cols[[0, 0]]
        restamp(f, slice(30, 31))
    return path


@pytest.mark.parametrize("problem", ["unsorted", "duplicate"])
def test_crafted_csr_rows_are_refused_by_their_shard(tmp_path, problem):
    path = crafted(tmp_path, problem)
    read_shard(path, 0, 2)
    with pytest.raises(MpimemError, match=r"row 30 has unsorted or duplicate column indices"):
        read_shard(path, 1, 2)


def test_training_on_a_crafted_file_ends_in_one_line(tmp_path):
    """Before, training ran on it without a word."""
    path = crafted(tmp_path, "duplicate")
    proc = run_mpi(3, ["train", path, "--out", tmp_path / "r.h5", "--epochs", "0.5", "--quiet"],
                   timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("mpimem: error:") == 1 and "Traceback" not in proc.stderr
    assert "row 30 has unsorted or duplicate column indices" in proc.stderr


def test_edited_optimum_is_refused_and_a_negative_gap_flagged(tmp_path):
    path = tmp_path / "o.h5"
    synthesize(path, "epsilon", n=200, d=10, seed=2)
    run_cli(["data", "optimum", path], check=True)
    meta = read_meta(path)
    shard, x = read_shard(path), read_xstar(path)
    loss = float(np.logaddexp(0, -shard.y * (shard.X.astype(np.float64) @ x)).sum())
    fstar = loss / meta.n + 0.5 * meta.lam_star * float(x @ x)          # f(x*), plain numpy
    assert meta.fstar == pytest.approx(fstar, rel=1e-12)
    with h5py.File(path, "r+") as f:
        f["optimum"].attrs["fstar"] = fstar + 0.01                       # above the minimum
    proc = run_cli(["data", "info", path])
    assert_one_line_error(proc, str(path), None, "the stored optimum does not match the data")
    # the same f* reaching the metrics: f(xbar) - f* < 0 is flagged, rounding is not
    sums = np.array([loss, 0.0, loss, 0.0])
    row = eval_point(sums, meta.n, meta.lam_star, x, x, fstar + 0.01)
    assert row["subopt_xbar"] == pytest.approx(-0.01, rel=1e-6)
    assert "f(xbar) - f* = -1.000e-02 < 0" in negative_gap(dict(row, round=7))
    exact = eval_point(sums, meta.n, meta.lam_star, x, x, fstar * (1 + 1e-14))
    assert exact["subopt_xbar"] <= 0 and negative_gap(exact) is None


def read_xstar(path):
    with h5py.File(path, "r") as f:
        return f["optimum/x"][()]


# ---------------------------------------------------------------- tracebacks -> one line
@pytest.mark.parametrize("compressed", [False, True])
def test_convert_streams_from_a_pipe(tmp_path, compressed):
    """`cat f | mpimem data convert /dev/stdin OUT` (plain and gzip) equals converting f."""
    text = lines_of(3000)
    src = tmp_path / "in.svm"
    src.write_bytes(gzip.compress(text) if compressed else text)
    run_cli(["data", "convert", src, tmp_path / "file.h5", "--chunk-mb", "0.01"], check=True)
    cat = subprocess.Popen(["cat", src], stdout=subprocess.PIPE)
    proc = run(mpimem_cmd("data", "convert", "/dev/stdin", tmp_path / "pipe.h5",
                          "--chunk-mb", "0.01"), stdin=cat.stdout)
    cat.stdout.close()
    assert cat.wait() == 0 and proc.returncode == 0, proc.stderr
    a, b = read_shard(tmp_path / "file.h5"), read_shard(tmp_path / "pipe.h5")
    assert (a.X != b.X).nnz == 0 and np.array_equal(a.y, b.y)
    assert read_meta(tmp_path / "pipe.h5").source_sha256 == read_meta(tmp_path / "file.h5").source_sha256


def test_convert_reads_a_fifo(tmp_path):
    fifo, out = tmp_path / "in.fifo", tmp_path / "out.h5"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(TEXT,))
    writer.start()
    proc = run_cli(["data", "convert", fifo, out])
    writer.join(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert read_meta(out).n == 4


def test_info_on_a_file_without_rows(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        write_header(f, CSRWriter(f, np.float64), d=3, source="none", source_bytes=0,
                     source_sha256="")
    proc = run_cli(["data", "info", path])
    assert_one_line_error(proc, str(path), None, "n = 0")


def test_optimum_group_without_attributes_reads_as_none(tmp_path):
    """What a kill inside the old store_optimum left: /optimum/x and no attributes."""
    path = tmp_path / "o.h5"
    synthesize(path, "rcv1", n=200, d=300, seed=2)
    with h5py.File(path, "r+") as f:
        f.create_group("optimum").create_dataset("x", data=np.zeros(300))
    proc = run_cli(["data", "info", path], check=True)
    assert "optimum: none: incomplete /optimum group ignored" in proc.stdout
    assert read_meta(path).fstar is None
    run_cli(["data", "optimum", path], check=True)
    assert read_meta(path).fstar is not None


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    src, out = tmp_path / "in.svm", tmp_path / "out.h5"
    src.write_bytes(TEXT)
    host = socket.gethostname()
    dead, alive = dead_pid(), os.getpid()
    names = [f".out.h5.staging.{host}.{dead}", f".out.h5.tmp.{host}.{dead}",
             f".out.h5.tmp.{host}.{alive}", f".out.h5.tmp.otherhost.{dead}"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    run_cli(["data", "convert", src, out], check=True)
    assert sorted(os.listdir(tmp_path)) == sorted(["in.svm", "out.h5", *names[2:]])


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_convert_leaves_nothing(tmp_path, signum, status):
    """The converter waits on a pipe with its staging file open; a signal ends it in one line
    and removes the staging file."""
    out = tmp_path / "out.h5"
    proc = subprocess.Popen(mpimem_cmd("data", "convert", "/dev/stdin", out, "--chunk-mb", "0.01"),
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    proc.stdin.write(lines_of(2000))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not any(".staging." in name for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, "no staging file appeared"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("convert did not end after the signal")
    assert proc.returncode == status, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpimem: error: interrupted"), err
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- ENOSPC on a real tmpfs
@pytest.fixture
def tiny_disk(tmp_path, request):
    """A tmpfs of `request.param` (default 1m) bytes (root only; skipped, with the reason,
    where mounting is not permitted)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    size = getattr(request, "param", "1m")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("command", ["convert", "synth"])
def test_full_disk_convert_and_synth_one_line(tmp_path, tiny_disk, command):
    out = tiny_disk / "out.h5"
    if command == "convert":
        src = tmp_path / "in.svm"
        src.write_bytes(lines_of(30000))
        args = ["data", "convert", src, out, "--chunk-mb", "0.25"]
    else:
        args = ["data", "synth", "--like", "epsilon", "--n", "3000", "--d", "200", out]
    proc = run_cli(args)
    assert_one_line_error(proc, str(out), None, "no space left on device")
    assert os.listdir(tiny_disk) == []


@pytest.mark.parametrize("tiny_disk", ["2m"], indirect=True)
def test_full_disk_optimum_one_line_file_intact(tiny_disk):
    path = tiny_disk / "d.h5"
    synthesize(path, "rcv1", n=800, d=20000, seed=1)
    before = read_shard(path)
    proc = run_cli(["data", "optimum", path])
    assert_one_line_error(proc, str(path), None, "no space left on device")
    assert os.listdir(tiny_disk) == ["d.h5"]
    meta = read_meta(path)
    assert meta.fstar is None and meta.optimum_note is None
    assert (read_shard(path).X != before.X).nnz == 0


# ---------------------------------------------------------------- issue 10: rows per rank
def test_read_meta_reads_no_rows_and_labels_are_checked_per_shard(tmp_path):
    """A bad label in the last row: read_meta does not read /y (its bytes are counted), so
    rank 0 of 2 reads its block; rank 1 refuses it."""
    path = tmp_path / "big.h5"
    synthesize(path, "epsilon", n=200_000, d=2, seed=0)
    with h5py.File(path, "r+") as f:
        f["y"][-1] = 3
    counter = CountingFile(path)
    meta = read_meta(counter)
    assert meta.n == 200_000 and counter.bytes_read < 20_000      # /y alone is 200,000 bytes
    read_shard(path, 0, 2)
    with pytest.raises(MpimemError, match="label 3 in row 199999"):
        read_shard(path, 1, 2)
