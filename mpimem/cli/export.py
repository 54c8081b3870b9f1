"""`mpimem export RUN.h5 --csv [--out FILE]`: the per-point metrics of a run file as CSV.

One header line of metric names (the /metrics columns: round, epoch, samples, wall_time,
train_time, bytes_up, bytes_down, loss_xbar, loss_x, subopt_xbar, subopt_x, acc_xbar, acc_x),
then one line per evaluation point. The integer columns (round, samples, bytes_up, bytes_down:
INTEGER_COLUMNS) are written as integers (`120`, not `120.0`); every other value is Python's
repr of the float64 in the file, so reading it back (int(), float(), numpy.loadtxt) gives the
stored number exactly; a missing value is `nan`. Written to stdout, or to FILE under the output policy (mpimem.outputs: an existing file
only with --overwrite, never a device, FIFO or directory; written whole to a temporary file,
then put in place). Works on a run in progress (the points written so far).
"""
import csv
import io

from mpimem.cli.info import metric_table
from mpimem.outputs import check_output, write_output
from mpimem.run.runfile import read_run


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run file's per-point metrics (CSV)")
    p.add_argument("run", help="run file written by mpimem train")
    p.add_argument("--csv", action="store_true", required=True,
                   help="CSV: a header of metric names, one row per evaluation point")
    p.add_argument("--out", help="file to write (default: stdout); an existing file only with "
                                 "--overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (a regular file; never a device or directory)")
    p.set_defaults(func=export)


INTEGER_COLUMNS = ("round", "samples", "bytes_up", "bytes_down")


def cell(name: str, value) -> str:
    """One CSV value: an integer column's whole number as an integer, else repr of the float."""
    value = float(value)
    if name in INTEGER_COLUMNS and value.is_integer():
        return str(int(value))
    return repr(value)


def csv_text(metrics: dict) -> str:
    """The CSV of the metric columns (module docstring)."""
    names, rows = metric_table(metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for i in range(rows):
        writer.writerow(cell(k, metrics[k][i]) for k in names)
    return buf.getvalue()


def export(args) -> int:
    if args.out is not None:   # the output policy before any work
        check_output(args.out, args.overwrite, "--out")
    text = csv_text(read_run(args.run)["metrics"])
    if args.out is None:
        print(text, end="")
        return 0
    write_output(args.out, text.encode(), args.overwrite, "--out")
    return 0
