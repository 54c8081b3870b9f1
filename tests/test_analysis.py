"""analysis.figures on real run files made by the job scripts (run with bash, no SLURM).

The table's numbers are checked against values recomputed here straight from the HDF5 files
with h5py (not through analysis/load.py); figures must be real, non-trivial PNGs; a corrupt
file in the results tree must be named, not crash the figures or slip into the numbers.
"""
import csv
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.figures import FIGURES, Table, curve_label, draw, line_style, scaling_label
from analysis.load import Run, convergence_flag, load_runs, method_label, read_one
from conftest import ROOT, run, run_mpi
from mpimem.run.runlabel import data_label, run_label

PY = str(Path(__import__("sys").executable))
PNG = b"\x89PNG\r\n\x1a\n"


def _study(tmp, study, **env):
    env = {"RESULTS": str(tmp / "results"), "DATA_DIR": str(tmp / "data"), "JOB_ID": "t",
           "LAUNCHER": "mpiexec", "RUN_TIMEOUT": "100", "PYTHON": PY,
           "PATH": f"{Path(PY).parent}:{__import__('os').environ['PATH']}",
           **{k: str(v) for k, v in env.items()}}
    proc = run(["bash", str(ROOT / "jobs" / f"{study}.sbatch")], timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    _study(tmp, "qsgd", N=400, D=20, EPOCHS=2, EVAL_EVERY=0.25,
           METHODS="top-1 QSGD-s256 ef21-top1")
    _study(tmp, "theory", N=400, D=20, EPOCHS=1, EVAL_EVERY=0.25, DATASETS="epsilon",
           METHODS="top-1")
    _study(tmp, "scaling", N=400, D=20, EPOCHS=1, EVAL_EVERY=0.25, DATASETS="epsilon",
           METHODS="rand-10", WORKERS="1 2")
    return tmp / "results"


def _figures(results, out, *extra):
    return run([PY, "-m", "analysis.figures", str(results), "--out", str(out), *extra],
               timeout=120, cwd=ROOT)


def _rows(out):
    with open(out / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def _h5(path):
    with h5py.File(path, "r") as h:
        assert h.attrs["status"] == "complete"
        return {k: h["metrics"][k][()] for k in h["metrics"]}


def _crossing(x, y, target):   # independent re-implementation of "first reaches, linear"
    for i in range(len(y)):
        if y[i] <= target:
            if i == 0 or y[i - 1] == y[i]:
                return float(x[i])
            return float(x[i - 1] + (y[i - 1] - target) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))
    return math.nan


def test_table_matches_hdf5(results, tmp_path):
    out = tmp_path / "fig"
    proc = _figures(results, out)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    by = {}
    for r in rows:
        by.setdefault((r["study"], r["method"], r["workers"]), {})[r["quantity"]] = r
    files = sorted(results.rglob("RUN.h5"))
    assert len(files) == 6
    checked = 0
    for r in rows:
        if not r["file"]:
            continue
        m = _h5(r["file"])
        q, v = r["quantity"], float(r["value"])
        if q == "final_loss_xbar":
            assert v == pytest.approx(m["loss_xbar"][-1], rel=1e-12)
        elif q == "final_subopt_xbar":
            assert v == pytest.approx(m["subopt_xbar"][-1], rel=1e-12)
        elif q == "total_MB_up":
            assert v == pytest.approx(m["bytes_up"][-1] / 1e6, rel=1e-12)
        elif q == "total_MB_up_down":
            assert v == pytest.approx((m["bytes_up"][-1] + m["bytes_down"][-1]) / 1e6, rel=1e-12)
        elif q == "MB_up_down_to_target":
            tgt = float(by[(r["study"], r["method"], r["workers"])]["target_gap_xbar"]["value"])
            mb = (m["bytes_up"] + m["bytes_down"]) / 1e6
            assert v == pytest.approx(_crossing(mb, m["subopt_xbar"], tgt))
        elif q == "MB_to_target":
            tgt = float(by[(r["study"], r["method"], r["workers"])]["target_loss"]["value"])
            assert v == pytest.approx(_crossing(m["bytes_up"] / 1e6, m["loss_xbar"], tgt),
                                      nan_ok=True)
        elif q == "time_to_target_s":
            tgt = float(by[(r["study"], r["method"], r["workers"])]["target_loss"]["value"])
            assert v == pytest.approx(_crossing(m["train_time"], m["loss_xbar"], tgt))
        else:
            continue
        checked += 1
    assert checked >= 14
    # the qsgd target is the largest best-loss over the complete runs other than EF21 (which
    # does not move the paper's target); the ratios use it
    qsgd = {json.loads((f.parent / "meta.json").read_text())["label"]: _h5(f)
            for f in files if "/qsgd/" in str(f)}
    assert sorted(qsgd) == ["QSGD-s256", "ef21-top1", "top-1"]
    tgt = max(np.min(m["loss_xbar"]) for label, m in qsgd.items() if label != "ef21-top1")
    mb = {label: _crossing(m["bytes_up"] / 1e6, m["loss_xbar"], tgt) for label, m in qsgd.items()}
    for label in ("QSGD-s256", "ef21-top1"):   # against Mem-SGD top-1, never against EF21
        ratio = float(by[("qsgd", label, "1")]["bits_ratio_vs_top-1"]["value"])
        assert ratio == pytest.approx(mb[label] / mb["top-1"], nan_ok=True)
    assert "bits_ratio_vs_top-1" not in by[("qsgd", "top-1", "1")]
    assert "QSGD s=256 (10 bits/entry), no memory / top-1:" in proc.stdout and "bits to target" in proc.stdout
    assert ("top-1, EF21: does not reach the target" if math.isnan(mb["ef21-top1"])
            else "top-1, EF21 / top-1:") in proc.stdout
    # speed-up of rand-10 at W=2 = T(1)/T(2) from the files
    speed = [r for r in rows if r["quantity"] == "speedup" and r["workers"] == "2"]
    t = {r["workers"]: float(r["value"]) for r in rows if r["quantity"] == "time_to_target_s"}
    assert float(speed[0]["value"]) == pytest.approx(t["1"] / t["2"])


def test_figures_are_pngs(results, tmp_path):
    out = tmp_path / "fig"
    assert _figures(results, out).returncode == 0
    for name in ("theory.png", "qsgd.png", "communication.png", "scaling.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
    assert (out / "summary.md").read_text().count("|") > 20


def test_corrupt_file_is_named_not_mixed_in(results, tmp_path):
    tree = tmp_path / "results"
    shutil.copytree(results, tree)
    bad = tree / "qsgd" / "t" / "9" / "RUN.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not HDF5" * 100)
    # a readable run that did not finish: marked with its status, not counted
    half = tree / "qsgd" / "t" / "8" / "RUN.h5"
    half.parent.mkdir()
    shutil.copy(next((tree / "qsgd" / "t" / "0").glob("RUN.h5")), half)
    with h5py.File(half, "a") as h:
        h.attrs["status"] = "running"
    out = tmp_path / "fig"
    proc = _figures(tree, out)
    assert proc.returncode == 0, proc.stderr
    assert str(bad) in proc.stderr and str(half) in proc.stderr
    assert (out / "qsgd.png").read_bytes()[:8] == PNG
    md = (out / "summary.md").read_text()
    assert str(bad) in md and "unreadable" in md and str(half) in md and "running" in md
    files = {r["file"] for r in _rows(out)}
    assert str(bad) not in files and str(half) not in files


def test_qsgd_levels_and_bits_are_what_was_sent(results):
    """Study 2 runs the paper's s = 256 levels, and the 10 bits/entry its label claims are the
    bytes in the run file: every round one message of a float32 norm + ceil(d 10 / 8) bytes."""
    (f,) = [f for f in results.rglob("RUN.h5")
            if json.loads((f.parent / "meta.json").read_text())["label"] == "QSGD-s256"]
    with h5py.File(f, "r") as h:
        cfg, d = json.loads(h.attrs["config"]), int(h.attrs["d"])
        rounds, sent = h["metrics/round"][()], h["metrics/bytes_up"][()]
    assert cfg["levels"] == 256 and d == 20
    assert np.array_equal(sent, rounds * (4 + math.ceil(d * 10 / 8)))
    out = results.parent / "fig-bits"
    assert _figures(results, out).returncode == 0
    (row,) = [r for r in _rows(out) if r["quantity"] == "bits_per_entry"]
    assert row["method"] == "QSGD-s256" and row["value"] == "10"


def test_diverged_run_is_named_and_left_out(results, tmp_path):
    """A complete run whose f(xbar) ends above its start (rand-2 with decay steps gamma = 2,
    a = d/k, the old defaults, for 0.3 epochs) used to set the default target to the starting
    loss: every crossing at 0 MB and a ZeroDivisionError in the bits ratio. Now it is named on
    stderr, flagged in the tables and left out of every number."""
    tree = tmp_path / "results"
    shutil.copytree(results, tree)
    bad = tree / "qsgd" / "t" / "7" / "RUN.h5"
    bad.parent.mkdir()
    data = next((results.parent / "data").glob("synth-epsilon-n400-d20-*.h5"))
    run_mpi(2, ["train", data, "--compressor", "rand_k", "--k", "2", "--epochs", "0.3",
                "--schedule", "decay", "--gamma", "2", "--shift", "d/k", "--l2", "worker",
                "--out", bad, "--quiet"], check=True)
    loss = _h5(bad)["loss_xbar"]
    assert loss[-1] > loss[0]                      # the premise: it did not make progress
    out = tmp_path / "fig"
    proc = _figures(tree, out)
    assert proc.returncode == 0, proc.stderr
    named = [ln for ln in proc.stderr.splitlines() if str(bad) in ln]
    assert len(named) == 1 and "diverged" in named[0], proc.stderr
    rows = [r for r in _rows(out) if r["study"] == "qsgd"]
    mine = [r for r in rows if r["file"] == str(bad)]
    assert [(r["quantity"], r["flag"]) for r in mine] == [("final_loss_xbar", "diverged")]
    # the target and the ratio rest on the two paper runs that made progress, as before
    good = [f for f in tree.rglob("RUN.h5") if "/qsgd/" in str(f) and f != bad
            and json.loads((f.parent / "meta.json").read_text())["label"] != "ef21-top1"]
    tgt = max(np.min(_h5(f)["loss_xbar"]) for f in good)
    assert len(good) == 2
    assert {float(r["value"]) for r in rows if r["quantity"] == "target_loss"} == {tgt}
    ratios = {r["method"]: float(r["value"]) for r in rows
              if r["quantity"].startswith("bits_ratio")}
    assert sorted(ratios) == ["QSGD-s256", "ef21-top1"]
    assert math.isfinite(ratios["QSGD-s256"]) and ratios["QSGD-s256"] > 0
    md = (out / "summary.md").read_text()
    assert f"| {bad} | qsgd | rand-2 | complete | diverged:" in md and "| DIVERGED |" in md


@pytest.mark.parametrize("loss, flag", [
    ([0.69, 0.5, 0.4], ""),
    ([0.69, 0.9, 0.6], ""),                      # worse at first, below the start at the end
    ([0.69, 0.69, 0.7, 0.69], "flat"),           # never below the start
    ([0.69, 0.5, 0.8], "diverged"),              # ends above the start
    ([0.69, 0.5, float("nan")], "diverged"),
    ([0.69], "flat"),
])
def test_convergence_flag(loss, flag):
    assert convergence_flag(loss).split(":")[0] == flag


@pytest.mark.parametrize("subopt, status, flag", [
    ([0.3, 0.1, 0.05, 0.06], "complete", ""),
    ([0.3, 0.05, 0.01, 0.06], "complete", "rising"),     # 6x its best at the end
    ([0.3, 0.05, 0.01, 0.029], "complete", ""),          # below 3x its best
    ([math.nan] * 4, "complete", ""),                    # no f*: no suboptimality to rise
    ([0.3, 0.1, 0.05, 0.04], "diverged", "diverged"),    # the run stopped itself (exit 3)
])
def test_convergence_flag_rising_and_diverged_status(subopt, status, flag):
    loss = [0.69, 0.5, 0.45, 0.47]
    assert convergence_flag(loss, subopt, status).split(":")[0] == flag


def test_rising_run_is_flagged_and_not_usable(eps, tmp_path):
    """A complete run whose f(xbar) - f* ends 6x above its best is flagged "rising" by
    analysis/load.py (the one rule, mpimem.run.runlabel.convergence_flag) and enters no number."""
    path = tmp_path / "RUN.h5"
    run_mpi(3, ["train", eps, "--out", path, "--quiet", "--epochs", "0.2"], check=True)
    with h5py.File(path, "a") as h:   # a curve that makes progress, then one that rises
        loss, gap = h["metrics/loss_xbar"], h["metrics/subopt_xbar"]
        loss[...] = np.linspace(loss[0], 0.9 * loss[0], loss.size)
        gap[...] = np.linspace(0.3, 0.1, gap.size)
    assert read_one(path).usable
    with h5py.File(path, "a") as h:
        gap = h["metrics/subopt_xbar"]
        gap[-1] = 6 * gap[-2]
    run = read_one(path)
    assert run.flag_kind == "rising" and not run.usable, run.flag


def _drawn(results, name):
    """The runs of figure `name`'s study and the figure drawn from them."""
    runs = [r for r in load_runs(results) if r.study == FIGURES[name][0]]
    return runs, draw(name, runs, [], Table())


def test_figures_say_what_they_show(results):
    """Titles name the data set with n, d and "synthetic"; worker axes tick at whole workers;
    the loss-against-MB curves leave the 0-MB start out (a log axis cannot show it) instead of
    drawing it clamped at 1e-6 MB; QSGD is labelled with its levels, bits and memory."""
    runs, fig = _drawn(results, "qsgd")
    (ax,) = fig.axes
    assert ax.get_title().startswith("epsilon (synthetic, n=400, d=20)")
    assert ax.get_xscale() == "log"
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(names) == ["QSGD s=256 (10 bits/entry), no memory", "top-1, EF21",
                             "top-1, memory"]
    for line, name in zip(ax.get_lines(), names):
        (r,) = [r for r in runs if curve_label(r) == name]
        m = _h5(r.path)
        assert m["bytes_up"][0] == 0
        assert np.array_equal(line.get_xdata(), m["bytes_up"][1:] / 1e6)
        assert np.array_equal(line.get_ydata(), m["loss_xbar"][1:])
    _, fig = _drawn(results, "scaling")
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1, 2]
    _, fig = _drawn(results, "theory")
    assert fig.axes[0].get_title().startswith("epsilon (synthetic, n=400, d=20)")


