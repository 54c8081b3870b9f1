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
    """`mpiexec -n NRANKS python -m mpimem ARGS` under a timeout (MPICH oversubscribes freely);
    mpimem checks that the world it finds has exactly NRANKS ranks (MPIMEM_EXPECT_RANKS)."""
    kw["env"] = {"MPIMEM_EXPECT_RANKS": str(nranks), **kw.get("env", {})}
    return run([MPIEXEC, "-n", str(nranks), *mpimem_cmd(*args)], timeout=timeout, check=check, **kw)


def launch_mpi(nranks, args, env=None, kill_after=240):
    """`mpiexec -n NRANKS python -m mpimem ARGS` in the background (stdout, stderr: text pipes),
    killed after `kill_after` s so that a hang fails the test instead of hanging CI."""
    cmd = [MPIEXEC, "-n", str(nranks), *mpimem_cmd(*args)]
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
