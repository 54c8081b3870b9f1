"""Faults (docs/checkpoints.md, "what survives what"): a worker killed with SIGKILL, rank 0 dying
while it writes a checkpoint, preemption by SIGUSR1/SIGTERM, a diverging (NaN) run. After each,
`--resume` finishes the run bit-identical to an uninterrupted run with the same seed. And an
exception on one rank anywhere in a run ends every rank (docs/checkpoints.md, "Signals")."""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import launch_mpi, run_mpi
from mpimem.run import checkpoint as CK
from mpimem.run.runfile import read_run

OPTS = ["--compressor", "top_k", "--k", "10", "--epochs", "4", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def reference(rcv, tmp_path_factory):
    """The uninterrupted run (2400 rounds, W = 2)."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_mpi(3, ["train", rcv, "--out", out, *OPTS], timeout=240, check=True)
    return read_run(out)


def launch(args, env=None):
    """mpiexec -n 3 mpimem ARGS in the background, killed after 240 s (conftest.launch_mpi)."""
    return launch_mpi(3, args, env)


def start(rcv, out, *extra, env=None, quiet=True):
    opts = OPTS if quiet else [o for o in OPTS if o != "--quiet"]
    return launch(["train", rcv, "--out", out, *opts, *extra], env)


def wait_until(proc, ready, what, timeout=120):
    """Poll ready() until it is true; fail if the job ends first or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit {proc.returncode}) before {what}: "
                        f"{proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"not {what} after {timeout}s")


def wait_for_checkpoints(proc, directory, count):
    wait_until(proc, lambda: os.path.isdir(directory) and
               len(CK.list_checkpoints(directory)) >= count,
               f"{count} checkpoint(s) in {directory}")


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the job did not end within {timeout}s (hang)\n{err}")
    return proc.returncode, err


def resume_and_compare(target, out, reference):
    proc = run_mpi(3, ["train", "--resume", target, "--quiet"], timeout=240)
    assert proc.returncode == 0, proc.stderr
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and run["attrs"]["resumed"] >= 1
    for key in ("x", "xbar", "memory"):
        assert np.array_equal(run["final"][key], reference["final"][key]), key
    for name in ("round", "bytes_up", "bytes_down", "loss_xbar"):
        assert np.array_equal(run["metrics"][name], reference["metrics"][name]), name
    return proc


def test_worker_sigkill_ends_job_and_resume_is_bit_identical(rcv, reference, tmp_path):
    out, pids = tmp_path / "run.h5", tmp_path / "pids"
    pids.mkdir()
    proc = start(rcv, out, "--checkpoint-every", "100", env={"MPIMEM_PIDFILE_DIR": str(pids)})
    wait_for_checkpoints(proc, tmp_path / "run.ckpt", 2)
    worker = int((pids / "rank1.pid").read_text())
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    rc, err = finish(proc, timeout=30)
    assert time.monotonic() - killed < 10, "the job must end within 10 s of a worker's death"
    assert rc != 0
    # never mistaken for a finished run: "failed" when rank 0 saw the MPI error before the
    # launcher tore the job down, "running" when it was killed first
    assert read_run(out)["attrs"]["status"] in ("running", "failed")
    newest = CK.list_checkpoints(tmp_path / "run.ckpt")[0]
    assert CK._round_of(newest) < reference["attrs"]["rounds"]
    CK.load(newest)
    resume_and_compare(out, out, reference)


def test_rank0_killed_while_writing_keeps_previous_checkpoint(rcv, reference, tmp_path):
    out = tmp_path / "run.h5"
    proc = start(rcv, out, "--checkpoint-every", "500", "--keep-checkpoints", "2",
                 env={"MPIMEM_FAULT": "die-during-checkpoint:3"})
    rc, err = finish(proc, timeout=120)
    assert rc != 0
    kept = CK.list_checkpoints(tmp_path / "run.ckpt")
    assert [CK._round_of(p) for p in kept] == [1000, 500]
    assert any(name.startswith(".tmp-") for name in os.listdir(tmp_path / "run.ckpt"))
    proc = resume_and_compare(out, out, reference)
    assert "(round 1000)" in proc.stderr
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path / "run.ckpt"))


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_preemption_checkpoints_and_exits_75(rcv, reference, tmp_path, sig):
    out = tmp_path / "run.h5"
    proc = start(rcv, out, "--checkpoint-every", "1h", quiet=False)  # only the signal saves
    for line in proc.stdout:  # progress lines: the loop is running once epoch > 0 is printed
        if line.startswith("epoch") and float(line.split()[1]) > 0:
            break
    proc.send_signal(sig)  # to mpiexec, as SLURM does; Hydra forwards it to every rank
    rc, err = finish(proc, timeout=60)
    assert rc == CK.EX_TEMPFAIL, err
    assert "stopped by a signal at round" in err and "--resume" in err
    run = read_run(out)
    assert run["attrs"]["status"] == "preempted"
    stopped = int(run["attrs"]["preempted_round"])
    assert 0 < stopped < reference["attrs"]["rounds"]
    assert [CK._round_of(p) for p in CK.list_checkpoints(tmp_path / "run.ckpt")] == [stopped]
    resume_and_compare(out, out, reference)


