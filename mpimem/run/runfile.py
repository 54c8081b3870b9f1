"""RUN.h5: the record of one training run, written by rank 0 (layout in docs/design.md).

The file is created when training starts with status "running", grows by one row of
/metrics per evaluation point, and is marked "complete" (or "failed" with the error, or
"preempted") at the end. Readers must check the status: a crashed run is never mistaken for a
finished one. Every run has a unique `run_id` (also in each of its checkpoints).

How it is written, so that no run is lost (docs/checkpoints.md, "What survives what"):
- The run file lives in rank 0's memory (an HDF5 image, h5py's core driver). After every change
  (creation, each evaluation row, the end) the whole image is written with plain file I/O to a
  temporary file next to RUN.h5 and renamed over it. The file on disk is therefore always a
  complete run file: readable while the run goes on (no HDF5 lock is held), never half-written
  by a crash. HDF5 itself never writes to the disk here: an HDF5 write that fails (a full disk)
  leaves its open file unusable and h5py can crash at exit (measured: HDF5 2.0 on a full tmpfs).
- A new run creates RUN.h5 exclusively (O_EXCL): an existing file is never truncated. It is
  replaced only with --overwrite (the new image renamed over it), continued with --resume; a
  directory, device or FIFO is never replaced (mpimem.outputs, the policy of every command).
  While a run is written, RUN.h5.lock holds its host and pid (mpimem.run.lock).
- Full disk: when the image cannot be written, the last image that was written, marked
  "failed" with the error, is written in place over the file. Images on disk are padded to
  whole blocks of PAD bytes with at least SPARE bytes to spare, so this fits in the space the
  file already holds.
"""
import io
import json
import os
import uuid
from datetime import datetime, timezone

import h5py
import numpy as np

from mpimem.errors import MpimemError
from mpimem.core.metrics import METRICS
from mpimem.outputs import check_output

FORMAT = "mpimem-run"
FORMAT_VERSION = 1
PAD, SPARE = 65536, 16384


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A fresh unique run id (128 random bits, hex)."""
    return uuid.uuid4().hex


def check_output_dir(path: str) -> None:
    """The directory that will hold `path` (a run file, or RUN.ckpt/) exists and is writable;
    mpimem never creates the user's directories."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise MpimemError(f"{path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise MpimemError(f"{path}: output directory {directory} is not writable")


def check_run_path(path: str, overwrite: bool = False, run_id: str = None) -> None:
    """Before anything is created: `path` names a regular file (or nothing yet) in an existing
    writable directory (the output policy, mpimem.outputs: a directory, device or FIFO is never
    replaced). An existing run file is refused unless overwrite, or unless run_id (a resumed
    run's id) is given and the file is that run's (or unreadable: it is recreated)."""
    check_output_dir(path)
    hint = f"give --overwrite to replace it, or --resume {path} to continue its run"
    exists = check_output(path, overwrite or run_id is not None, "--out", hint, "the run file")
    if not exists or overwrite:
        return
    found = run_id_of(path)
    if found is not None and found != run_id:
        raise MpimemError(f"--out {path}: the run file belongs to another run (run id "
                          f"{found[:12] or '(none)'}, the checkpoint's is {run_id[:12] or '(none)'}); "
                          f"give --overwrite to replace it, or another --out")


