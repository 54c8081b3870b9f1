"""Compression operators: error-feedback identity, contraction bounds, unbiasedness, wire bytes,
the top-k heap against the scan (SPEC "Compression operators"), and the downlink's top-K with
server memory (--downlink-k) for every K up to d."""
import math

import numpy as np
import pytest
from numba import njit

from conftest import run_mpi
from mpimem.core import step, topk_index
from mpimem.core.layout import P_SIZE
from mpimem.core.operators import make_compressor, quantiser
from mpimem.core.wire import Aggregator, decode_downlink, sparse_or_dense_nbytes
from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.core.rng import QUANTISE, stream_state
from mpimem.run.runfile import read_run
from mpimem.run.simulate import simulate

D = 257


class FakeWorker:
    """The fields of a WorkerState that compress() reads (a real state needs a shard)."""

    def __init__(self, d, worker=1, msg_bytes=None, seed=0):
        self.worker = worker
        self.m = np.zeros(d)
        self.cand = np.zeros(d, np.int64)
        self.counters = np.array([0, 0, -1], np.int64)   # [bytes up, bytes down, ncand]
        self.topk = topk_index.new_state(0, 1)  # no index: top-k scans
        self.rng_quant = stream_state(seed, worker, QUANTISE)
        self.msg = np.zeros(msg_bytes or 8 * d + 8, np.uint8)
        unused = np.zeros(0, np.int64)
        self.arrays = (self.m, unused, unused, unused.astype(np.uint64), self.rng_quant, unused,
                       np.zeros(0, np.uint8), self.cand, self.msg, self.topk, self.counters,
                       np.zeros(5), np.zeros(0))

    @property
    def ncand(self):
        return int(self.counters[2])

    @ncand.setter
    def ncand(self, value):
        self.counters[2] = value


def send(comp, ws, r: int) -> int:
    """u = comp(v) for worker state ws in round r into ws.msg; m := v - u; bytes written."""
    P = comp.fill_params(np.zeros(P_SIZE))
    return step.compress(P, ws.m, ws.arrays, comp.scratch(ws.worker), ws.worker, r)


def decode(comp, msg, worker: int = 1, r: int = 0) -> np.ndarray:
    """The dense float64 u that message `msg` of `worker` in round r stands for, as the server
    adds it to its aggregate."""
    P = comp.fill_params(np.zeros(P_SIZE))
    agg = Aggregator(comp.d, 1, comp.d)
    step.agg_add(P, agg.arrays, comp.scratch(worker), msg, msg.size, worker, r)
    return agg.acc


def compress(comp, v, ws=None, r=0):
    """(u decoded as the server decodes it, m after compression, bytes on the wire)."""
    ws = ws or FakeWorker(v.size)
    ws.m[:] = v
    nbytes = send(comp, ws, r)
    u = decode(comp, ws.msg[:nbytes].copy(), ws.worker, r)
    return u, ws.m.copy(), nbytes


OPERATORS = [("top_k", dict(k=5)), ("rand_k", dict(k=5)), ("qsgd", dict(levels=7)),
             ("qsgd", dict(levels=127)), ("ternary", {}), ("sign", {}), ("none", {})]


@pytest.mark.parametrize("name,kw", OPERATORS)
@pytest.mark.parametrize("memory", [True, False])
def test_error_feedback_identity_is_exact(name, kw, memory):
    """m = v - u bit for bit, with u the message as the server decodes it: what is not sent stays
    in memory. For the sparsifiers u + m == v exactly (the float32 wire residual v - f32(v) is
    exact in float64); for the quantisers u + m differs from v by one rounding
    (1 ulp of the largest of |u|, |m|, |v|)."""
    comp = make_compressor(name, D, memory=memory, seed=3, **kw)
    rng = np.random.default_rng(1)
    ws = FakeWorker(D)
    for r in range(20):
        v = rng.standard_normal(D) * 10.0 ** rng.integers(-8, 8)
        u, m, _ = compress(comp, v, ws, r)
        assert np.array_equal(m, v - u)  # (the engine drops m when memory is off)
        if name in ("top_k", "rand_k", "none"):
            assert np.array_equal(u + m, v)
        else:
            scale = np.maximum(np.maximum(np.abs(u), np.abs(m)), np.abs(v))
            assert np.all(np.abs(u + m - v) <= np.spacing(scale))


