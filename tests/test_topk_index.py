"""The incremental top-k of the worker memory (mpimem.core.topk_index) against the full scan
(kernels.top_k_scan) and a numpy oracle: after every round the selection is the same, byte for
byte, under sparse gradient rounds, ties, zeros, resets, floor raises and rebuilds."""
import numpy as np
import pytest
import scipy.sparse as sp

from mpimem.core import kernels as K
from mpimem.core.wire import emit_sparse
from mpimem.core import topk_index as T


def oracle(m, k):
    """top-k by the ranking rule: |m| descending, then index ascending (numpy, independent)."""
    return np.lexsort((np.arange(m.size), -np.abs(m)))[:k]


class Worker:
    """A worker's memory on CSR data: gradient rounds into m (kernels.grad_csr_into), the
    selection by the index and by the full scan, emit, x := x - u (W = 1)."""

    def __init__(self, X, k, seed):
        self.data, self.indices, self.indptr = X.data, X.indices.astype(np.int64), X.indptr
        self.n, self.d = X.shape
        self.k = k
        self.y = np.where(np.random.default_rng(seed).random(self.n) < 0.5, -1.0, 1.0)
        self.rng = np.random.default_rng(seed + 1)
        self.m, self.x = np.zeros(self.d), np.zeros(self.d)
        self.mark = np.zeros(self.d, np.uint8)
        self.touched = np.zeros(self.d, np.int64)
        self.state = T.new_state(self.d, k)
        self.sel, self.ref = np.zeros(k, np.int64), np.zeros(k, np.int64)
        self.hkey, self.hidx = np.zeros(k), np.zeros(k, np.int64)
        self.vals = np.zeros(k, np.float32)

    def round(self, b, eta=0.5):
        """One round; asserts the index's selection is the full scan's; returns it."""
        rows = self.rng.integers(0, self.n, b)
        nt = K.grad_csr_into(self.data, self.indices, self.indptr, self.y, rows, self.x, 1.0,
                             self.m, eta, self.mark, self.touched, 0)
        n = T.select(self.m, self.touched, nt, *self.state, self.k, self.sel)
        nref = K.top_k_scan(self.m, self.touched, -1, self.k, self.ref, self.hkey, self.hidx)
        assert n == nref
        assert self.sel[:n].tobytes() == self.ref[:n].tobytes()
        emit_sparse(self.m, self.sel, n, self.vals)
        self.x[self.sel[:n]] -= self.vals[:n]
        self.mark[self.touched[:nt]] = 0
        return self.sel[:n].copy()


