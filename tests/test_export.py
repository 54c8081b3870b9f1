"""`mpimem export RUN.h5 --csv` and `mpimem info --json RUN.h5` on a real run file: both
round-trip exactly against what h5py reads from the file."""
import csv
import io
import json
import math

import h5py
import numpy as np
import pytest

from conftest import run_cli, run_mpi
from mpimem.core.metrics import METRICS


@pytest.fixture(scope="module")
def run_file(rcv, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run.h5"
    run_mpi(3, ["train", rcv, "--out", out, "--quiet", "--epochs", "0.1", "--k", "5"], check=True)
    return out


def stored(path):
    """/metrics, root attributes and per-rank seconds, read with plain h5py."""
    with h5py.File(path, "r") as h5:
        metrics = {k: h5["metrics"][k][()] for k in h5["metrics"]}
        attrs = dict(h5.attrs)
        seconds = h5["timing/seconds"][()]
    return metrics, attrs, seconds


def same(a, b):
    """Equal floats, NaN equal to NaN (and to JSON's null)."""
    if b is None:
        return math.isnan(a)
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("to_file", [False, True])
def test_csv_round_trips_exactly(run_file, tmp_path, to_file):
    metrics, _, _ = stored(run_file)
    if to_file:
        out = tmp_path / "points.csv"
        proc = run_cli(["export", run_file, "--csv", "--out", out], check=True)
        assert proc.stdout == ""
        text = out.read_text()
    else:
        text = run_cli(["export", run_file, "--csv"], check=True).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(METRICS)
    assert len(rows) - 1 == len(metrics["round"]) == 11
    for j, name in enumerate(rows[0]):
        column = np.array([float(row[j]) for row in rows[1:]])
        assert np.array_equal(column, metrics[name], equal_nan=True), name  # bit for bit
    table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1)
    assert np.array_equal(table, np.column_stack([metrics[k] for k in METRICS]), equal_nan=True)


def test_csv_integer_columns_are_integers(run_file):
    text = run_cli(["export", run_file, "--csv"], check=True).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for name in ("round", "samples", "bytes_up", "bytes_down"):
            assert row[name].isdigit(), (name, row[name])   # 120, not 120.0
        assert "." in row["epoch"] or "e" in row["epoch"]
    assert int(rows[-1]["round"]) == stored(run_file)[1]["rounds"]


def test_json_matches_the_file(run_file):
    metrics, attrs, seconds = stored(run_file)
    summary = json.loads(run_cli(["info", "--json", run_file], check=True).stdout)
    assert set(summary) == {"path", "status", "attrs", "settings", "as_run", "points", "last",
                            "flag", "progress", "timing"}
    assert summary["status"] == attrs["status"] == "complete"
    assert summary["settings"] == json.loads(attrs["config"])
    for key in ("hosts", "bytes_per_rank", "k_schedule", "groups"):   # JSON values, not strings
        assert summary["attrs"][key] == json.loads(attrs[key]), key
    for key, value in attrs.items():
        if key not in ("config", "hosts", "bytes_per_rank", "k_schedule", "groups"):
            got = summary["attrs"][key]
            assert same(value, got) if isinstance(value, float) else got == value, key
    assert summary["points"] == len(metrics["round"])
    assert set(summary["last"]) == set(METRICS)
    for name in METRICS:
        assert same(metrics[name][-1], summary["last"][name]), name
    assert summary["as_run"] == {"memory": True, "bits_per_entry": None, "server": True}
    assert [r["role"] for r in summary["timing"]["ranks"]] == ["server", "worker 1", "worker 2"]
    assert np.array_equal([r["seconds"] for r in summary["timing"]["ranks"]], seconds)
    p = summary["progress"]
    assert p["round"] == metrics["round"][-1] == attrs["rounds"] and p["eta_s"] is None
    assert p["rounds_per_s"] == metrics["round"][-1] / metrics["train_time"][-1]


def test_export_errors_are_one_line(run_file, tmp_path):
    for args, message in (([tmp_path / "missing.h5", "--csv"], "cannot read the run file"),
                          ([run_file, "--csv", "--out", tmp_path / "no" / "x.csv"], "cannot write"),
                          ([run_file], "--csv")):
        proc = run_cli(["export", *args])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith("mpimem") and message in lines[0], lines
