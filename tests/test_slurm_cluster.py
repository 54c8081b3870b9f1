"""A real single-node SLURM (jobs/local-cluster.sh): batch exit codes and MPI launches inside it.

The module fixture brings the cluster up; where it cannot run (not root, no apt-get) the
script exits 3 and every test here is skipped with its message. Every launch asserts
COMM_WORLD.size: plain `srun` without --mpi=pmi2 starts size-1 programs that exit 0.
"""
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "jobs" / "local-cluster.sh"
PROBE = ROOT / "jobs" / "slurm_probe.py"
BIN = Path(sys.executable).parent
UP_TIMEOUT = 240   # first `up` runs apt-get; stays inside pytest-timeout (300 s)
JOB_TIMEOUT = 60   # a trivial job takes ~2 s; a PENDING-forever job must fail, not hang
EXIT_CANNOT = 3


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd, timeout, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=_env(), cwd=ROOT, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")


@pytest.fixture(scope="module")
def slurm():
    """The local cluster, up and idle. Yields the helper that runs batch jobs on it."""
    proc = _run(["bash", str(SCRIPT), "up"], timeout=UP_TIMEOUT)
    if proc.returncode == EXIT_CANNOT:
        pytest.skip((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"local-cluster.sh up exited {proc.returncode}\n"
                    f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return BatchRunner()


class BatchRunner:
    def sbatch(self, tmp_path, body, ntasks=1, timeout=JOB_TIMEOUT):
        """Submit BODY as a batch script with `sbatch --wait`; return (exit code, job output)."""
        name = f"mpimem-test-{uuid.uuid4().hex[:8]}"
        script = tmp_path / f"{name}.sh"
        out = tmp_path / f"{name}.out"
        script.write_text(f"#!/bin/bash\n#SBATCH -J {name}\n#SBATCH -n {ntasks}\n"
                          f"#SBATCH -o {out}\n#SBATCH -t 2\n{body}\n")
        cmd = ["sbatch", "--wait", "--export=ALL", str(script)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=_env(), cwd=ROOT)
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", "-n", name], capture_output=True, timeout=10)
            q = subprocess.run(["squeue", "-n", name, "-o", "%i %T %r"], capture_output=True,
                               text=True, timeout=10).stdout
            pytest.fail(f"batch job {name} not done after {timeout}s (cancelled)\n{q}")
        output = out.read_text() if out.exists() else ""
        assert "Submitted batch job" in proc.stdout, proc.stdout + proc.stderr
        return proc.returncode, output


def _probe_lines(output):
    """[(rank, size, slurm_procid)] from the probe's `probe rank=R size=S ...` lines."""
    return [(int(r), int(s), p) for r, s, p in
            re.findall(r"^probe rank=(\d+) size=(\d+) host=\S+ slurm_procid=(\S+)$", output, re.M)]


def test_status_reports_idle(slurm):
    proc = _run(["bash", str(SCRIPT), "status"], timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"node \S+: idle", proc.stdout), proc.stdout


def test_up_is_idempotent(slurm):
    proc = _run(["bash", str(SCRIPT), "up"], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already up" in proc.stdout, proc.stdout


@pytest.mark.parametrize("code", [0, 7])
def test_sbatch_wait_returns_exit_code(slurm, tmp_path, code):
    rc, output = slurm.sbatch(tmp_path, f"echo job-ran-$SLURM_JOB_ID\nexit {code}")
    assert rc == code, output
    assert "job-ran-" in output


@pytest.mark.parametrize("launcher", ["mpiexec -n 3", "srun --mpi=pmi2 -n 3"])
def test_mpi_launch_inside_allocation(slurm, tmp_path, launcher):
    """Both launchers give one program of size 3 (ranks 0..2); srun runs one task per rank."""
    rc, output = slurm.sbatch(tmp_path, f"{launcher} {sys.executable} {PROBE} --expect 3", ntasks=3)
    assert rc == 0, output
    lines = _probe_lines(output)
    assert sorted(r for r, _, _ in lines) == [0, 1, 2], output
    assert all(s == 3 for _, s, _ in lines), output
    if launcher.startswith("srun"):
        assert sorted(p for _, _, p in lines) == ["0", "1", "2"], output


def test_plain_srun_gives_size_one_programs_and_probe_catches_it(slurm, tmp_path):
    """The trap: `srun -n 2` without --mpi makes two size-1 worlds; --expect must fail the job."""
    rc, output = slurm.sbatch(
        tmp_path, f"srun -n 2 {sys.executable} {PROBE} --expect 2", ntasks=2)
    lines = _probe_lines(output)
    assert len(lines) == 2 and all((r, s) == (0, 1) for r, s, _ in lines), output
    assert output.count("COMM_WORLD.size is 1, expected 2") == 2, output
    assert rc != 0, output


def test_probe_without_expect_shows_the_trap_passes_silently(slurm, tmp_path):
    """Without a size check the same launch exits 0: why every launch test must assert size."""
    rc, output = slurm.sbatch(tmp_path, f"srun -n 2 {sys.executable} {PROBE}", ntasks=2)
    assert rc == 0, output
    assert [s for _, s, _ in _probe_lines(output)] == [1, 1], output


INNER = '''
import subprocess, time
import pytest

@pytest.fixture(scope="module")
def slurm():
    return True

@pytest.mark.timeout(8)
def test_hangs_with_a_job(slurm):
    subprocess.run(["sbatch", "-J", "{name}", "-n", "8", "-o", "/dev/null", "--wrap", "sleep 300"],
                   check=True, capture_output=True)
    time.sleep(120)   # pytest-timeout (method signal) ends the test here
'''


def test_a_timed_out_test_leaves_no_job_behind(slurm, tmp_path):
    """A SLURM test killed by pytest-timeout (its default method, signal) with a job that fills
    the node: the tests' clean-up fixture (tests/conftest.py) cancels the job in the test's
    teardown, so the next SLURM test starts on an idle node. Old code: the job kept running,
    and the next SLURM tests waited on a busy node ("node not idle", PENDING jobs)."""
    name = f"mpimem-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "test_inner.py").write_text(INNER.replace("{name}", name))
    env = dict(_env(), PYTHONPATH=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert "Timeout" in proc.stdout and "1 failed" in proc.stdout, proc.stdout + proc.stderr
    left = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True,
                          text=True, timeout=20).stdout.strip()
    pending = [line for line in left.splitlines() if "CANCELLED" not in line and
               "COMPLETING" not in line]
    assert not pending, f"the timed-out test left its job: {left}"
