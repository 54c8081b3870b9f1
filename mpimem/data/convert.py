"""`mpimem data convert`: LIBSVM text (plain, .gz, .bz2, .xz) to a data-set file, streamed.

Two passes, neither holding the data in memory:
1. parse: the text is read in blocks of whole lines (`textstream`), parsed (`libsvm`) and
   appended in CSR form, with the labels and indices as written, to a staging file next to
   OUT; this pass learns n, d, nnz, the label set and, for `--index-base auto`, the base;
2. transcribe: the staging file is copied row block by row block into OUT (a temporary name,
   renamed at the end), mapping labels to {-1, +1}, shifting indices to zero-based and, for
   dense storage, scattering rows into /X.
Memory is bounded by the block size (a few tens of bytes per byte of text in a block, and
about as many bytes of values per transcription step), not by the size of the file. Any
error (or interrupt) leaves neither OUT nor the staging file behind. A long conversion says
how far it is on stderr (`progress`: the share of the input read, then of the rows written).

`normalize` scales every row x_i to unit L2 norm, x_i / ||x_i|| (rows of zero norm stay zero),
in float64 before the values are cast to the stored dtype; the row checksums and the content
digest are of the stored, scaled values, and the file says `normalized = 1`.

`bias` B > 0 appends a constant feature B to every row, as its last column (index d, so the
file has d + 1 columns), after the normalisation: liblinear's `-B`. The model then has an
intercept w_d B, regularised like the other weights by (lambda/2)||x||^2 (SPEC "Problem"); a
larger B regularises the intercept less. The file says `bias = B` (0: none).

The input is read once, front to back, so it may be a pipe or a FIFO (`/dev/stdin`). OUT must
not be the input itself (the same file under another name, a link, a relative path), and a
value the stored dtype cannot hold (beyond float32's range) is refused with its line. OUT
follows the output policy (mpimem.outputs, checked before the input is read): an existing file
only with `overwrite`, never a device, FIFO or directory.
"""
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from mpimem.errors import MpimemError
from mpimem.data.h5write import (CSRWriter, DenseWriter, atomic_h5, check_data_output, scratch_h5,
                                 write_header)
from mpimem.data.libsvm import LineError, parse_block
from mpimem.data.progress import Ticker, hms
from mpimem.data.textstream import LineBlocks

DENSE_ABOVE = 0.25           # --storage auto: dense when nnz / (n d) exceeds this
LABEL_MAPS = {(-1.0, 1.0): {-1: -1, 1: 1},
              (0.0, 1.0): {0: -1, 1: 1},
              (1.0, 2.0): {1: -1, 2: 1}}


@dataclass
class _Scan:
    """What the parse pass learns: the label set (with the line where each label first
    appeared), the smallest raw index and the largest (with its line)."""

    path: str
    labels: dict = field(default_factory=dict)
    min_index: int = None
    max_index: int = -1
    max_index_line: int = 0

    def add(self, block):
        """Fold a parsed block in; MpimemError (with the line) for a third class or a label
        pair that is not {-1,+1}, {0,1} or {1,2}."""
        values, first = np.unique(block.labels, return_index=True)
        for order in np.argsort(first):
            label = float(values[order])
            if label in self.labels:
                continue
            self.labels[label] = int(block.lines[first[order]])
            if len(self.labels) > 2:
                shown = ", ".join(f"{v:g}" for v in sorted(self.labels))
                raise MpimemError(f"{self.path}:{self.labels[label]}: more than two classes "
                                  f"(labels {shown}); only binary classification is supported")
            if self.label_map() is None:
                a, b = sorted(self.labels)
                raise MpimemError(f"{self.path}:{self.labels[label]}: labels {a:g} and {b:g} "
                                  "are not one of the pairs {-1,+1}, {0,1}, {1,2}")
        if block.indices.size:
            low, top = int(block.indices.min()), int(block.indices.argmax())
            self.min_index = low if self.min_index is None else min(self.min_index, low)
            if block.indices[top] > self.max_index:
                self.max_index = int(block.indices[top])
                row = np.searchsorted(block.indptr, top, side="right") - 1
                self.max_index_line = int(block.lines[row])

    def label_map(self):
        """{raw label: -1 or +1} for the labels seen, or None if they fit no allowed pair."""
        for pair, mapping in LABEL_MAPS.items():
            if set(self.labels) <= set(pair):
                return mapping
        return None


