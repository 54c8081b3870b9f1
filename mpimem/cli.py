"""Command-line entry point: `mpimem data ...`, `mpimem train ...`, `mpimem info RUN.h5`.

Each sub-command lives in its own module and registers its parser here. A `MpimemError`
becomes one line on stderr and exit status 2; nothing else is printed.
"""
import argparse
import sys

from . import __version__
from .errors import MpimemError, launcher_rank, report


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`mpimem: error: ...`) and exit status 2."""

    def error(self, message):
        if launcher_rank() == 0:
            report(f"{self.prog}: {message}")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .data import cli as data_cli
    from . import train_cli, info_cli

    parser = OneLineParser(prog="mpimem", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mpimem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.register(sub)
    train_cli.register(sub)
    info_cli.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except MpimemError as err:  # found the same on every rank before MPI work: rank 0 says it
        if launcher_rank() == 0:
            report(err)
        return err.exit_status
    except KeyboardInterrupt:
        report("interrupted")
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