@pytest.mark.parametrize("name,kw,formula", [
    ("top_k", dict(k=5), 8 * 5), ("rand_k", dict(k=5), 4 * 5),
    ("qsgd", dict(levels=7), 4 + math.ceil(D * 4 / 8)), ("qsgd", dict(levels=127), 4 + D),
    ("ternary", {}, 4 + math.ceil(D * 2 / 8)), ("sign", {}, 4 + math.ceil(D / 8)),
    ("none", {}, 4 * D)])
def test_wire_bytes_match_the_encoding_formula(name, kw, formula):
    comp = make_compressor(name, D, **kw)
    _, _, nbytes = compress(comp, np.random.default_rng(0).standard_normal(D))
    assert nbytes == formula == comp.max_message_bytes()


def test_identity_sends_sparse_vectors_sparse():
    comp = make_compressor("none", D)
    ws = FakeWorker(D)
    ws.m[[3, 70, 200]] = [1.0, -2.0, 3.0]
    ws.cand[:3] = [3, 70, 200]
    ws.ncand = 3
    nbytes = send(comp, ws, 0)
    assert nbytes == sparse_or_dense_nbytes(3, D) == 24
    u = decode(comp, ws.msg[:nbytes].copy())
    assert np.flatnonzero(u).tolist() == [3, 70, 200] and u[70] == -2.0


def test_top_k_keeps_largest_magnitudes_with_smaller_index_on_ties():
    v = np.zeros(D)
    v[[10, 20, 30, 40]] = [3.0, -5.0, 5.0, 1.0]
    comp = make_compressor("top_k", D, k=2)
    u, m, _ = compress(comp, v)
    assert np.flatnonzero(u).tolist() == [20, 30]
    comp = make_compressor("top_k", D, k=1)
    u, _, _ = compress(comp, v)
    assert np.flatnonzero(u).tolist() == [20]


def contraction_gap(name, kw, v, draws, memory=True):
    """Mean ||v - comp(v)||^2 over draws, and the bound (1 - k/d) ||v||^2 of SPEC."""
    comp = make_compressor(name, D, memory=memory, seed=11, **kw)
    ws = FakeWorker(D)
    errs = [np.sum(compress(comp, v, ws, r)[1] ** 2) for r in range(draws)]
    if name in ("top_k", "rand_k"):
        delta = kw["k"] / D
    elif name == "sign":
        delta = np.sum(np.abs(v)) ** 2 / (D * np.sum(v**2))
    else:
        delta = 1.0 / comp.divisor  # rescaled quantiser Q/(1+beta)
    return float(np.mean(errs)), (1 - delta) * float(v @ v)


@pytest.mark.parametrize("name,kw", OPERATORS[:-1])
def test_contraction_bound_holds_empirically(name, kw):
    """E||v - comp_k(v)||^2 <= (1 - k/d)||v||^2 (2000 draws; 1% slack for the sampling error of
    the random operators, 1e-6 for the deterministic ones' float32 wire rounding)."""
    rng = np.random.default_rng(5)
    for v in (rng.standard_normal(D), rng.standard_normal(D) ** 3, np.eye(D)[7] * 4.0):
        mean, bound = contraction_gap(name, kw, v, draws=2000 if name in ("rand_k", "qsgd", "ternary") else 3)
        slack = 0.01 if name in ("rand_k", "qsgd", "ternary") else 1e-6
        assert mean <= bound * (1 + slack) + 1e-12, (mean, bound)


