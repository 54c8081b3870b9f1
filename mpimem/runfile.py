"""RUN.h5: the record of one training run, written by rank 0 (layout in docs/design.md).

The file is created when training starts with status "running", grows by one row of
/metrics per evaluation point (flushed each time, so a killed run keeps its history), and is
marked "complete" (or "failed" with the error, or "preempted") at the end. Readers must check
the status: a crashed run is never mistaken for a finished one.
"""
import json
import os
from datetime import datetime, timezone

import h5py
import numpy as np

from .errors import MpimemError
from .metrics import METRICS

FORMAT = "mpimem-run"
FORMAT_VERSION = 1


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_output_dir(path: str) -> None:
    """The directory that will hold `path` (a run file, or RUN.ckpt/) exists and is writable;
    mpimem never creates the user's directories."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise MpimemError(f"{path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise MpimemError(f"{path}: output directory {directory} is not writable")


class RunWriter:
    """Appends evaluation points to RUN.h5 and finalises it; only rank 0 holds one."""

    def __init__(self, path: str, attrs: dict, resume: dict = None):
        """resume: the metrics columns of the checkpoint a resumed run starts from; the run file
        is then continued (rows after the checkpoint dropped, status back to running), or
        created anew from those rows when the old one is missing or damaged."""
        self.path = path
        check_output_dir(path)
        self.h5 = None
        if resume is not None:
            self.h5 = self._reopen(path)
        if self.h5 is None:
            try:
                self.h5 = h5py.File(path, "w")
            except OSError as err:
                raise MpimemError(f"{path}: cannot create the run file ({err})") from None
            self.h5.attrs.update(started=now())
        self.h5.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, status="running")
        for key, value in attrs.items():
            self.h5.attrs[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
        group = self.h5.require_group("metrics")
        for name in METRICS:
            if name not in group:
                group.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
        if resume is not None:
            self.h5.attrs["resumed"] = int(self.h5.attrs.get("resumed", 0)) + 1
            for name in METRICS:
                rows = np.asarray(resume.get(name, []), dtype="f8")
                group[name].resize((rows.size,))
                group[name][:] = rows
        self.h5.flush()

    @staticmethod
    def _reopen(path):
        """The existing run file opened for appending, its final results removed; None if it
        is missing or unreadable (a crash can leave it damaged)."""
        try:
            h5 = h5py.File(path, "a")
        except OSError:
            return None
        if h5.attrs.get("format") != FORMAT:
            h5.close()
            return None
        for name in ("final", "timing"):
            if name in h5:
                del h5[name]
        for key in ("error", "finished", "preempted_round"):
            if key in h5.attrs:
                del h5.attrs[key]
        return h5

    def append(self, row: dict) -> None:
        group = self.h5["metrics"]
        for name in METRICS:
            ds = group[name]
            ds.resize((ds.shape[0] + 1,))
            ds[-1] = row.get(name, np.nan)
        self.h5.flush()

    def finish(self, status: str, x=None, xbar=None, memories=None, timing=None,
               timing_columns=(), extra_attrs=None, error: str = None) -> None:
        """Write the final iterates, per-rank times and the status; close the file."""
        if x is not None:
            final = self.h5.require_group("final")
            final["x"] = x
            final["xbar"] = xbar
            if memories is not None:
                final["memory"] = memories
        if timing is not None:
            ds = self.h5.require_group("timing").create_dataset("seconds", data=timing)
            ds.attrs["columns"] = json.dumps(list(timing_columns))
        for key, value in (extra_attrs or {}).items():
            self.h5.attrs[key] = value
        if error:
            self.h5.attrs["error"] = error
        self.h5.attrs["status"] = status
        self.h5.attrs["finished"] = now()
        self.h5.close()


def read_run(path: str) -> dict:
    """The attributes, metrics and timings of a run file; MpimemError if it is not one."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != FORMAT:
                raise MpimemError(f"{path}: not an mpimem run file (no format='{FORMAT}' attribute)")
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
            metrics = {k: h5["metrics"][k][()] for k in h5["metrics"]} if "metrics" in h5 else {}
            timing = None
            if "timing/seconds" in h5:
                ds = h5["timing/seconds"]
                timing = {"columns": json.loads(ds.attrs["columns"]), "seconds": ds[()]}
            final = {k: h5["final"][k][()] for k in h5["final"]} if "final" in h5 else {}
    except OSError as err:
        raise MpimemError(f"{path}: cannot read the run file ({err})") from None
    attrs["config"] = json.loads(attrs.get("config", "{}"))
    return {"attrs": attrs, "metrics": metrics, "timing": timing, "final": final}
