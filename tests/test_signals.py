"""Signals and closed pipes (mpimem.signals, docs/checkpoints.md "Signals"): real signals to
real ranks of a real mpiexec run (their pids from MPIMEM_PIDFILE_DIR), real pipes. Every mode
(sync, --mode async, --topology allgather, the tree topologies) checkpoints and exits 75 on a
signal.

A phase of a run is reached deterministically with the MPIMEM_FAULT=sleep-at:PLACE:SECONDS
hook: the test waits until the processes sleep there (/proc/PID/wchan), then signals them."""
import os
import signal
import subprocess
import time

import pytest

import numpy as np

from conftest import MPIEXEC, launch_mpi, mpimem_cmd, run_mpi
from test_faults import wait_until
from mpimem import checkpoint as CK
from mpimem.runfile import read_run

OPTS = ["--compressor", "top_k", "--k", "10", "--seed", "5"]
ROUNDS_1_EPOCH = 600        # rcv: n = 1200, W = 2, b = 1


def start(args, tmp_path, env=None, nranks=3):
    """mpiexec -n NRANKS mpimem train ARGS; every rank writes its pid to tmp_path/pids."""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    return launch_mpi(nranks, ["train", *args], dict(env or {}, MPIMEM_PIDFILE_DIR=str(pids)))


def rank_pids(tmp_path, proc, nranks=3):
    files = [tmp_path / "pids" / f"rank{r}.pid" for r in range(nranks)]
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


SLOW = {"MPIMEM_SLOW_WORKER": "1:0.004"}   # rank 1 sleeps 4 ms a message/round: values unchanged


def interrupt(nranks, args, tmp_path, env=SLOW, sig=signal.SIGTERM, rank=None):
    """Start a run, signal it 0.3 s after its first progress line (mpiexec, which forwards the
    signal to every rank, or only rank `rank`); it must exit 75, preempted, with a valid
    checkpoint of the round it names. Returns (that round, stderr)."""
    out = args[args.index("--out") + 1]
    proc = start(args, tmp_path, env, nranks)
    pids = rank_pids(tmp_path, proc, nranks) if rank is not None else None
    if not any(line.startswith("epoch") for line in proc.stdout):  # the evaluation at round 0
        pytest.fail(f"no progress line (exit {proc.wait()}): {proc.stderr.read()}")
    time.sleep(0.3)
    if rank is None:
        proc.send_signal(sig)
    else:
        os.kill(pids[rank], sig)
    rc, err = finish(proc, time.monotonic())
    assert rc == CK.EX_TEMPFAIL, err
    assert f"resume with: mpiexec -n {nranks} mpimem train --resume" in err
    stopped = assert_preempted(out)
    CK.load(CK.list_checkpoints(os.path.splitext(out)[0] + ".ckpt")[0])  # verifies the SHA-256
    return stopped, err


def same_run(resumed, reference):
    """The resumed run file equals the uninterrupted one: final x, xbar, memories, metrics."""
    a, b = read_run(reference), read_run(resumed)
    assert b["attrs"]["status"] == "complete" and b["attrs"]["resumed"] == 1
    for key in ("x", "xbar", "memory"):
        assert np.array_equal(a["final"][key], b["final"][key]), key
    for name in ("round", "samples", "bytes_up", "bytes_down", "loss_x", "loss_xbar"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name


DETERMINISTIC = [(2, ["--topology", "allgather"], 600), (2, ["--mode", "async"], 1200),
                 (4, ["--topology", "hierarchical", "--group-size", "2"], 300)]


@pytest.mark.parametrize("nranks,mode,rounds", DETERMINISTIC,
                         ids=["allgather-W2", "async-W1", "hierarchical-W4-G2"])
def test_signal_checkpoints_and_resume_equals_uninterrupted(rcv, tmp_path, nranks, mode, rounds):
    """--topology allgather and --mode async at W = 1 (deterministic): the reference run writes
    round-interval checkpoints (async: at quiescent points); SIGTERM to a run in the middle of a
    segment stops it at the next boundary, before the next evaluation (async: time-bounded
    segments of 0.25 s, not only evaluation points), exit 75; --resume then ends bit-identical
    to the reference. Old code: these modes refused --checkpoint-every and --resume, and a
    signal ended the job with exit 143 and the run file "failed"."""
    opts = [rcv, *OPTS, *mode, "--epochs", "1", "--eval-every", "0.5"]
    ref = tmp_path / "ref.h5"
    run_mpi(nranks, ["train", *opts, "--out", ref, "--quiet", "--checkpoint-every", "150",
                     "--keep-checkpoints", "50"], timeout=180, check=True)
    kept = [CK._round_of(p) for p in CK.list_checkpoints(tmp_path / "ref.ckpt")]
    assert sorted(kept) == list(range(150, rounds + 1, 150))
    out = tmp_path / "run.h5"
    stopped, _ = interrupt(nranks, [*opts, "--out", str(out)], tmp_path)
    assert 0 < stopped < rounds // 2, stopped          # before the evaluation at epoch 0.5
    run_mpi(nranks, ["train", "--resume", out, "--quiet"], timeout=180, check=True)
    same_run(out, ref)


def test_async_signal_to_one_worker_checkpoints_and_resume_completes(rcv, tmp_path):
    """--mode async, W = 2 (not deterministic): SIGUSR1 to worker 2 alone; the server learns of
    it at the next pause point's collective decision: exit 75, then --resume completes with
    exactly the planned updates. Old code: exit 138 (SIGUSR1) after the 2 s grace, "failed"."""
    out = tmp_path / "run.h5"
    opts = [rcv, "--out", str(out), *OPTS, "--mode", "async", "--epochs", "40"]
    interrupt(3, opts, tmp_path, sig=signal.SIGUSR1, rank=2)
    run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=180, check=True)
    run = read_run(out)
    a = run["attrs"]
    assert a["status"] == "complete" and a["resumed"] == 1
    assert a["updates_applied"] == a["updates_planned"] == a["updates_sent"] == 2 * 24000
    assert a["pull_checks"] >= 1 and a["pull_checks_failed"] == 0
    assert list(run["metrics"]["round"]) == sorted(set(run["metrics"]["round"]))


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
