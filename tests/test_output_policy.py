"""The one output policy of every command that creates a file (mpimem.outputs): an existing
regular file only with --overwrite, a directory, FIFO or device never (not even with
--overwrite), one line `mpimem: error: ...` with exit status 2, checked before any work; and
`data optimum` writes only into an mpimem data set. Real files, a real FIFO, a real character
device (made with mknod as root, else /dev/null)."""
import hashlib
import os
import stat
import sys
import time

import pytest

from conftest import ROOT, run, run_cli, run_mpi

PY = sys.executable


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "eps.h5"
    run_cli(["data", "synth", "--like", "epsilon", "--n", 300, "--d", 20, "--seed", 1, path],
            check=True)
    return path


@pytest.fixture(scope="module")
def run_file(data):
    out = data.parent / "run.h5"
    run_mpi(3, ["train", data, "--out", out, "--quiet", "--epochs", "0.5", "--eval-every", "0.1",
                "--checkpoint-every", "off"], check=True)
    return out


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_line(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mpimem: error: "), lines
    for word in words:
        assert word in lines[0], lines
    return lines[0]


def char_device(tmp_path):
    """A character device that must survive: a /dev/full twin made by mknod (root), else
    /dev/null itself."""
    path = tmp_path / "full-device"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        return path
    except (PermissionError, OSError):
        return "/dev/null"


def specials(tmp_path):
    """(path, kind test) of a FIFO, a directory and a character device."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    return [(fifo, stat.S_ISFIFO), (folder, stat.S_ISDIR), (char_device(tmp_path), stat.S_ISCHR)]


def commands(data, run_file, out):
    """Every command that creates a file, writing `out`."""
    return {
        "export": ["export", run_file, "--csv", "--out", out],
        "plot": ["plot", run_file, "--out", out],
        "synth": ["data", "synth", "--like", "epsilon", "--n", 50, "--d", 5, out],
        "convert": ["data", "convert", data.parent / "tiny.svm", out],
    }


@pytest.fixture(scope="module")
def libsvm(data):
    (data.parent / "tiny.svm").write_text("1 1:0.5 2:1\n-1 2:0.25 3:1\n1 1:1\n")


@pytest.mark.parametrize("name", ["export", "plot", "synth", "convert"])
def test_an_existing_file_needs_overwrite(name, data, run_file, libsvm, tmp_path):
    out = tmp_path / ("out.png" if name == "plot" else "out.h5")
    out.write_bytes(b"precious\n")
    proc = run_cli(commands(data, run_file, out)[name])
    one_line(proc, str(out), "exists", "--overwrite")
    assert out.read_bytes() == b"precious\n"
    proc = run_cli(commands(data, run_file, out)[name] + ["--overwrite"])
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() != b"precious\n" and stat.S_ISREG(os.lstat(out).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]      # no temporary left


@pytest.mark.parametrize("name", ["export", "plot", "synth", "convert"])
def test_a_run_file_or_data_set_is_not_replaced(name, data, run_file, libsvm, tmp_path):
    """The report's case: `export --out RUN.h5` replaced the run, `data synth|convert` a data
    set."""
    for victim in (run_file, data):
        before = digest(victim)
        one_line(run_cli(commands(data, run_file, victim)[name]), "exists")
        assert digest(victim) == before


@pytest.mark.parametrize("name", ["export", "plot", "synth", "convert"])
def test_a_fifo_directory_or_device_is_never_replaced(name, data, run_file, libsvm, tmp_path):
    for path, kind in specials(tmp_path):
        for extra in ([], ["--overwrite"]):
            proc = run_cli(commands(data, run_file, path)[name] + extra, timeout=60)
            one_line(proc, str(path))
            assert kind(os.lstat(path).st_mode), f"{path} was replaced"


def test_export_to_a_full_device_as_root(run_file, tmp_path):
    """`export --out /dev/full` became a regular file through the temporary-file rename."""
    dev = char_device(tmp_path)
    for extra in ([], ["--overwrite"]):
        one_line(run_cli(["export", run_file, "--csv", "--out", dev, *extra]),
                 "character device", "never")
        assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_the_check_comes_before_any_work(data, run_file, tmp_path):
    """convert reading a FIFO nobody writes would block, synth of 10^8 rows would take
    minutes: the refusal comes first."""
    out = tmp_path / "taken.h5"
    out.write_bytes(b"x")
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    one_line(run_cli(["data", "convert", fifo, out], timeout=60), "exists")
    one_line(run_cli(["data", "synth", "--like", "epsilon", "--n", 10 ** 8, "--d", 2000, out],
                     timeout=60), "exists")
    one_line(run_cli(["export", tmp_path / "missing.h5", "--csv", "--out", out]), str(out))
    one_line(run_cli(["plot", tmp_path / "missing.h5", "--out", out]), str(out))
    assert time.monotonic() - started < 40
    assert out.read_bytes() == b"x" and not (tmp_path / ".taken.h5.staging").exists()


def test_optimum_writes_only_into_a_data_set(run_file, tmp_path):
    """A FIFO used to block `data optimum` for ever; a run file or a device is refused in one
    line, unchanged."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line(run_cli(["data", "optimum", fifo], timeout=30), "FIFO", "not an mpimem data")
    before = digest(run_file)
    one_line(run_cli(["data", "optimum", run_file]), "not an mpimem data set")
    assert digest(run_file) == before
    dev = char_device(tmp_path)
    one_line(run_cli(["data", "optimum", dev]), "character device")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def figures(results, out, *extra):
    return run([PY, "-m", "analysis.figures", results, "--out", out, *extra], timeout=120,
               cwd=ROOT)


def test_figures_folder_follows_the_policy(run_file, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    os.link(run_file, results / "run.h5")
    out = tmp_path / "fig"
    assert figures(results, out).returncode == 0
    summary = (out / "summary.csv").read_bytes()
    (out / "summary.csv").write_bytes(b"mine\n")
    proc = figures(results, out)                       # refused, before anything is drawn
    assert proc.returncode == 2 and "summary.csv" in proc.stderr and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (out / "summary.csv").read_bytes() == b"mine\n"
    assert figures(results, out, "--overwrite").returncode == 0
    assert (out / "summary.csv").read_bytes() == summary
    os.remove(out / "summary.md")
    os.mkfifo(out / "summary.md")
    proc = figures(results, out, "--overwrite")
    assert proc.returncode == 2 and "FIFO" in proc.stderr
    assert stat.S_ISFIFO(os.lstat(out / "summary.md").st_mode)
    plain = tmp_path / "plain-file"
    plain.write_bytes(b"y")
    proc = figures(results, plain, "--overwrite")
    assert proc.returncode == 2 and "not a folder" in proc.stderr and plain.read_bytes() == b"y"
