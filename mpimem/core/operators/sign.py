"""sign: the scaled sign comp(v) = (||v||_1 / d) sign(v), sign(0) := +1 (SPEC "Compression
operators"), a delta-contraction with delta = ||v||_1^2 / (d ||v||^2), between 1/d and 1.

Wire: float32 scale ||v||_1 / d, then d sign bits: 4 + ceil(d / 8) bytes. Decoded as the
quantiser's 1-bit code (bits = 1, levels = 1, divisor = 1).
"""
import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE
from mpimem.core.layout import P_MSG_BYTES, W_MSG
from mpimem.core.operators.base import Compressor
from mpimem.core.operators.quantiser import Quantiser, _put_code, quant_value
# the decoder is the quantiser's: the sign code is its 1-bit code (P: bits 1, levels 1, divisor 1)
from mpimem.core.operators.quantiser import agg_add, decode_add  # noqa: F401 (step's dispatch)

CODE = 4


class ScaledSign(Quantiser):
    """Scaled sign: comp(v) = (||v||_1/d) sign(v), a k-contraction with k/d = ||v||_1^2/(d||v||^2).

    Its default shift is ternary's 1 + sqrt(d) rounds (Quantiser.contraction_rounds with s = 1),
    measured: delta is data-dependent."""

    name, code = "sign", CODE
    quantiser = False

    def __init__(self, d):
        Compressor.__init__(self, d)
        self.name, self.levels, self.bits, self.divisor = "sign", 1, 1, 1.0

    @classmethod
    def build(cls, d, k=None, levels=None, memory=True, seed=0):
        return cls(d)

    @classmethod
    def bits_per_entry(cls, cfg, d):
        return None


@njit(cache=CACHE)
def sign_encode(m, head, body):
    """Scaled sign: comp(v) = (||v||_1 / d) * sign(v) (sign(0) := +1); float32 scale + 1 bit/entry."""
    acc = 0.0
    for j in range(m.size):
        acc += abs(m[j])
    scale32 = np.float32(acc / m.size)
    head[0] = scale32
    scale = np.float64(scale32)
    body[:] = 0
    for i in range(m.size):
        code = 1 if m[i] < 0.0 else 0
        _put_code(body, i, 1, code)
        m[i] = m[i] - quant_value(scale, code, 1, 1)


@njit(cache=CACHE)
def encode(P, m, ws, cs, worker, r):
    """u = (||v||_1/d) sign(v) into the message; m := v - u; bytes."""
    msg = ws[W_MSG]
    nbytes = np.int64(P[P_MSG_BYTES])
    sign_encode(m, msg[:4].view(np.float32), msg[4:nbytes])
    return nbytes
