"""The lock of a run being written: RUN.h5.lock next to RUN.h5 (docs/checkpoints.md, "Locks").

Rank 0 of `mpimem train` (a new run with --out, or --resume) takes the lock before it creates
or changes anything of the run (RUN.h5, RUN.ckpt/) and releases it when the process ends (also
when it fails or is preempted). The file is one JSON line: host, pid, the process's start
time (Linux: /proc/PID/stat, so that a recycled pid is not mistaken for the holder), the run
file, since (UTC ISO time) and a random token. It is created with O_EXCL: of two jobs that
start at once exactly one gets it.

A lock already there:
- held by a live process, or by a process on another host (whose liveness this host cannot
  see): refused in one line naming host and pid (and the lock file to remove if that job is
  known to be gone);
- left by a dead process of this host (kill -9, a node's MPI_Abort): taken over, with a one-line
  note; the run stays resumable. The takeover renames the stale file away and checks that it
  was the stale one, so two jobs taking over at once cannot both win.
`mpimem info` reads the lock to say whether a "running" run's job may be gone (`holder`).
"""
import atexit
import contextlib
import json
import os
import socket
import uuid
from datetime import datetime, timezone

from mpimem.errors import MpimemError
from mpimem.process import alive, start_time


def lock_path(run_path) -> str:
    """RUN.h5 -> /abs/RUN.h5.lock."""
    return os.path.abspath(os.fspath(run_path)) + ".lock"


def host() -> str:
    return socket.gethostname()


def read_lock(path: str):
    """The lock's fields ({} when the file is empty or unreadable: being written), or None when
    there is no lock file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def holder(run_path):
    """For `mpimem info`: (lock fields or None, alive: True/False/None), None = cannot tell
    (no lock file, another host, a lock being written)."""
    fields = read_lock(lock_path(run_path))
    if not fields:
        return fields, None
    if fields.get("host") != host():
        return fields, None
    return fields, alive(fields.get("pid"), fields.get("started"))


def _describe(fields: dict) -> str:
    return (f"host {fields.get('host', '?')}, pid {fields.get('pid', '?')}"
            + (f", since {fields['since']}" if fields.get("since") else ""))


class RunLock:
    """The lock of one run file, taken by `acquire` (rank 0 only)."""

    def __init__(self, run_path):
        self.run_path = os.path.abspath(os.fspath(run_path))
        self.path = lock_path(run_path)
        self.fields = None
        self.held = False

    def _create(self) -> bool:
        """O_EXCL create with our fields; False if a lock file is there."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise MpimemError(f"{self.run_path}: cannot create the run lock {self.path} "
                              f"({err.strerror or err})") from None
        try:
            os.write(fd, (json.dumps(self.fields, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise MpimemError(f"{self.run_path}: cannot write the run lock {self.path} "
                              f"({err.strerror or err})") from None
        os.close(fd)
        return True

    def _refuse(self, fields: dict, why: str = "", gone_hint: bool = False):
        raise MpimemError(f"{self.run_path}: the run is being written by another job "
                          f"({_describe(fields)}{why}); refused" +
                          (f"; if that job is gone, remove {self.path}" if gone_hint else ""))

    def acquire(self, note=None) -> "RunLock":
        """Take the lock (module docstring); note(text) says a stale takeover (rank 0: stderr).
        MpimemError (one line) when another job holds it. Released at exit (atexit) or by
        release()."""
        me = os.getpid()
        self.fields = {"host": host(), "pid": me, "started": start_time(me),
                       "run": self.run_path, "token": uuid.uuid4().hex,
                       "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        for _ in range(5):
            if self._create():
                self.held = True
                atexit.register(self.release)
                return self
            seen = read_lock(self.path)
            if seen is None:
                continue                                    # released meanwhile: try again
            if not seen:
                self._refuse({}, "; its lock file is being written", gone_hint=True)
            if seen.get("host") != host():
                self._refuse(seen, "; on another host, whose processes this host cannot see",
                             gone_hint=True)
            if alive(seen.get("pid"), seen.get("started")):
                self._refuse(seen, "; running")
            self._take_over(seen)
            if note:
                note(f"taking over the stale lock {self.path} of a process that is gone "
                     f"({_describe(seen)})")
        raise MpimemError(f"{self.run_path}: cannot take the run lock {self.path} (it keeps "
                          f"changing: another job is starting on this run)")

    def _take_over(self, seen: dict) -> None:
        """Remove the stale lock `seen`: renamed to a name of ours first, so that only the file
        that was read is removed (a fresh lock of another job taken meanwhile is put back and
        refuses this one)."""
        grab = f"{self.path}.takeover-{host()}-{os.getpid()}"
        try:
            os.rename(self.path, grab)
        except FileNotFoundError:
            return
        except OSError as err:
            raise MpimemError(f"{self.run_path}: cannot remove the stale run lock {self.path} "
                              f"({err.strerror or err})") from None
        got = read_lock(grab)
        if got == seen:
            with contextlib.suppress(OSError):
                os.remove(grab)
            return
        with contextlib.suppress(OSError):
            os.link(grab, self.path)                    # not the stale one: give it back
        with contextlib.suppress(OSError):
            os.remove(grab)
        self._refuse(got or {})

    def release(self) -> None:
        """Remove the lock file if it is still ours (its token); idempotent."""
        if not self.held:
            return
        self.held = False
        if (read_lock(self.path) or {}).get("token") == self.fields["token"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
