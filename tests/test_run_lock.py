"""The run lock (mpimem.run.lock): a run being written holds RUN.h5.lock (host, pid), so a second
`--resume` of the same run at once is refused in one line; a dead job's lock is taken over with
a note and the run resumes; a complete run is not resumed ("run is complete; nothing to
resume", exit 2, the file unchanged); `mpimem info` says when a running file's job may be gone.
Real mpiexec launches, a real kill -9 of rank 0."""
import hashlib
import json
import os
import shutil
import signal
import socket
import time

import h5py
import pytest

from conftest import launch_mpi, run_cli, run_mpi

STEPS = ["--quiet", "--eval-every", "0.1"]


@pytest.fixture(scope="module")
def failed(tmp_path_factory):
    """A run that failed at its third evaluation point, with checkpoints: resumable."""
    folder = tmp_path_factory.mktemp("lock")
    data = folder / "eps.h5"
    run_cli(["data", "synth", "--like", "epsilon", "--n", 300, "--d", 20, "--seed", 1, data],
            check=True)
    out = folder / "run.h5"
    proc = run_mpi(3, ["train", data, "--out", out, *STEPS, "--epochs", "1",
                       "--checkpoint-every", "10"], env={"MPIMEM_FAULT": "raise-at:evaluate:0:3"})
    assert proc.returncode != 0 and os.listdir(f"{folder}/run.ckpt"), proc.stderr
    assert not os.path.exists(f"{out}.lock")             # released by the abort
    return out


def copy_of(run, tmp_path):
    """The failed run and its RUN.ckpt/ under tmp_path (a run resumes its copy's own files)."""
    out = tmp_path / "run.h5"
    shutil.copy(run, out)
    shutil.copytree(f"{run.parent}/run.ckpt", tmp_path / "run.ckpt")
    return out


def one_line(proc, *words):
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("mpimem: error")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines
    return lines[0]


def wait_for_lock(out, proc, seconds=150):
    lock = f"{out}.lock"
    deadline = time.monotonic() + seconds
    while not os.path.exists(lock) or not open(lock).read().strip():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no lock"
        time.sleep(0.1)
    return json.loads(open(lock).read())


def attrs(path):
    with h5py.File(path, "r", locking=False) as h5:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}


def test_two_resumes_at_once(failed, tmp_path):
    out = copy_of(failed, tmp_path)
    first = launch_mpi(3, ["train", "--resume", out, "--quiet"],
                       env={"MPIMEM_FAULT": "sleep-at:evaluate:8"})
    lock = wait_for_lock(out, first)
    assert lock["host"] == socket.gethostname() and lock["pid"] > 0
    second = run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=120)
    line = one_line(second, "being written by another job", f"host {lock['host']}",
                    f"pid {lock['pid']}")
    assert "resuming from" not in second.stderr, line              # it never started
    assert first.poll() is None, "the first run ended before the second was refused"
    first.communicate(timeout=200)
    assert first.returncode == 0
    a = attrs(out)
    assert a["status"] == "complete" and a["resumed"] == 1         # resumed once, not twice
    assert not os.path.exists(f"{out}.lock")


def test_fresh_overwrite_of_a_run_being_written_is_refused(failed, tmp_path):
    """A lock of a live process (here the test itself), and one of another host."""
    out = copy_of(failed, tmp_path)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}
    other = {"host": "elsewhere.example", "pid": 4242}
    for holder, words in ((me, ["running"]), (other, ["another host", f"remove {out}.lock"])):
        with open(f"{out}.lock", "w") as fh:
            json.dump(holder, fh)
        for args in (["train", failed.parent / "eps.h5", "--out", out, "--overwrite", *STEPS],
                     ["train", "--resume", out, "--quiet"]):
            one_line(run_mpi(3, args, timeout=120), f"host {holder['host']}",
                     f"pid {holder['pid']}", *words)
        assert json.load(open(f"{out}.lock")) == holder             # not taken, not removed
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


def test_complete_run_is_not_resumed(failed, tmp_path):
    out = copy_of(failed, tmp_path)
    run_mpi(3, ["train", "--resume", out, "--quiet"], check=True)
    assert attrs(out)["status"] == "complete" and attrs(out)["resumed"] == 1
    before, mtime = hashlib.sha256(out.read_bytes()).hexdigest(), os.stat(out).st_mtime_ns
    proc = run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=120)
    one_line(proc, "run is complete; nothing to resume")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert os.stat(out).st_mtime_ns == mtime and attrs(out)["resumed"] == 1
    assert not os.path.exists(f"{out}.lock")


def test_kill_9_of_rank_0_info_says_gone_and_resume_takes_over(failed, tmp_path):
    out = copy_of(failed, tmp_path)
    proc = launch_mpi(3, ["train", "--resume", out, "--quiet"],
                      env={"MPIMEM_FAULT": "sleep-at:evaluate:60"})
    lock = wait_for_lock(out, proc)
    time.sleep(1.0)
    live = json.loads(run_cli(["info", "--json", out], check=True).stdout)["progress"]
    assert live["job"]["alive"] is True and not live["job"]["maybe_gone"]
    os.kill(lock["pid"], signal.SIGKILL)
    try:
        proc.communicate(timeout=60)
    except Exception:
        proc.kill()
        proc.communicate()
    assert attrs(out)["status"] == "running" and os.path.exists(f"{out}.lock")
    info = run_cli(["info", out], check=True).stdout
    assert "status running" in info and "the job may be gone" in info, info
    assert f"pid {lock['pid']}" in info and "last written" in info and "ETA" not in info, info
    p = json.loads(run_cli(["info", "--json", out], check=True).stdout)["progress"]
    assert p["job"]["maybe_gone"] is True and p["job"]["alive"] is False and p["eta_s"] is None
    resumed = run_mpi(3, ["train", "--resume", out, "--quiet"], check=True)
    notes = [ln for ln in resumed.stderr.splitlines() if "stale lock" in ln]
    assert len(notes) == 1 and f"pid {lock['pid']}" in notes[0], resumed.stderr
    assert attrs(out)["status"] == "complete" and not os.path.exists(f"{out}.lock")


def test_info_of_an_old_running_file_says_the_job_may_be_gone(failed, tmp_path):
    """No MPI: a running file of another host's job, last written two hours ago."""
    out = copy_of(failed, tmp_path)
    with h5py.File(out, "r+") as h5:
        h5.attrs["status"] = "running"
    with open(f"{out}.lock", "w") as fh:
        json.dump({"host": "elsewhere.example", "pid": 7}, fh)
    fresh = json.loads(run_cli(["info", "--json", out], check=True).stdout)["progress"]
    assert fresh["job"]["alive"] is None and not fresh["job"]["maybe_gone"]
    old = time.time() - 7200
    os.utime(out, (old, old))
    info = run_cli(["info", out], check=True).stdout
    assert "the job may be gone: not written for 2h00m" in info and "ETA" not in info, info
    p = json.loads(run_cli(["info", "--json", out], check=True).stdout)["progress"]
    assert p["job"]["maybe_gone"] and p["age_s"] > 7000 and p["eta_s"] is None
