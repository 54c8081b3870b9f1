"""Content checksums of a data set: one 64-bit checksum per row, and a digest of the file.

Row i's checksum hashes what training reads of that row, bit for bit:

    c_i = mix(S_i + mix(bits(b_i) + CNT * k_i)),    S_i = sum_p mix(bits(v_p) ^ (PHI * j_p))  (mod 2^64)

over the row's k_i stored entries (j_p, v_p) (dense rows: every column j = 0..d-1), b_i the
stored int8 label, bits() the raw bits of the stored value (float32 or float64), `mix` the
64-bit finaliser of MurmurHash3 (a bijection that scrambles every input bit). Any change to a
value, a column index, a row length or a label changes c_i except with chance about 2^-64;
indices and values shifted between rows change both rows. (Not a cryptographic guard: it finds
damage and in-place edits, not a forger who rewrites the checksums too.)

The digest (`content_sha256`, the data set's fingerprint) is SHA-256(header || SHA-256(every
row checksum in row order, little-endian)), the header being (n, d, nnz, storage, dtype). It
is computed once, while the file is written; a reader of rows [start, stop) recomputes only their
checksums and compares them with /checksum[start:stop].
"""
import hashlib

import numpy as np
from numba import njit

PHI = np.uint64(0x9E3779B97F4A7C15)
CNT = np.uint64(0xD6E8FEB86659FD93)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S = np.uint64(33)


@njit(cache=True, inline="always")
def _mix(x):
    x ^= x >> _S
    x *= _M1
    x ^= x >> _S
    x *= _M2
    x ^= x >> _S
    return x


@njit(cache=True)
def _rows_csr(indptr, indices, bits, labels, out):
    for i in range(labels.size):
        acc = np.uint64(0)
        for p in range(indptr[i], indptr[i + 1]):
            acc += _mix(np.uint64(bits[p]) ^ (PHI * np.uint64(indices[p])))
        head = np.uint64(np.uint8(labels[i])) + CNT * np.uint64(indptr[i + 1] - indptr[i])
        out[i] = _mix(acc + _mix(head))


@njit(cache=True)
def _rows_dense(bits, labels, out):
    for i in range(labels.size):
        acc = np.uint64(0)
        for j in range(bits.shape[1]):
            acc += _mix(np.uint64(bits[i, j]) ^ (PHI * np.uint64(j)))
        head = np.uint64(np.uint8(labels[i])) + CNT * np.uint64(bits.shape[1])
        out[i] = _mix(acc + _mix(head))


def _bits(values):
    """The raw bits of float32/float64 values as unsigned integers of the same width."""
    return values.view(np.uint32 if values.dtype == np.float32 else np.uint64)


def row_checksums_csr(indptr, indices, values, labels) -> np.ndarray:
    """c_i (uint64) of CSR rows: indptr from 0 (rows+1), indices, stored values, int8 labels."""
    out = np.empty(len(labels), np.uint64)
    _rows_csr(np.ascontiguousarray(indptr, np.int64), np.ascontiguousarray(indices),
              _bits(np.ascontiguousarray(values)), np.ascontiguousarray(labels, np.int8), out)
    return out


def row_checksums_dense(X, labels) -> np.ndarray:
    """c_i (uint64) of dense rows X (rows, d) of the stored dtype with int8 labels."""
    out = np.empty(len(labels), np.uint64)
    _rows_dense(_bits(np.ascontiguousarray(X)), np.ascontiguousarray(labels, np.int8), out)
    return out


class Digest:
    """The streamed digest of the row checksums (module docstring); the header, known only at
    the end (n, nnz), is hashed last around the inner SHA-256."""

    def __init__(self):
        self._sha = hashlib.sha256()

    def update(self, checksums: np.ndarray) -> None:
        self._sha.update(np.asarray(checksums, "<u8").tobytes())

    def hexdigest(self, *, n, d, nnz, storage, dtype) -> str:
        header = f"mpimem-dataset|{n}|{d}|{nnz}|{storage}|{np.dtype(dtype).name}|"
        return hashlib.sha256(header.encode() + self._sha.digest()).hexdigest()


def optimum_stamp(content_sha256, lam, fstar, grad_norm, x) -> str:
    """SHA-256 binding a stored optimum (lam, f*, |grad|, x*) to the data's digest: a changed
    f* or x*, or an /optimum group copied from other data, no longer matches."""
    key = f"{content_sha256}|{float(lam)!r}|{float(fstar)!r}|{float(grad_norm)!r}|"
    return hashlib.sha256(key.encode() + np.asarray(x, "<f8").tobytes()).hexdigest()
