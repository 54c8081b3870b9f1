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

from . import step
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
    bytes written to out (mpimem.step.emit_vector, the one encoder of variable-size vectors).

    u is float32 on the wire, so m keeps the exact residual m - float32(m) (kernels.emit_sparse).
    The encoding follows `sparse_is_smaller`: idx + vals (8 n bytes) only when shorter than the
    dense float32 vector (4 d bytes), which carries zeros off sel. A sparse payload is thus always
    shorter than a dense one, `decode_downlink` tells them apart by size alone, and out never
    needs more than 4 d bytes."""
    return step.emit_vector(m, sel, n, out)


class Aggregator:
    """The server's scratch for sum_w u_w and the downlink encoding of U = (1/W) sum_w u_w
    (mpimem.step.agg_add / agg_finish run on `arrays`).

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
        # the downlink message: an 8-byte header (mpimem.segments) then the payload, `out`
        self.message = np.zeros(8 + 4 * d, np.uint8)
        self.out = self.message[8:]
        K = downlink_k or 0
        self.memory = np.zeros(d) if downlink_k else None  # server state: checkpointed
        self.arrays = (self.acc, np.zeros(d, np.uint8),
                       np.zeros(max(1, min(d, max_entries)), np.int64),
                       np.zeros(2, np.int64),             # [union size, dense flag]
                       self.out, self.memory if downlink_k else np.zeros(0),
                       np.zeros(K, np.int64), np.zeros(K), np.zeros(K, np.int64))

    def add_sparse(self, idx, vals):
        step.agg_add_sparse(self.arrays, idx, vals, idx.size)

    def finish(self) -> np.ndarray:
        """The downlink payload (a view of self.out); resets the scratch for the next round."""
        return self.out[: step.agg_finish(self.arrays, float(self.workers))]


def decode_downlink(payload: np.ndarray, d: int):
    """(idx, vals) of a downlink payload (or of the uplink of `none`); idx is None for the dense
    encoding (4 d bytes). Unambiguous because every encoder follows `sparse_is_smaller`."""
    if payload.size == 4 * d:
        return None, payload.view(np.float32)
    n = payload.size // 8
    return sparse_views(payload, n)


class Compressor:
    """Base: the operator's parameters (its slots of mpimem.step's P) and its scratch arrays
    (`scratch`: selections, heaps, rand-k stream bases); no state of the algorithm."""

    name = "?"
    k = 0
    levels, bits, divisor = 0, 0, 1.0

    def __init__(self, d: int):
        self.d = d
        self.sel = np.zeros(1, np.int64)
        self.hkey, self.hidx = np.zeros(1), np.zeros(1, np.int64)
        self.floyd_mark = np.zeros(0, np.uint8)
        self.bases = np.zeros((1, 4), np.uint64)

    def max_message_bytes(self) -> int:
        raise NotImplementedError

    def fill_params(self, P: np.ndarray) -> np.ndarray:
        """Write the operator's slots of P (mpimem.step) and return P."""
        P[step.P_OP] = step.OP_CODES[self.name]
        P[step.P_D] = self.d
        P[step.P_K] = self.k
        P[step.P_LEVELS], P[step.P_BITS], P[step.P_DIVISOR] = self.levels, self.bits, self.divisor
        P[step.P_MSG_BYTES] = self.max_message_bytes()
        P[step.P_MEMORY] = 1.0
        return P

    def scratch(self, workers: int = 1) -> tuple:
        """The scratch tuple `cs` of mpimem.step (rand-k stream bases for workers 1..workers)."""
        return self.sel, self.hkey, self.hidx, self.floyd_mark, self.bases

    def compress(self, ws, r: int) -> int:
        """u = comp(v) for worker state ws in round r into ws.msg; m := v - u; bytes written."""
        P = self.fill_params(np.zeros(step.P_SIZE))
        return step.compress(P, ws.m, ws.arrays, self.scratch(ws.worker), ws.worker, r)

    def add_to(self, agg: Aggregator, msg: np.ndarray, worker: int = 1, r: int = 0) -> None:
        """agg += the u that message msg of `worker` in its round r stands for."""
        P = self.fill_params(np.zeros(step.P_SIZE))
        step.agg_add(P, agg.arrays, self.scratch(worker), msg, msg.size, worker, r)

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


class TopK(Compressor):
    """top-k: the k entries of largest magnitude (ties: smaller index), SPEC; 8k bytes."""

    name = "top_k"

    def __init__(self, d, k):
        super().__init__(d)
        self.k = k
        self.hkey = np.zeros(k)
        self.hidx = np.zeros(k, np.int64)
        self.sel = np.zeros(k, np.int64)

    def max_message_bytes(self):
        return 8 * self.k


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

    def max_message_bytes(self):
        return 4 * self.k

    def scratch(self, workers: int = 1) -> tuple:
        if self.bases.shape[0] <= workers:
            self.bases = np.array([stream_state(self.seed, w, RAND_K) for w in range(workers + 1)])
        return super().scratch(workers)


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


class ScaledSign(Quantiser):
    """Scaled sign: comp(v) = (||v||_1/d) sign(v), a k-contraction with k/d = ||v||_1^2/(d||v||^2)."""

    def __init__(self, d):
        Compressor.__init__(self, d)
        self.name, self.levels, self.bits, self.divisor = "sign", 1, 1, 1.0


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
