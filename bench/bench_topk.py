"""Top-k of the worker's memory on sparse data: the bucketed index (mpimem.core.topk_index) against
the threshold pool (pool_top_k below: mpimem's sparse path before the index) and the full scan
(kernels.top_k_scan), in the same command, on the same data, with the same k. Writes
bench/results/topk.md.

    python -m bench.bench_topk [--quick] [--n N] [--k K] [--repeats R]

Each method runs the worker's round in one compiled loop: b rows' logistic gradients into m
(kernels.grad_csr_into), top-k of |m|, emit (wire.emit_sparse), and x := x - u on the
iterate (one worker applying its own message, as W = 1 does), so m evolves as in training.
All methods start from the same warmed-up (m, x) and must end with the same m bit for bit.
"gradient only" is the loop without top-k and emit (the floor the selection adds to).
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

from mpimem.core import kernels as K
from mpimem.core.wire import emit_sparse
from mpimem.core import topk_index as T

RESULTS = Path(__file__).resolve().parent / "results" / "topk.md"
BATCHES = (1, 4, 16, 64)
ETA = 0.5


@njit
def _grad(X, rows, x, m, mark, touched):
    """Step 1 of a round: m += eta * gradient of rows at x; returns the touched count."""
    data, indices, indptr, y = X
    return K.grad_csr_into(data, indices, indptr, y, rows, x, 1.0, m, ETA, mark, touched, 0)


@njit
def _finish(x, m, mark, touched, nt, sel, n, vals):
    """Emit u = m[sel], apply x := x - u, clear the touched marks."""
    emit_sparse(m, sel, n, vals)
    for i in range(n):
        x[sel[i]] -= vals[i]
    for t in range(nt):
        mark[touched[t]] = 0


@njit
def loop_index(X, rows, b, x, m, mark, touched, sel, vals, k, state):
    """Rounds of b rows each with the index's top-k."""
    for r in range(rows.size // b):
        nt = _grad(X, rows[r * b:(r + 1) * b], x, m, mark, touched)
        n = T.select(m, touched, nt, *state, k, sel)
        _finish(x, m, mark, touched, nt, sel, n, vals)


# ------------------------------------------------ the baseline: mpimem's threshold pool, the sparse
# top-k before mpimem.core.topk_index replaced it (kept here as this benchmark's baseline)
@njit
def _pool_keep_above(m, pool, npool, inpool, theta):
    """Drop pool members with |m_j| <= theta; returns the new pool size."""
    kept = 0
    for t in range(npool):
        j = pool[t]
        if abs(m[j]) > theta:
            pool[kept] = j
            kept += 1
        else:
            inpool[j] = 0
    return kept


@njit
def pool_top_k(m, touched, ntouched, pool, inpool, state, k, ck, out_idx, hkey, hidx,
               wsel, wkey, widx):
    """Exact top-k of |m| when only `touched` coordinates (and the last selection) changed.

    Invariant: the pool holds every j with |m_j| > theta (state = [pool size, theta]; theta < 0
    marks a pool that must be rebuilt, e.g. after m was loaded from a checkpoint). Then
    if at least k members exceed theta, the k largest overall are all in the pool, ties
    included, and top-k over the pool equals top-k over all d coordinates: O(nnz + pool) a
    round instead of O(d). Coordinates only rise above theta when touched, so they are
    checked; when fewer than k members remain, theta is lowered by a full scan (top ck of all
    d, O(d log ck)); when the pool outgrows 4 ck, theta is raised to its ck-th largest value.
    """
    npool = np.int64(state[0])
    theta = state[1]
    valid = theta >= 0.0
    if valid:
        for t in range(ntouched):
            j = touched[t]
            if inpool[j] == 0 and abs(m[j]) > theta:
                inpool[j] = 1
                pool[npool] = j
                npool += 1
        npool = _pool_keep_above(m, pool, npool, inpool, theta)
        if npool > 4 * ck:
            K.top_k_scan(m, pool, npool, ck, wsel, wkey, widx)
            theta = abs(m[wsel[ck - 1]])
            npool = _pool_keep_above(m, pool, npool, inpool, theta)
    if npool < k or not valid:
        for t in range(npool):
            inpool[pool[t]] = 0
        c = K.top_k_scan(m, pool, -1, ck, wsel, wkey, widx)
        theta = abs(m[wsel[c - 1]])
        npool = 0
        for t in range(c):
            j = wsel[t]
            if abs(m[j]) > theta:
                inpool[j] = 1
                pool[npool] = j
                npool += 1
    state[0] = npool
    state[1] = theta
    if npool < k:  # not k coordinates above any threshold: the full scan decides
        return K.top_k_scan(m, pool, -1, k, out_idx, hkey, hidx)
    return K.top_k_scan(m, pool, npool, k, out_idx, hkey, hidx)


@njit
def loop_pool(X, rows, b, x, m, mark, touched, sel, vals, k, pool, inpool, state, ck, hkey, hidx,
              wsel, wkey, widx):
    """The same with the threshold pool."""
    for r in range(rows.size // b):
        nt = _grad(X, rows[r * b:(r + 1) * b], x, m, mark, touched)
        n = pool_top_k(m, touched, nt, pool, inpool, state, k, ck, sel, hkey, hidx, wsel, wkey,
                         widx)
        _finish(x, m, mark, touched, nt, sel, n, vals)


@njit
def loop_scan(X, rows, b, x, m, mark, touched, sel, vals, k, hkey, hidx):
    """The same with the full scan."""
    for r in range(rows.size // b):
        nt = _grad(X, rows[r * b:(r + 1) * b], x, m, mark, touched)
        n = K.top_k_scan(m, touched, -1, k, sel, hkey, hidx)
        _finish(x, m, mark, touched, nt, sel, n, vals)


@njit
def loop_grad(X, rows, b, x, m, mark, touched):
    """The gradient part alone."""
    for r in range(rows.size // b):
        nt = _grad(X, rows[r * b:(r + 1) * b], x, m, mark, touched)
        for t in range(nt):
            mark[touched[t]] = 0


def rcv1_shard(n):
    """An RCV1-like CSR shard from `mpimem data synth` (d = 47,236, about 74 nonzeros a row)."""
    from mpimem.data.dataset import read_shard
    from mpimem.data.synth import synthesize
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rcv1.h5")
        synthesize(path, "rcv1", n=n, seed=5)
        shard = read_shard(path)
    X = shard.X
    return (X.data.astype(np.float64), X.indices.astype(np.int64), X.indptr.astype(np.int64),
            shard.y.astype(np.float64)), X.shape[1]


class Methods:
    """Fresh per-method arguments for one (b, k) over the same start (x, m)."""

    def __init__(self, X, d, k, b):
        self.X, self.d, self.k, self.b = X, d, k, b

    def args(self, name, rows, x0, m0):
        X, b, k, d = self.X, self.b, self.k, self.d
        x, m, mark, touched = x0.copy(), m0.copy(), np.zeros(d, np.uint8), np.zeros(d, np.int64)
        sel, vals = np.zeros(k, np.int64), np.zeros(k, np.float32)
        if name == "gradient only":
            return loop_grad, (X, rows, b, x, m, mark, touched)
        head = (X, rows, b, x, m, mark, touched, sel, vals, k)
        if name == "index":
            return loop_index, head + (T.new_state(d, k),)
        if name == "pool":
            ck = min(d, max(2 * k, int(np.sqrt(d * k))))  # the pool of the former sparse path
            return loop_pool, head + (np.zeros(d, np.int64), np.zeros(d, np.uint8),
                                      np.array([0.0, -1.0]), ck, np.zeros(k),
                                      np.zeros(k, np.int64), np.zeros(ck, np.int64),
                                      np.zeros(ck), np.zeros(ck, np.int64))
        return loop_scan, head + (np.zeros(k), np.zeros(k, np.int64))


METHODS = ("gradient only", "index", "pool", "scan")


def measure(X, d, k, b, rows, warm_rows, repeats):
    """{method: median seconds a round}; checks that index, pool and scan end on the same m."""
    meth = Methods(X, d, k, b)
    x0, m0 = np.zeros(d), np.zeros(d)
    fn, a = meth.args("scan", warm_rows, x0, m0)
    fn(*a)                                           # warm-up: m and x as after some training
    x0, m0 = a[3], a[4]
    times, finals = {name: [] for name in METHODS}, {}
    for _ in range(repeats):                         # interleaved: load spikes hit every method
        for name in METHODS:
            fn, a = meth.args(name, rows, x0, m0)
            t0 = time.thread_time()
            fn(*a)
            times[name].append(time.thread_time() - t0)
            finals[name] = a[4]
    out = {name: statistics.median(t) / (rows.size // b) for name, t in times.items()}
    for name in ("index", "pool"):
        if not np.array_equal(finals[name], finals["scan"]):
            raise SystemExit(f"{name} diverged from the full scan at b = {b}")
    return out


def table(results, k, d, n, repeats, cmd):
    """bench/results/topk.md: us a round and a sample of each method, side by side."""
    lines = [f"# Top-{k} of the worker memory on RCV1-like sparse data", "",
             f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared "
             f"with other jobs). RCV1-like shard from `data synth` (n = {n:,}, d = {d:,}, "
             "about 74 nonzeros a row). One compiled loop per method: gradient of b rows into "
             f"m (rows drawn uniformly), top-{k} of |m|, emit, x := x - u. Thread CPU time (time.thread_time), median "
             f"of {repeats} interleaved repeats; all methods end on the same m bit for bit.", "",
             "- index: mpimem.core.topk_index.select (bucketed lists, O(touched + k) a round)",
             "- pool: the threshold pool (mpimem's sparse path before the index, pool of sqrt(d k))",
             "- scan: kernels.top_k_scan over all d",
             "- gradient only: the same loop without top-k and emit (the floor); a method's "
             "time minus it is what its top-k and emit cost a round", "",
             "| b | gradient only | index | pool | scan | index | pool | scan | index - gradient "
             "| pool - gradient | pool / index |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             "| | us/round | us/round | us/round | us/round | us/sample | us/sample | us/sample "
             "| us/round | us/round | |"]
    for b, r in results.items():
        us = {name: 1e6 * t for name, t in r.items()}
        lines.append(f"| {b} | {us['gradient only']:.2f} | {us['index']:.2f} | {us['pool']:.2f} "
                     f"| {us['scan']:.2f} | {us['index'] / b:.2f} | {us['pool'] / b:.2f} | "
                     f"{us['scan'] / b:.2f} | {us['index'] - us['gradient only']:.2f} | "
                     f"{us['pool'] - us['gradient only']:.2f} | {us['pool'] / us['index']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--n", type=int, default=20_000, help="rows of the shard")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=None, help="default 7 (--quick: 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    samples = 20_000 if args.quick else 100_000
    X, d = rcv1_shard(args.n)
    rng = np.random.default_rng(0)
    results = {}
    for b in BATCHES:
        warm_rows = rng.integers(0, args.n, samples // 4).astype(np.int64)
        rows = rng.integers(0, args.n, samples).astype(np.int64)
        results[b] = measure(X, d, args.k, b, rows, warm_rows, repeats)
        print(f"b = {b}: " + ", ".join(f"{m} {1e6 * t:.2f} us/round" for m, t in
                                       results[b].items()), flush=True)
    cmd = "python -m bench.bench_topk" + (" --quick" if args.quick else "")
    RESULTS.write_text(table(results, args.k, d, args.n, repeats, cmd))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
