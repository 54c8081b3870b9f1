"""Read many RUN.h5 files (a results tree written by jobs/*.sbatch) into Run records.

Every `*.h5` under the results directory is a run file candidate, except checkpoints (files
inside a `*.ckpt` folder). A file that cannot be read, or is not an mpimem run file, becomes a
Run with `problem` set; a readable run whose status is not "complete" keeps its data but
`complete` is False. Nothing is dropped silently: callers list the problems.

Study, label, data set and worker count come from the `meta.json` the job script writes next
to the run file; without one they are derived from the run's own attributes (the config).
The method (Mem-SGD "memsgd" or "ef21") is the config's `method`; run files written before
the key existed ran Mem-SGD.
The data set's title says its size and whether it is a synthetic look-alike
(mpimem.run.runlabel.data_label: meta.json's `synthetic`, else the data file's `source`).

A complete run whose f(xbar) diverged, rose to above 3 times its best f(xbar) - f* ("rising") or
never went below its starting value gets a `flag`
(`convergence_flag`): it is not `usable`, so no number (target, ratio, speed-up) rests on it.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mpimem.core.operators import SPARSIFIERS
from mpimem.run.runlabel import convergence_flag, data_label

RUN_FORMAT = "mpimem-run"


@dataclass
class Run:
    path: str
    study: str = "?"
    label: str = "?"
    dataset: str = "?"
    data_title: str = "?"                   # "epsilon (synthetic, n=400, d=20)"
    workers: int = 0
    seed: int = 0
    method: str = "memsgd"                  # the config's method; "memsgd" for older files
    status: str = "unreadable"
    problem: str = ""                       # why the file is unusable ("" when readable)
    flag: str = ""                          # "diverged: ..." or "flat: ..." (complete runs)
    attrs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.problem and self.status == "complete"

    @property
    def readable(self) -> bool:
        return not self.problem

    @property
    def usable(self) -> bool:
        """Complete, and f(xbar) went below its starting value without diverging."""
        return self.complete and not self.flag

    @property
    def flag_kind(self) -> str:
        """"diverged", "flat" or "" (the word before the reason)."""
        return self.flag.split(":")[0]

    @property
    def why_excluded(self) -> str:
        return self.problem or self.flag or f"status {self.status}"


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def run_method(cfg: dict) -> str:
    """The algorithm a run ran: the config's `method` ("memsgd", "ef21"); "memsgd" for run files
    written before the key existed."""
    return str(cfg.get("method") or "memsgd")


def method_label(cfg: dict) -> str:
    """A label from the resolved config, as the study TOMLs name methods ("ef21-top1" for EF21
    with top-1)."""
    comp = cfg.get("compressor", "?")
    mem = cfg.get("memory", True)
    if run_method(cfg) == "ef21":
        size = f"{comp[:-2]}{cfg.get('k')}" if comp in SPARSIFIERS else comp
        return f"ef21-{size}"
    if comp == "none":
        return "SGD"
    if comp == "qsgd":
        return f"QSGD-{cfg.get('bits')}bit" if cfg.get("bits") else f"QSGD-s{cfg.get('levels')}"
    if comp in SPARSIFIERS:
        base = f"{comp[:-2]}-{cfg.get('k')}"
    else:
        base = comp
    return base if mem else base + "-nomem"


def read_one(path, root=None) -> Run:
    path = str(path)
    run = Run(path=path)
    meta_path = Path(path).with_name("meta.json")
    if meta_path.exists():
        try:
            run.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            run.meta = {}
    try:
        with h5py.File(path, "r") as h5:
            fmt = _text(h5.attrs.get("format"))
            if fmt != RUN_FORMAT:
                raise ValueError(f"not an mpimem run file (format={fmt!r})")
            run.attrs = {k: _text(v) for k, v in h5.attrs.items()}
            if "metrics" in h5:
                run.metrics = {k: np.asarray(h5["metrics"][k][()], dtype=float)
                               for k in h5["metrics"]}
        run.status = str(run.attrs.get("status", "?"))
        run.config = json.loads(run.attrs.get("config") or "{}")
    except Exception as err:  # noqa: BLE001 - any failure makes the file a reported problem
        run.problem = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        run.status = "unreadable"
    m, c, a = run.meta, run.config, run.attrs
    rel = Path(path).relative_to(root).parts if root else ()
    run.study = m.get("study") or (rel[0] if len(rel) > 1 else "?")
    run.label = m.get("label") or (method_label(c) if c else "?")
    ds = m.get("dataset") or os.path.splitext(os.path.basename(str(a.get("dataset", "?"))))[0]
    run.dataset = ds
    run.data_title = data_label(ds, a, m)
    run.workers = int(m.get("workers") or a.get("workers") or 0)
    run.seed = int(m.get("seed", c.get("seed", 0)) or 0)
    run.method = run_method(c)
    if run.complete:
        run.flag = convergence_flag(run.metrics.get("loss_xbar", []),
                                    run.metrics.get("subopt_xbar"), run.status)
    return run


def find_run_files(root) -> list:
    root = Path(root)
    files = []
    for p in sorted(root.rglob("*.h5")):
        if any(part.endswith(".ckpt") for part in p.relative_to(root).parts[:-1]):
            continue
        files.append(p)
    return files


def load_runs(root) -> list:
    """Every run file under ROOT as a Run (problems included), sorted by path."""
    return [read_one(p, root) for p in find_run_files(root)]
