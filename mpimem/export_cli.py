"""`mpimem export RUN.h5 --csv [--out FILE]`: the per-point metrics of a run file as CSV.

One header line of metric names (the /metrics columns: round, epoch, samples, wall_time,
train_time, bytes_up, bytes_down, loss_xbar, loss_x, subopt_xbar, subopt_x, acc_xbar, acc_x),
then one line per evaluation point. Each value is Python's repr of the float64 in the file, so
reading it back (float(), numpy.loadtxt) gives the stored number exactly; a missing value is
`nan`. Written to stdout, or to FILE (replaced whole: a temporary file renamed over it). Works
on a run in progress (the points written so far).
"""
import csv
import io
import os

from .errors import MpimemError
from .info_cli import metric_table
from .runfile import read_run, replace_file


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run file's per-point metrics (CSV)")
    p.add_argument("run", help="run file written by mpimem train")
    p.add_argument("--csv", action="store_true", required=True,
                   help="CSV: a header of metric names, one row per evaluation point")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=export)


def csv_text(metrics: dict) -> str:
    """The CSV of the metric columns (module docstring)."""
    names, rows = metric_table(metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for i in range(rows):
        writer.writerow(repr(float(metrics[k][i])) for k in names)
    return buf.getvalue()


def export(args) -> int:
    text = csv_text(read_run(args.run)["metrics"])
    if args.out is None:
        print(text, end="")
        return 0
    path = os.path.abspath(args.out)
    directory, name = os.path.split(path)
    try:
        replace_file(path, os.path.join(directory, f".{name}.tmp-{os.getpid()}"), text.encode())
    except OSError as err:
        raise MpimemError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    return 0
