"""Exact top-k of |m| kept up to date under sparse changes: the worker's error memory on sparse
data, where a round changes only the rows' nonzeros and the last selection. O(changed + k) a
round instead of the full scan's O(d log k).

Ranking rule (as kernels.top_k_scan): coordinate i ranks above j when |m_i| > |m_j|, or
|m_i| == |m_j| and i < j; a selection is emitted in that order and equals the full scan's byte
for byte.

Buckets. For a >= 0 the IEEE-754 bits of a, read as an unsigned integer, grow with a, so
bucket(a) = bits(a) >> (52 - BITS) (the exponent and the BITS leading mantissa bits: 16 buckets
an octave, each about 4% wide) is non-decreasing in a: a coordinate in a lower bucket is strictly
smaller than every coordinate in a higher one.

Invariant: every coordinate whose bucket is >= the floor sits in the doubly linked list of its
bucket; the others are out (bucket[j] = -1). A round
  1. re-buckets the coordinates that changed since the previous call (the caller's touched list
     and the previous selection, which the caller has emitted since): O(1) each, and nothing for
     one that stays below the floor or in its bucket;
  2. walks the buckets from the highest non-empty one down, taking whole buckets, until at least
     k coordinates are taken. They contain the top k (every other coordinate is strictly
     smaller), and kernels.top_k_scan ranks them: the full scan's code, so the full scan's
     message. Should the walk pass the floor with fewer than k, the lists are rebuilt from m with
     a lower floor (O(d), rare);
  3. raises the floor when more than 4 reserve coordinates are linked above the floor's bucket
     (rare; O(reserve + those unlinked)), so that the small changes of the many small
     coordinates cost one comparison each.
Cost a round: O(ntouched + k + the last bucket taken + the empty buckets passed). The last
bucket is large when many |m_j| are nearly equal: with error feedback they crowd just below the
level at which top-k emits them (RCV1-like, b = 64: about 400 in the top bucket, measured), and
when fewer than k coordinates are nonzero the zero bucket is taken whole. bench/bench_topk.py
compares it with the threshold pool it replaced and with the full scan.

State (allocate with `new_state(d, k)`; derived from m only, so never checkpointed):
    bucket int16[d]     per coordinate: its bucket (< 2^15), -1 when out of the lists
    links  int32[d, 2]  per coordinate: next and previous in its bucket's list (-1: none)
    head   int32[32768] first coordinate of each bucket's list (-1: empty)
    cand   int64[d]     scratch: the candidates of one selection
    held   int64[k]     the previous call's selection
    hkey   float64[k], hidx int64[k]   scratch of kernels.top_k_scan
    meta   int64[6]     [valid (0/1), number held, hint (>= the highest non-empty bucket),
                         floor, reserve, number linked above the floor's bucket]
`reset(meta)` marks it invalid (after m was loaded from a checkpoint, or whenever m changed
outside the touched lists); the next `select` rebuilds it from m, O(d).
NaN in m: its bucket lies above +inf's, and top_k_scan ranks NaN as it does on a partial scan,
so the selection may differ from a full scan's (the run is stopped at the next NaN check).
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE, top_k_scan

BITS = 4                      # mantissa bits in a bucket number: 16 buckets an octave
SHIFT = np.uint64(52 - BITS)
ABS = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
BUCKETS = 1 << (11 + BITS)    # exponent (11 bits) and BITS mantissa bits; the sign is dropped
NEXT, PREV = 0, 1             # columns of links
RESERVE = 8                   # a rebuild links at least max(RESERVE k, MIN_RESERVE) ...
MIN_RESERVE = 256             # ... coordinates (when that many are nonzero)


def new_state(d: int, k: int):
    """(bucket, links, head, cand, held, hkey, hidx, meta) for d coordinates and selections of
    at most k coordinates, marked invalid (the first `select` builds it)."""
    k = max(k, 1)
    reserve = max(RESERVE * k, MIN_RESERVE)
    return (np.full(d, -1, np.int16), np.full((d, 2), -1, np.int32),
            np.full(BUCKETS, -1, np.int32),
            np.zeros(d, np.int64), np.zeros(k, np.int64), np.zeros(k), np.zeros(k, np.int64),
            np.array([0, 0, 0, 0, reserve, 0], np.int64))


@njit(cache=CACHE)
def reset(meta):
    """Mark the structure invalid: the next `select` rebuilds it from m."""
    meta[0] = 0
    meta[1] = 0


@njit(cache=CACHE)
def _bucket(bits, j):
    """bucket(|m_j|) from the bits of m_j."""
    return np.int64((bits[j] & ABS) >> SHIFT)


@njit(cache=CACHE)
def _link(bucket, links, head, j, b):
    """Push j at the head of bucket b's list."""
    n = head[b]
    bucket[j] = b
    links[j, NEXT] = n
    links[j, PREV] = -1
    if n >= 0:
        links[n, PREV] = j
    head[b] = j


