"""Progress lines on stderr for the long data commands (`data convert`, `data optimum`).

A `Ticker` says a line only when MPIMEM_PROGRESS_EVERY seconds (default 10) have passed since
its start or its last line, so a command that ends within that time prints nothing; 0 makes
every call say a line (the tests force it that way). Lines go to stderr, which the job scripts
and a terminal show and a pipe of stdout does not carry.
"""
import os
import sys
import time

from mpimem.errors import MpimemError

DEFAULT_EVERY = 10.0
ENV = "MPIMEM_PROGRESS_EVERY"


def interval() -> float:
    """Seconds between progress lines: $MPIMEM_PROGRESS_EVERY, else DEFAULT_EVERY."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise MpimemError(f"{ENV}={text!r} is not a number of seconds >= 0")
    return value


def hms(seconds: float) -> str:
    """`seconds` as h:mm:ss, rounded to whole seconds."""
    minutes, secs = divmod(int(round(max(0.0, seconds))), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Ticker:
    """Rate-limited progress lines `PREFIX: TEXT (ELAPSED elapsed)` on stderr."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.every = interval()
        self.start = self.last = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the ticker started."""
        return time.monotonic() - self.start

    def due(self) -> bool:
        """Whether a line may be said now (the interval has passed since the last one)."""
        return time.monotonic() - self.last >= self.every

    def say(self, text: str) -> None:
        """Print one line if due (text may be a callable, evaluated only then)."""
        if not self.due():
            return
        self.last = time.monotonic()
        text = text() if callable(text) else text
        print(f"{self.prefix}: {text} ({hms(self.elapsed())} elapsed)", file=sys.stderr,
              flush=True)
