"""Compression operators of SPEC "Compression operators", each with its real wire encoding.

A worker calls `compress(ws, r)`: it turns the worker's v (held in ws.m) into the message u,
writes the bytes handed to MPI into ws.msg and leaves m := v - u (Algorithm 1). The server calls
`add_to(agg, msg, worker, r)` to add the decoded u to its aggregate. Wire formats:

| operator  | uplink message                                   | bytes              |
|-----------|--------------------------------------------------|--------------------|
| none      | float32 dense v, or int32 idx + float32 vals of its nonzeros, whichever is smaller | min(4d, 8 nnz) |
| top_k     | k int32 indices, then k float32 values          | 8k                 |
| rand_k    | k float32 values; indices from the shared seed  | 4k                 |
| qsgd/ternary | float32 scale, then d codes of (1 sign + ceil(log2(s+1)) level) bits | 4 + ceil(d bits / 8) |
| sign      | float32 scale ||v||_1/d, then d sign bits        | 4 + ceil(d / 8)    |

With memory, QSGD and ternary are the rescaled k-contractions Q(v)/(1+beta), beta = min(d/s^2,
sqrt(d)/s) (ternary, s = 1: sqrt(d)); without memory they are the unbiased quantisers.

The downlink (U, or D = top-K(m_s + U) with --downlink-k) and the uplink of `none` follow one
rule, `sparse_is_smaller`: int32 idx + float32 vals (8 nnz bytes) when 8 nnz < 4 d, else the
dense float32 vector (4 d bytes). A sparse payload is therefore always shorter than a dense one,
and the receiver decodes by size (`decode_downlink`).
"""
import math

import numpy as np

from . import kernels as K
from .errors import MpimemError
from .rng import RAND_K, stream_state

COMPRESSORS = ("none", "top_k", "rand_k", "qsgd", "ternary", "sign")


def sparse_is_smaller(nnz: int, d: int) -> bool:
    """The encoding rule of every variable-size vector on the wire: int32 idx + float32 vals
    (8 nnz bytes) when that is smaller than the dense float32 vector (4 d bytes)."""
    return 8 * nnz < 4 * d


def sparse_or_dense_nbytes(nnz: int, d: int) -> int:
    """Bytes of a vector with nnz nonzeros under `sparse_is_smaller`."""
    return 8 * nnz if sparse_is_smaller(nnz, d) else 4 * d


def sparse_views(buf: np.ndarray, n: int):
    """(int32 idx, float32 vals) views of a sparse message of n entries in a uint8 buffer."""
    return buf[: 4 * n].view(np.int32), buf[4 * n: 8 * n].view(np.float32)


def emit_vector(m: np.ndarray, sel: np.ndarray, n: int, out: np.ndarray) -> int:
    """Send u = m restricted to sel[:n] (all of m when n < 0) and keep m := m - u; returns the
    bytes written to out.

    u is float32 on the wire, so m keeps the exact residual m - float32(m) (kernels.emit_sparse).
    The encoding follows `sparse_is_smaller`: idx + vals (8 n bytes) only when shorter than the
    dense float32 vector (4 d bytes), which carries zeros off sel. A sparse payload is thus always
    shorter than a dense one, `decode_downlink` tells them apart by size alone, and out never
    needs more than 4 d bytes."""
    d = m.size
    if n >= 0 and sparse_is_smaller(n, d):
        idx, vals = sparse_views(out, n)
        idx[:] = sel[:n]
        K.emit_sparse(m, idx, n, vals)
        return 8 * n
    keep = slice(None) if n < 0 else sel[:n]
    dense = out[: 4 * d].view(np.float32)
    dense[:] = 0.0
    dense[keep] = m[keep]
    m[keep] -= dense[keep]
    return 4 * d