def convert(src, out, *, index_base="1", storage="auto", d=None, dtype="float64",
            block_bytes=4 << 20, normalize=False, bias=None, overwrite=False) -> dict:
    """Convert LIBSVM file `src` into data-set file `out`; a summary dict (n, d, nnz, ...,
    and `index_note`: why the guess of `index_base="auto"` deserves a look, or None).

    index_base: "0", "1" or "auto" (zero-based if any index is 0, else one-based).
    storage: "dense", "csr" or "auto" (dense when the density exceeds DENSE_ABOVE).
    d: number of columns (default: largest index + 1 after the base shift).
    normalize: scale every row to unit L2 norm (module docstring).
    bias: B > 0 appends the constant feature B as column d (d + 1 columns; module docstring).
    overwrite: replace an existing regular file `out` (refused otherwise, before any work)."""
    if bias is not None and not (bias > 0 and np.isfinite(bias)):
        raise MpimemError(f"--bias must be a positive number (the constant feature), got {bias}")
    _refuse_same_file(src, out)
    check_data_output(out, overwrite)
    blocks = LineBlocks(str(src), block_bytes)
    scan = _Scan(str(src))
    ticker = Ticker("mpimem data convert")
    size = _input_size(src)
    with scratch_h5(out) as stage:
        staged = CSRWriter(stage, np.float64, checked=False)
        for buf, first_line in blocks:
            try:
                block = parse_block(buf, first_line, 1 if index_base == "1" else 0)
            except LineError as exc:
                raise MpimemError(f"{src}:{exc.line}: {exc.problem}") from None
            _check_range(block, np.dtype(dtype), src)
            scan.add(block)
            staged.append(block.indptr, block.indices, block.values, block.labels)
            ticker.say(lambda: _read_note(blocks.bytes_read, size, ticker.elapsed(),
                                          first_line + buf.count(b"\n") - 1))
        if staged.n == 0:
            raise MpimemError(f"{src}: empty file (no data lines)")
        base = {"0": 0, "1": 1}.get(index_base, 0 if scan.min_index == 0 else 1)
        features = _columns(scan, base, d)
        width = features + (1 if bias else 0)   # the bias is column `features`
        density = (staged.nnz + (staged.n if bias else 0)) / (staged.n * width)
        final = storage if storage != "auto" else ("dense" if density > DENSE_ABOVE else "csr")
        with atomic_h5(out, overwrite) as f:
            writer = DenseWriter(f, width, dtype) if final == "dense" else CSRWriter(f, dtype)
            _transcribe(stage, writer, base, scan.label_map(), block_bytes, normalize, ticker,
                        bias=(features, bias) if bias else None)
            write_header(f, writer, d=width, source=str(src), source_bytes=blocks.source_bytes,
                         source_sha256=blocks.source_sha256, index_base=base,
                         compression=blocks.compression, normalized=int(normalize),
                         bias=float(bias or 0.0),
                         source_labels=",".join(f"{v:g}" for v in sorted(scan.labels)))
    note = None
    if index_base == "auto" and base == 1:
        note = (f"--index-base auto chose 1 (no feature index 0 in {src}); under "
                "--index-base 0 column 0 would be always empty: pass --index-base 0 to keep "
                "that column, or --index-base 1 to say that 1 is meant")
    return dict(n=writer.n, d=width, nnz=writer.nnz, storage=final, index_base=base,
                density=density, source_bytes=blocks.source_bytes, index_note=note)


def _input_size(src):
    """The size in bytes of `src` when it is a regular file (None for a pipe or a FIFO)."""
    try:
        stats = os.stat(src)
    except OSError:
        return None
    return stats.st_size if stat.S_ISREG(stats.st_mode) else None


