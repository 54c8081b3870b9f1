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

from conftest import ROOT, run

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
    _study(tmp, "qsgd", N=400, D=20, EPOCHS=2, EVAL_EVERY=0.25, METHODS="top-1 QSGD-8bit")
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
    assert len(files) == 5
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
        elif q == "MB_to_target":
            tgt = float(by[(r["study"], r["method"], r["workers"])]["target_loss"]["value"])
            assert v == pytest.approx(_crossing(m["bytes_up"] / 1e6, m["loss_xbar"], tgt))
        elif q == "time_to_target_s":
            tgt = float(by[(r["study"], r["method"], r["workers"])]["target_loss"]["value"])
            assert v == pytest.approx(_crossing(m["train_time"], m["loss_xbar"], tgt))
        else:
            continue
        checked += 1
    assert checked >= 8
    # the qsgd target is the largest best-loss over the complete runs; the ratio uses it
    qsgd = [f for f in files if "/qsgd/" in str(f)]
    tgt = max(np.min(_h5(f)["loss_xbar"]) for f in qsgd)
    mb = {}
    for f in qsgd:
        with h5py.File(f, "r") as h:
            comp = json.loads(h.attrs["config"])["compressor"]
        label = "QSGD-8bit" if comp == "qsgd" else "top-1"
        m = _h5(f)
        mb[label] = _crossing(m["bytes_up"] / 1e6, m["loss_xbar"], tgt)
    ratio = float(by[("qsgd", "QSGD-8bit", "1")]["bits_ratio_vs_top-1"]["value"])
    assert ratio == pytest.approx(mb["QSGD-8bit"] / mb["top-1"])
    assert "bits to target" in proc.stdout
    # speed-up of rand-10 at W=2 = T(1)/T(2) from the files
    speed = [r for r in rows if r["quantity"] == "speedup" and r["workers"] == "2"]
    t = {r["workers"]: float(r["value"]) for r in rows if r["quantity"] == "time_to_target_s"}
    assert float(speed[0]["value"]) == pytest.approx(t["1"] / t["2"])


def test_figures_are_pngs(results, tmp_path):
    out = tmp_path / "fig"
    assert _figures(results, out).returncode == 0
    for name in ("theory.png", "qsgd.png", "scaling.png"):
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
