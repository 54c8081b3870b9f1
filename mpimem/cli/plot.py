"""`mpimem plot RUN.h5 ... --x epochs|mb|seconds --out FIG.png` and `mpimem compare RUN.h5 ...`:
any run files, wherever they are (no study folder needed).

plot: f(xbar) - f* on a log axis against epochs, MB sent (up + down, log axis) or training
seconds (evaluation excluded), one curve per run, under a title naming the data set (n, d,
synthetic or not), labelled by what it sent (mpimem.run.runlabel.run_label,
with the settings that tell runs of the same label apart). A run whose data set has no f*
is drawn as f(xbar), and its label says so. Points a log axis cannot show (a gap <= 0) are left
out, never clamped (on the MB axis, the 0-MB starting point too).

compare: a table on stdout, one row per run: the settings that differ between the runs, the
status (a diverged, rising or flat run is flagged, mpimem.run.runlabel.convergence_flag, and stays
in the table; rising: the last f(xbar) - f* above 3 times the run's best), final and best f(xbar) - f*, MB up and down, training seconds (`train s (wall less evaluation)`: the wall time
less the time spent evaluating), and the MB (up + down)
each run needed to reach a common target: the worst final gap among the runs that made
progress, so that every one of them reaches it (first crossing, linearly interpolated). When
any run has no f*, every gap column is f(xbar) instead, and the header says so. A setting that
is unset prints as '-', a true/false one as yes/no.

Bad input (a missing file, not a run file, a run with no evaluation points, an --out the output
policy refuses: an existing file without --overwrite, a device, FIFO or directory ever,
mpimem.outputs): one line `mpimem: error: ...`, exit status 2, checked before anything is
drawn. The figure is drawn in memory (format from --out's extension, PNG without one) and put
in place whole.
"""
import io
import math
import os

import numpy as np

from mpimem.errors import MpimemError
from mpimem.outputs import check_output, write_output
from mpimem.run.runfile import read_run
from mpimem.run.runlabel import (data_label, differing_settings, first_crossing, memory_ran,
                                 run_flag, run_label)

X_AXES = {"epochs": "epochs", "mb": "MB sent (workers to server + server to workers)",
          "seconds": "training seconds (evaluation excluded)"}


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot f(xbar) - f* of run files against epochs, MB or seconds")
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files written by mpimem train")
    p.add_argument("--x", choices=sorted(X_AXES), default="epochs",
                   help="horizontal axis (default: epochs)")
    p.add_argument("--out", required=True, metavar="FIG.png", help="figure file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (a regular file; never a device or directory)")
    p.set_defaults(func=plot)
    c = sub.add_parser("compare", help="a table of run files side by side")
    c.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files written by mpimem train")
    c.set_defaults(func=compare)


def load(path: str) -> dict:
    """A run file (mpimem.run.runfile.read_run) with at least one evaluation point, plus `settings`
    (its config and worker count), `label`, `has_fstar` and `flag` (diverged/rising/flat, or "");
    MpimemError otherwise."""
    run = read_run(path)
    m = run["metrics"]
    if not m or min(len(v) for v in m.values()) == 0:
        raise MpimemError(f"{path}: the run file has no evaluation points yet")
    a = run["attrs"]
    run["path"] = path
    run["settings"] = dict(a["config"], workers=int(a.get("workers", 0)),
                           memory=memory_ran(a["config"]))   # SGD keeps no error: off
    run["label"] = run_label(a["config"], int(a.get("d", 0)))
    run["has_fstar"] = not np.all(np.isnan(np.asarray(m["subopt_xbar"], float)))
    run["flag"] = run_flag(run)
    return run


def load_all(paths) -> list:
    return [load(p) for p in paths]


def gap(run, use_fstar: bool) -> np.ndarray:
    """f(xbar) - f* at each evaluation point, or f(xbar) itself when not use_fstar."""
    m = run["metrics"]
    return np.asarray(m["subopt_xbar"] if use_fstar else m["loss_xbar"], float)


def mb_sent(run) -> np.ndarray:
    """MB sent up and down, cumulative, at each evaluation point."""
    m = run["metrics"]
    return (np.asarray(m["bytes_up"], float) + np.asarray(m["bytes_down"], float)) / 1e6


def x_values(run, axis: str) -> np.ndarray:
    m = run["metrics"]
    if axis == "mb":
        return mb_sent(run)
    if axis == "seconds":
        return np.asarray(m.get("train_time", m["wall_time"]), float)
    return np.asarray(m["epoch"], float)