def test_communication_figure_mem_sgd_ef21_qsgd_against_mb_up_and_down(results):
    """communication.png (study 2): one log-log panel, f(xbar) - f* against the MB sent both
    ways, one curve per method; each curve is its run file's subopt_xbar against
    (bytes_up + bytes_down) / 1e6 (the 0-MB start left out); the EF21 curve is the run whose
    config says method "ef21", labelled "top-1, EF21" and dash-dotted."""
    runs, fig = _drawn(results, "communication")
    (ax,) = fig.axes
    assert ax.get_title() == ("epsilon (synthetic, n=400, d=20):\nf(xbar) - f* against MB sent "
                              "(up + down), Mem-SGD vs EF21 vs QSGD")
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_ylabel() == "f(xbar) - f*"
    by_name = dict(zip([t.get_text() for t in ax.get_legend().get_texts()], ax.get_lines()))
    assert sorted(by_name) == ["Mem-SGD top-1, memory", "QSGD s=256 (10 bits/entry), no memory",
                               "top-1, EF21"]
    labels = {}
    for name, line in by_name.items():
        (r,) = [r for r in runs if name in (curve_label(r), f"Mem-SGD {curve_label(r)}")]
        with h5py.File(r.path, "r") as h:
            labels[name] = json.loads(h.attrs["config"]).get("method", "memsgd")
            up, down = h["metrics/bytes_up"][()], h["metrics/bytes_down"][()]
            sub = h["metrics/subopt_xbar"][()]
        assert up[0] == down[0] == 0 and down[-1] > 0
        assert np.array_equal(line.get_xdata(), (up[1:] + down[1:]) / 1e6)
        assert np.array_equal(line.get_ydata(), sub[1:])
        assert line.get_linestyle() == ("-." if name.endswith("EF21") else
                                        "--" if name.startswith("QSGD") else "-")
    assert labels == {"top-1, EF21": "ef21", "Mem-SGD top-1, memory": "memsgd",
                      "QSGD s=256 (10 bits/entry), no memory": "memsgd"}