def _read_note(done, size, seconds, line):
    """A progress line of the parse pass: bytes read (of `size`, with a share and an ETA when
    the size is known), the rate and the last line parsed."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"read {done / 1e6:.1f} MB"
    if size:
        eta = f", ETA {hms((size - done) / rate)}" if rate > 0 else ""
        text = f"{100 * done / size:3.0f}% read ({done / 1e6:.1f} of {size / 1e6:.1f} MB{eta})"
    return f"{text}, {rate / 1e6:.1f} MB/s, line {line}"


def _refuse_same_file(src, out):
    """MpimemError if `out` names the file `src` is (any path, symlink or hard link to it)."""
    try:
        same = os.path.samefile(src, out)
    except OSError:             # either does not exist (yet): not the same file
        return
    if same:
        raise MpimemError(f"{out}: is the input file {src} itself; choose another output name")


def _check_range(block, dtype, src):
    """MpimemError naming the line of the first value that overflows the stored `dtype`."""
    with np.errstate(over="ignore"):
        stored = block.values.astype(dtype)
    bad = np.flatnonzero(~np.isfinite(stored))
    if bad.size:
        p = bad[0]
        row = np.searchsorted(block.indptr, p, side="right") - 1
        raise MpimemError(f"{src}:{block.lines[row]}: value {float(block.values[p])!r} of "
                          f"feature {block.indices[p]} overflows {dtype.name} (use --dtype float64)")


def _columns(scan, base, d):
    """The number of columns: `d` if given (checked against the largest index), else the
    largest zero-based index + 1."""
    needed = scan.max_index - base + 1
    if d is None:
        if needed <= 0:
            raise MpimemError(f"{scan.path}: no features in any row (give --d to set the width)")
        return needed
    if needed > d:
        raise MpimemError(f"{scan.path}:{scan.max_index_line}: index {scan.max_index} is beyond "
                          f"--d {d} (index base {base})")
    return d


def _unit_rows(indptr, values):
    """The CSR `values` with each row divided by its L2 norm (float64; zero rows unchanged)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    norms = np.sqrt(np.bincount(rows, weights=np.square(values, dtype=np.float64),
                                minlength=len(indptr) - 1))
    norms[norms == 0] = 1.0
    return values / norms[rows]


def _with_bias(indptr, indices, values, column, bias):
    """The CSR rows with the constant feature `bias` appended to each at `column` (the last
    column, so every row's indices stay increasing)."""
    out_ptr = indptr + np.arange(len(indptr))
    last = out_ptr[1:] - 1                      # where each row's bias entry goes
    keep = np.ones(out_ptr[-1], bool)
    keep[last] = False
    out_idx = np.empty(out_ptr[-1], np.int64)
    out_val = np.empty(out_ptr[-1], np.float64)
    out_idx[keep], out_val[keep] = indices, values
    out_idx[last], out_val[last] = column, bias
    return out_ptr, out_idx, out_val


def _transcribe(stage, writer, base, label_map, block_bytes, normalize=False, ticker=None,
                bias=None):
    """Copy the staged rows into `writer`, about `block_bytes` of values at a time: labels
    mapped to {-1, +1}, indices made zero-based, rows scaled to unit norm if `normalize`, then
    the constant feature appended if `bias` = (column, B); progress said on `ticker`."""
    n, nnz = stage["y"].shape[0], stage["data"].shape[0]
    row_bytes = 8 * (writer.X.shape[1] if writer.storage == "dense" else max(1, nnz // n))
    step = max(1, block_bytes // row_bytes)
    lookup = np.zeros(256, np.int8)
    for raw, label in label_map.items():
        lookup[raw % 256] = label
    for start in range(0, n, step):
        stop = min(n, start + step)
        indptr = stage["indptr"][start:stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        indptr = indptr - lo
        indices = stage["indices"][lo:hi].astype(np.int64) - base
        values = stage["data"][lo:hi]
        if normalize:
            values = _unit_rows(indptr, values)
        if bias is not None:
            indptr, indices, values = _with_bias(indptr, indices, values, *bias)
        labels = lookup[stage["y"][start:stop].astype(np.uint8)]
        if writer.storage == "dense":
            rows = np.zeros((stop - start, writer.X.shape[1]), writer.X.dtype)
            rows[np.repeat(np.arange(stop - start), np.diff(indptr)), indices] = values
            writer.append(rows, labels)
        else:
            writer.append(indptr, indices, values, labels)
        if ticker is not None:
            ticker.say(lambda: f"writing {100 * stop / n:3.0f}% of {n} rows")
