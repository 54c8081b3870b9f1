"""One error type for every problem a user can fix, and the one-line report of it."""
import sys


class MpimemError(Exception):
    """A problem with the user's input or environment: reported as one line, exit status 2.

    The message names the thing at fault (file, line number, option) and what is wrong with it.
    """

    exit_status = 2


def report(message: str, stream=None) -> None:
    """Print the one-line error report `mpimem: error: <message>`."""
    stream = stream or sys.stderr
    line = " ".join(str(message).split("\n"))
    print(f"mpimem: error: {line}", file=stream, flush=True)
