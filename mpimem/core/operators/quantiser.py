"""qsgd and ternary: the stochastic s-level quantiser of QSGD (ternary: s = 1), SPEC "Unbiased
quantisers":

  Q_s(v)_i = ||v|| sign(v_i) xi_i(v, s) / s,  xi_i = l + 1 with probability s|v_i|/||v|| - l,
             else l, where l = floor(s |v_i| / ||v||);  E Q_s(v) = v,
  E||Q_s(v)||^2 <= (1 + beta) ||v||^2,  beta = min(d/s^2, sqrt(d)/s)  (ternary: sqrt(d)).

With memory the operator is the rescaled k-contraction Q_s(v)/(1+beta) (delta = 1/(1+beta));
without memory the unbiased Q_s itself.

Wire: float32 scale ||v|| (rounded up, so that s|v_i|/scale <= s), then d codes of
bits = 1 + ceil(log2(s+1)) bits (sign, level), packed: 4 + ceil(d bits / 8) bytes.
"""
import math

import numpy as np
from numba import njit

from mpimem.core.kernels import CACHE
from mpimem.core.layout import P_BITS, P_DIVISOR, P_LEVELS, P_MSG_BYTES, W_MSG, W_RNG_QUANT
from mpimem.core.operators.base import Compressor
from mpimem.core.rng import uniform
from mpimem.core.wire import agg_set_dense
from mpimem.errors import MpimemError

CODE = 3


def levels_from_bits(bits: int) -> int:
    """QSGD with B bits per entry on the wire: one sign bit and B-1 level bits, s = 2^(B-1) - 1."""
    return 2 ** (bits - 1) - 1


def beta_of(d: int, levels: int) -> float:
    """beta = min(d/s^2, sqrt(d)/s): the variance bound of Q_s."""
    return min(d / levels**2, math.sqrt(d) / levels)


def bits_of(levels: int) -> int:
    """Bits per entry: 1 sign bit + ceil(log2(s+1)) level bits (at least 1)."""
    return 1 + max(1, math.ceil(math.log2(levels + 1)))


class Quantiser(Compressor):
    """QSGD with s levels (ternary: s = 1), rescaled by 1/(1+beta) when used with memory."""

    code = CODE
    quantiser = True

    def __init__(self, d, levels, memory, name):
        super().__init__(d)
        self.name = name
        self.levels = levels
        self.bits = bits_of(levels)
        self.beta = beta_of(d, levels)
        self.divisor = 1.0 + self.beta if memory else 1.0

    def max_message_bytes(self):
        return 4 + (self.d * self.bits + 7) // 8

    @classmethod
    def levels_of(cls, cfg) -> int:
        return 1

    @classmethod
    def contraction_rounds(cls, cfg, d):
        """1 + beta of the rescaled operator Q(v)/(1+beta)."""
        return 1.0 + beta_of(d, cls.levels_of(cfg))

    @classmethod
    def bits_per_entry(cls, cfg, d):
        return bits_of(cls.levels_of(cfg))


class QSGD(Quantiser):
    """QSGD with s = --levels levels (or s = 2^(B-1) - 1 from --bits B)."""

    name = "qsgd"
    takes_levels = True
    steps = (("decay", 2.0), ("bottou", 1.0))    # without memory: the paper's Experiment 2

    def __init__(self, d, levels, memory):
        super().__init__(d, levels, memory, "qsgd")

    @classmethod
    def build(cls, d, k=None, levels=None, memory=True, seed=0):
        if levels is None or levels < 1:
            raise MpimemError(f"qsgd needs --bits >= 2 or --levels >= 1, got levels = {levels}")
        return cls(d, levels, memory)

    @classmethod
    def resolve(cls, cfg, d):
        """k = d; s from --levels, else from --bits (default 4 bits: s = 7)."""
        super().resolve(cfg, d)
        if cfg.levels is None:
            if cfg.bits is None:
                cfg.bits = 4
            if not 2 <= cfg.bits <= 16:
                raise MpimemError(f"--bits must be in 2..16 (1 sign bit + level bits), got {cfg.bits}")
            cfg.levels = levels_from_bits(cfg.bits)
        if not 1 <= cfg.levels <= 32767:
            raise MpimemError(f"--levels must be in 1..32767, got {cfg.levels}")

    @classmethod
    def levels_of(cls, cfg):
        return cfg.get("levels") if isinstance(cfg, dict) else cfg.levels

    @classmethod
    def bits_per_entry(cls, cfg, d):
        levels = cls.levels_of(cfg)
        if not (isinstance(levels, int) and levels >= 1):
            return None
        return bits_of(levels)

    @classmethod
    def label(cls, cfg, bits):
        """"QSGD s=256 (10 bits/entry)"."""
        return f"QSGD s={cfg['levels']} ({bits} bits/entry)" if bits is not None else cls.name


