"""Read data-set files: validate the layout (`read_meta`) and read one rank's rows (`read_shard`).

Rank `part` of `parts` owns the balanced row block `block_range(n, parts, part)`; `read_shard`
reads only that block (for CSR: indptr[start:stop+1], then only data/indices[indptr[start]:
indptr[stop]]), never the whole file. `path` may also be a binary file object (h5py reads
through it), which the tests use to count the bytes a shard read touches.
"""
import hashlib
import os
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.sparse as sp

from ..errors import MpimemError
from .h5write import FORMAT, FORMAT_VERSION

_SCAN_ROWS = 1 << 20        # labels checked this many at a time by read_meta
_LAM_RTOL = 1e-9


def block_range(n: int, parts: int, part: int) -> tuple[int, int]:
    """Rows [start, stop) of block `part` of `parts`: sizes differ by at most one, the first
    n % parts blocks having the extra row."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in [0, {parts})")
    size, extra = divmod(n, parts)
    start = part * size + min(part, extra)
    return start, start + size + (part < extra)


@dataclass(frozen=True)
class DatasetMeta:
    """What a data-set file says about itself (root attributes and the optional /optimum).

    `fstar`, `lam_star`, `grad_norm_star` are None when no optimum is stored; `n_positive`
    (rows labelled +1) is None unless the labels were scanned (`read_meta` does)."""

    path: str
    n: int
    d: int
    nnz: int
    storage: str
    dtype: str
    source: str
    source_bytes: int
    source_sha256: str
    index_base: int | None
    created: str
    fstar: float | None = None
    lam_star: float | None = None
    grad_norm_star: float | None = None
    n_positive: int | None = None

    @property
    def density(self) -> float:
        """nnz / (n d)."""
        return self.nnz / max(1, self.n * self.d)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of (n, d, nnz, storage, dtype, source_sha256): identifies the data cheaply."""
        key = f"{self.n}|{self.d}|{self.nnz}|{self.storage}|{self.dtype}|{self.source_sha256}"
        return hashlib.sha256(key.encode()).hexdigest()

    def fstar_for(self, lam: float) -> float | None:
        """f* if the stored optimum was computed with this lambda (relative tolerance 1e-9)."""
        if self.fstar is None or abs(lam - self.lam_star) > _LAM_RTOL * abs(self.lam_star):
            return None
        return self.fstar


@dataclass
class Shard:
    """Rows [start, stop) of a data set: X dense (C-contiguous, stored dtype) or CSR (stored
    dtype, int32 indices), y float64 in {-1, +1}."""

    X: np.ndarray | sp.csr_matrix
    y: np.ndarray
    start: int
    stop: int


def _name(path) -> str:
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<file>")


