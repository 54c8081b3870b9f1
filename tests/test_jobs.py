"""The real job scripts (jobs/*.sbatch) submitted to the local SLURM with `sbatch --wait` at tiny
sizes; then the run files they wrote are checked (status, world size, layout).

The module fixture brings the cluster up like tests/test_slurm_cluster.py: skip only when
`jobs/local-cluster.sh up` exits 3 (cannot run here); any other failure fails.
"""
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXIT_CANNOT = 3
JOB_TIMEOUT = 240


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(cmd, timeout, env=None):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=env or _env(), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")


@pytest.fixture(scope="module")
def slurm():
    proc = _run(["bash", str(ROOT / "jobs" / "local-cluster.sh"), "up"], timeout=240)
    if proc.returncode == EXIT_CANNOT:
        pytest.skip((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"local-cluster.sh up exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return True


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobdata")


def sbatch(tmp_path, study, data_dir, ntasks, array="0-1", sbatch_args=(), **env):
    """Submit jobs/STUDY.sbatch with --wait; return (exit code, output, results dir)."""
    # --time well above the scripts' --signal=B:USR1@300: a shorter limit signals the job at
    # once, and it checkpoints and requeues itself (that path works, but is slow to test)
    name = f"mpimem-test-{uuid.uuid4().hex[:8]}"
    results = tmp_path / "results"
    cmd = ["sbatch", "--wait", "--export=ALL", "-J", name, f"--ntasks={ntasks}",
           f"--array={array}", "--time=20", "-o", str(tmp_path / "job-%A_%a.out"),
           *sbatch_args, str(ROOT / "jobs" / f"{study}.sbatch")]
    full = _env(RESULTS=results, DATA_DIR=data_dir, RUN_TIMEOUT=150, **env)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT,
                              env=full, cwd=ROOT)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "-n", name], capture_output=True, timeout=10)
        pytest.fail(f"job {name} not done after {JOB_TIMEOUT}s (cancelled)")
    out = "".join(p.read_text() for p in sorted(tmp_path.glob("job-*.out")))
    assert "Submitted batch job" in proc.stdout, proc.stdout + proc.stderr
    return proc.returncode, out, results


def check_runs(results, study, expect):
    """Every run directory holds a complete RUN.h5 of the right world size (W+1 ranks with the
    server, W with a serverless topology); returns metas."""
    files = sorted((results / study).glob("*/*/RUN.h5"))
    assert len(files) == expect, files
    metas = []
    for f in files:
        meta = json.loads((f.parent / "meta.json").read_text())
        with h5py.File(f, "r") as h:
            assert h.attrs["format"] == "mpimem-run"
            assert h.attrs["status"] == "complete", f
            cfg = json.loads(h.attrs["config"])
            server = cfg["topology"] == meta["topology"] == "server"
            assert int(h.attrs["ranks"]) == meta["workers"] + server == meta["ranks"]
            assert int(h.attrs["workers"]) == meta["workers"]
            n = h["metrics/loss_xbar"].shape[0]
            assert n >= 2 and h["final/xbar"].shape[0] == int(h.attrs["d"])
        # the results tree is <study>/<job>/<run index>/RUN.h5
        assert f.parent.name == str(meta["index"]) and meta["study"] == study
        metas.append((meta, cfg))
    return metas


TINY = dict(N=300, D=20, EPOCHS=1, EVAL_EVERY=0.5)
PACE = re.compile(r"rounds/s +(?P<rate>-|[0-9.e+]+) +ETA (?P<eta>-|\d+:\d\d:\d\d)$")


def check_progress(run_dir):
    """train.log holds one progress line per evaluation point of RUN.h5 (no --quiet, no flood),
    each ending in the pace so far: rounds/s and ETA ("-" at round 0, 0:00:00 at the end)."""
    lines = [line for line in (run_dir / "train.log").read_text().splitlines()
             if line.startswith("epoch ")]
    with h5py.File(run_dir / "RUN.h5", "r") as h:
        assert len(lines) == h["metrics"]["round"].shape[0] >= 2, lines
    paces = [PACE.search(line) for line in lines]
    assert all(paces), lines
    assert paces[0]["rate"] == "-" and paces[0]["eta"] == "-"
    assert all(float(p["rate"]) > 0 for p in paces[1:]) and paces[-1]["eta"] == "0:00:00"


def test_theory_job(slurm, tmp_path, data_dir):
    rc, out, res = sbatch(tmp_path, "theory", data_dir, 2, DATASETS="epsilon",
                          METHODS="top-1 top-1-nomem", **TINY)
    assert rc == 0, out
    metas = check_runs(res, "theory", 2)
    for run_dir in (res / "theory").glob("*/*"):
        check_progress(run_dir)
    got = {m["label"]: c for m, c in metas}
    assert got["top-1"]["memory"] and not got["top-1-nomem"]["memory"]
    assert got["top-1"]["schedule"] == "decay" and got["top-1"]["gamma"] == 2.0
    assert got["top-1"]["averaging"] == "quadratic"
    assert got["top-1"]["l2"] == got["top-1-nomem"]["l2"] == "worker"   # the paper's placement


def test_qsgd_job_srun_pmi2(slurm, tmp_path, data_dir):
    rc, out, res = sbatch(tmp_path, "qsgd", data_dir, 2, METHODS="rand-1 QSGD-s16",
                          LAUNCHER="srun", **TINY)
    assert rc == 0, out
    metas = check_runs(res, "qsgd", 2)
    got = {m["label"]: (m, c) for m, c in metas}
    assert got["QSGD-s16"][1]["gamma"] == 1.0 and got["rand-1"][1]["gamma"] == 10.0
    assert got["QSGD-s16"][1]["levels"] == 16 and got["rand-1"][1]["schedule"] == "bottou"
    assert all(m["launcher"].startswith("srun --mpi=pmi2") for m, _ in got.values())


