"""The `mpimem data` sub-commands: convert, synth, info, optimum (docs/data.md).

Each command imports its machinery when it runs, so `mpimem` starts fast (scipy's optimizer
and sparse modules are a quarter second each to import). The commands that write (convert,
synth, optimum) turn SIGTERM and SIGHUP, like Ctrl-C, into an exception, so that what they
were writing is removed (`h5write`) before the one-line report. convert and synth follow the
output policy (mpimem.outputs): an existing OUT only with --overwrite, never a device, FIFO or
directory, checked before any work; optimum writes into FILE only when it is an mpimem data set.
"""
import argparse
import contextlib
import functools
import signal
import sys

from mpimem.errors import MpimemError
from mpimem.data.synth import KINDS


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


class Interrupted(MpimemError):
    """A terminating signal arrived while a data command was writing: exit 128 + signal."""

    def __init__(self, signum):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; nothing was written")
        self.exit_status = 128 + signum


def _raise(signum, frame):
    raise Interrupted(signum)


def _interruptible(command):
    """Run `command` with SIGTERM and SIGHUP raising `Interrupted` (restored afterwards)."""
    @functools.wraps(command)
    def wrapper(args):
        with contextlib.ExitStack() as stack:
            for signum in (signal.SIGTERM, signal.SIGHUP):
                stack.callback(signal.signal, signum, signal.signal(signum, _raise))
            return command(args)
    return wrapper


OVERWRITE_HELP = ("replace an existing OUT.h5 (a regular file; a device, FIFO or directory is "
                  "never replaced)")


def register(subparsers) -> None:
    """Add `data` and its sub-commands to the top-level parser."""
    data = subparsers.add_parser("data", help="convert, generate and inspect data sets")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("convert", help="LIBSVM text (plain/.gz/.bz2/.xz) to a data-set file")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.h5")
    p.add_argument("--index-base", choices=("0", "1", "auto"), default="1",
                   help="feature indices start at 0 or 1 (LIBSVM: 1, the default); auto: 0 "
                        "if any index is 0")
    p.add_argument("--storage", choices=("auto", "dense", "csr"), default="auto",
                   help="auto: dense when more than 25%% of the entries are nonzero")
    p.add_argument("--d", type=_positive_int, default=None,
                   help="number of columns (default: the largest index seen)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--chunk-mb", type=_positive_float, default=4.0,
                   help="text parsed per block, in MiB: bounds the memory (default 4)")
    p.add_argument("--normalize", action="store_true",
                   help="scale every row to unit L2 norm (rows of zero norm stay zero)")
    p.add_argument("--bias", type=_positive_float, default=None, metavar="B",
                   help="append the constant feature B to every row (an intercept, as "
                        "liblinear's -B; after --normalize; default: none)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("synth", help="a synthetic look-alike of epsilon or RCV1")
    p.add_argument("output", metavar="OUT.h5")
    p.add_argument("--like", choices=sorted(KINDS), required=True)
    p.add_argument("--n", type=_positive_int, default=None,
                   help="rows (default: the paper's: epsilon 400,000, rcv1 677,399)")
    p.add_argument("--d", type=_positive_int, default=None,
                   help="columns (default: the paper's: epsilon 2,000, rcv1 47,236)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="describe a data-set file")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("optimum", help="compute f* and x* and store them in the file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--lam", type=_positive_float, default=None,
                   help="L2 weight lambda (default 1/n)")
    p.set_defaults(func=cmd_optimum)


@_interruptible
def cmd_convert(args) -> int:
    from mpimem.data.convert import convert
    s = convert(args.input, args.output, index_base=args.index_base, storage=args.storage,
                d=args.d, dtype=args.dtype, block_bytes=int(args.chunk_mb * (1 << 20)),
                normalize=args.normalize, bias=args.bias, overwrite=args.overwrite)
    if s["index_note"]:
        print(f"mpimem: warning: {s['index_note']}", file=sys.stderr, flush=True)
    print(f"{args.output}: n={s['n']} d={s['d']} nnz={s['nnz']} storage={s['storage']} "
          f"index_base={s['index_base']} density={s['density']:.4g}"
          + (" normalized" if args.normalize else "") + (f" bias={args.bias:g}" if args.bias else ""))
    return 0


@_interruptible
def cmd_synth(args) -> int:
    from mpimem.data.synth import synthesize
    kind = KINDS[args.like]
    if args.d is not None and kind.storage == "csr" and args.d < 100:
        raise MpimemError(f"--d {args.d} is too small for an rcv1-like set (at least 100)")
    s = synthesize(args.output, args.like, n=args.n, seed=args.seed, d=args.d,
                   overwrite=args.overwrite)
    print(f"{args.output}: {args.like}-like n={s['n']} d={s['d']} nnz={s['nnz']} "
          f"storage={s['storage']} seed={s['seed']}")
    return 0


def cmd_info(args) -> int:
    from mpimem.data.dataset import read_meta
    meta = read_meta(args.file, labels=True)
    rows = [("file", meta.path), ("source", meta.source), ("n", meta.n), ("d", meta.d),
            ("nnz", meta.nnz), ("density", f"{meta.density:.6g}"),
            ("storage", f"{meta.storage} {meta.dtype}"),
            ("labels", f"+1: {meta.n_positive} ({meta.n_positive / meta.n:.2%}), "
                       f"-1: {meta.n - meta.n_positive}"),
            ("fingerprint", meta.fingerprint[:16])]
    if meta.normalized:
        rows.insert(-1, ("normalized", "yes: rows scaled to unit L2 norm at conversion"))
    if meta.bias:
        rows.insert(-1, ("bias", f"{meta.bias:g}: constant feature, column {meta.d - 1}"))
    if meta.optimum_note:
        rows.append(("optimum", f"none: {meta.optimum_note}"))
    elif meta.fstar is None:
        rows.append(("optimum", "unknown (run `mpimem data optimum FILE`)"))
    else:
        rows += [("lambda", f"{meta.lam_star:.6g}"), ("f*", f"{meta.fstar:.17g}"),
                 ("|grad f(x*)|", f"{meta.grad_norm_star:.3g}")]
    for key, value in rows:
        print(f"{key:>13}: {value}")
    return 0


@_interruptible
def cmd_optimum(args) -> int:
    from mpimem.data.dataset import read_meta, read_shard
    from mpimem.data.optimum import check_dataset_file, check_room, solve_optimum, store_optimum
    check_dataset_file(args.file)
    meta = read_meta(args.file, optimum=False)
    check_room(args.file, meta.d)
    lam = args.lam if args.lam is not None else 1.0 / meta.n
    shard = read_shard(args.file)
    opt = solve_optimum(shard.X, shard.y, lam)
    store_optimum(args.file, opt)
    print(f"{args.file}: lambda={lam:.6g} f*={opt.fstar:.17g} |grad|={opt.grad_norm:.3g} "
          f"iterations={opt.iterations}")
    return 0