def test_rand_k_meets_its_contraction_with_equality_in_expectation():
    """rand-k: E||v - comp(v)||^2 = (1 - k/d)||v||^2 exactly in expectation (a sharp check)."""
    v = np.random.default_rng(9).standard_normal(D)
    mean, bound = contraction_gap("rand_k", dict(k=20), v, draws=4000)
    assert abs(mean - bound) <= 0.02 * bound


@pytest.mark.parametrize("name,kw", [("ternary", {}), ("qsgd", dict(levels=3)), ("qsgd", dict(levels=7))])
def test_unbiased_quantisers_are_unbiased(name, kw):
    """Without memory Q is unbiased: each coordinate's sample mean over N = 20000 draws lies
    within 5 standard errors of v_i (a false alarm somewhere in d = 257 has probability < 1e-4)."""
    comp = make_compressor(name, D, memory=False, seed=2, **kw)
    v = np.random.default_rng(4).standard_normal(D)
    ws = FakeWorker(D)
    N = 20000
    total, total_sq = np.zeros(D), np.zeros(D)
    for r in range(N):
        u, _, _ = compress(comp, v, ws, r)
        total += u
        total_sq += u * u
    mean = total / N
    stderr = np.sqrt(np.maximum(total_sq / N - mean**2, 1e-30) / N)
    assert np.all(np.abs(mean - v) <= 5 * stderr + 1e-12)
    # and it is a real quantiser: the levels are multiples of ||v|| / s
    norm32 = float(np.float32(np.linalg.norm(v)))
    steps = u / (norm32 / comp.levels)
    assert np.allclose(steps, np.round(steps), atol=1e-6)