class Aggregator:
    """The server's scratch for sum_w u_w and the downlink encoding of U = (1/W) sum_w u_w.

    Downlink: int32 idx + float32 vals of the union of coordinates (8 n bytes) when that is
    smaller than the dense float32 vector (4 d bytes); every party applies exactly these values.

    With downlink compression (`downlink_k` = K, the paper's "compression of the state"), the
    server keeps a memory m_s of its own and sends D = top-K(m_s + U), m_s := m_s + U - D: the
    same error feedback as the workers', on the server-to-worker link. D is encoded by the same
    rule (`emit_vector`): 8 K bytes while 8 K < 4 d, else the dense 4 d bytes (K >= d/2).
    """

    def __init__(self, d: int, workers: int, max_entries: int, downlink_k: int = None):
        self.d, self.workers = d, workers
        self.acc = np.zeros(d)
        self.mark = np.zeros(d, np.uint8)
        self.union = np.zeros(max(1, min(d, max_entries)), np.int64)
        self.nunion = 0
        self.dense = False
        self.out = np.zeros(4 * d, np.uint8)
        self.down = TopK(d, downlink_k) if downlink_k else None
        self.memory = np.zeros(d) if downlink_k else None  # server state: checkpointed

    def add_sparse(self, idx, vals):
        if self.dense:
            np.add.at(self.acc, idx, vals.astype(np.float64))
            return
        if self.nunion + idx.size > self.union.size:  # the union can no longer beat dense
            self.dense = True
            self.mark[self.union[: self.nunion]] = 0
            np.add.at(self.acc, idx, vals.astype(np.float64))
            return
        self.nunion = K.sparse_add(self.acc, self.mark, self.union, self.nunion, idx, vals, idx.size)

    def add_dense(self, vals):
        if not self.dense:
            self.mark[self.union[: self.nunion]] = 0
            self.dense = True
        self.acc += vals

    def finish(self) -> np.ndarray:
        """The downlink payload (a view of self.out); resets the scratch for the next round."""
        if self.down is not None:
            return self._finish_compressed()
        n, d = self.nunion, self.d
        if not self.dense and sparse_is_smaller(n, d):
            idx, vals = sparse_views(self.out, n)
            K.sparse_finish(self.acc, self.mark, self.union, n, float(self.workers), idx, vals)
            payload = self.out[: 8 * n]
        else:
            if not self.dense:
                self.mark[self.union[:n]] = 0
            K.dense_finish(self.acc, float(self.workers), self.out.view(np.float32))
            payload = self.out
        self.nunion, self.dense = 0, False
        return payload

    def _finish_compressed(self) -> np.ndarray:
        """D = top-K(m_s + U) as the downlink; m_s keeps the rest (O(d) a round, on the server)."""
        m, k = self.memory, self.down.k
        if self.dense:
            m += self.acc / self.workers
            self.acc[:] = 0.0
        else:
            touched = self.union[: self.nunion]
            m[touched] += self.acc[touched] / self.workers
            self.acc[touched] = 0.0
            self.mark[touched] = 0
        down = self.down
        n = K.top_k_scan(m, down.sel, -1, k, down.sel, down.hkey, down.hidx)
        nbytes = emit_vector(m, down.sel, n, self.out)
        self.nunion, self.dense = 0, False
        return self.out[:nbytes]


def decode_downlink(payload: np.ndarray, d: int):
    """(idx, vals) of a downlink payload (or of the uplink of `none`); idx is None for the dense
    encoding (4 d bytes). Unambiguous because every encoder follows `sparse_is_smaller`."""
    if payload.size == 4 * d:
        return None, payload.view(np.float32)
    n = payload.size // 8
    return sparse_views(payload, n)


class Compressor:
    """Base: the operator's name, parameters and scratch shared by all calls (not state)."""

    name = "?"

    def __init__(self, d: int):
        self.d = d

    def max_message_bytes(self) -> int:
        raise NotImplementedError

    def decode(self, msg: np.ndarray, worker: int = 1, r: int = 0) -> np.ndarray:
        """The dense float64 u that message `msg` of `worker` in round r stands for."""
        agg = Aggregator(self.d, 1, self.d)
        self.add_to(agg, msg, worker, r)
        return agg.acc


class Identity(Compressor):
    """comp(v) = v (plain SGD). Memory is meaningless here and kept at zero."""

    name = "none"

    def max_message_bytes(self):
        return 4 * self.d

    def compress(self, ws, r):
        return emit_vector(ws.m, ws.cand, ws.ncand, ws.msg)

    def add_to(self, agg, msg, worker, r):
        idx, vals = decode_downlink(msg, self.d)
        if idx is None:
            agg.add_dense(vals)
        else:
            agg.add_sparse(idx, vals)


