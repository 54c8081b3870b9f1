"""`mpimem plot` and `mpimem compare` on run files of tiny real runs (3 ranks each) that differ in
compressor and memory. The table's numbers are checked against the HDF5 files read here with
h5py; the figure's curves and labels through the matplotlib objects mpimem.cli.plot builds."""
import json
import math
import shutil

import h5py
import numpy as np
import pytest

from conftest import run_cli, run_mpi

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = ["--schedule", "decay", "--gamma", "2", "--shift", "100", "--epochs", "0.5",
         "--eval-every", "0.125"]
RUNS = {"top1-mem.h5": ["--compressor", "top_k", "--k", "1"],
        "top1-nomem.h5": ["--compressor", "top_k", "--k", "1", "--no-memory"],
        "sgd.h5": ["--compressor", "none"]}
LABELS = ["top-1, memory", "top-1, no memory", "SGD"]


@pytest.fixture(scope="module")
def runs(eps, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plot")
    for name, opts in RUNS.items():
        run_mpi(3, ["train", eps, "--out", tmp / name, "--quiet", *STEPS, *opts], check=True)
    return [tmp / name for name in RUNS]


def _h5(path):
    with h5py.File(path, "r") as h:
        return {k: h["metrics"][k][()] for k in h["metrics"]}


def _crossing(x, y, target):   # independent re-implementation of "first reaches, linear"
    for i in range(len(y)):
        if y[i] <= target:
            if i == 0:
                return float(x[0])
            return float(x[i - 1] + (y[i - 1] - target) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))
    return math.nan


def _table(stdout):
    lines = stdout.splitlines()
    header = lines[0].split("  ")
    header = [h.strip() for h in header if h.strip()]
    return header, [ln.split() for ln in lines[1:]]


def test_compare_names_the_differing_settings_and_numbers_of_the_files(runs):
    proc = run_cli(["compare", *runs], check=True)
    header, rows = _table(proc.stdout)
    # SGD sends x dense (k = d) and keeps no memory: exactly these three settings differ
    assert header[2:5] == ["compressor", "k", "memory"], header
    assert header[5:10] == ["status", "final f(xbar)-f*", "best f(xbar)-f*", "MB up", "MB down"]
    assert len(rows) == 3
    finals = {str(p): _h5(p)["subopt_xbar"][-1] for p in runs}
    target = max(finals.values())     # the worst final gap (every run made progress: premise)
    assert header[11] == f"MB to f(xbar)-f*<={target:.4g}"
    for path, row, label in zip(runs, rows, LABELS):
        m = _h5(path)
        assert m["loss_xbar"][-1] < m["loss_xbar"][0]
        assert row[0] == str(path) and " ".join(row[1:-10]) == label
        values = [float(v) for v in row[-6:]]
        expect = [m["subopt_xbar"][-1], np.min(m["subopt_xbar"]), m["bytes_up"][-1] / 1e6,
                  m["bytes_down"][-1] / 1e6, m["train_time"][-1],
                  _crossing((m["bytes_up"] + m["bytes_down"]) / 1e6, m["subopt_xbar"], target)]
        assert values[:4] + values[5:] == pytest.approx(expect[:4] + expect[5:], rel=1e-5)
        assert values[4] == pytest.approx(expect[4], rel=1e-3)
        assert row[-7] == "complete"
        with h5py.File(path, "r") as h:
            cfg = json.loads(h.attrs["config"])
        memory = cfg["memory"] and cfg["compressor"] != "none"   # SGD keeps no memory
        assert row[-10:-7] == [cfg["compressor"], str(cfg["k"]), "yes" if memory else "no"]
    assert "train s (wall less evaluation)" in proc.stdout.splitlines()[0]
    assert "None" not in proc.stdout and "True" not in proc.stdout and "False" not in proc.stdout


def test_compare_prints_unset_settings_as_a_dash(runs, tmp_path):
    other = tmp_path / "dl.h5"
    shutil.copy(runs[0], other)
    with h5py.File(other, "a") as h:
        cfg = json.loads(h.attrs["config"])
        assert cfg["downlink_k"] is None
        cfg["downlink_k"] = 5
        h.attrs["config"] = json.dumps(cfg)
    header, rows = _table(run_cli(["compare", runs[0], other], check=True).stdout)
    column = header.index("downlink_k") - len(header)   # from the end: labels hold spaces
    assert [row[column] for row in rows] == ["-", "5"]


def _rising_copy(run, tmp_path):
    path = tmp_path / "rising.h5"
    shutil.copy(run, path)
    with h5py.File(path, "a") as h:
        gap = h["metrics/subopt_xbar"]
        gap[-1] = 6 * np.min(gap[()])     # ends 6x above its best, below its start
    return path


