"""An explicit, checkpointable random-number generator for the compiled kernels.

xoshiro256** (Blackman & Vigna) on a state of four uint64 words, seeded through splitmix64.
The whole state is a length-4 uint64 array, so a checkpoint saves it as it is and a resumed run
draws the same numbers. Streams for different purposes (sampling, stochastic quantisation,
rand-k indices) are derived from (seed, owner, purpose[, round]) and never share state.
"""
import numpy as np
from numba import njit

_MASK = (1 << 64) - 1

# Purposes of the derived streams.
SAMPLING = 1
QUANTISE = 2
RAND_K = 3


def _splitmix64(x: int):
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return x, z ^ (z >> 31)


def stream_state(seed: int, owner: int, purpose: int) -> np.ndarray:
    """State of the stream for (seed, owner, purpose); owner is a worker number (1..W) or 0."""
    x = (seed * 0x100000001B3 + owner * 0x9E3779B1 + purpose * 0x85EBCA77) & _MASK
    words = []
    for _ in range(4):
        x, z = _splitmix64(x)
        words.append(z)
    return np.array(words, dtype=np.uint64)


@njit(inline="always")
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@njit
def next_u64(state):
    """Next 64-bit output of xoshiro256**; advances `state` in place."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    result = _rotl(s1 * np.uint64(5), 7) * np.uint64(9)
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    state[0], state[1], state[2], state[3] = s0, s1, s2, s3
    return result


@njit
def uniform(state):
    """A float64 uniform on [0, 1) from the top 53 bits."""
    return np.float64(next_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit
def below(state, n):
    """An integer uniform on [0, n), unbiased (rejection of the short last interval)."""
    un = np.uint64(n)
    limit = np.uint64(0xFFFFFFFFFFFFFFFF) - (np.uint64(0xFFFFFFFFFFFFFFFF) % un)
    while True:
        r = next_u64(state)
        if r < limit:
            return np.int64(r % un)


@njit
def seed_round(state, base, round_index):
    """Stateless per-round stream: `state` := splitmix64-expanded (base words, round_index).

    Used for rand-k, whose indices the server derives from the shared seed instead of receiving
    them: the indices of worker w in round r depend only on (seed, w, r).
    """
    x = base[0] ^ (np.uint64(round_index) * np.uint64(0x9E3779B97F4A7C15))
    for i in range(4):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        state[i] = z ^ (z >> np.uint64(31)) ^ base[(i + 1) % 4]