def test_nan_loss_stops_with_the_round(rcv, tmp_path):
    out = tmp_path / "run.h5"
    proc = run_mpi(3, ["train", rcv, "--out", out, "--schedule", "constant", "--gamma", "1e308",
                       "--epochs", "1", "--checkpoint-every", "50", "--quiet"], timeout=120)
    assert proc.returncode == 3, proc.stderr   # mpimem.core.metrics.EX_DIVERGED
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpimem: error")]
    assert len(err) == 1 and "NaN/Inf" in err[0] and "round" in err[0]
    assert read_run(out)["attrs"]["status"] == "diverged"
    for path in CK.list_checkpoints(tmp_path / "run.ckpt"):  # only finite states were saved
        assert np.isfinite(CK.load(path)["server"]["z"]).all()


def launch_until_error(args, env):
    """mpiexec -n 3 mpimem ARGS; returns (exit status, stderr, seconds from the first error line
    on stderr to the end of the job)."""
    proc = launch(args, env)  # --quiet: nothing on stdout
    lines, failed_at = [], None
    for line in proc.stderr:
        lines.append(line)
        if failed_at is None and line.startswith("mpimem: error:"):
            failed_at = time.monotonic()
    proc.wait()
    assert failed_at is not None, "".join(lines)
    return proc.returncode, "".join(lines), time.monotonic() - failed_at


@pytest.fixture(scope="module")
def checkpointed(rcv, tmp_path_factory):
    """A checkpointed run that can be resumed: its final checkpoint removed, its newest one is
    mid-run (a complete run is not resumed: "nothing to resume"); the resume cases fail before
    they write anything to it."""
    out = tmp_path_factory.mktemp("ckpt") / "run.h5"
    run_mpi(3, ["train", rcv, "--out", out, "--epochs", "1", "--quiet", "--checkpoint-every",
                "200"], timeout=180, check=True)
    final, earlier = CK.list_checkpoints(out.parent / "run.ckpt")[:2]
    os.remove(final)
    return out


@pytest.mark.parametrize("place,rank,resume", [
    ("write_pidfile", 1, False), ("attrs", 1, False), ("evaluate:3", 2, False),
    ("evaluate:3", 0, False), ("restore", 0, True), ("metrics_so_far", 0, True)],
    ids=["write_pidfile", "attrs", "worker-mid-loop", "rank0-mid-loop", "restore",
         "metrics_so_far"])
def test_one_failing_rank_ends_the_job(rcv, checkpointed, tmp_path, place, rank, resume):
    """An exception on one rank outside the agreed set-up (MPIMEM_FAULT=raise-at:PLACE:RANK)
    ends every rank within 10 s: one line from the failing rank, exit != 0, and the run file,
    if rank 0 failed after creating it, says "failed". Old code: the other ranks waited in
    their next collective forever (no fault hook then: these runs would have completed)."""
    out = checkpointed if resume else tmp_path / "run.h5"
    train = ["train", "--resume", out] if resume else ["train", rcv, "--out", out, "--epochs", "1"]
    name, _, nth = place.partition(":")
    spec = f"raise-at:{name}:{rank}" + (f":{nth}" if nth else "")
    rc, err, seconds = launch_until_error(train + ["--quiet"], {"MPIMEM_FAULT": spec})
    assert rc != 0 and seconds < 10, err
    errors = [ln for ln in err.splitlines() if ln.startswith("mpimem: error:")]
    assert errors == [f"mpimem: error: internal error on rank {rank}: RuntimeError: "
                      f"injected fault at {name} (MPIMEM_FAULT)"], err
    assert "Traceback" not in err
    if rank == 0 and not resume and out.exists():
        run = read_run(out)
        assert run["attrs"]["status"] == "failed" and "injected fault" in run["attrs"]["error"]