def test_scaling_job_worker_array(slurm, tmp_path, data_dir):
    # one array task per worker count; the allocation holds W_max + 1 = 3 tasks
    rc, out, res = sbatch(tmp_path, "scaling", data_dir, 3, DATASETS="rcv1", METHODS="top-50",
                          WORKERS="1 2", N=300, D_RCV1=120, EPOCHS=1, EVAL_EVERY=0.5)
    assert rc == 0, out
    metas = check_runs(res, "scaling", 2)
    assert sorted(m["workers"] for m, _ in metas) == [1, 2]
    assert all(c["k"] == 50 and c["gamma"] == 1.0 for _, c in metas)
    # the paper's asynchronous setting, run as the study says (no fallback)
    assert all(c["mode"] == m["mode"] == "async" and c["l2"] == "worker" for m, c in metas)


def test_scaling_job_allgather_takes_w_ranks(slurm, tmp_path, data_dir):
    """TOPOLOGY=allgather (MODE=sync): the run takes W = 2 ranks, which an allocation of 2 tasks
    holds (the server would need 3), given as --nodes and --ntasks-per-node (srun packs the ranks:
    -N 1); the topology is in the config and meta.json."""
    rc, out, res = sbatch(tmp_path, "scaling", data_dir, 2, array="0", DATASETS="rcv1",
                          METHODS="top-50", WORKERS="2", TOPOLOGY="allgather", MODE="sync",
                          LAUNCHER="srun", N=300, D_RCV1=120, EPOCHS=1, EVAL_EVERY=0.5,
                          sbatch_args=("--nodes=1", "--ntasks-per-node=2"))
    assert rc == 0, out
    ((meta, cfg),) = check_runs(res, "scaling", 1)
    assert (meta["topology"], meta["ranks"], meta["workers"]) == ("allgather", 2, 2)
    assert (cfg["topology"], cfg["mode"]) == ("allgather", "sync")
    assert meta["launcher"] == "srun --mpi=pmi2 -n 2 -N 1 --kill-on-bad-exit=1"


def test_weak_job_grows_data(slurm, tmp_path, data_dir):
    rc, out, res = sbatch(tmp_path, "weak", data_dir, 3, array="0", METHODS="rand-10",
                          WORKERS="1 2", N_PER_WORKER=150, D=20, EPOCHS=1, EVAL_EVERY=0.5)
    assert rc == 0, out   # a single array task runs both runs in turn
    metas = check_runs(res, "weak", 2)
    for meta, _ in metas:
        with h5py.File(meta["data"], "r") as h:
            assert int(h.attrs["n"]) == 150 * meta["workers"]


def test_wrong_srun_mpi_is_caught(slurm, tmp_path, data_dir):
    """SRUN_MPI=none starts size-1 programs: the probe must refuse before any training."""
    rc, out, res = sbatch(tmp_path, "qsgd", data_dir, 2, array="0", METHODS="top-1",
                          LAUNCHER="srun", SRUN_MPI="none", **TINY)
    assert rc != 0
    assert "failed the size-2 probe" in out and "COMM_WORLD.size is 1" in out
    assert not list(res.rglob("RUN.h5"))


def test_rerun_skips_complete_runs(tmp_path, data_dir):
    """Outside SLURM (plain bash, mpiexec): a second start of the same job skips finished runs
    (what a requeued job does), and the study expands as documented."""
    env = _env(RESULTS=tmp_path / "r", DATA_DIR=data_dir, JOB_ID="j", METHODS="top-1",
               RUN_TIMEOUT=150, **TINY)
    count = _run(["bash", "jobs/common.sh", "count", "qsgd"], 60, env)
    assert count.stdout.strip() == "1"
    assert _run(["bash", "jobs/common.sh", "count", "theory"], 60, _env()).stdout.strip() == "14"
    first = _run(["bash", "jobs/qsgd.sbatch"], 200, env)
    assert first.returncode == 0, first.stderr
    check_progress(tmp_path / "r" / "qsgd" / "j" / "0")
    again = _run(["bash", "jobs/qsgd.sbatch"], 100, env)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_signal_is_forwarded_and_rerun_resumes(tmp_path, data_dir):
    """SIGUSR1 to the job shell (what --signal=B:USR1@T does) reaches mpimem train, which
    checkpoints and exits 75; the job exits 75; the next start resumes the run to complete."""
    import signal
    import time
    env = _env(RESULTS=tmp_path / "r", DATA_DIR=data_dir, JOB_ID="j", METHODS="top-1",
               N=300, D=20, EPOCHS=40, EVAL_EVERY=5, CHECKPOINT_EVERY=200, RUN_TIMEOUT=150)
    proc = subprocess.Popen(["bash", "jobs/qsgd.sbatch"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = tmp_path / "r" / "qsgd" / "j" / "0" / "RUN.h5"
    ckpt = run.with_suffix(".ckpt")
    try:
        deadline = time.time() + 120
        while not (ckpt.is_dir() and any(ckpt.glob("ckpt-*.h5"))) and time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"job ended before the signal: {proc.communicate()}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert proc.returncode == 75, err
    with h5py.File(run, "r") as h:
        assert h.attrs["status"] == "preempted"
    # the message gives the whole command to resume by hand: launcher, world size, full path
    log = (run.parent / "train.log").read_text()
    assert f"resume with: mpiexec -n 2 mpimem train --resume {run.resolve()} (exit 75)" in log
    again = _run(["bash", "jobs/qsgd.sbatch"], 200, env)
    assert again.returncode == 0, again.stderr
    with h5py.File(run, "r") as h:
        assert h.attrs["status"] == "complete" and int(h.attrs.get("resumed", 0)) == 1
