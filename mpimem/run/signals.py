"""Signals and closed output pipes of a running mpimem command (docs/checkpoints.md, "Signals").

`mpimem train` installs its handlers first thing (`install`, called by mpimem.cli.main before
the heavy imports), so no SIGTERM, SIGUSR1 or SIGINT is lost at any moment of a run:

  start-up (imports, data read, warm-up)  the signal number is kept; the run stops at its first
                                          sync point, before round `start`, with a checkpoint of
                                          the starting state (round 0 of a new run: resuming
                                          it is a restart), run file "preempted", exit 75
  the rounds                              the same at the next sync point (mpimem.run.checkpoint;
                                          every mode: sync and allgather rounds, async quiescent
                                          points, within about half a second)
  shutdown (after the last sync point)    the signal is ignored: the run completes, exit 0
  after the stop's checkpoint             the signal is ignored: the run ends preempted, exit 75
  a second SIGINT on the same rank        KeyboardInterrupt at once: that rank aborts the world
                                          (mpimem.cli), exit 130

SIGINT is handled like SIGTERM because Ctrl-C and `timeout -s INT` reach the ranks through
the launcher (Hydra forwards it to every rank; a second Ctrl-C makes Hydra kill the job).

Every other command keeps Python's behaviour: Ctrl-C raises KeyboardInterrupt, which
mpimem.cli reports as one line "mpimem: error: interrupted", exit 130.

`survive_closed_pipes` makes writes to a closed stdout/stderr (`mpimem info RUN.h5 | head -2`)
stop printing instead of raising BrokenPipeError; the command goes on (a run is not ended or
damaged by losing its progress lines) and `pipe_closed()` tells the caller it happened.
"""
import errno
import os
import signal

CAUGHT = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EX_INTERRUPTED = 130        # 128 + SIGINT: the shell's status of a Ctrl-C'ed command


class Signals:
    """The process-wide flag: `caught` is the last of CAUGHT received (0 while none), for the
    run to act on at its next sync point. Creating one installs the handlers (idempotent)."""

    caught = 0

    def __init__(self):
        install()


def _handler(signum, frame):
    if signum == signal.SIGINT and Signals.caught == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the next sync point
    Signals.caught = signum


def install() -> None:
    """SIGTERM, SIGUSR1, SIGINT set Signals.caught from now on (the run acts on it later)."""
    for sig in CAUGHT:
        signal.signal(sig, _handler)


def settle() -> None:
    """The run's outcome is decided (its last sync point passed, or the stop's checkpoint is
    written): SIGTERM, SIGUSR1 and SIGINT are ignored (SIG_IGN) from now on, to the end of the
    process. A Python handler is not enough: the interpreter's shutdown (after mpimem's last
    line, during MPI_Finalize's atexit) resets the signals it handles to SIG_DFL, so a SIGTERM
    there killed a completed run's rank (exit 15, the job counted failed); an ignored signal
    stays ignored through the shutdown."""
    for sig in CAUGHT:
        signal.signal(sig, signal.SIG_IGN)


# ---------------------------------------------------------------------- closed pipes
class _PipeGuard:
    """A text stream whose writes stop, silently, once its reader has gone (EPIPE): the
    descriptor is pointed at /dev/null, so later writes and flushes (also at exit) succeed."""

    closed_pipe = False

    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as err:  # BrokenPipeError, or EPIPE from a lower layer
            if err.errno != errno.EPIPE:
                raise
            _PipeGuard.closed_pipe = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            return None

    def write(self, text):
        return self._guarded("write", text)

    def flush(self):
        return self._guarded("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def survive_closed_pipes() -> None:
    """Wrap sys.stdout and sys.stderr in _PipeGuard (once)."""
    import sys

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeGuard):
            setattr(sys, name, _PipeGuard(stream))


def pipe_closed() -> bool:
    """Whether a reader of stdout or stderr has gone since survive_closed_pipes()."""
    return _PipeGuard.closed_pipe