@pytest.mark.parametrize("cfg, label, curve, style", [
    (dict(compressor="top_k", k=1, memory=True), "top-1", "top-1, memory", "-"),
    (dict(compressor="top_k", k=1, memory=True, method="memsgd"), "top-1", "top-1, memory", "-"),
    (dict(compressor="top_k", k=1, memory=True, method="ef21"), "ef21-top1", "top-1, EF21", "-."),
    (dict(compressor="rand_k", k=2, memory=True, method="ef21", downlink_k=5), "ef21-rand2",
     "rand-2, EF21-BC, downlink top-5", "-."),
    (dict(compressor="qsgd", levels=16, memory=False), "QSGD-s16",
     "QSGD s=16 (6 bits/entry), no memory", "--"),
])
def test_method_read_from_the_config_memsgd_when_absent(cfg, label, curve, style):
    """Run files written before `method` existed ran Mem-SGD; EF21 runs are labelled EF21 (the
    study label ef21-top1, the curve label of mpimem.run.runlabel) and drawn dash-dotted."""
    run = Run(path="x.h5", config=cfg, attrs={"d": 20})
    assert (method_label(cfg), curve_label(run), line_style(run)) == (label, curve, style)


def test_synthetic_known_from_the_data_file_without_meta(results, tmp_path):
    """A run file away from its study folder (no meta.json): the data file it names says
    synthetic by its `source`; once that file is gone, the label says it cannot tell."""
    (f,) = [f for f in results.rglob("RUN.h5") if "/theory/" in str(f)]
    with h5py.File(f, "r") as h:
        attrs = dict(h.attrs)
    assert data_label("eps", attrs, {}) == "eps (synthetic, n=400, d=20)"
    attrs["dataset"] = str(tmp_path / "gone.h5")
    assert data_label("eps", attrs, {}) == "eps (synthetic or real: unknown, n=400, d=20)"
    assert data_label("eps", attrs, {"synthetic": False}) == "eps (n=400, d=20)"


