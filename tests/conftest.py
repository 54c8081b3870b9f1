"""Shared test fixtures: real `mpiexec` launches under a hard timeout, and small data sets."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else "mpiexec"


def _mpi_flavour():
    """"openmpi", "mpich" (Hydra; Intel MPI's launcher is Hydra too) or "unknown", from
    `mpiexec --version` of the launcher the tests use."""
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = out.stdout + out.stderr
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text:
        return "openmpi"
    return "mpich" if "HYDRA" in text.upper() or "Intel" in text else "unknown"


MPI_FLAVOUR = _mpi_flavour()
# Open MPI refuses more ranks than cores (these tests run 3-5 ranks on 2 cores) and, as root
# (CI containers), any run at all: the flags for the launches below, and the same settings in
# the environment for tests that call MPIEXEC themselves (Open MPI 5 reads PRTE_MCA_*, 4 OMPI_MCA_*).
MPIEXEC_FLAGS = []
if MPI_FLAVOUR == "openmpi":
    MPIEXEC_FLAGS = ["--oversubscribe"]
    os.environ.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
    os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    if os.geteuid() == 0:
        MPIEXEC_FLAGS.append("--allow-run-as-root")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def mpimem_cmd(*args):
    """The command line of `mpimem ARGS` run with the test interpreter."""
    return [sys.executable, "-m", "mpimem", *map(str, args)]


def run(cmd, timeout=120, check=False, **kw):
    """Run a command with a hard timeout; a hang fails the test instead of hanging CI."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(kw.pop("env", {}))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s (deadlock?): {' '.join(map(str, cmd))}\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n"
                    f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def run_mpi(nranks, args, timeout=180, check=False, **kw):
    """`mpiexec -n NRANKS python -m mpimem ARGS` under a timeout (MPICH oversubscribes freely,
    Open MPI with MPIEXEC_FLAGS);
    mpimem checks that the world it finds has exactly NRANKS ranks (MPIMEM_EXPECT_RANKS)."""
    kw["env"] = {"MPIMEM_EXPECT_RANKS": str(nranks), **kw.get("env", {})}
    return run([MPIEXEC, *MPIEXEC_FLAGS, "-n", str(nranks), *mpimem_cmd(*args)], timeout=timeout,
               check=check, **kw)


def launch_mpi(nranks, args, env=None, kill_after=240):
    """`mpiexec -n NRANKS python -m mpimem ARGS` in the background (stdout, stderr: text pipes),
    killed after `kill_after` s so that a hang fails the test instead of hanging CI."""
    cmd = [MPIEXEC, *MPIEXEC_FLAGS, "-n", str(nranks), *mpimem_cmd(*args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1",
                                     MPIMEM_EXPECT_RANKS=str(nranks), **(env or {})))
    watchdog = threading.Timer(kill_after, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc


def run_cli(args, timeout=120, check=False, **kw):
    """`python -m mpimem ARGS` in one process under a timeout."""
    return run(mpimem_cmd(*args), timeout=timeout, check=check, **kw)


@pytest.fixture(scope="session")
def eps(tmp_path_factory):
    """Epsilon-like, n = 1200, d = 120, with f* (shared by the MPI test modules)."""
    from datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("eps") / "eps.h5", "epsilon", 1200, 120)


@pytest.fixture(scope="session")
def rcv(tmp_path_factory):
    """RCV1-like, n = 1200, d = 3000 (about 1.5% dense at this d), with f*."""
    from datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("rcv") / "rcv.h5", "rcv1", 1200, 3000)


# ---------------------------------------------------------------------- SLURM clean-up
SLURM_IDLE_WAIT = 120   # s: a cancelled job's processes end, the node returns to idle


def _slurm_cmd(*cmd, timeout=20):
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_cancel_all():
    """scancel every job of this user (the tests' jobs: the local cluster runs nothing else)."""
    import getpass

    _slurm_cmd("scancel", "--user", getpass.getuser())


def slurm_wait_idle(timeout=SLURM_IDLE_WAIT):
    """Wait until this user has no job left and every node is idle; the state seen last."""
    import getpass
    import time

    deadline, state = time.monotonic() + timeout, "?"
    while time.monotonic() < deadline:
        jobs = _slurm_cmd("squeue", "-h", "--user", getpass.getuser(), "-o", "%i")
        nodes = _slurm_cmd("sinfo", "-h", "-o", "%T")
        state = (nodes.stdout.split() if nodes and nodes.returncode == 0 else ["no answer"])
        if jobs is not None and jobs.returncode == 0 and not jobs.stdout.strip() and \
                state and all(s == "idle" for s in state):
            return "idle"
        time.sleep(0.5)
    return " ".join(state)


@pytest.fixture(autouse=True)
def _slurm_jobs_cleaned(request):
    """Every test that uses a `slurm` fixture (tests/test_slurm_cluster.py, tests/test_jobs.py)
    starts on an idle node with no job of ours (jobs left by an earlier test are cancelled) and
    cancels every job it left on any exit: a failure, its own timeout, or pytest-timeout's
    (method signal: the exception unwinds the test, then this teardown runs). Without it a
    timed-out test's job kept the node busy and the next SLURM tests failed "node not idle"."""
    if "slurm" not in request.fixturenames:
        yield
        return
    slurm_cancel_all()
    state = slurm_wait_idle()
    if state != "idle":
        pytest.fail(f"the local SLURM node is not idle {SLURM_IDLE_WAIT} s after cancelling "
                    f"every job (state: {state})")
    try:
        yield
    finally:
        slurm_cancel_all()
