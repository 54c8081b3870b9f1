"""`mpimem info RUN.h5` on real damaged run files and on a run in progress: a summary or one
line `mpimem: error: ...`, never a traceback."""
import os
import shutil
import subprocess
import threading
import time

import h5py
import pytest

from conftest import MPIEXEC, mpimem_cmd, run_cli, run_mpi

STEPS = ["--schedule", "decay", "--gamma", "2", "--shift", "d/k"]


@pytest.fixture(scope="module")
def done(eps, tmp_path_factory):
    out = tmp_path_factory.mktemp("info") / "run.h5"
    run_mpi(3, ["train", eps, "--out", out, "--quiet", *STEPS, "--epochs", "0.2"], check=True)
    return out


def damaged_copy(done, tmp_path, edit):
    path = tmp_path / "copy.h5"
    shutil.copy(done, path)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return path


def one_line(proc, message):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpimem: error") and message in lines[0], lines


def test_damaged_config_is_one_line(done, tmp_path):
    path = damaged_copy(done, tmp_path, lambda h5: h5.attrs.__setitem__("config", '{"k": 1,'))
    one_line(run_cli(["info", path]), "config attribute is damaged")


def test_missing_status_is_one_line(done, tmp_path):
    path = damaged_copy(done, tmp_path, lambda h5: h5.attrs.__delitem__("status"))
    one_line(run_cli(["info", path]), "no 'status' attribute")


def test_missing_attributes_show_as_unknown(done, tmp_path):
    def strip(h5):
        for key in ("lam", "fstar", "n", "workers", "hosts", "config"):
            del h5.attrs[key]
        del h5["metrics/bytes_up"]
    proc = run_cli(["info", damaged_copy(done, tmp_path, strip)])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "status complete" in proc.stdout and "lambda ?" in proc.stdout and "n=?" in proc.stdout


def test_info_of_a_run_in_progress(eps, tmp_path):
    out = tmp_path / "run.h5"
    cmd = [MPIEXEC, "-n", "3", *mpimem_cmd("train", eps, "--out", out, "--quiet", *STEPS,
                                           "--epochs", "0.2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MPIMEM_EXPECT_RANKS="3",
                                     MPIMEM_FAULT="sleep-at:evaluate:8"))
    watchdog = threading.Timer(180, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    deadline = time.monotonic() + 120
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    info = run_cli(["info", out])
    assert proc.poll() is None, "the run ended before `mpimem info` ran: not a test of it"
    assert info.returncode == 0 and "status running" in info.stdout, info.stderr
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "status complete" in run_cli(["info", out], check=True).stdout