def legend_labels(runs) -> list:
    """Each run's label; where labels repeat, the settings that differ among those runs are
    added (`gamma=0.5`), so no two curves carry the same name."""
    labels = []
    for run in runs:
        same = [r for r in runs if r["label"] == run["label"]]
        extra = [f"{k}={run['settings'].get(k)}" for k in differing_settings(
            [r["settings"] for r in same]) if k not in ("compressor", "memory")]
        label = run["label"] + (f" ({', '.join(extra)})" if extra else "")
        labels.append(label + ("" if run["has_fstar"] else " [f(xbar): no f*]"))
    return labels


def data_title(runs) -> str:
    """The data set(s) the runs trained on, with n, d and whether synthetic."""
    names = dict.fromkeys(data_label(os.path.splitext(os.path.basename(str(r["attrs"].get(
        "dataset", "?"))))[0], r["attrs"], {}) for r in runs)
    return "; ".join(names)


def figure(runs, axis: str):
    """The plot as a matplotlib Figure (Agg backend; matplotlib is imported only here)."""
    try:
        import matplotlib
    except ImportError:
        raise MpimemError("mpimem plot needs matplotlib: pip install 'mpimem[figures]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, label in zip(runs, legend_labels(runs)):
        x, y = x_values(run, axis), gap(run, run["has_fstar"])
        keep = (y > 0) & ((x > 0) if axis == "mb" else True)
        ax.plot(x[keep], y[keep], "-", marker=".", label=label)
    ax.set_yscale("log")
    if axis == "mb":
        ax.set_xscale("log")
    ax.set_xlabel(X_AXES[axis] + (", log scale" if axis == "mb" else ""))
    ax.set_title(data_title(runs), fontsize=9)
    fstar = [r["has_fstar"] for r in runs]
    ax.set_ylabel("f(xbar) - f*" if all(fstar) else
                  "f(xbar)" if not any(fstar) else "f(xbar) - f*, or f(xbar) where no f*")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(args) -> int:
    check_output(args.out, args.overwrite, "--out")   # the output policy before any work
    runs = load_all(args.runs)
    fig = figure(runs, args.x)
    ext = os.path.splitext(str(args.out))[1].lstrip(".").lower()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=100, format=ext or "png")
    except (OSError, ValueError) as err:
        raise MpimemError(f"--out {args.out}: cannot write the figure ({err})") from None
    write_output(args.out, buf.getvalue(), args.overwrite, "--out")
    print(f"wrote {args.out}")
    if not all(r["has_fstar"] for r in runs):
        print("note: runs without f* are drawn as f(xbar): " +
              ", ".join(r["path"] for r in runs if not r["has_fstar"]))
    return 0


def common_target(runs, use_fstar: bool) -> float:
    """The worst (largest) final gap among the runs that made progress: each of them reaches
    it. NaN when no run made progress."""
    finals = [gap(r, use_fstar)[-1] for r in runs if not r["flag"]]
    return float(max(finals)) if finals else math.nan


TRAIN_S = "train s (wall less evaluation)"


def cell(value) -> str:
    """A setting in the compare table: '-' for none, yes/no for a flag, else str()."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return str(value)


def rows(runs):
    """The compare table: the header and one row (list of strings) per run."""
    use_fstar = all(r["has_fstar"] for r in runs)
    target = common_target(runs, use_fstar)
    keys = differing_settings([r["settings"] for r in runs])
    g = "f(xbar)-f*" if use_fstar else "f(xbar)"
    header = (["run", "label"] + keys +
              ["status", f"final {g}", f"best {g}", "MB up", "MB down", TRAIN_S,
               f"MB to {g}<={target:.4g}"])
    table = []
    for r in runs:
        y, m = gap(r, use_fstar), r["metrics"]
        kind = r["flag"].split(":")[0]
        status = r["attrs"]["status"] + (f" {kind.upper()}" if kind and kind != r["attrs"][
            "status"] else "")
        table.append([r["path"], r["label"]] + [cell(r["settings"].get(k)) for k in keys] +
                     [status, f"{y[-1]:.6g}", f"{np.nanmin(y):.6g}",
                      f"{m['bytes_up'][-1] / 1e6:.6g}", f"{m['bytes_down'][-1] / 1e6:.6g}",
                      f"{x_values(r, 'seconds')[-1]:.4g}",
                      f"{first_crossing(mb_sent(r), y, target):.6g}"])
    return header, table


def compare(args) -> int:
    header, table = rows(load_all(args.runs))
    widths = [max(len(row[i]) for row in [header] + table) for i in range(len(header))]
    for row in [header] + table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
