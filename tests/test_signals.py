"""Signals and closed pipes (mpimem.signals, docs/checkpoints.md "Signals"): real signals to
real ranks of a real mpiexec run (their pids from MPIMEM_PIDFILE_DIR), real pipes.

A phase of a run is reached deterministically with the MPIMEM_FAULT=sleep-at:PLACE:SECONDS
hook: the test waits until the processes sleep there (/proc/PID/wchan), then signals them."""
import os
import signal
import subprocess
import time

import pytest

from conftest import MPIEXEC, mpimem_cmd, run_mpi
from test_faults import launch, wait_until
from mpimem import checkpoint as CK
from mpimem.runfile import read_run

OPTS = ["--compressor", "top_k", "--k", "10", "--seed", "5"]
ROUNDS_1_EPOCH = 600        # rcv: n = 1200, W = 2, b = 1


def start(args, tmp_path, env=None):
    """mpiexec -n 3 mpimem train ARGS; every rank writes its pid to tmp_path/pids."""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    return launch(["train", *args], dict(env or {}, MPIMEM_PIDFILE_DIR=str(pids)))


def rank_pids(tmp_path, proc):
    files = [tmp_path / "pids" / f"rank{r}.pid" for r in range(3)]
    wait_until(proc, lambda: all(f.exists() and f.read_text().endswith("\n") for f in files),
               "every rank wrote its pid")
    return [int(f.read_text()) for f in files]


def sleeping(pid):
    """Whether process PID sleeps in time.sleep (the sleep-at hook) right now."""
    try:
        with open(f"/proc/{pid}/wchan") as fh:
            return "nanosleep" in fh.read()
    except OSError:
        return False


def wait_for_loop(proc):
    """Read progress lines until one with epoch > 0: the rounds are running."""
    for line in proc.stdout:
        if line.startswith("epoch") and float(line.split()[1]) > 0:
            return
    pytest.fail(f"no progress line with epoch > 0 (exit {proc.wait()}): {proc.stderr.read()}")


def finish(proc, since, limit=10):
    """Wait for the job; it must end within `limit` seconds of `since`."""
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the job did not end within 60 s of the signal (hang)\n{err}")
    assert time.monotonic() - since < limit, f"the job took over {limit} s to end\n{err}"
    assert "Traceback" not in out + err, err
    return proc.returncode, err


def assert_preempted(out, stopped_round=None):
    run = read_run(out)
    assert run["attrs"]["status"] == "preempted"
    stopped = int(run["attrs"]["preempted_round"])
    if stopped_round is not None:
        assert stopped == stopped_round
    ckpt = os.path.splitext(out)[0] + ".ckpt"
    assert [CK._round_of(p) for p in CK.list_checkpoints(ckpt)][0] == stopped
    return stopped


@pytest.mark.parametrize("targets", [[1], [0, 1, 2]], ids=["one-rank", "all-ranks"])
def test_sigint_to_ranks_checkpoints_and_exits_75(rcv, tmp_path, targets):
    """SIGINT (Ctrl-C, `timeout -s INT`) is handled like SIGTERM: the job stops at the next
    sync point with a checkpoint, exit 75. Old code: KeyboardInterrupt left the interrupted
    rank in MPI_Finalize and the others in the rounds, a hang with the run file "running"."""
    out = tmp_path / "run.h5"
    proc = start([rcv, "--out", out, *OPTS, "--epochs", "40", "--eval-every", "0.5"], tmp_path)
    pids = rank_pids(tmp_path, proc)
    wait_for_loop(proc)
    for rank in targets:
        os.kill(pids[rank], signal.SIGINT)
    rc, err = finish(proc, time.monotonic())
    assert rc == CK.EX_TEMPFAIL, err
    assert 0 < assert_preempted(out) < 40 * ROUNDS_1_EPOCH


def test_signal_during_startup_stops_at_round_0_and_resume_restarts(rcv, tmp_path):
    """SIGUSR1 (SLURM's warning signal, forwarded by mpiexec) while every rank is still in its
    compile warm-up: exit 75 with a checkpoint of the untouched round-0 state, from which
    --resume completes the run (a restart). Old code: the handlers were installed only after
    the warm-up, so USR1 killed the ranks (exit 10 from the launcher, nothing resumable)."""
    out = tmp_path / "run.h5"
    proc = start([rcv, "--out", out, *OPTS, "--quiet", "--epochs", "1"], tmp_path,
                 env={"MPIMEM_FAULT": "sleep-at:warm-up:4"})
    pids = rank_pids(tmp_path, proc)
    wait_until(proc, lambda: all(map(sleeping, pids)), "every rank in the warm-up")
    proc.send_signal(signal.SIGUSR1)
    rc, err = finish(proc, time.monotonic())
    assert rc == CK.EX_TEMPFAIL, err
    assert "stopped by a signal at round 0" in err
    assert_preempted(out, stopped_round=0)
    ckpt = CK.load(CK.list_checkpoints(tmp_path / "run.ckpt")[0])
    assert not ckpt["server"]["z"].any() and all(not w["m"].any() for w in ckpt["workers"])
    run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=180, check=True)
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and run["metrics"]["round"][-1] == ROUNDS_1_EPOCH


