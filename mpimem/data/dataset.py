"""Read data-set files: validate the layout (`read_meta`) and read one rank's rows (`read_shard`).

Rank `part` of `parts` owns the balanced row block `block_range(n, parts, part)`; `read_shard`
reads only that block (for CSR: indptr[start:stop+1], then only data/indices[indptr[start]:
indptr[stop]]; with them y and the row checksums of the block), never the whole file, and
`read_meta` reads no rows at all (attributes, shapes and the d values of x*). So every check of
the rows (labels, NaN/Inf, column indices sorted and in range, checksums) is made per shard by
the rank that reads it. `path` may also be a binary file object (h5py reads through it), which
the tests use to count the bytes a read touches.
"""
import os
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.sparse as sp

from mpimem.errors import MpimemError, note, plain
from mpimem.data.checksum import optimum_stamp, row_checksums_csr, row_checksums_dense
from mpimem.data.h5write import FORMAT, FORMAT_VERSION

_SCAN_ROWS = 1 << 20        # labels counted this many at a time by read_meta(labels=True)
_LAM_RTOL = 1e-9
_OPTIMUM_ATTRS = ("lam", "fstar", "grad_norm", "stamp")


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

    `fstar`, `lam_star`, `grad_norm_star` are None when no optimum is stored (`optimum_note`
    then says why, if a damaged /optimum group was ignored); `n_positive` (rows labelled +1)
    is None unless the labels were scanned (`read_meta(labels=True)`); `normalized`: the rows
    were scaled to unit L2 norm when the file was made (`data convert --normalize`); `bias`: the
    constant feature appended as the last column (`data convert --bias B`; 0: none)."""

    path: str
    n: int
    d: int
    nnz: int
    storage: str
    dtype: str
    source: str
    source_bytes: int
    source_sha256: str
    content_sha256: str
    index_base: int | None
    created: str
    fstar: float | None = None
    lam_star: float | None = None
    grad_norm_star: float | None = None
    optimum_note: str | None = None
    n_positive: int | None = None
    normalized: bool = False
    bias: float = 0.0             # the constant feature appended at conversion (0: none)

    @property
    def density(self) -> float:
        """nnz / (n d)."""
        return self.nnz / max(1, self.n * self.d)

    @property
    def fingerprint(self) -> str:
        """The content digest written with the rows (mpimem.data.checksum): it changes whenever
        a value, index, label or the shape does; `read_shard` checks the rows against it."""
        return self.content_sha256

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


def _meta(f, name, optimum=True) -> DatasetMeta:
    """Validate the root attributes and dataset shapes/dtypes of an open file (no rows read);
    with `optimum`, read and verify the /optimum group (`_optimum`)."""
    attrs = f.attrs
    if attrs.get("format") != FORMAT:
        raise MpimemError(f"{name}: not an mpimem data set (root attribute format is "
                          f"{plain(attrs.get('format'))!r}, expected {FORMAT!r})")
    version = attrs.get("format_version")
    if version == 1:
        raise MpimemError(f"{name}: data-set format_version 1 carries no content checksums "
                          f"(written by an older mpimem); make it again with `mpimem data "
                          f"convert` or `mpimem data synth`")
    if version != FORMAT_VERSION:
        raise MpimemError(f"{name}: unsupported data-set format_version {plain(version)!r} "
                          f"(this mpimem reads {FORMAT_VERSION})")
    missing = [k for k in ("n", "d", "nnz", "storage", "content_sha256") if k not in attrs]
    if missing:
        raise MpimemError(f"{name}: not a valid mpimem data set (root attributes missing: "
                          f"{', '.join(missing)})")
    n, d, nnz, storage = int(attrs["n"]), int(attrs["d"]), int(attrs["nnz"]), attrs["storage"]
    if n < 1 or d < 1 or not 0 <= nnz <= n * d:
        raise MpimemError(f"{name}: not a valid mpimem data set (n = {n}, d = {d}, nnz = {nnz}: "
                          f"a data set has at least one row and one column)")
    floats = (np.float32, np.float64)
    if storage == "dense":
        dtype = _expect(f, name, "X", (n, d), floats).dtype
    elif storage == "csr":
        dtype = _expect(f, name, "data", (nnz,), floats).dtype
        _expect(f, name, "indices", (nnz,), (np.int32,))
        _expect(f, name, "indptr", (n + 1,), (np.int64,))
    else:
        raise MpimemError(f"{name}: not a valid mpimem data set (storage {plain(storage)!r} is "
                          f"neither 'dense' nor 'csr')")
    _expect(f, name, "y", (n,), (np.int8,))
    _expect(f, name, "checksum", (n,), (np.uint64,))
    content = str(attrs["content_sha256"])
    fstar = lam = gnorm = note = None
    if optimum:
        fstar, lam, gnorm, note = _optimum(f, name, d, content)
    base = attrs.get("index_base")
    return DatasetMeta(path=name, n=n, d=d, nnz=nnz, storage=storage, dtype=str(dtype),
                       source=str(attrs.get("source", "")),
                       source_bytes=int(attrs.get("source_bytes", 0)),
                       source_sha256=str(attrs.get("source_sha256", "")),
                       content_sha256=content,
                       index_base=None if base is None else int(base),
                       created=str(attrs.get("created", "")),
                       normalized=int(attrs.get("normalized", 0)) == 1,
                       bias=float(attrs.get("bias", 0.0)),
                       fstar=fstar, lam_star=lam, grad_norm_star=gnorm, optimum_note=note)


def _optimum(f, name, d, content):
    """(fstar, lam, grad_norm, note) from the /optimum group; all None without one.

    A group lacking an attribute or x* (`data optimum` killed before its last step, or an older
    mpimem) is read as no optimum, with a note saying so. A complete group whose stamp does not
    match (f*, lam or x* changed since `data optimum` wrote it, e.g. an f* above the true
    optimum, or the group copied from other data) is refused."""
    group = f.get("optimum")
    if group is None:
        return None, None, None, None
    x = group.get("x") if isinstance(group, h5py.Group) else None
    if (x is None or any(k not in group.attrs for k in _OPTIMUM_ATTRS)
            or not isinstance(x, h5py.Dataset) or x.shape != (d,) or x.dtype != np.float64):
        return None, None, None, (f"incomplete /optimum group ignored (an interrupted `mpimem "
                                  f"data optimum`?): run `mpimem data optimum {name}` again")
    attrs = group.attrs
    fstar, lam, gnorm = float(attrs["fstar"]), float(attrs["lam"]), float(attrs["grad_norm"])
    if str(attrs["stamp"]) != optimum_stamp(content, lam, fstar, gnorm, x[()]):
        raise MpimemError(f"{name}: the stored optimum does not match the data (/optimum was "
                          f"edited after `mpimem data optimum` wrote it, or copied from other "
                          f"data); run `mpimem data optimum {name}` again")
    return fstar, lam, gnorm, None


def _check_labels(y, name, start):
    bad = np.flatnonzero((y != 1) & (y != -1))
    if bad.size:
        raise MpimemError(f"{name}: label {int(y[bad[0]])} in row {start + bad[0]} is not -1 or +1")


def single_class_note(n_positive: int, n: int):
    """The one-line note for labels of a single class (all +1 or all -1), else None: such data
    trains without error, but the problem is degenerate (every row is classified by the same
    sign, so accuracy says nothing)."""
    if n < 1 or 0 < n_positive < n:
        return None
    label = "+1" if n_positive == n else "-1"
    return (f"all {n} labels are {label}: the data set has a single class (logistic regression "
            f"then only learns to push every row to {label}; accuracy is trivially 1)")


def read_meta(path, *, labels=False, optimum=True) -> DatasetMeta:
    """Validate the file's layout; its description. Reads no rows: with `labels`, also every
    label (checked to be +-1) to set `n_positive`, for `data info`; without `optimum`, the
    /optimum group is not read (`data optimum`, which replaces it)."""
    name = _name(path)
    with _open(path) as f:
        meta = _meta(f, name, optimum)
        if not labels:
            return meta
        positive = 0
        for start in range(0, meta.n, _SCAN_ROWS):
            y = f["y"][start:start + _SCAN_ROWS]
            _check_labels(y, name, start)
            positive += int(np.count_nonzero(y == 1))
    said = single_class_note(positive, meta.n)   # `data info`, the one caller with labels
    if said:
        note(said)
    return DatasetMeta(**{**meta.__dict__, "n_positive": positive})


def _check_csr(indptr, indices, meta, name, start):
    """Every row's column indices in [0, d) and strictly increasing (vectorised: a step
    that does not increase must start a new row); `indptr` already checked non-decreasing."""
    lo = int(indptr[0])
    if indices.size and (indices.min() < 0 or indices.max() >= meta.d):
        raise MpimemError(f"{name}: /indices has entries outside [0, d={meta.d})")
    ends = indptr[1:-1] - lo
    flat = np.diff(indices) <= 0
    flat[ends[(ends > 0) & (ends < indices.size)] - 1] = False
    bad = np.flatnonzero(flat)
    if bad.size:
        p = bad[0]
        row = start + np.searchsorted(indptr - lo, p, side="right") - 1
        raise MpimemError(f"{name}: row {row} has unsorted or duplicate column indices "
                          f"({indices[p]} then {indices[p + 1]}); they must increase within a row")


def _check_rows(sums, stored, name, start):
    """The rows' checksums must equal the ones written with them."""
    bad = np.flatnonzero(sums != stored)
    if bad.size:
        raise MpimemError(f"{name}: row {start + bad[0]} does not match its checksum (the file "
                          f"changed after it was written); convert or synthesize it again")


