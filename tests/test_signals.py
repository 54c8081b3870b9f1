"""Signals and closed pipes (mpimem.run.signals, docs/checkpoints.md "Signals"): real signals to
real ranks of a real mpiexec run (their pids from MPIMEM_PIDFILE_DIR), real pipes. Every mode
(sync, --mode async, --topology allgather, the tree topologies) checkpoints and exits 75 on a
signal.

A phase of a run is reached deterministically with the MPIMEM_FAULT=sleep-at:PLACE:SECONDS
hook: the test waits until the processes sleep there (/proc/PID/wchan), then signals them."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import numpy as np

from conftest import MPIEXEC, launch_mpi, mpimem_cmd, run_mpi
from test_faults import wait_until
from mpimem.run import checkpoint as CK
from mpimem.run.runfile import read_run

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


@pytest.mark.mpi_core
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


STARTUP_MODES = [(3, [], ROUNDS_1_EPOCH), (2, ["--topology", "allgather"], ROUNDS_1_EPOCH),
                 (3, ["--mode", "async"], ROUNDS_1_EPOCH)]


@pytest.mark.parametrize("nranks,mode,rounds", STARTUP_MODES, ids=["server", "allgather", "async"])
def test_signal_during_startup_stops_at_round_0_and_resume_restarts(rcv, tmp_path, nranks, mode,
                                                                    rounds):
    """SIGUSR1 (SLURM's warning signal, forwarded by mpiexec) while every rank is still in its
    compile warm-up: exit 75 with a checkpoint of the untouched round-0 state, from which
    --resume completes the run (a restart) with one row per evaluation point. Old code: the
    handlers were installed only after the warm-up, so USR1 killed the ranks (exit 10 from the
    launcher, nothing resumable); then the resumed run evaluated round 0 again (12 rows, the
    round-0 row twice: the resumed-row rule skipped only a start round > 0)."""
    out = tmp_path / "run.h5"
    proc = start([rcv, "--out", out, *OPTS, *mode, "--quiet", "--epochs", "1"], tmp_path,
                 env={"MPIMEM_FAULT": "sleep-at:warm-up:4"}, nranks=nranks)
    pids = rank_pids(tmp_path, proc, nranks)
    wait_until(proc, lambda: all(map(sleeping, pids)), "every rank in the warm-up")
    proc.send_signal(signal.SIGUSR1)
    rc, err = finish(proc, time.monotonic(), limit=30)   # the rest of the start-up first
    assert rc == CK.EX_TEMPFAIL, err
    assert "stopped by a signal at round 0" in err
    assert_preempted(out, stopped_round=0)
    ckpt = CK.load(CK.list_checkpoints(tmp_path / "run.ckpt")[0])
    assert not ckpt["server"]["z"].any() and all(not w["m"].any() for w in ckpt["workers"])
    assert list(ckpt["metrics"]["round"]) == [0]
    run_mpi(nranks, ["train", "--resume", out, "--quiet"], timeout=180, check=True)
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and run["metrics"]["round"][-1] == rounds
    assert list(run["metrics"]["round"]) == [rounds * i // 10 for i in range(11)]
    assert len(run["metrics"]["loss_x"]) == 11


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


@pytest.mark.mpi_core
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


# ---------------------------------------------------------------------- under load
@pytest.fixture
def busy():
    """Two busy loops beside the test (load average about 4 on 2 cores with the ranks), killed
    on exit whatever happens."""
    loops = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2)]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_a_signal_at_any_moment_ends_75_or_0(rcv, tmp_path, busy):
    """SIGTERM, SIGINT or SIGUSR1 to mpiexec (forwarded to every rank) at many moments of a
    short run, from the start-up to after its end, with two busy loops beside it: every job
    ends 75 (preempted, with the checkpoint of the round it names) or 0 (complete). Old code:
    a signal in the interpreter's shutdown, after the run file said "complete", killed a rank
    (exit 15: Python resets its handled signals to SIG_DFL there), about 1 in 4 near the end."""
    def launch(tag):
        out = tmp_path / f"run{tag}.h5"
        return out, launch_mpi(3, ["train", rcv, "--out", out, *OPTS, "--epochs", "1",
                                   "--quiet"], kill_after=120)

    for tag in ("warm", "ref"):      # the first may compile; the second gives the duration
        out, proc = launch(tag)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=150)
        total = time.monotonic() - t0
        assert proc.returncode == 0, err
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]
    outcomes, preempted = [], None
    for i, frac in enumerate([0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.99, 1.02, 1.05, 1.1]):
        out, proc = launch(i)
        try:
            proc.wait(timeout=frac * total)
        except subprocess.TimeoutExpired:
            proc.send_signal(signals[i % 3])
        _, err = proc.communicate(timeout=150)
        outcomes.append(proc.returncode)
        assert proc.returncode in (0, CK.EX_TEMPFAIL), (frac, signals[i % 3], err)
        assert "Traceback" not in err, err
        status = read_run(out)["attrs"]["status"]
        if proc.returncode == 0:
            assert status == "complete", err
        else:
            assert_preempted(str(out))
            preempted = out
    print("outcomes", outcomes)
    if preempted is not None:   # the latest preempted job resumes to the end
        run_mpi(3, ["train", "--resume", preempted, "--quiet"], timeout=180, check=True)
        rows = read_run(preempted)["metrics"]["round"]
        assert list(rows) == sorted(set(rows)) and rows[-1] == ROUNDS_1_EPOCH


def forced_abort(proc, pids):
    """What `timeout -s INT` does to Hydra's mpiexec under load (it signals mpiexec, then its
    whole process group, which mpiexec is in): a second SIGINT after mpiexec has forwarded
    the first, a forced abort (the ranks get SIGTERM and SIGKILL at once, the proxy
    "assert (!closed)"). Returns mpiexec's output."""
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if "Ctrl-C again" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "cleaning up processes" in out, (out, err)   # Hydra's forced abort (it may exit 0)
    deadline = time.monotonic() + 30      # the killed ranks are gone a moment later
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return err


