"""The run file is never lost (docs/checkpoints.md, "What survives what"): an existing file is
never truncated (a second run on the same --out is refused while the first goes on), --out is
checked before anything is created, and a full disk (a real, small tmpfs) ends the run with
one line, exit 2, a readable run file marked failed and intact earlier checkpoints."""
import os
import subprocess
import time

import pytest

from conftest import launch_mpi, run_mpi
from mpimem.run import checkpoint as CK
from mpimem.errors import MpimemError
from mpimem.run.runfile import RunWriter, read_run

STEPS = ["--schedule", "decay", "--gamma", "2", "--shift", "d/k"]


def errors(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("mpimem: error")]


def start(data, out, *opts, env=None):
    """A run in the background (3 ranks) under a watchdog."""
    return launch_mpi(3, ["train", data, "--out", out, "--quiet", *STEPS, *opts], env)


def wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) too early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def finish(proc, timeout=120):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not end (hang)")
    return proc.returncode, err


# ---------------------------------------------------------------------- in-process
def test_existing_file_is_never_truncated(tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"precious results")
    with pytest.raises(MpimemError, match="exists; give --overwrite"):
        RunWriter(str(path), {"config": "{}"})
    assert path.read_bytes() == b"precious results"
    writer = RunWriter(str(path), {"config": "{}"}, replace=True)  # --overwrite
    writer.append({"round": 0.0})
    writer.finish("complete")
    run = read_run(str(path))
    assert run["attrs"]["status"] == "complete" and list(run["metrics"]["round"]) == [0.0]
    assert [n for n in os.listdir(tmp_path)] == ["run.h5"]  # no temporary left


# ---------------------------------------------------------------------- under MPI
def test_second_run_on_the_same_out_leaves_the_first_intact(rcv, tmp_path):
    out = tmp_path / "run.h5"
    first = start(rcv, out, "--epochs", "0.5", env={"MPIMEM_FAULT": "sleep-at:evaluate:8"})
    wait_for(out.exists, first)
    second = run_mpi(3, ["train", rcv, "--out", out, "--quiet", *STEPS, "--epochs", "0.5"],
                     timeout=120)
    rc, err = finish(first)
    assert rc == 0, err
    run = read_run(out)  # old code: HDF5 truncated it when the second run opened it ("w")
    assert run["attrs"]["status"] == "complete" and len(run["metrics"]["round"]) == 11
    assert set(run["final"]) == {"x", "xbar", "memory"}
    assert second.returncode == 2 and len(errors(second)) == 1, second.stderr
    assert "the run file exists" in errors(second)[0] and "Traceback" not in second.stderr


@pytest.mark.parametrize("where", ["directory", "device"])
def test_out_is_checked_before_anything_is_created(rcv, tmp_path, where):
    out = tmp_path / "results" if where == "directory" else "/dev/null"
    if where == "directory":
        out.mkdir()
    ckpt = f"{out}.ckpt"
    if os.path.exists(ckpt):
        pytest.skip(f"{ckpt} exists already (left by an older mpimem)")
    proc = run_mpi(3, ["train", rcv, "--out", out, "--quiet", *STEPS, "--epochs", "0.1"],
                   timeout=120)
    assert proc.returncode == 2 and len(errors(proc)) == 1, proc.stderr
    assert ("is a directory" if where == "directory" else "not a regular file") in proc.stderr
    assert not os.path.exists(ckpt)


@pytest.fixture
def small_disk(tmp_path):
    """mount(size): a fresh tmpfs of that size (skips where mounting is not permitted)."""
    mounted = []

    def mount(size):
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}); a real "
                        f"full disk needs it")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(directory):
    """Write zeros to a file in `directory` until the file system is full."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError:
        pass
    try:
        while True:
            os.write(fd, bytes(512))
    except OSError:
        pass
    os.close(fd)


def assert_failed_cleanly(proc_rc, stderr, out):
    lines = [ln for ln in stderr.splitlines() if ln.startswith("mpimem: error")]
    assert proc_rc == 2 and len(lines) == 1, stderr
    assert "No space left on device" in lines[0] and "Traceback" not in stderr, stderr
    run = read_run(out)  # readable, and never mistaken for a finished run
    assert run["attrs"]["status"] == "failed" and "No space left" in run["attrs"]["error"]
    assert len(run["metrics"]["round"]) >= 1 and not run["final"]


def test_disk_full_during_the_run(rcv, tmp_path, small_disk):
    """Another job fills the disk after the first checkpoint: the next write fails."""
    disk = small_disk("4m")
    out = disk / "run.h5"
    proc = start(rcv, out, "--epochs", "4", "--checkpoint-every", "100", "--keep-checkpoints", "5")
    wait_for(lambda: os.path.isdir(disk / "run.ckpt") and
             len(CK.list_checkpoints(disk / "run.ckpt")) >= 1, proc)
    fill(disk)
    rc, err = finish(proc)
    assert_failed_cleanly(rc, err, out)
    kept = CK.list_checkpoints(disk / "run.ckpt")
    assert kept and all(CK.load(p)["attrs"]["round"] % 100 == 0 for p in kept)
    assert not [n for n in os.listdir(disk / "run.ckpt") if n.startswith(".tmp-")]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """RCV1-like, n = 600, d = 30,000: the final x, xbar and memories (960 KB) dwarf the run
    file during the run."""
    from datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("wide") / "wide.h5", "rcv1", 600, 30000,
                        optimum=False)


def test_disk_full_at_the_final_write(wide, small_disk):
    """The disk holds the run file during the run (128 KiB, rewritten through a temporary
    copy) but not the final one. Old code: HDF5 failed inside the open run file (exit 0 or a
    crash, a run file that does not open or says "running")."""
    disk = small_disk("600k")
    out = disk / "run.h5"
    proc = run_mpi(3, ["train", wide, "--out", out, "--quiet", *STEPS, "--epochs", "0.2",
                       "--checkpoint-every", "off"], timeout=180)
    assert_failed_cleanly(proc.returncode, proc.stderr, out)
    assert "marked failed" in proc.stderr
    assert len(read_run(out)["metrics"]["round"]) == 11  # every row written before is kept