def test_rising_and_diverged_status_runs_are_flagged(runs, tmp_path):
    rising = _rising_copy(runs[0], tmp_path)
    stopped = tmp_path / "stopped.h5"
    shutil.copy(runs[2], stopped)
    with h5py.File(stopped, "a") as h:
        h.attrs["status"] = "diverged"    # the run stopped itself (exit status 3)
    proc = run_cli(["compare", runs[0], runs[1], rising, stopped], check=True)
    header, rows = _table(proc.stdout)
    assert rows[2][0] == str(rising) and rows[2][-8:-6] == ["complete", "RISING"]
    assert rows[3][0] == str(stopped) and rows[3][-7] == "diverged"   # said once
    assert [row[-7] for row in rows[:2]] == ["complete", "complete"]
    target = max(_h5(p)["subopt_xbar"][-1] for p in runs[:2])   # neither flagged run enters it
    assert header[-1] == f"MB to f(xbar)-f*<={target:.4g}"


def test_diverged_run_is_flagged_and_left_out_of_the_target(runs, tmp_path):
    bad = tmp_path / "diverged.h5"
    shutil.copy(runs[0], bad)
    with h5py.File(bad, "a") as h:
        loss = h["metrics/loss_xbar"]
        loss[-1] = loss[0] * 10          # ends far above its start
        h["metrics/subopt_xbar"][-1] = 5.0
    proc = run_cli(["compare", *runs, bad], check=True)
    header, rows = _table(proc.stdout)
    assert rows[-1][0] == str(bad) and "DIVERGED" in rows[-1]
    target = max(_h5(p)["subopt_xbar"][-1] for p in runs)
    assert header[-1] == f"MB to f(xbar)-f*<={target:.4g}"


def test_plot_writes_a_png_per_axis(runs, tmp_path):
    for axis in ("epochs", "mb", "seconds"):
        out = tmp_path / f"{axis}.png"
        proc = run_cli(["plot", *runs, "--x", axis, "--out", out], check=True)
        assert proc.stdout.strip() == f"wrote {out}"
        data = out.read_bytes()
        assert data[:8] == PNG and len(data) > 15_000, axis


def test_plot_curves_and_labels(runs):
    from mpimem.cli import plot as plot_cli

    loaded = plot_cli.load_all(map(str, runs))
    fig = plot_cli.figure(loaded, "mb")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == LABELS
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    assert "synthetic, n=1200, d=120" in ax.get_title()
    for line, path in zip(ax.get_lines(), runs):
        m = _h5(path)
        mb = (m["bytes_up"] + m["bytes_down"]) / 1e6
        assert mb[0] == 0 and np.array_equal(line.get_xdata(), mb[1:])   # 0 MB left out
        assert np.array_equal(line.get_ydata(), m["subopt_xbar"][1:])


def test_run_without_fstar_plots_fxbar_and_says_so(runs, tmp_path):
    from mpimem.cli import plot as plot_cli

    nof = tmp_path / "nofstar.h5"
    shutil.copy(runs[0], nof)
    with h5py.File(nof, "a") as h:
        h["metrics/subopt_xbar"][...] = np.nan
    proc = run_cli(["plot", runs[1], nof, "--out", tmp_path / "f.png"], check=True)
    assert f"drawn as f(xbar): {nof}" in proc.stdout
    fig = plot_cli.figure(plot_cli.load_all([str(runs[1]), str(nof)]), "epochs")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "top-1, no memory", "top-1, memory [f(xbar): no f*]"]
    assert np.array_equal(ax.get_lines()[1].get_ydata(), _h5(nof)["loss_xbar"])
    assert ax.get_ylabel() == "f(xbar) - f*, or f(xbar) where no f*"
    header, _ = _table(run_cli(["compare", runs[1], nof], check=True).stdout)
    assert "final f(xbar)" in header and "final f(xbar)-f*" not in header


def test_bad_inputs_one_line_exit_2(runs, eps, tmp_path):
    empty = tmp_path / "empty.h5"
    shutil.copy(runs[0], empty)
    with h5py.File(empty, "a") as h:
        for k in list(h["metrics"]):
            del h["metrics"][k]
            h["metrics"].create_dataset(k, shape=(0,), dtype="f8")
    for bad, why in ((tmp_path / "missing.h5", "cannot read the run file"),
                     (eps, "not an mpimem run file"),
                     (empty, "no evaluation points")):
        for cmd in (["plot", runs[0], bad, "--out", tmp_path / "x.png"], ["compare", runs[0], bad]):
            proc = run_cli(cmd)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mpimem: error: ")
            assert why in proc.stderr and str(bad) in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "x.png").exists()
