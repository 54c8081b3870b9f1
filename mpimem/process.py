"""This host's processes, by pid: whether one is alive, and its start time (Linux /proc), so
that a recycled pid is not taken for the process that wrote a lock or a scratch file
(mpimem.run.lock, mpimem.data.h5write). A root module: every layer may import it.
"""
import os


def _stat_fields(pid: int):
    """The fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def start_time(pid: int):
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def alive(pid: int, started=None) -> bool:
    """Whether process `pid` of this host exists and has not exited (a zombie, ended but not
    yet reaped by its launcher, holds nothing), and, when `started` is known, is the same
    process: its start time matches."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        pass
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):   # exited: zombie or dead
        return False
    if started is not None:
        now = start_time(pid)
        if now is not None and now != started:
            return False
    return True