@pytest.mark.parametrize("cfg, label", [
    (dict(compressor="qsgd", levels=16, memory=True), "QSGD s=16 (6 bits/entry), memory"),
    (dict(compressor="qsgd", levels=16, memory=False), "QSGD s=16 (6 bits/entry), no memory"),
    (dict(compressor="none", memory=True), "SGD"),
    (dict(compressor="rand_k", k=3, memory=True, mode="async", topology="server",
          downlink_k=None, l2="server"), "rand-3, memory, mode async, l2 server"),
    (dict(compressor="top_k", k=1, memory=False, topology="allgather", downlink_k=5),
     "top-1, no memory, topology allgather, downlink top-5"),
    (dict(compressor="top_k", k=2, memory=True, method="ef21"), "top-2, EF21"),
    (dict(compressor="top_k", k=2, memory=True, method="ef21", downlink_k=4, k_warmup=3),
     "top-2, EF21-BC, k warm-up 3 epochs, downlink top-4"),
])
def test_run_label_says_what_was_sent(cfg, label):
    assert run_label(cfg, 20) == label


def test_make_figures_writes_to_build_unless_asked(tmp_path):
    """`make figures` draws into build/figures; the committed docs/figures stay as they are
    unless FIGURES_OUT names them (the Makefile passes FIGURES_OUT through)."""
    docs = {p.name: p.read_bytes() for p in (ROOT / "docs" / "figures").glob("*.png")}
    build = ROOT / "build" / "figures" / "qsgd.png"
    build.unlink(missing_ok=True)
    env = {"FIG_RESULTS": str(tmp_path / "results"), "FIG_DATA": str(tmp_path / "data"),
           "STUDIES": "qsgd", "METHODS": "top-1", "PATH": f"{Path(PY).parent}:/usr/bin:/bin"}
    proc = run(["bash", str(ROOT / "analysis" / "make-figures.sh")], timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert build.read_bytes()[:8] == PNG
    assert {p.name: p.read_bytes() for p in (ROOT / "docs" / "figures").glob("*.png")} == docs
    out = tmp_path / "asked"
    proc = run(["bash", str(ROOT / "analysis" / "make-figures.sh")], timeout=280,
               env=dict(env, FIGURES_OUT=str(out), KEEP="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "qsgd.png").read_bytes()[:8] == PNG
    dry = run(["make", "-n", "figures", f"FIGURES_OUT={out}"], cwd=ROOT)
    assert f"FIGURES_OUT='{out}' bash analysis/make-figures.sh" in dry.stdout


def test_scaling_figure_one_curve_per_method_and_topology(results, tmp_path):
    """scaling.png of a study run on three topologies (the job script's TOPOLOGY: the study's
    async server, then TOPOLOGY=allgather and sparse-allreduce with MODE=sync): one curve per
    (method, topology), each labelled with its topology (the server's too) and drawn with its
    marker; the curve's points are the time to the common target from its own run files (config
    `topology`), and the table names the topology with the method."""
    tree = tmp_path / "results"
    shutil.copytree(results / "scaling", tree / "scaling")
    for topology, workers in (("allgather", "1 2"), ("sparse-allreduce", "2")):
        _study(tmp_path, "scaling", RESULTS=tree, DATA_DIR=results.parent / "data",
               JOB_ID=topology, N=400, D=20, EPOCHS=1, EVAL_EVERY=0.25, DATASETS="epsilon",
               METHODS="rand-10", WORKERS=workers, MODE="sync", TOPOLOGY=topology)
    files = {}
    for f in sorted(tree.rglob("RUN.h5")):
        meta = json.loads((f.parent / "meta.json").read_text())
        with h5py.File(f, "r") as h:
            cfg, ranks = json.loads(h.attrs["config"]), int(h.attrs["ranks"])
        assert cfg["topology"] == meta["topology"] and ranks == meta["ranks"]
        assert ranks == meta["workers"] + (meta["topology"] == "server")   # W+1 with the server
        files[(meta["topology"], meta["workers"])] = _h5(f)
    assert sorted(files) == [("allgather", 1), ("allgather", 2), ("server", 1), ("server", 2),
                             ("sparse-allreduce", 2)]
    tgt = max(np.min(m["loss_xbar"]) for m in files.values())

    runs, fig = _drawn(tree, "scaling")
    top, bottom = fig.axes
    want = {"rand-10, memory, mode async, topology server": ("server", "o"),
            "rand-10, memory, topology allgather": ("allgather", "s"),
            "rand-10, memory, topology sparse-allreduce": ("sparse-allreduce", "^")}
    names = [t.get_text() for t in top.get_legend().get_texts()]
    assert sorted(names) == sorted(want)
    for name, line in zip(names, top.get_lines()):
        topology, marker = want[name]
        ws = sorted(w for t, w in files if t == topology)
        assert line.get_marker() == marker and list(line.get_xdata()) == ws
        t = [_crossing(files[(topology, w)]["train_time"], files[(topology, w)]["loss_xbar"],
                       tgt) for w in ws]
        assert np.allclose(line.get_ydata(), t)
        (speed,) = [ln for ln in bottom.get_lines() if ln.get_label() == name]
        assert np.allclose(speed.get_ydata(), [t[0] / x for x in t])   # over its fewest W

    out = tmp_path / "fig"
    proc = _figures(tree, out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "scaling.png").read_bytes()[:8] == PNG
    speedups = {(r["method"], r["workers"]) for r in _rows(out) if r["quantity"] == "speedup"}
    assert speedups == {(f"rand-10, topology {t}", str(w)) for t, w in files}


@pytest.mark.parametrize("cfg, several, label", [
    (dict(compressor="rand_k", k=10, memory=True), False, "rand-10, memory"),
    (dict(compressor="rand_k", k=10, memory=True), True, "rand-10, memory, topology server"),
    (dict(compressor="rand_k", k=10, memory=True, topology="allgather"), False,
     "rand-10, memory, topology allgather"),
    (dict(compressor="top_k", k=2, memory=True, topology="hierarchical", group_size=4,
          l2="server"), True, "top-2, memory, l2 server, topology hierarchical, groups of 4"),
    (dict(compressor="none", memory=False, topology="hierarchical", group_size=None), True,
     "SGD, topology hierarchical, groups per node"),
])
def test_scaling_label_names_the_topology_when_several(cfg, several, label):
    """The scaling figure's curve names: with one topology in the study, the usual curve label;
    with several, every curve ends with its topology (server too; hierarchical with its groups)."""
    topologies = {"a", "b"} if several else {"a"}
    assert scaling_label(Run(path="x.h5", config=cfg, attrs={"d": 20}), topologies) == label