def test_signal_during_shutdown_lets_the_run_complete(rcv, tmp_path):
    """After the last round's sync point a signal is ignored: the run completes, exit 0 (the
    documented choice). SIGINT to every rank there: old code raised KeyboardInterrupt in each."""
    out = tmp_path / "run.h5"
    proc = start([rcv, "--out", out, *OPTS, "--quiet", "--epochs", "1"], tmp_path,
                 env={"MPIMEM_FAULT": "sleep-at:shutdown:3"})
    pids = rank_pids(tmp_path, proc)
    final = tmp_path / "run.ckpt" / f"ckpt-{ROUNDS_1_EPOCH:09d}.h5"
    wait_until(proc, lambda: final.exists() and all(map(sleeping, pids)), "in the shutdown")
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    rc, err = finish(proc, time.monotonic())
    assert rc == 0, err
    assert read_run(out)["attrs"]["status"] == "complete"


def test_signal_stops_a_run_without_checkpoints_at_once(rcv, tmp_path):
    """--mode async has no sync points: SIGTERM (to mpiexec, which forwards it) stops the job
    at once, exit 128 + 15, run file "failed". Old code: the signal was kept and never read,
    the run went on to its end (and under SLURM to the kill at the time limit)."""
    out = tmp_path / "run.h5"
    proc = start([rcv, "--out", out, *OPTS, "--mode", "async", "--epochs", "40"], tmp_path)
    wait_for_loop(proc)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, time.monotonic())
    assert rc == 128 + signal.SIGTERM, err
    run = read_run(out)
    assert run["attrs"]["status"] == "failed" and "SIGTERM" in run["attrs"]["error"]


@pytest.fixture(scope="module")
def piped_run(rcv, tmp_path_factory):
    """Rank 0's stdout is a real pipe into `head -2` (an MPMD launch: rank 0 runs in bash, the
    workers directly); 41 progress lines are printed, head reads 2 and goes."""
    out = tmp_path_factory.mktemp("pipe") / "run.h5"
    train = ["train", rcv, "--out", out, *OPTS, "--epochs", "2", "--eval-every", "0.05"]
    rank0 = ["bash", "-c", 'set -o pipefail; "$@" | head -2', "bash", *mpimem_cmd(*train)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPIMEM_EXPECT_RANKS="3")
    proc = subprocess.run([MPIEXEC, "-n", "1", *rank0, ":", "-n", "2", *mpimem_cmd(*train)],
                          capture_output=True, text=True, timeout=180, env=env)
    return proc, out


def test_training_survives_a_closed_stdout(piped_run):
    """After head has gone the progress lines stop, the rounds go on and the run completes.
    Old code: BrokenPipeError in the progress print failed and aborted the run. (Through
    Hydra's own stdout mpimem cannot help it: docs/checkpoints.md, "Signals".)"""
    proc, out = piped_run
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2 and "Traceback" not in proc.stderr
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and len(run["metrics"]["round"]) == 41


@pytest.mark.parametrize("command", [["info", "{run}"], ["data", "info", "{data}"]],
                         ids=["info", "data-info"])
def test_short_command_to_a_closed_pipe_exits_quietly(rcv, piped_run, command):
    """`mpimem info RUN.h5 | head`: nothing on stderr, exit 141 (128 + SIGPIPE, as `cat`).
    The reader is gone before the command writes. Old code: a BrokenPipeError traceback."""
    args = [a.format(run=piped_run[1], data=rcv) for a in command]
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run(mpimem_cmd(*args), stdout=write, stderr=subprocess.PIPE, text=True,
                          timeout=60)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_ctrl_c_during_startup_imports_is_one_line(rcv, tmp_path):
    """SIGINT while `mpimem data info` is starting (the sleep-at hook sits just before the heavy
    imports of the sub-commands): one line, exit 130, no traceback."""
    proc = subprocess.Popen(mpimem_cmd("data", "info", rcv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MPIMEM_FAULT="sleep-at:start-up:30"))
    wait_until(proc, lambda: sleeping(proc.pid), "in the start-up", timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (130, "", "mpimem: error: interrupted\n")
