"""Parse blocks of LIBSVM / SVMlight lines into CSR pieces, vectorised, with exact diagnostics.

A line is `LABEL [INDEX:VALUE ...] [# comment]`, fields separated by blanks or tabs:
- LABEL is one number, -1, +1, 0, 1 or 2 (written in any float form, e.g. "1.0", "+1");
  a comma in it is a multi-label line and refused;
- INDEX is a decimal integer >= the index base's minimum, strictly increasing within a line;
- VALUE is a finite decimal floating-point number (NaN and Inf are refused);
- `#` starts a comment up to the end of the line; blank and comment-only lines are skipped;
  a line with a label and no features is a valid all-zero row.

`parse_block` first tries the compiled single-pass parser (`libsvm_kernels`: exact numbers by
Clinger's fast path), then a vectorised numpy path over the whole block (byte tables, token
boundaries, one `np.fromstring` call for every number). Whenever neither can vouch for
every line of the block it hands the block to `_parse_lines`, the line-by-line reference
parser, which either returns the same arrays or raises `LineError` with the line number and
the problem. So the error messages live in one place and the fast path only has to be strict.
"""
import re
from dataclasses import dataclass

import numpy as np

from mpimem.data.libsvm_kernels import parse_compiled
from mpimem.data.textstream import BOM

LABELS = (-1.0, 0.0, 1.0, 2.0)
MAX_INDEX = 2**31 - 1

_WS = np.zeros(256, bool)
_WS[list(b" \t\n\r\x0b\x0c")] = True
_NUMBER_PUNCT = np.zeros(256, bool)          # non-digit bytes a number may contain
_NUMBER_PUNCT[list(b"+-.eE")] = True
_FAST_OK = _WS | _NUMBER_PUNCT               # bytes the fast path accepts outside comments
_FAST_OK[list(b"0123456789:")] = True

_NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NONFINITE = re.compile(rb"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_INDEX = re.compile(rb"[0-9]+")


class LineError(ValueError):
    """A problem on one line: `line` (1-based) and `problem` (what is wrong)."""

    def __init__(self, line, problem):
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


@dataclass
class Block:
    """Rows parsed from a block of lines, in CSR form with raw (file) indices.

    labels (rows,) float64; indptr (rows+1,) int64 from 0; indices (nnz,) int64 as written in
    the file; values (nnz,) float64; lines (rows,) int64: the line number of each row."""

    labels: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    lines: np.ndarray

    @property
    def rows(self) -> int:
        return self.labels.size


def parse_block(buf: bytes, first_line: int, min_index: int) -> Block:
    """Parse `buf` (whole lines, ending with a newline) whose first line is `first_line`.

    `min_index` is the smallest index allowed (1 for one-based files, 0 otherwise). Raises
    `LineError` for the first bad line. A UTF-8 byte-order mark before line 1 is skipped (the
    same for the compiled and the Python parsers)."""
    if first_line == 1 and buf.startswith(BOM):
        buf = buf[len(BOM):]
    parsed = parse_compiled(buf, first_line, min_index)
    if parsed is not None:
        return Block(*parsed)
    block = _parse_fast(buf, first_line, min_index)
    return block if block is not None else _parse_lines(buf, first_line, min_index)


def _parse_fast(buf, first_line, min_index):
    """The vectorised path: a Block, or None when any line needs the reference parser."""
    a = np.frombuffer(buf, np.uint8)
    newlines = np.flatnonzero(a == 10)
    hashes = np.flatnonzero(a == 35)
    if hashes.size:                           # blank each comment out up to its line's end
        comment = np.zeros(a.size + 1, np.int32)
        np.add.at(comment, hashes, 1)
        np.add.at(comment, newlines[np.searchsorted(newlines, hashes)], -1)
        a = np.where(np.cumsum(comment[:-1]) > 0, np.uint8(32), a)
    if not _FAST_OK[a].all():
        return None
    edges = np.diff((~_WS[a]).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    token_line = np.searchsorted(newlines, starts)
    is_label = np.ones(starts.size, bool)
    is_label[1:] = token_line[1:] != token_line[:-1]
    is_feature = ~is_label

    colons = np.flatnonzero(a == 58)
    if not np.array_equal(np.searchsorted(colons, ends) - np.searchsorted(colons, starts),
                          is_feature.astype(np.int64)):
        return None                           # a label with a colon or a feature without one
    feat_starts, feat_ends = starts[is_feature], ends[is_feature]
    punct = np.flatnonzero(_NUMBER_PUNCT[a])
    if (np.any(colons <= feat_starts) or np.any(feat_ends <= colons + 1)
            or np.any(np.searchsorted(punct, colons) != np.searchsorted(punct, feat_starts))):
        return None                           # empty index or value, or a non-digit index

    text = a.copy()
    text[colons] = 32
    try:
        numbers = np.fromstring(text.tobytes(), dtype=np.float64, sep=" ")
    except ValueError:
        return None
    width = 1 + is_feature.astype(np.int64)   # numbers per token: label 1, feature 2
    if numbers.size != width.sum():
        return None
    position = np.cumsum(width) - width
    labels = numbers[position[is_label]]
    indices = numbers[position[is_feature]]
    values = numbers[position[is_feature] + 1]
    row = np.cumsum(is_label)[is_feature] - 1
    if (not np.isin(labels, LABELS).all() or not np.isfinite(values).all()
            or np.any(indices < min_index) or np.any(indices > MAX_INDEX)
            or np.any((np.diff(indices) <= 0) & (row[1:] == row[:-1]))):
        return None
    indptr = np.zeros(labels.size + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=labels.size), out=indptr[1:])
    return Block(labels, indptr, indices.astype(np.int64), values,
                 first_line + token_line[is_label])


def _parse_lines(buf, first_line, min_index):
    """The reference parser, one line at a time: a Block, or LineError for the first bad line."""
    labels, counts, indices, values, lines = [], [], [], [], []
    for number, line in enumerate(buf.split(b"\n")[:-1], start=first_line):
        tokens = line.split(b"#", 1)[0].split()
        if not tokens:
            continue
        try:
            label, row_indices, row_values = _parse_row(tokens, min_index)
        except ValueError as exc:
            raise LineError(number, str(exc)) from None
        labels.append(label)
        counts.append(len(row_indices))
        indices += row_indices
        values += row_values
        lines.append(number)
    indptr = np.zeros(len(labels) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Block(np.array(labels, np.float64), indptr, np.array(indices, np.int64),
                 np.array(values, np.float64), np.array(lines, np.int64))


def _parse_row(tokens, min_index):
    """(label, indices, values) of one line's tokens; ValueError saying what is wrong."""
    head = tokens[0]
    if b":" in head:
        raise ValueError(f"missing label (the line starts with the feature {_show(head)})")
    if b"," in head:
        raise ValueError(f"multi-label line (label {_show(head)}); only binary labels are supported")
    label = _number(head, "label")
    if label not in LABELS:
        raise ValueError(f"label {_show(head)} is not one of -1, +1, 0, 1, 2")
    indices, values = [], []
    for token in tokens[1:]:
        if token.count(b":") != 1:
            problem = "missing colon in" if b":" not in token else "more than one colon in"
            raise ValueError(f"{problem} feature {_show(token)} (expected INDEX:VALUE)")
        index_text, value_text = token.split(b":")
        if not _INDEX.fullmatch(index_text):
            raise ValueError(f"non-numeric index {_show(index_text)} in {_show(token)}")
        index = int(index_text)
        if index < min_index:
            raise ValueError(f"index {index} in a one-based file (use --index-base 0 or auto "
                             f"if the file is zero-based)")
        if index > MAX_INDEX:
            raise ValueError(f"index {index} is larger than {MAX_INDEX}")
        if indices and index == indices[-1]:
            raise ValueError(f"duplicate index {index}")
        if indices and index < indices[-1]:
            raise ValueError(f"indices not increasing ({index} after {indices[-1]})")
        indices.append(index)
        values.append(_number(value_text, f"value of feature {index}"))
    return label, indices, values


def _number(text, what):
    """float(text) for a finite decimal number; ValueError naming `what` otherwise."""
    if _NONFINITE.fullmatch(text):
        raise ValueError(f"{what} is {_show(text)} (NaN and Inf are not allowed)")
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"non-numeric {what} {_show(text)}")
    number = float(text)
    if not np.isfinite(number):
        raise ValueError(f"{what} {_show(text)} overflows a float64")
    return number


def _show(token: bytes) -> str:
    """A token quoted for a message, cut to a readable length."""
    text = token.decode("latin-1")
    return repr(text if len(text) <= 40 else text[:37] + "...")
