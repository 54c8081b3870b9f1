"""Compiled (numba) single-pass parser of a block of LIBSVM lines; see mpimem/data/libsvm.py.

`parse_bytes` walks the block once, byte by byte, and either fills the CSR arrays or reports
that it cannot vouch for the block (status 0), in which case the caller falls back to the
slower paths, which produce the exact error message. It is strict: only blanks, digits,
`+-.eE:` and `#` comments; labels in {-1, 0, 1, 2}; indices >= min_index, <= 2**31 - 1 and
strictly increasing in a line.

Numbers are converted exactly (equal to Python's float() of the token) by Clinger's fast path
only: a decimal m * 10**e with the integer m <= 2**53 and |e| <= 22 is one correctly rounded
IEEE multiplication or division of two exactly representable numbers. Any other number
(more significant digits, larger exponents) makes the block fall back.
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE

_POW10 = np.array([10.0 ** k for k in range(23)])      # exact: 10**k < 2**53 * 2**k
_MANT_MAX = 2 ** 53
_INDEX_MAX = 2 ** 31 - 1


@njit(cache=CACHE, inline="always")
def _blank(c):
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


@njit(cache=CACHE, inline="always")
def _stop(c):
    """True for a byte that ends a token: a blank, a newline or a comment's '#'."""
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12 or c == 10 or c == 35


@njit(cache=CACHE)
def _number(a, p, pow10):
    """(value, position after the number, ok) of the decimal number starting at a[p]."""
    n = a.size
    negative = False
    if a[p] == 43 or a[p] == 45:
        negative = a[p] == 45
        p += 1
    mant = 0
    digits = 0
    scale = 0
    big = False
    while p < n and 48 <= a[p] <= 57:
        mant = mant * 10 + (a[p] - 48)
        digits += 1
        if mant > _MANT_MAX:
            big = True
            mant = 0
        p += 1
    if p < n and a[p] == 46:
        p += 1
        while p < n and 48 <= a[p] <= 57:
            mant = mant * 10 + (a[p] - 48)
            digits += 1
            scale -= 1
            if mant > _MANT_MAX:
                big = True
                mant = 0
            p += 1
    if digits == 0 or big:
        return 0.0, p, False
    if p < n and (a[p] == 101 or a[p] == 69):
        p += 1
        eneg = False
        if p < n and (a[p] == 43 or a[p] == 45):
            eneg = a[p] == 45
            p += 1
        edigits = 0
        e = 0
        while p < n and 48 <= a[p] <= 57:
            if e < 100000:
                e = e * 10 + (a[p] - 48)
            edigits += 1
            p += 1
        if edigits == 0:
            return 0.0, p, False
        scale += -e if eneg else e
    value = float(mant)
    if mant != 0:
        if scale < -22 or scale > 22:
            return 0.0, p, False
        if scale < 0:
            value = value / pow10[-scale]
        else:
            value = value * pow10[scale]
    return (-value if negative else value), p, True


@njit(cache=CACHE)
def parse_bytes(a, first_line, min_index, labels, indptr, indices, values, lines, pow10):
    """Parse the block `a` (uint8, whole lines ending with a newline) into the given arrays.

    labels/lines need room for one entry per newline, indptr one more, indices/values one per
    ':' byte. Returns (status, rows, nnz): status 1 when every line was vouched for, else 0."""
    n = a.size
    p = 0
    line = first_line
    rows = 0
    nnz = 0
    indptr[0] = 0
    while p < n:
        while _blank(a[p]):
            p += 1
        c = a[p]
        if c == 35:                                    # comment-only line
            while a[p] != 10:
                p += 1
        if a[p] == 10:                                 # blank line
            p += 1
            line += 1
            continue
        label, p, ok = _number(a, p, pow10)
        if not ok or not _stop(a[p]):
            return 0, rows, nnz
        if not (label == -1.0 or label == 0.0 or label == 1.0 or label == 2.0):
            return 0, rows, nnz
        last = -1
        while True:
            while _blank(a[p]):
                p += 1
            c = a[p]
            if c == 35:
                while a[p] != 10:
                    p += 1
                c = 10
            if c == 10:
                p += 1
                break
            index = 0
            start = p
            while 48 <= a[p] <= 57:
                if index <= _INDEX_MAX:
                    index = index * 10 + (a[p] - 48)
                p += 1
            if p == start or a[p] != 58:
                return 0, rows, nnz
            if index < min_index or index > _INDEX_MAX or index <= last:
                return 0, rows, nnz
            p += 1
            if _stop(a[p]):
                return 0, rows, nnz
            value, p, ok = _number(a, p, pow10)
            if not ok or not _stop(a[p]):
                return 0, rows, nnz
            last = index
            indices[nnz] = index
            values[nnz] = value
            nnz += 1
        labels[rows] = label
        lines[rows] = line
        rows += 1
        indptr[rows] = nnz
        line += 1
    return 1, rows, nnz


def parse_compiled(buf, first_line, min_index):
    """(labels, indptr, indices, values, lines) of `buf`, or None when the block must fall back."""
    a = np.frombuffer(buf, np.uint8)
    newlines = buf.count(b"\n")
    colons = buf.count(b":")
    labels = np.empty(newlines, np.float64)
    lines = np.empty(newlines, np.int64)
    indptr = np.empty(newlines + 1, np.int64)
    indices = np.empty(colons, np.int64)
    values = np.empty(colons, np.float64)
    status, rows, nnz = parse_bytes(a, first_line, min_index, labels, indptr, indices, values,
                                    lines, _POW10)
    if not status:
        return None
    return labels[:rows], indptr[:rows + 1], indices[:nnz], values[:nnz], lines[:rows]