def _open(path):
    name = _name(path)
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
        raise MpimemError(f"{name}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise MpimemError(f"{name}: not an HDF5 file (or not readable)") from None


def _expect(f, name, key, shape, kinds):
    """Check that dataset `key` exists with `shape` and a dtype of one of `kinds`."""
    ds = f.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise MpimemError(f"{name}: not a valid mpimem data set (dataset /{key} is missing)")
    if ds.shape != shape:
        raise MpimemError(f"{name}: not a valid mpimem data set (/{key} has shape {ds.shape}, "
                          f"expected {shape})")
    if ds.dtype not in kinds:
        raise MpimemError(f"{name}: not a valid mpimem data set (/{key} has dtype {ds.dtype}, "
                          f"expected {' or '.join(str(np.dtype(k)) for k in kinds)})")
    return ds


def _meta(f, name) -> DatasetMeta:
    """Validate the root attributes and dataset shapes/dtypes of an open file."""
    attrs = f.attrs
    if attrs.get("format") != FORMAT:
        raise MpimemError(f"{name}: not an mpimem data set (root attribute format is "
                          f"{attrs.get('format')!r}, expected {FORMAT!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise MpimemError(f"{name}: unsupported data-set format_version "
                          f"{attrs.get('format_version')!r} (this mpimem reads {FORMAT_VERSION})")
    missing = [k for k in ("n", "d", "nnz", "storage") if k not in attrs]
    if missing:
        raise MpimemError(f"{name}: not a valid mpimem data set (root attributes missing: "
                          f"{', '.join(missing)})")
    n, d, nnz, storage = int(attrs["n"]), int(attrs["d"]), int(attrs["nnz"]), attrs["storage"]
    floats = (np.float32, np.float64)
    if storage == "dense":
        dtype = _expect(f, name, "X", (n, d), floats).dtype
    elif storage == "csr":
        dtype = _expect(f, name, "data", (nnz,), floats).dtype
        _expect(f, name, "indices", (nnz,), (np.int32,))
        _expect(f, name, "indptr", (n + 1,), (np.int64,))
    else:
        raise MpimemError(f"{name}: not a valid mpimem data set (storage {storage!r} is "
                          f"neither 'dense' nor 'csr')")
    _expect(f, name, "y", (n,), (np.int8,))
    optimum = f.get("optimum")
    fstar = lam = gnorm = None
    if optimum is not None:
        _expect(optimum, name, "x", (d,), (np.float64,))
        fstar, lam = float(optimum.attrs["fstar"]), float(optimum.attrs["lam"])
        gnorm = float(optimum.attrs["grad_norm"])
    base = attrs.get("index_base")
    return DatasetMeta(path=name, n=n, d=d, nnz=nnz, storage=storage, dtype=str(dtype),
                       source=str(attrs.get("source", "")),
                       source_bytes=int(attrs.get("source_bytes", 0)),
                       source_sha256=str(attrs.get("source_sha256", "")),
                       index_base=None if base is None else int(base),
                       created=str(attrs.get("created", "")),
                       fstar=fstar, lam_star=lam, grad_norm_star=gnorm)


def _check_labels(y, name, start):
    bad = np.flatnonzero((y != 1) & (y != -1))
    if bad.size:
        raise MpimemError(f"{name}: label {int(y[bad[0]])} in row {start + bad[0]} is not -1 or +1")


def read_meta(path) -> DatasetMeta:
    """Validate the file's layout and its labels; its description, with `n_positive` set."""
    name = _name(path)
    with _open(path) as f:
        meta = _meta(f, name)
        positive = 0
        for start in range(0, meta.n, _SCAN_ROWS):
            y = f["y"][start:start + _SCAN_ROWS]
            _check_labels(y, name, start)
            positive += int(np.count_nonzero(y == 1))
    return DatasetMeta(**{**meta.__dict__, "n_positive": positive})


def read_shard(path, part: int = 0, parts: int = 1) -> Shard:
    """Rows `block_range(n, parts, part)` of the data set, checked for bad labels and NaN/Inf."""
    name = _name(path)
    with _open(path) as f:
        meta = _meta(f, name)
        start, stop = block_range(meta.n, parts, part)
        y = f["y"][start:stop]
        _check_labels(y, name, start)
        if meta.storage == "dense":
            X = np.ascontiguousarray(f["X"][start:stop])
            values = X
        else:
            indptr = f["indptr"][start:stop + 1]
            lo, hi = int(indptr[0]), int(indptr[-1])
            if np.any(np.diff(indptr) < 0) or lo < 0 or hi > meta.nnz:
                raise MpimemError(f"{name}: /indptr is not non-decreasing within [0, nnz]")
            values, indices = f["data"][lo:hi], f["indices"][lo:hi]
            if indices.size and (indices.min() < 0 or indices.max() >= meta.d):
                raise MpimemError(f"{name}: /indices has entries outside [0, d={meta.d})")
            index_type = np.int32 if hi - lo < 2**31 else np.int64
            X = sp.csr_matrix((values, indices, (indptr - lo).astype(index_type)),
                              shape=(stop - start, meta.d))
    if not np.isfinite(values).all():
        raise MpimemError(f"{name}: rows {start}..{stop - 1} contain NaN or Inf values")
    return Shard(X=X, y=y.astype(np.float64), start=start, stop=stop)