class TopK(Compressor):
    """top-k: the k entries of largest magnitude (ties: smaller index), SPEC; 8k bytes."""

    name = "top_k"

    def __init__(self, d, k):
        super().__init__(d)
        self.k = k
        self.hkey = np.zeros(k)
        self.hidx = np.zeros(k, np.int64)
        self.sel = np.zeros(k, np.int64)
        # threshold pool (sparse data): rebuild scans keep the top sqrt(d k) (kernels.pool_top_k)
        self.pool_k = min(d, max(2 * k, int(math.sqrt(d * k))))
        self.wkey = np.zeros(self.pool_k)
        self.widx = np.zeros(self.pool_k, np.int64)
        self.wsel = np.zeros(self.pool_k, np.int64)

    def max_message_bytes(self):
        return 8 * self.k

    def compress(self, ws, r):
        if ws.pool.size:
            n = K.pool_top_k(ws.m, ws.cand, ws.ncand, ws.pool, ws.inpool, ws.pool_state, self.k,
                             self.pool_k, self.sel, self.hkey, self.hidx, self.wsel, self.wkey,
                             self.widx)
        else:
            n = K.top_k_scan(ws.m, ws.cand, ws.ncand, self.k, self.sel, self.hkey, self.hidx)
        idx, vals = sparse_views(ws.msg, n)
        idx[:] = self.sel[:n]
        K.emit_sparse(ws.m, self.sel, n, vals)
        return 8 * n

    def add_to(self, agg, msg, worker, r):
        agg.add_sparse(*sparse_views(msg, msg.size // 8))


class RandK(Compressor):
    """rand-k: k coordinates uniform without replacement, unscaled (SPEC); 4k bytes of values.

    The indices of worker w in round r come from the stream (seed, w, RAND_K, r), which the
    server derives too, so they are not sent.
    """

    name = "rand_k"

    def __init__(self, d, k, seed):
        super().__init__(d)
        self.k, self.seed = k, seed
        self.sel = np.zeros(k, np.int64)
        self.floyd_mark = np.zeros(d, np.uint8)
        self.bases = {}

    def max_message_bytes(self):
        return 4 * self.k

    def indices(self, worker, r):
        base = self.bases.get(worker)
        if base is None:
            base = self.bases[worker] = stream_state(self.seed, worker, RAND_K)
        K.rand_k_indices(base, r, self.d, self.k, self.sel, self.floyd_mark)
        return self.sel

    def compress(self, ws, r):
        idx = self.indices(ws.worker, r)
        K.emit_sparse(ws.m, idx, self.k, ws.msg[: 4 * self.k].view(np.float32))
        return 4 * self.k

    def add_to(self, agg, msg, worker, r):
        agg.add_sparse(self.indices(worker, r).astype(np.int32), msg.view(np.float32))


class Quantiser(Compressor):
    """QSGD with s levels (ternary: s = 1), rescaled by 1/(1+beta) when used with memory."""

    def __init__(self, d, levels, memory, name):
        super().__init__(d)
        self.name = name
        self.levels = levels
        self.bits = 1 + max(1, math.ceil(math.log2(levels + 1)))
        self.beta = min(d / levels**2, math.sqrt(d) / levels)
        self.divisor = 1.0 + self.beta if memory else 1.0

    def max_message_bytes(self):
        return 4 + (self.d * self.bits + 7) // 8

    def compress(self, ws, r):
        n = self.max_message_bytes()
        K.qsgd_encode(ws.m, float(self.levels), self.bits, self.divisor, ws.rng_quant,
                      ws.msg[:4].view(np.float32), ws.msg[4:n])
        return n

    def add_to(self, agg, msg, worker, r):
        agg.add_dense(self.dequantise(msg))

    def dequantise(self, msg):
        out = np.zeros(self.d)
        K.quant_decode_add(msg[:4].view(np.float32), msg[4:], self.bits, float(self.levels),
                           self.divisor, out)
        return out


class ScaledSign(Quantiser):
    """Scaled sign: comp(v) = (||v||_1/d) sign(v), a k-contraction with k/d = ||v||_1^2/(d||v||^2)."""

    def __init__(self, d):
        Compressor.__init__(self, d)
        self.name, self.levels, self.bits, self.divisor = "sign", 1, 1, 1.0

    def compress(self, ws, r):
        n = self.max_message_bytes()
        K.sign_encode(ws.m, ws.msg[:4].view(np.float32), ws.msg[4:n])
        return n


def levels_from_bits(bits: int) -> int:
    """QSGD with B bits per entry on the wire: one sign bit and B-1 level bits, s = 2^(B-1) - 1."""
    return 2 ** (bits - 1) - 1


def make_compressor(name: str, d: int, k: int = None, levels: int = None, memory: bool = True,
                    seed: int = 0) -> Compressor:
    """The operator `name` for dimension d; raises MpimemError for impossible settings."""
    if name == "none":
        return Identity(d)
    if name in ("top_k", "rand_k"):
        if k is None or not 1 <= k <= d:
            raise MpimemError(f"--k must satisfy 1 <= k <= d = {d} for {name}, got {k}")
        return TopK(d, k) if name == "top_k" else RandK(d, k, seed)
    if name == "ternary":
        return Quantiser(d, 1, memory, "ternary")
    if name == "qsgd":
        if levels is None or levels < 1:
            raise MpimemError(f"qsgd needs --bits >= 2 or --levels >= 1, got levels = {levels}")
        return Quantiser(d, levels, memory, "qsgd")
    if name == "sign":
        return ScaledSign(d)
    raise MpimemError(f"unknown compressor '{name}'; choose one of {', '.join(COMPRESSORS)}")
