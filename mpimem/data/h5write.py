"""Write data-set files: atomically (temporary name, rename at the end) and row block by block.

Layout (docs/design.md, docs/data.md): root attributes, then either /X (n, d) dense or
/data, /indices, /indptr (CSR), and /y (n,) int8. Datasets grow as blocks are appended, so
neither writer needs to know n in advance; chunks are about 256 KiB, so a shard read touches at
most one partial chunk at each end of its block.
"""
import contextlib
import datetime
import os

import h5py
import numpy as np

from .. import __version__
from ..errors import MpimemError

FORMAT = "mpimem-dataset"
FORMAT_VERSION = 1
CHUNK_BYTES = 256 * 1024


def _create(path, tag):
    """Create an HDF5 file at a temporary name next to `path`: (file, temporary path)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{tag}{os.getpid()}")
    try:
        return h5py.File(tmp, "w"), tmp
    except OSError as exc:
        reason = exc.strerror or str(exc).split(" (")[0]
        raise MpimemError(f"{path}: cannot write output ({reason})") from None


@contextlib.contextmanager
def atomic_h5(path):
    """Yield an `h5py.File` open for writing at a temporary name next to `path`; on success it
    is renamed to `path`, on any error (or interrupt) it is removed and `path` is untouched."""
    f, tmp = _create(path, "tmp")
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def scratch_h5(path):
    """Yield an `h5py.File` at a temporary name next to `path`, removed afterwards whatever
    happens (a staging area as large as the output, on the same file system)."""
    f, tmp = _create(path, "staging")
    try:
        with f:
            yield f
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_header(f, *, n, d, nnz, storage, source, source_bytes, source_sha256, **extra):
    """Set the root attributes every data-set file carries (plus `extra` ones)."""
    f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, n=int(n), d=int(d),
                   nnz=int(nnz), storage=storage, source=str(source),
                   source_bytes=int(source_bytes), source_sha256=source_sha256,
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


class CSRWriter:
    """Append row blocks in CSR form: /data (dtype), /indices int32, /indptr int64, /y int8."""

    storage = "csr"

    def __init__(self, f, dtype):
        self.data = _growing(f, "data", dtype)
        self.indices = _growing(f, "indices", np.int32)
        self.indptr = _growing(f, "indptr", np.int64)
        self.y = _growing(f, "y", np.int8)
        _append(self.indptr, np.zeros(1, np.int64))
        self.n = self.nnz = 0

    def append(self, indptr, indices, values, labels):
        """Add rows given by a block's CSR pieces (indptr from 0, zero-based indices)."""
        _append(self.data, values)
        _append(self.indices, indices.astype(np.int32))
        _append(self.indptr, self.nnz + indptr[1:])
        _append(self.y, labels.astype(np.int8))
        self.n += len(labels)
        self.nnz += len(values)


class DenseWriter:
    """Append dense row blocks: /X (n, d) of dtype, /y int8."""

    storage = "dense"

    def __init__(self, f, d, dtype):
        self.X = _growing(f, "X", dtype, width=d)
        self.y = _growing(f, "y", np.int8)
        self.n = self.nnz = 0

    def append(self, rows, labels):
        """Add the dense `rows` (block, d) with their labels."""
        _append(self.X, rows)
        _append(self.y, labels.astype(np.int8))
        self.n += len(labels)
        self.nnz += int(np.count_nonzero(rows))
