"""`mpimem info RUN.h5` on real damaged run files and on a run in progress: a summary or one
line `mpimem: error: ...`, never a traceback."""
import json
import math
import re
import shutil
import time

import h5py
import numpy as np
import pytest

from conftest import launch_mpi, run_cli, run_mpi
from mpimem.cli.info import duration

STEPS = ["--schedule", "decay", "--gamma", "2", "--shift", "d/k"]


@pytest.fixture(scope="module")
def done(eps, tmp_path_factory):
    out = tmp_path_factory.mktemp("info") / "run.h5"
    run_mpi(3, ["train", eps, "--out", out, "--quiet", *STEPS, "--epochs", "0.2"], check=True)
    return out


@pytest.fixture(scope="module")
def allgather_qsgd(eps, tmp_path_factory):
    out = tmp_path_factory.mktemp("info") / "ag.h5"
    run_mpi(2, ["train", eps, "--out", out, "--quiet", "--epochs", "0.1", "--topology",
                "allgather", "--compressor", "qsgd", "--bits", "3"], check=True)
    return out


@pytest.fixture(scope="module")
def none_downlink(eps, tmp_path_factory):
    out = tmp_path_factory.mktemp("info") / "none.h5"
    run_mpi(3, ["train", eps, "--out", out, "--quiet", "--epochs", "0.1", "--compressor",
                "none", "--downlink-k", "5", "--batch-size", "2", "--lam", "0.01"], check=True)
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


def settings_line(path):
    info = run_cli(["info", path], check=True).stdout
    return info, next(line for line in info.splitlines() if line.startswith("  settings: "))


def test_settings_of_a_sync_server_run(done):
    info, line = settings_line(done)
    with h5py.File(done, "r") as h5:  # the shift a as resolved, in samples
        shift = json.loads(h5.attrs["config"])["shift"]
        assert np.abs(h5["final/memory"][()]).max() > 0  # the memory ran
    assert line == (f"  settings: top_k k=1, memory on, l2 worker, schedule decay gamma=2 "
                    f"a={shift:g} samples, averaging quadratic, mode sync, topology server, "
                    f"b=1, W=2, seed 0"), line
    assert re.search(r"^ +server: ", info, re.M) and re.search(r"^ +worker 2: ", info, re.M)


def test_settings_of_an_allgather_qsgd_run(allgather_qsgd):
    info, line = settings_line(allgather_qsgd)
    bits = int(re.search(r"qsgd s=3 levels \((\d+) bits per entry\)", line).group(1))
    with h5py.File(allgather_qsgd, "r") as h5:  # the bits as sent: 4-byte scale + d codes
        d, up, samples = h5.attrs["d"], h5["metrics/bytes_up"][-1], h5["metrics/samples"][-1]
    message = 4 + math.ceil(d * bits / 8)
    # allgather hands MPI a slot per rank: an 8-byte size word + the message padded to 8 bytes
    assert up / samples == 8 + 8 * math.ceil(message / 8) and bits == 3
    assert "memory on" in line and "topology allgather" in line and "W=2" in line, line
    assert "downlink" not in line
    table = [l.split(":")[0].strip() for l in info.splitlines() if re.match(r" +(server|worker \d+):", l)]
    assert table == ["worker 1", "worker 2"], info  # no server in allgather


def test_settings_of_a_run_without_compression(none_downlink):
    info, line = settings_line(none_downlink)
    with h5py.File(none_downlink, "r") as h5:
        assert not np.any(h5["final/memory"][()])  # no error memory ran
    assert line.startswith("  settings: none, memory off, l2 worker, "), line
    assert "mode sync, topology server, downlink-k 5, b=2, W=2" in line, line
    assert re.search(r"^ +server: ", info, re.M)


def running_copy(done, tmp_path, rows):
    """The finished run file as it stood, status running, after its first `rows` points."""
    def cut(h5):
        h5.attrs["status"] = "running"
        for name in list(h5["metrics"]):
            h5["metrics"][name].resize((rows,))
    return damaged_copy(done, tmp_path, cut)


@pytest.mark.parametrize("rows", [0, 4])
def test_eta_of_a_running_file(done, tmp_path, rows):
    path = running_copy(done, tmp_path, rows)
    info = run_cli(["info", path], check=True).stdout
    summary = json.loads(run_cli(["info", "--json", path], check=True).stdout)
    assert "status running" in info and summary["status"] == "running"
    assert summary["points"] == rows
    if rows == 0:
        assert "progress" not in info and summary["progress"]["eta_s"] is None
        return
    with h5py.File(path, "r") as h5:
        rounds = int(h5.attrs["rounds"])
        r, wall, train = (h5[f"metrics/{k}"][-1] for k in ("round", "wall_time", "train_time"))
    p = summary["progress"]
    assert p["round"] == r and p["rounds"] == rounds and 0 < r < rounds
    assert p["rounds_per_s"] == pytest.approx(r / train, rel=1e-12)
    assert p["eta_s"] == pytest.approx((rounds - r) * wall / r, rel=1e-12)
    assert f"round {int(r)} of {rounds}, {r / train:.1f} rounds/s" in info, info
    assert f"ETA {duration((rounds - r) * wall / r)} after the last point" in info, info


