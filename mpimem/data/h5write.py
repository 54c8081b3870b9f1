"""Write data-set files: atomically (temporary name, rename at the end) and row block by block.

Layout (docs/design.md, docs/data.md): root attributes, then either /X (n, d) dense or
/data, /indices, /indptr (CSR), /y (n,) int8 and /checksum (n,) uint64 (`checksum`: one per
row, with the file's digest `content_sha256`). Datasets grow as blocks are appended, so
neither writer needs to know n in advance; chunks are about 256 KiB, so a shard read touches at
most one partial chunk at each end of its block.

OUT follows mpimem's output policy (mpimem.outputs): an existing file is refused unless
overwrite (--overwrite), a device, FIFO or directory is never replaced; the commands check it
before any work (`check_output`), and `atomic_h5` checks it again when the finished file is put
in place (exclusively without overwrite: a file created meanwhile is not replaced).

Temporary files are `.OUT.TAG.HOST.PID` next to OUT. A failed, interrupted or out-of-space write
removes its own (it is truncated first, so that HDF5 can close it on a full disk); a killed
one is removed by the next writer of the same OUT on the same host, once PID is not alive.
HDF5's chunk cache is off for writing: a failed write then fails in the call that made it, and
no cached chunk is left to flush on a full disk at close (which crashes HDF5 at exit).
"""
import contextlib
import datetime
import os
import re
import socket

import h5py
import numpy as np

from mpimem import __version__
from mpimem.errors import MpimemError
from mpimem.outputs import check_output, publish
from mpimem.process import alive
from mpimem.data.checksum import Digest, row_checksums_csr, row_checksums_dense

FORMAT = "mpimem-dataset"
FORMAT_VERSION = 2
CHUNK_BYTES = 256 * 1024


def write_failure(path, exc, what="write output") -> MpimemError:
    """The one-line error for an OSError while writing `path` (h5py's messages are long)."""
    text = str(exc)
    if getattr(exc, "errno", None) == 28 or "No space left on device" in text:
        reason = "no space left on device"
    else:
        reason = getattr(exc, "strerror", None) or text.split(" (")[0]
    return MpimemError(f"{path}: cannot {what} ({reason})")


def _remove_stale(folder, name, host):
    """Remove `.NAME.TAG.HOST.PID` files left by dead processes of this host."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:tmp|staging)\.{re.escape(host)}\.(\d+)")
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            match = pattern.fullmatch(entry)
            if match and not alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))


def _discard(f, tmp):
    """Close and remove a temporary file after a failure: truncated first, so that closing it
    (HDF5 writes its metadata) finds room even on a full disk."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        f.close()
    with contextlib.suppress(OSError):
        os.remove(tmp)


