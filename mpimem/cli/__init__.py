"""Command-line entry point: `mpimem data ...`, `mpimem train ...`, `mpimem info RUN.h5`.

mpimem.cli, the top layer (docs/design.md "Layers"): it may import every layer. Each
sub-command lives in its own module of this package and registers its parser here. A
`MpimemError` becomes one line on stderr and exit status 2; nothing else is printed.

Before anything heavy is imported, `main` makes sure nothing is lost to a signal or a closed
pipe (mpimem.run.signals, docs/checkpoints.md "Signals"):
- `mpimem train` installs its SIGTERM/SIGUSR1/SIGINT handlers first (a signal at any moment of
  the run is acted on at its next sync point: checkpoint, exit 75);
- any other command turns Ctrl-C into one line `mpimem: error: interrupted`, exit 130;
- a closed stdout/stderr (`| head`) stops the printing, not the command: a run goes on and
  completes, a short command (info, data info) finishes quietly with exit status 141
  (128 + SIGPIPE, what the shell reports for `cat FILE | head`).
In an MPI world of more than one rank, a failure of one rank that the ranks did not agree on
ends the whole job at once (mpimem.errors.abort_world) instead of leaving the others waiting.
"""
import argparse
import signal
import sys

from mpimem import __version__
from mpimem.errors import MpimemError, abort_world, fault_point, launcher_rank, mpi_world, report
from mpimem.run.signals import EX_INTERRUPTED, install, pipe_closed, survive_closed_pipes

EX_PIPE = 128 + signal.SIGPIPE


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`mpimem: error: ...`) and exit status 2."""

    def error(self, message):
        if launcher_rank() == 0:
            report(f"{self.prog}: {message}")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from mpimem.cli import data as data_cli
    from mpimem.cli import (train as train_cli, info as info_cli, export as export_cli,
                            plot as plot_cli)

    parser = OneLineParser(prog="mpimem", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mpimem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.register(sub)
    train_cli.register(sub)
    info_cli.register(sub)
    export_cli.register(sub)
    plot_cli.register(sub)
    return parser


def command_of(argv) -> str:
    """The sub-command named on a command line (its first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    training = command_of(argv) == "train"
    if training:
        install()
    survive_closed_pipes()
    try:
        status = run_command(argv)
    except KeyboardInterrupt:
        status = stopped("interrupted", EX_INTERRUPTED)
    if pipe_closed() and not training:
        return EX_PIPE
    return status


def run_command(argv) -> int:
    """Parse and run one command; errors end every rank of an MPI job (module docstring)."""
    fault_point("start-up", launcher_rank())
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MpimemError as err:
        comm = mpi_world()
        if comm is not None and not err.agreed:  # one rank found it: the others wait for it
            abort_world(comm, str(err), err.exit_status)
        if launcher_rank() == 0:  # found the same on every rank: rank 0 says it
            report(err)
        return err.exit_status
    except Exception as exc:
        comm = mpi_world()
        if comm is None:  # a bug in a one-process command: the traceback helps to fix it
            raise
        abort_world(comm, f"internal error on rank {comm.Get_rank()}: "
                          f"{type(exc).__name__}: {exc}", 1)


def stopped(message: str, status: int) -> int:
    """A command stopped by the user (a second Ctrl-C, or Ctrl-C outside a run): one line;
    in an MPI world the whole job is aborted so no rank waits for this one."""
    comm = mpi_world()
    if comm is not None:
        abort_world(comm, f"rank {comm.Get_rank()}: {message}", status)
    report(message)
    return status


if __name__ == "__main__":
    sys.exit(main())