def test_info_of_a_live_run(eps, tmp_path):
    """A real run held alive after its last point (before it is marked complete) is read by
    plain h5py and by `mpimem info` from other processes."""
    out = tmp_path / "run.h5"
    proc = launch_mpi(3, ["train", eps, "--out", out, "--quiet", *STEPS, "--epochs", "0.2"],
                      env={"MPIMEM_FAULT": "sleep-at:shutdown:10"})
    deadline = time.monotonic() + 120
    rows = 0
    while rows < 11:  # plain h5py, default HDF5 file locking, while the run goes on
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or hung"
        if out.exists():
            with h5py.File(out, "r") as h5:
                rows = len(h5["metrics/round"])
                status, rounds = h5.attrs["status"], int(h5.attrs["rounds"])
                wall = h5["metrics/wall_time"][()]
        time.sleep(0.05)
    info = run_cli(["info", out])
    summary = json.loads(run_cli(["info", "--json", out], check=True).stdout)
    assert proc.poll() is None, "the run ended before `mpimem info` ran: not a test of it"
    assert status == "running" and info.returncode == 0, info.stderr
    assert "status running" in info.stdout and f"round {rounds} of {rounds}" in info.stdout
    assert re.search(r"\d+\.\d rounds/s", info.stdout) and "ETA 0 s" in info.stdout, info.stdout
    assert summary["status"] == "running" and summary["progress"]["eta_s"] == 0.0
    assert summary["last"]["wall_time"] == wall[-1]
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    done = run_cli(["info", out], check=True).stdout
    assert "status complete" in done and "ETA" not in done


def test_rising_and_diverged_runs_are_flagged(done, tmp_path):
    """info flags what compare and plot flag (mpimem.run.runlabel.convergence_flag): a run
    whose f(xbar) - f* ends above 3x its best, and a run file of status diverged."""
    def progressing(h5):   # `done` is 0.2 epochs of decay steps: its f(xbar) ends above the start
        loss, gap = h5["metrics/loss_xbar"], h5["metrics/subopt_xbar"]
        loss[...] = np.linspace(loss[0], 0.9 * loss[0], loss.size)
        gap[...] = np.linspace(0.3, 0.1, gap.size)
    good = damaged_copy(done, tmp_path, progressing)
    assert "flag:" not in run_cli(["info", good], check=True).stdout
    assert json.loads(run_cli(["info", "--json", good], check=True).stdout)["flag"] is None
    path = tmp_path / "rising.h5"
    shutil.copy(good, path)
    with h5py.File(path, "r+") as h5:
        gap = h5["metrics/subopt_xbar"]
        gap[-1] = 6 * gap[-2]         # the best point is the one before
    text = run_cli(["info", path], check=True).stdout
    assert re.search(r"^  flag: RISING: final f\(xbar\)-f\* \S+ is 6\.0x its best", text, re.M), text
    assert json.loads(run_cli(["info", "--json", path], check=True).stdout)["flag"].startswith(
        "rising: ")
    stopped = tmp_path / "stopped.h5"
    shutil.copy(good, stopped)
    with h5py.File(stopped, "r+") as h5:
        h5.attrs["status"] = "diverged"
    assert "  flag: DIVERGED: " in run_cli(["info", stopped], check=True).stdout
    assert json.loads(run_cli(["info", "--json", stopped], check=True).stdout)[
        "flag"].startswith("diverged: ")


def test_json_holds_no_json_inside_strings(done):
    summary = json.loads(run_cli(["info", "--json", done], check=True).stdout)
    with h5py.File(done, "r") as h5:
        stored = dict(h5.attrs)
    a = summary["attrs"]
    assert a["bytes_per_rank"] == json.loads(stored["bytes_per_rank"])
    assert isinstance(a["bytes_per_rank"], list) and len(a["bytes_per_rank"]) == 3
    for key in ("groups", "k_schedule", "hosts"):
        assert a[key] == json.loads(stored[key]) and isinstance(a[key], list), key
    for key, value in a.items():   # no other attribute is a JSON list or object inside a string
        assert not (isinstance(value, str) and value.lstrip()[:1] in "[{" and value), key


def test_progress_line_names_its_seconds(capsys):
    from types import SimpleNamespace

    from mpimem.run.driver import Run
    me = SimpleNamespace(cfg=SimpleNamespace(quiet=False), start_round=0, elapsed0=0.0, rounds=20)
    row = dict(subopt_xbar=0.1, loss_xbar=0.5, round=10, epoch=0.5, acc_xbar=0.8, bytes_up=8e3,
               wall_time=9.2)
    Run.progress(me, row)
    assert "  wall     9.2 s  rounds/s" in capsys.readouterr().out