def csr(n, d, nnz_row, seed, levels=None):
    """Random CSR rows; with `levels`, values from that small set (many exact ties)."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=min(1.0, nnz_row / d), format="csr", random_state=rng)
    if levels is not None:
        X.data = rng.choice(levels, X.data.size)
    return X


@pytest.mark.parametrize("d", [50, 1000])
@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("b", [1, 4, 64])
def test_select_equals_full_scan_every_round(d, k, b):
    """Gradient rounds from m = 0 (zeros tie at the start), rows with values from {0.25, 0.5}
    (exact ties between coordinates), a reset mid-way (a checkpoint load): every round the
    selection equals the full scan's. A structure that misses an update, mishandles ties or
    keeps a stale key returns a different message in some round."""
    w = Worker(csr(300, d, 75 if d > 75 else 10, seed=d + k + b, levels=[0.25, 0.5]), k, seed=b)
    for r in range(120):
        if r == 60:
            T.reset(w.state[-1])
        w.round(b)


def test_rcv1_scale_shard():
    """d = 47,236 with about 75 nonzeros a row (RCV1-like), top-50, b = 1 and b = 16, with
    floor raises along the way (the linked set is trimmed as m grows)."""
    w = Worker(csr(2000, 47_236, 75, seed=3), 50, seed=4)
    floors = set()
    for b in (1, 16):
        for _ in range(150):
            w.round(b)
            floors.add(int(w.state[-1][3]))
    assert len(floors) > 1                       # the floor moved: raises were exercised


def test_ties_zeros_repeats_and_signs():
    """Ranking rule corner cases against the numpy oracle: all zeros (index order), equal
    magnitudes of either sign and -0.0, a value re-written unchanged (an exact repeat), k > d."""
    d, k = 12, 5
    m = np.zeros(d)
    st = T.new_state(d, k)
    out = np.zeros(k, np.int64)
    steps = [([], []),                                   # all zero: 0..4
             ([7, 3, 9], [-2.0, 2.0, 2.0]),              # ties: 3, 7, 9 by index
             ([3], [2.0]),                               # exact repeat, reported as touched
             ([1, 11], [-0.0, 2.0]),                     # -0.0 ties with zeros; another tie
             ([7], [0.5])]                               # a winner falls
    for idx, vals in steps:
        m[idx] = vals
        n = T.select(m, np.array(idx, np.int64), len(idx), *st, k, out)
        assert out[:n].tolist() == oracle(m, k).tolist()
        m[out[:n]] = m[out[:n]]                          # the caller emits nothing this time
    small = T.new_state(3, 5)
    assert T.select(np.array([0.0, -1.0, 1.0]), np.zeros(0, np.int64), -1, *small, 5,
                    out) == 3
    assert out[:3].tolist() == [1, 2, 0]


def test_previous_selection_and_decreases_are_never_stale():
    """A coordinate that was selected (then emitted, not reported as touched) or that fell
    (reported) is never returned on its old key: the next selection is the next-best one.
    A structure that forgot the held selection, or re-ranked only increases, would repeat it."""
    rng = np.random.default_rng(0)
    d, k = 2000, 5
    m = rng.standard_normal(d)
    st = T.new_state(d, k)
    out, vals = np.zeros(k, np.int64), np.zeros(k, np.float32)
    none = np.zeros(0, np.int64)
    seen = set()
    for _ in range(60):                      # drain the top: each round the next k
        n = T.select(m, none, 0, *st, k, out)
        assert out[:n].tolist() == oracle(m, k).tolist()
        assert not seen & set(out[:n].tolist())
        seen |= set(out[:n].tolist())
        emit_sparse(m, out, n, vals)
    top = oracle(m, 1)
    m[top] = 0.0                                 # the current best falls, reported
    n = T.select(m, top.astype(np.int64), 1, *st, k, out)
    assert top[0] not in out[:n] and out[:n].tolist() == oracle(m, k).tolist()


def test_drain_below_the_floor_rebuilds():
    """Emitting without new gradients drains the linked set below k: the walk passes the floor
    and the lists are rebuilt lower (meta[3] drops), and the selection stays exact."""
    rng = np.random.default_rng(1)
    d, k = 5000, 50
    m = rng.standard_normal(d) * np.exp(rng.uniform(-20, 20, d))
    st = T.new_state(d, k)
    out, vals = np.zeros(k, np.int64), np.zeros(k, np.float32)
    none = np.zeros(0, np.int64)
    floors = []
    for _ in range(30):
        n = T.select(m, none, 0, *st, k, out)
        assert out[:n].tolist() == oracle(m, k).tolist()
        floors.append(int(st[-1][3]))
        emit_sparse(m, out, n, vals)
    assert min(floors[1:]) < floors[0]           # rebuilt with a lower floor


def test_reset_after_m_is_replaced():
    """After m is replaced wholesale (a checkpoint load), reset makes the next selection exact;
    ntouched < 0 (anything changed) does the same without a reset."""
    rng = np.random.default_rng(2)
    d, k = 3000, 20
    st = T.new_state(d, k)
    out = np.zeros(k, np.int64)
    none = np.zeros(0, np.int64)
    m = rng.standard_normal(d)
    T.select(m, none, 0, *st, k, out)
    m = rng.standard_normal(d) * 3.0
    T.reset(st[-1])
    n = T.select(m, none, 0, *st, k, out)
    assert out[:n].tolist() == oracle(m, k).tolist()
    m = -rng.standard_normal(d)
    n = T.select(m, none, -1, *st, k, out)
    assert out[:n].tolist() == oracle(m, k).tolist()