def read_shard(path, part: int = 0, parts: int = 1) -> Shard:
    """Rows `block_range(n, parts, part)` of the data set, and nothing else, checked: labels
    +-1, no NaN/Inf, CSR structure (`_check_csr`), and the rows' checksums."""
    name = _name(path)
    with _open(path) as f:
        meta = _meta(f, name, optimum=False)
        start, stop = block_range(meta.n, parts, part)
        y = f["y"][start:stop]
        _check_labels(y, name, start)
        stored = f["checksum"][start:stop]
        if meta.storage == "dense":
            X = values = np.ascontiguousarray(f["X"][start:stop])
        else:
            indptr = f["indptr"][start:stop + 1]
            lo, hi = int(indptr[0]), int(indptr[-1])
            if np.any(np.diff(indptr) < 0) or lo < 0 or hi > meta.nnz:
                raise MpimemError(f"{name}: /indptr is not non-decreasing within [0, nnz]")
            values, indices = f["data"][lo:hi], f["indices"][lo:hi]
    if not np.isfinite(values).all():
        raise MpimemError(f"{name}: rows {start}..{stop - 1} contain NaN or Inf values")
    if meta.storage == "dense":
        _check_rows(row_checksums_dense(X, y), stored, name, start)
    else:
        _check_csr(indptr, indices, meta, name, start)
        _check_rows(row_checksums_csr(indptr - lo, indices, values, y), stored, name, start)
        index_type = np.int32 if hi - lo < 2**31 else np.int64
        X = sp.csr_matrix((values, indices, (indptr - lo).astype(index_type)),
                          shape=(stop - start, meta.d))
    return Shard(X=X, y=y.astype(np.float64), start=start, stop=stop)