class Ternary(Quantiser):
    """Ternary: QSGD with s = 1 (codes -1, 0, +1 times the norm), beta = sqrt(d)."""

    name = "ternary"
    steps = (("decay", 2.0), ("bottou", 0.1))    # measured (docs/design.md "Default steps")

    def __init__(self, d, memory):
        super().__init__(d, 1, memory, "ternary")

    @classmethod
    def build(cls, d, k=None, levels=None, memory=True, seed=0):
        return cls(d, memory)


# ---------------------------------------------------------------- the compiled code
@njit(inline="always")
def quant_value(scale, code, bits, levels):
    """Decoded entry: scale * sign * level / levels (level = 1 for the 1-bit sign code)."""
    neg = (code >> (bits - 1)) & 1
    level = 1 if bits == 1 else code & ((1 << (bits - 1)) - 1)
    val = scale * level / levels
    return -val if neg else val


@njit(inline="always")
def _put_code(body, i, bits, code):
    p = i * bits
    byte = p >> 3
    word = np.uint32(code) << np.uint32(p & 7)
    while word != 0:
        body[byte] |= np.uint8(word & np.uint32(0xFF))
        word >>= np.uint32(8)
        byte += 1


@njit(inline="always")
def _get_code(body, i, bits):
    p = i * bits
    byte = p >> 3
    off = p & 7
    word = np.uint32(0)
    nbytes = (off + bits + 7) >> 3
    for b in range(nbytes):
        word |= np.uint32(body[byte + b]) << np.uint32(8 * b)
    return np.int64((word >> np.uint32(off)) & np.uint32((1 << bits) - 1))


@njit(cache=CACHE)
def norm32_up(v):
    """||v||_2 rounded up to float32, so that levels*|v_i|/norm32 <= levels always."""
    acc = 0.0
    for j in range(v.size):
        acc += v[j] * v[j]
    n = math.sqrt(acc)
    n32 = np.float32(n)
    if np.float64(n32) < n:
        n32 = np.nextafter(n32, np.float32(np.inf))
    return n32


@njit(cache=CACHE)
def qsgd_encode(m, levels, bits, divisor, state, head, body):
    """QSGD with `levels` = s levels (ternary: s = 1), SPEC "Unbiased quantisers".

    l = floor(s|v_i|/||v||); level l+1 with probability s|v_i|/||v|| - l, else l. On the wire:
    float32 scale = ||v|| / divisor (divisor = 1 + beta for the rescaled operator used with
    memory, 1 without), then `bits` = 1 + ceil(log2(s+1)) bits per entry (sign, level), packed.
    m := m - u, with u decoded exactly as the server decodes it.
    """
    n32 = norm32_up(m)
    head[0] = n32
    scale = np.float64(n32) / divisor
    body[:] = 0
    if n32 == 0.0:
        return
    inv = levels / np.float64(n32)
    for i in range(m.size):
        v = m[i]
        r = abs(v) * inv
        level = np.int64(math.floor(r))
        if uniform(state) < r - level:
            level += 1
        code = level | ((1 << (bits - 1)) if v < 0.0 else 0)
        _put_code(body, i, bits, code)
        m[i] = v - quant_value(scale, code, bits, levels)


@njit(cache=CACHE)
def quant_decode_add(head, body, bits, levels, divisor, acc):
    """acc += decoded quantised message (the server's side of qsgd_encode / sign_encode)."""
    scale = np.float64(head[0]) / divisor
    if scale == 0.0:
        return
    for i in range(acc.size):
        acc[i] += quant_value(scale, _get_code(body, i, bits), bits, levels)


@njit(cache=CACHE)
def encode(P, m, ws, cs, worker, r):
    """u = Q_s(v) (/(1+beta) with memory) into the message; m := v - u; bytes."""
    msg, rng_quant = ws[W_MSG], ws[W_RNG_QUANT]
    nbytes = np.int64(P[P_MSG_BYTES])
    qsgd_encode(m, P[P_LEVELS], np.int64(P[P_BITS]), P[P_DIVISOR], rng_quant,
                msg[:4].view(np.float32), msg[4:nbytes])
    return nbytes


@njit(cache=CACHE)
def agg_add(P, agg, cs, msg, nbytes, worker, r):
    """acc += u: a dense vector (the server's union is set dense)."""
    agg_set_dense(agg)
    decode_add(P, cs, msg, nbytes, worker, r, agg[0])


@njit(cache=CACHE)
def decode_add(P, cs, msg, nbytes, worker, r, acc):
    """acc += u from the scale and the d packed codes (P's bits, levels, divisor)."""
    quant_decode_add(msg[:4].view(np.float32), msg[4:nbytes], np.int64(P[P_BITS]),
                     P[P_LEVELS], P[P_DIVISOR], acc)