def test_a_job_killed_by_the_launcher_resumes_from_its_last_checkpoint(rcv, tmp_path):
    """Hydra's forced abort (two SIGINTs to mpiexec) leaves the run file "running": nothing
    inside the ranks can checkpoint then (docs/checkpoints.md, "Signals"). --resume continues
    from the last checkpoint to the end; a run with no checkpoint yet is refused in one line
    that says so. Every rank sleeps in an evaluation (the sleep-at hook) while it is killed."""
    out = tmp_path / "run.h5"
    opts = [rcv, "--out", out, *OPTS, "--epochs", "2", "--quiet"]
    proc = start([*opts, "--checkpoint-every", "300"], tmp_path, env=SLOW)   # one at round 300
    rank_pids(tmp_path, proc)
    wait_until(proc, lambda: CK.list_checkpoints(tmp_path / "run.ckpt"), "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, time.monotonic())
    assert rc == CK.EX_TEMPFAIL, err
    stopped = assert_preempted(out)
    # resumed: every rank sleeps in its next evaluation, killed there
    for f in (tmp_path / "pids").iterdir():
        f.unlink()
    proc = start(["--resume", out, "--quiet"], tmp_path,
                 env={"MPIMEM_FAULT": "sleep-at:evaluate:60"})
    pids = rank_pids(tmp_path, proc)
    wait_until(proc, lambda: all(map(sleeping, pids)) and
               read_run(out)["attrs"]["status"] == "running", "every rank in an evaluation")
    forced_abort(proc, pids)
    assert read_run(out)["attrs"]["status"] == "running"
    resumed = run_mpi(3, ["train", "--resume", out, "--quiet"], timeout=180, check=True)
    assert f"(round {stopped})" in resumed.stderr, resumed.stderr
    run = read_run(out)
    assert run["attrs"]["status"] == "complete" and run["metrics"]["round"][-1] == 2 * ROUNDS_1_EPOCH
    assert list(run["metrics"]["round"]) == sorted(set(run["metrics"]["round"]))
    # no checkpoint yet: killed in the evaluation at round 0
    fresh = tmp_path / "fresh.h5"
    for f in (tmp_path / "pids").iterdir():
        f.unlink()
    proc = start([rcv, "--out", fresh, *OPTS, "--epochs", "2", "--quiet"], tmp_path,
                 env={"MPIMEM_FAULT": "sleep-at:evaluate:60"})
    pids = rank_pids(tmp_path, proc)
    wait_until(proc, lambda: all(map(sleeping, pids)) and fresh.exists(), "in the evaluation")
    forced_abort(proc, pids)
    refused = run_mpi(3, ["train", "--resume", fresh, "--quiet"], timeout=120)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoints in" in lines[0], refused.stderr
    assert "'running'" in lines[0] and "start the run again" in lines[0], lines[0]


def test_async_checkpoint_at_an_evaluation_resumes_with_identical_bytes(rcv, tmp_path):
    """--mode async, W = 1: a round-interval checkpoint that falls on an evaluation round
    (round 600 of 1200, --eval-every 0.5) holds the counters after that evaluation's
    re-synchronisation, so the run resumed from it equals the uninterrupted one bit for bit,
    bytes included. Old code: saved before the re-synchronisation, the resumed run's next pull
    resent the coordinates changed since the last one (bytes_down 24 bytes more)."""
    opts = [rcv, *OPTS, "--mode", "async", "--epochs", "1", "--eval-every", "0.5", "--quiet"]
    ref = tmp_path / "ref.h5"
    run_mpi(2, ["train", *opts, "--out", ref, "--checkpoint-every", "600",
                "--keep-checkpoints", "5"], timeout=180, check=True)
    copy = tmp_path / "copy.h5"        # the run as it was at round 600 (its run file then
    (tmp_path / "copy.ckpt").mkdir()   # recreated from the checkpoint): resume it
    shutil.copy(tmp_path / "ref.ckpt" / "ckpt-000000600.h5", tmp_path / "copy.ckpt")
    run_mpi(2, ["train", "--resume", tmp_path / "copy.ckpt" / "ckpt-000000600.h5", "--quiet"],
            timeout=180, check=True)
    same_run(copy, ref)
    a, b = read_run(ref), read_run(copy)
    assert a["attrs"]["bytes_per_rank"] == b["attrs"]["bytes_per_rank"]