@njit
def _pack_unpack(codes, bits):
    body = np.zeros((codes.size * bits + 7) // 8 + 1, np.uint8)
    for i in range(codes.size):
        quantiser._put_code(body, i, bits, codes[i])
    out = np.empty_like(codes)
    for i in range(codes.size):
        out[i] = quantiser._get_code(body, i, bits)
    return out


@pytest.mark.parametrize("bits", range(1, 17))
def test_bit_packing_round_trip(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    assert np.array_equal(_pack_unpack(codes, bits), codes)


def downlink_oracle(memory, messages, workers, k):
    """D = top-K(m_s + U) (ties: smaller index) as float32, and m_s + U - D, computed directly:
    U = (1/W) sum_w u_w summed in worker order."""
    acc = np.zeros(memory.size)
    for idx, vals in messages:
        np.add.at(acc, idx, vals.astype(np.float64))
    v = memory + acc / workers
    top = np.lexsort((np.arange(v.size), -np.abs(v)))[:k]
    down = np.zeros(v.size, np.float32)
    down[top] = v[top]
    return down, v - down


@pytest.mark.parametrize("d", [20, 21])
@pytest.mark.parametrize("k_of_d", [lambda d: d // 2 - 1, lambda d: d // 2, lambda d: (d + 1) // 2,
                                    lambda d: d // 2 + 1, lambda d: d - 1, lambda d: d],
                         ids=["d/2-1", "floor(d/2)", "ceil(d/2)", "d/2+1", "d-1", "d"])
def test_downlink_k_sends_exactly_top_k_of_memory_plus_update(d, k_of_d):
    """--downlink-k K, every K in 1..d: what a rank decodes is exactly D = top-K(m_s + U) and the
    server keeps m_s + U - D. The payload is sparse (8 K bytes) only while that is shorter than
    the dense float32 vector (4 d bytes), so decoding by size is unambiguous and nothing is
    written past the 4 d-byte buffer. (Before: K = d/2 decoded the int32 indices as float32
    values, K > d/2 also wrote past the buffer.)"""
    k, workers = k_of_d(d), 2
    rng = np.random.default_rng(100 * d + k)
    agg = Aggregator(d, workers, workers * d, downlink_k=k)
    for r in range(3):
        agg.memory[:] = rng.standard_normal(d)
        messages = [(rng.choice(d, 5, replace=False).astype(np.int32),
                     rng.standard_normal(5).astype(np.float32)) for _ in range(workers)]
        down, rest = downlink_oracle(agg.memory.copy(), messages, workers, k)
        for idx, vals in messages:
            agg.add_sparse(idx, vals)
        payload = agg.out[: step.agg_finish(agg.arrays, float(workers))]
        assert payload.size == (8 * k if 8 * k < 4 * d else 4 * d)
        idx, vals = decode_downlink(payload, d)
        got = np.zeros(d, np.float32)
        if idx is None:
            got[:] = vals
        else:
            got[idx] = vals
        assert np.array_equal(got, down)
        assert np.array_equal(agg.memory, rest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Epsilon-like, n = 300, d = 16, with f*."""
    from datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny") / "tiny.h5", "epsilon", 300, 16)


def simulated(data, workers, opts):
    """The in-process simulator's run of the same settings (the MPI run's oracle)."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, **opts)), meta.n, meta.d, workers)
    shards = [read_shard(data, w, workers) for w in range(workers)]
    return simulate(cfg, [(s.X, s.y) for s in shards], meta.d, fstar=meta.fstar)


@pytest.mark.parametrize("downlink_k", [8, 16], ids=["K=d/2", "K=d"])
def test_mpi_downlink_k_of_half_d_and_d(tiny, tmp_path, downlink_k):
    """mpiexec -n 3, --downlink-k d/2 and d: x and xbar equal the simulator's bit for bit, each
    worker receives the dense 4 d bytes a round, and since K >= the 2 k = 4 coordinates the
    workers send, D = m_s + U: f(xbar) - f* within 1e-5 relative of the run without downlink
    compression (they differ by the float32 residuals fed back; measured 2e-8). Before: the
    indices were applied as values, f(xbar) - f* = 1.0 against 0.009."""
    opts = dict(compressor="top_k", k=2, epochs=1.0, seed=7, schedule="decay", gamma=2.0,
                shift="d/k", l2="server")
    out = tmp_path / "run.h5"
    args = [f"--{key.replace('_', '-')}={value}" for key, value in opts.items()]
    run_mpi(3, ["train", tiny, "--out", out, "--quiet", "--downlink-k", downlink_k, *args],
            check=True)
    run = read_run(out)
    sim = simulated(tiny, 2, dict(opts, downlink_k=downlink_k))
    exact = simulated(tiny, 2, opts)
    assert np.array_equal(run["final"]["x"], sim.x)
    assert np.array_equal(run["final"]["xbar"], sim.xbar)
    rounds = run["attrs"]["rounds"]
    assert run["metrics"]["bytes_down"][-1] == 2 * rounds * (8 + 4 * 16)
    gap = run["metrics"]["subopt_xbar"]
    assert 0 < gap[-1] < gap[0] / 10
    assert abs(gap[-1] - exact.history[-1]["subopt_xbar"]) <= 1e-5 * gap[-1]


def test_full_top_k_scan_with_block_skipping_equals_a_stable_sort():
    """kernels.top_k_scan skips 64-coordinate blocks whose max |m_j| cannot beat the worst kept
    entry; with many ties (integer values, zeros) and d across block boundaries its selection
    must still equal the ranking |m| descending, index ascending (a skip before the heap is
    full, or a block maximum that misses an entry, would break this)."""
    from mpimem.core.kernels import top_k_scan
    rng = np.random.default_rng(0)
    for _ in range(500):
        d = int(rng.integers(1, 400))
        k = int(rng.integers(1, d + 1))
        m = rng.integers(-3, 4, d).astype(float)
        if rng.random() < 0.5:
            m += rng.standard_normal(d) * (rng.random(d) < 0.1)
        out, hkey, hidx = np.zeros(k, np.int64), np.zeros(k), np.zeros(k, np.int64)
        assert top_k_scan(m, np.zeros(1, np.int64), -1, k, out, hkey, hidx) == k
        assert np.array_equal(out, np.lexsort((np.arange(d), -np.abs(m)))[:k]), (d, k)