@contextlib.contextmanager
def _temporary(path, tag):
    """Yield (file open for writing, its temporary path) next to `path`; on an error it is
    discarded (OSError becomes a one-line MpimemError), otherwise closed and left for the caller."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    host = socket.gethostname().replace(os.sep, "_")
    _remove_stale(folder, name, host)
    tmp = os.path.join(folder, f".{name}.{tag}.{host}.{os.getpid()}")
    try:
        f = h5py.File(tmp, "w", rdcc_nbytes=0)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        yield f, tmp
        f.close()
    except OSError as exc:
        _discard(f, tmp)
        raise write_failure(path, exc) from None
    except BaseException:
        _discard(f, tmp)
        raise


def check_data_output(path, overwrite=False) -> None:
    """Before any work: `path` may be written as a data-set file (mpimem.outputs policy)."""
    check_output(path, overwrite,
                 exists_hint="give --overwrite to replace it (or choose another output name)")


@contextlib.contextmanager
def atomic_h5(path, overwrite=False):
    """Yield an `h5py.File` open for writing at a temporary name next to `path`; on success it
    is put in place as `path` (mpimem.outputs.publish: an existing file only with overwrite,
    never a device or directory), on any error (or interrupt) it is removed and `path` is
    untouched."""
    check_data_output(path, overwrite)
    with _temporary(path, "tmp") as (f, tmp):
        yield f
    publish(tmp, path, overwrite,
            exists_hint="give --overwrite to replace it (or choose another output name)")


@contextlib.contextmanager
def scratch_h5(path):
    """Yield an `h5py.File` at a temporary name next to `path`, removed afterwards whatever
    happens (a staging area as large as the output, on the same file system)."""
    with _temporary(path, "staging") as (f, tmp):
        yield f
    with contextlib.suppress(OSError):
        os.remove(tmp)


def write_header(f, writer, *, d, source, source_bytes, source_sha256, **extra):
    """Set the root attributes every data-set file carries (plus `extra` ones): the shape and
    storage from `writer` (all rows appended) and its content digest `content_sha256`."""
    dtype = writer.values.dtype
    f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, n=writer.n, d=int(d),
                   nnz=writer.nnz, storage=writer.storage, source=str(source),
                   source_bytes=int(source_bytes), source_sha256=source_sha256,
                   content_sha256=writer.digest.hexdigest(n=writer.n, d=d, nnz=writer.nnz,
                                                         storage=writer.storage, dtype=dtype),
                   tool=f"mpimem {__version__}",
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   **extra)


def _growing(f, name, dtype, width=None):
    """An empty dataset that grows along its first axis, chunked to about CHUNK_BYTES."""
    itemsize = np.dtype(dtype).itemsize * (width or 1)
    rows = max(1, CHUNK_BYTES // itemsize)
    shape, maxshape, chunks = ((0,), (None,), (rows,)) if width is None else \
        ((0, width), (None, width), (rows, width))
    return f.create_dataset(name, shape=shape, maxshape=maxshape, chunks=chunks, dtype=dtype)


def _append(dataset, array):
    """Append `array` along the first axis of a growing dataset."""
    start = dataset.shape[0]
    dataset.resize(start + len(array), axis=0)
    dataset[start:] = array


class _Rows:
    """What both writers share: /y int8, and unless `checked` is False (a staging file) the
    row checksums /checksum uint64 and their running digest (mpimem.data.checksum)."""

    def __init__(self, f, checked):
        self.y = _growing(f, "y", np.int8)
        self.checksum = _growing(f, "checksum", np.uint64) if checked else None
        self.digest = Digest()
        self.n = self.nnz = 0

    def _labels(self, labels, checksums):
        labels = np.asarray(labels).astype(np.int8)
        _append(self.y, labels)
        if self.checksum is not None:
            sums = checksums(labels)
            _append(self.checksum, sums)
            self.digest.update(sums)
        self.n += len(labels)


class CSRWriter(_Rows):
    """Append row blocks in CSR form: /data (dtype), /indices int32, /indptr int64, /y int8
    (and /checksum)."""

    storage = "csr"

    def __init__(self, f, dtype, checked=True):
        self.values = _growing(f, "data", dtype)
        self.indices = _growing(f, "indices", np.int32)
        self.indptr = _growing(f, "indptr", np.int64)
        _append(self.indptr, np.zeros(1, np.int64))
        super().__init__(f, checked)

    def append(self, indptr, indices, values, labels):
        """Add rows given by a block's CSR pieces (indptr from 0, zero-based indices)."""
        values = np.asarray(values, self.values.dtype)
        indices = np.asarray(indices).astype(np.int32)
        _append(self.values, values)
        _append(self.indices, indices)
        _append(self.indptr, self.nnz + indptr[1:])
        self._labels(labels, lambda y: row_checksums_csr(indptr, indices, values, y))
        self.nnz += len(values)


class DenseWriter(_Rows):
    """Append dense row blocks: /X (n, d) of dtype, /y int8, /checksum."""

    storage = "dense"

    def __init__(self, f, d, dtype):
        self.values = self.X = _growing(f, "X", dtype, width=d)
        super().__init__(f, True)

    def append(self, rows, labels):
        """Add the dense `rows` (block, d) with their labels."""
        rows = np.asarray(rows, self.X.dtype)
        _append(self.X, rows)
        self._labels(labels, lambda y: row_checksums_dense(rows, y))
        self.nnz += int(np.count_nonzero(rows))