@njit(cache=CACHE)
def _move(bucket, links, head, meta, j, b):
    """j out of its list (if in one), then into bucket b's list if b >= the floor, else out
    (-1); keeps the hint and the count of coordinates linked above the floor."""
    cur = bucket[j]
    if cur >= 0:
        p = links[j, PREV]
        n = links[j, NEXT]
        if p >= 0:
            links[p, NEXT] = n
        else:
            head[cur] = n
        if n >= 0:
            links[n, PREV] = p
        meta[5] -= cur > meta[3]
    if b >= meta[3]:
        _link(bucket, links, head, j, b)
        meta[5] += b > meta[3]
        meta[2] = max(meta[2], b)
    else:
        bucket[j] = -1


@njit(cache=CACHE)
def _rebucket(bits, idx, n, bucket, links, head, meta):
    """Re-bucket the coordinates idx[:n] whose |m_j| changed: O(1) each, and nothing at all
    for one that stays below the floor or in its bucket."""
    for t in range(n):
        j = idx[t]
        b = _bucket(bits, j)
        cur = bucket[j]
        if b != cur and (cur >= 0 or b >= meta[3]):
            _move(bucket, links, head, meta, j, b)


@njit(cache=CACHE)
def _build(bits, bucket, links, head, meta):
    """Floor := the highest bucket with at least `reserve` coordinates at or above it (bucket 0
    when there is none); link every coordinate at or above the floor, mark the others out.
    O(d + number of buckets)."""
    head[:] = 0                          # first a histogram of the buckets
    for j in range(bits.size):
        head[_bucket(bits, j)] += 1
    count = 0
    floor = head.size - 1
    while floor > 0 and count + head[floor] < meta[4]:
        count += head[floor]
        floor -= 1
    head[:] = -1
    top = 0
    for j in range(bits.size):
        b = _bucket(bits, j)
        if b >= floor:
            _link(bucket, links, head, j, b)
            top = max(top, b)
        else:
            bucket[j] = -1
    meta[2] = top
    meta[3] = floor
    meta[5] = count
    meta[0] = 1


@njit(cache=CACHE)
def _raise_floor(bucket, links, head, meta):
    """Floor := the highest bucket with at least `reserve` linked coordinates at or above it
    (above the old floor, as more than that many are linked there); the coordinates below it
    leave the lists. O(reserve + coordinates removed)."""
    count = 0
    b = meta[2]
    while True:
        above = count
        j = head[b]
        while j >= 0 and count < meta[4]:
            count += 1
            j = links[j, NEXT]
        if count >= meta[4]:
            break
        b -= 1
    for out in range(meta[3], b):
        j = head[out]
        while j >= 0:
            bucket[j] = -1
            j = links[j, NEXT]
        head[out] = -1
    meta[3] = b
    meta[5] = above


@njit(cache=CACHE)
def _candidates(links, head, meta, cand, k):
    """Whole buckets from the hint down to the floor until k are taken; returns their count,
    or -1 when the floor was passed with fewer (then the lists must be rebuilt lower)."""
    ncand = 0
    b = meta[2]
    while ncand < k:
        if b < meta[3]:
            return -1
        j = head[b]
        if j >= 0 and ncand == 0:
            meta[2] = b                  # the highest non-empty bucket: a tight hint
        while j >= 0:
            cand[ncand] = j
            ncand += 1
            j = links[j, NEXT]
        b -= 1
    return ncand


@njit(cache=CACHE)
def select(m, touched, ntouched, bucket, links, head, cand, held, hkey, hidx, meta, k,
           out_idx):
    """Exact top-k of |m| over all d coordinates into out_idx[:n] in ranking order (what
    kernels.top_k_scan(m, _, -1, k, ...) returns); returns n = min(k, d).

    Contract: k <= the k of new_state; since the previous call m changed only at
    touched[:ntouched] and at the previous selection (kept in held), whatever the caller did
    there (emit_sparse or nothing); ntouched < 0: anything may have changed (rebuilt, O(d)).
    Duplicates in touched are harmless. m must be contiguous float64.
    """
    bits = m.view(np.uint64)
    k = min(k, m.size)
    if meta[0] == 0 or ntouched < 0:
        _build(bits, bucket, links, head, meta)
    else:
        _rebucket(bits, held, meta[1], bucket, links, head, meta)
        _rebucket(bits, touched, ntouched, bucket, links, head, meta)
        if meta[5] > 4 * meta[4]:
            _raise_floor(bucket, links, head, meta)
    ncand = _candidates(links, head, meta, cand, k)
    if ncand < 0:                        # fewer than k at or above the floor: lower it
        _build(bits, bucket, links, head, meta)
        ncand = _candidates(links, head, meta, cand, k)
    n = top_k_scan(m, cand, ncand, k, out_idx, hkey, hidx)
    held[:n] = out_idx[:n]
    meta[1] = n
    return n