def run_id_of(path: str):
    """The run id recorded in a run file or a checkpoint ('' for one from before run ids);
    None when the file is missing or unreadable (damaged, truncated, not HDF5)."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return _text(h5.attrs.get("run_id", ""))
    except (OSError, KeyError, ValueError):
        return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------- plain file writes
def _write_all(fd, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, tmp: str, data, durable: bool = False, midway=None) -> None:
    """Write `data` to `tmp` and rename it over `path` (atomic: `path` is the old or the new
    file, never a mixture). durable: fsync the file and its directory. midway(fd), a test
    hook, runs after the first half is written. On any failure `tmp` is removed, `path` is
    untouched and the OSError propagates."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        try:
            view = memoryview(data)
            _write_all(fd, view[:len(view) // 2] if midway else view)
            if midway:
                midway(fd)
                _write_all(fd, view[len(view) // 2:])
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(os.path.dirname(path))


def create_file(path: str, data) -> None:
    """Write `data` to a new file `path`, created exclusively (O_EXCL: FileExistsError if it
    exists, which is left alone); a partial file is removed on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        os.remove(path)
        raise


def padded(image: bytes) -> bytes:
    """The image followed by zeros up to a whole number of PAD bytes, at least SPARE of them
    (HDF5 ignores bytes after the end of its data)."""
    size = -(-(len(image) + SPARE) // PAD) * PAD
    return image + bytes(size - len(image))


# ---------------------------------------------------------------------- the writer
class RunWriter:
    """Appends evaluation points to RUN.h5 and finalises it; only rank 0 holds one. `h5` is the
    in-memory run file (other modules may add groups and attributes to it before finish)."""

    def __init__(self, path: str, attrs: dict, resume: dict = None, replace: bool = False):
        """Write the new run file at once. replace=False creates it exclusively (an existing
        file is refused with one line); True replaces an existing one (--overwrite).
        resume: the metrics columns of the checkpoint a resumed run starts from; the file is
        then rewritten with those rows, keeping the old file's start time and counting the
        resumption (a missing or damaged old file is recreated from the rows)."""
        self.path = os.path.abspath(path)
        self.saved = None           # the last image written to the disk
        self.closed = False
        previous = self._previous() if resume is not None else {}
        self.h5 = h5py.File(f"{self.path}.in-memory-{id(self)}", "w", driver="core",
                            backing_store=False)
        self.h5.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, status="running",
                             started=previous.get("started", now()))
        for key, value in attrs.items():
            self.h5.attrs[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
        group = self.h5.create_group("metrics")
        for name in METRICS:
            rows = np.asarray((resume or {}).get(name, []), dtype="f8")
            group.create_dataset(name, data=rows, maxshape=(None,), chunks=(256,))
        if resume is not None:
            self.h5.attrs["resumed"] = int(previous.get("resumed", 0)) + 1
        try:
            self.save(exclusive=resume is None and not replace)
        except FileExistsError:
            self.h5.close()
            raise MpimemError(f"--out {path}: the run file exists; give --overwrite to replace "
                              f"it, or --resume {path} to continue its run") from None
        except OSError as err:
            self.h5.close()
            raise MpimemError(f"{path}: cannot create the run file ({err.strerror or err})") from None

    def _previous(self) -> dict:
        """The start time and resumption count of the run file being continued ({} if it is
        missing or unreadable)."""
        try:
            with h5py.File(self.path, "r", locking=False) as h5:
                return {k: _text(h5.attrs[k]) for k in ("started", "resumed") if k in h5.attrs}
        except (OSError, KeyError, ValueError):
            return {}

    def save(self, exclusive: bool = False, durable: bool = False) -> None:
        """Write the in-memory file to the disk (see the module docstring); OSError on failure,
        the file on disk then unchanged."""
        self.h5.flush()
        image = self.h5.id.get_file_image()
        if exclusive:
            create_file(self.path, padded(image))
        else:
            directory, name = os.path.split(self.path)
            replace_file(self.path, os.path.join(directory, f".{name}.tmp-{os.getpid()}"),
                         padded(image), durable=durable)
        self.saved = image

    def append(self, row: dict) -> None:
        """One evaluation row, written to the disk at once; OSError if the disk refuses it (the
        row stays in memory and goes to the disk with the next write that succeeds)."""
        group = self.h5["metrics"]
        for name in METRICS:
            ds = group[name]
            ds.resize((ds.shape[0] + 1,))
            ds[-1] = row.get(name, np.nan)
        self.save()

    def finish(self, status: str, x=None, xbar=None, memories=None, timing=None,
               timing_columns=(), extra_attrs=None, error: str = None) -> None:
        """Write the final iterates, per-rank times and the status (durably); close. If the disk
        refuses the file, the last written image is marked failed in place and MpimemError says
        what was lost. A second call does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            if x is not None:
                final = self.h5.require_group("final")
                final["x"] = x
                final["xbar"] = xbar
                if memories is not None:
                    final["memory"] = memories
            if timing is not None:
                ds = self.h5.require_group("timing").create_dataset("seconds", data=timing)
                ds.attrs["columns"] = json.dumps(list(timing_columns))
            for key, value in (extra_attrs or {}).items():
                self.h5.attrs[key] = value
            if error:
                self.h5.attrs["error"] = error
            self.h5.attrs["status"] = status
            self.h5.attrs["finished"] = now()
            self.save(durable=True)
        except OSError as err:
            reason = f"cannot write the run file {self.path} ({err.strerror or err})"
            marked = self._mark_failed_in_place(f"{error}; {reason}" if error else reason)
            raise MpimemError(f"{reason}; " + (
                "it is marked failed and keeps the metrics written before" if marked else
                "it could not be marked failed")) from None
        finally:
            self.h5.close()

    def _mark_failed_in_place(self, error: str) -> bool:
        """The last written image with status "failed", written over the file in place (it fits
        in the padding the file already holds). False if that is impossible too."""
        if self.saved is None:
            return False
        buf = io.BytesIO(self.saved)
        try:
            with h5py.File(buf, "r+") as h5:
                h5.attrs.update(status="failed", error=error, finished=now())
            image = buf.getvalue()
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if os.fstat(fd).st_size < len(image):
                    return False
                _write_all(fd, image)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True


# ---------------------------------------------------------------------- reading
def read_run(path: str) -> dict:
    """The attributes, metrics and timings of a run file; MpimemError (one line) if it is not
    a readable run file. Opened without HDF5's lock: a run in progress can be read."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            if _text(h5.attrs.get("format")) != FORMAT:
                raise MpimemError(f"{path}: not an mpimem run file (no format='{FORMAT}' attribute)")
            attrs = {k: _text(v) for k, v in h5.attrs.items()}
            metrics = {k: h5["metrics"][k][()] for k in h5["metrics"]} if "metrics" in h5 else {}
            timing = None
            if "timing/seconds" in h5:
                ds = h5["timing/seconds"]
                timing = {"columns": json.loads(ds.attrs["columns"]), "seconds": ds[()]}
            final = {k: h5["final"][k][()] for k in h5["final"]} if "final" in h5 else {}
    except MpimemError:
        raise
    except OSError as err:
        raise MpimemError(f"{path}: cannot read the run file ({str(err).splitlines()[0]})") from None
    except (KeyError, ValueError, TypeError) as err:
        raise MpimemError(f"{path}: the run file is damaged ({type(err).__name__}: {err})") from None
    if "status" not in attrs:
        raise MpimemError(f"{path}: the run file is damaged (no 'status' attribute)")
    try:
        attrs["config"] = json.loads(attrs.get("config", "{}"))
    except ValueError as err:
        raise MpimemError(f"{path}: the run file's config attribute is damaged (not JSON: {err})") from None
    if not isinstance(attrs["config"], dict):
        raise MpimemError(f"{path}: the run file's config attribute is damaged (not a JSON object)")
    return {"attrs": attrs, "metrics": metrics, "timing": timing, "final": final}
