"""Algorithm 1 in plain numpy, exactly as docs/spec.md states it: the independent oracle.

Written without mpimem's kernels, model, engine, compressors, rng or schedule (tests/
test_reference.py and tests/test_ef21_reference.py check mpimem's `--l2 worker` trajectory
against it, tests/test_reference_l2_server.py its `--l2 server` one), and timed as the
baseline of the speed benchmark (bench/bench_train.py): per sample it does what the paper's
published numpy code does, O(d) dense float64 work.

W workers, worker w with its own memory m^w and shard (X^w, y^w); x_0 = 0, m^w_0 = 0; round r,
schedule clock t = r b (b samples per worker and round), eta = eta_t:

  1. worker w:  rows = next b rows of its epoch permutation of the shard
  1.1           v^w = m^w + eta sum_{i in rows} grad f_i(x_r),
                grad f_i(x) = -y_i sigma(-y_i a_i^T x) a_i + lam x      (paper-exact L2 placement)
  1.2           u^w = comp_r(v^w);  m^w := v^w - u^w  (without memory: m^w := 0, every entry)
  2. server:    U = float32( (sum_{w=1..W} u^w) / W ), the sum in float64 in worker order
  3. everyone:  x_{r+1} = x_r - U;   xbar accumulates w_t x_r (before the update), kept directly:
                xbar_R = sum_{r<R} w_{rb} x_r / sum_{r<R} w_{rb}

Server-side L2 (l2 = "server", mpimem's `--l2 server`): the L2 term leaves the gradient and
becomes a shrink of the iterate in step 3, with the same eta = eta_t (t = r b) as step 1.1:
  1.1           v^w = m^w + eta sum_{i in rows} -y_i sigma(-y_i a_i^T x_r) a_i     (no lam x)
  3. everyone:  x_{r+1} = (1 - b eta lam) x_r - U     (xbar still counts w_t x_r, before it)
and likewise x_{r+1} = (1 - b eta lam) x_r - D with a downlink (2'-3' below, e is not shrunk),
x_{r+1} = (1 - b eta lam) x_r - eta G under EF21 (whose g^w then has no b lam x_r term).
Here x is a plain dense float64 vector, multiplied by the factor every round; mpimem keeps
x = s z with a lazy scale s instead (mpimem.core.model), the same values up to rounding.

With a top-K downlink (downlink_k = K), the server keeps a memory e (e_0 = 0) and sends D:
  2'. server:   e := e + (sum_w u^w) / W   (float64: U is not rounded to float32 first)
                D = float32(e) on the K largest |e_i| (ties: smaller index), 0 elsewhere;
                e := e - D
  3'. everyone: x_{r+1} = x_r - D

EF21 (method "ef21"; Richtarik, Sokolov, Fatkhullin 2021): worker w keeps h^w (h^w_0 = 0) in
place of m^w, every replica keeps G (G_0 = 0), the sum of the server's P: (1/W) sum_w h^w but
for P's float32 rounding (none with W = 1), which G keeps:
  1.1           g^w = sum_{i in rows} grad f_i(x_r)          (b lam x_r included, as above)
  1.2           c^w = comp_r(g^w - h^w);  h^w := h^w + c^w
  2. server:    P = float32( (sum_w c^w) / W ), the sum in float64 in worker order
  3. everyone:  G := G + P;  x_{r+1} = x_r - eta G
EF21-BC (method "ef21" with downlink_k = K): G and a memory e (e_0 = 0) on the server only,
  2'. server:   G := G + P;  e := e + eta G;  D = float32(e) on the K largest |e_i|, 0
                elsewhere;  e := e - D
  3'. everyone: x_{r+1} = x_r - D

Sparsity warm-up (k_warmup = E epochs, top_k and rand_k): round r lies in epoch
e = (r W b) // n (n the total rows of all shards), and comp_r keeps
  k_r = max(k, min(d, round(d (k / d) ** (e / E))))  for e < E,  k_r = k  after,
(Python's round, the float expression as written); the shift a stays that of the target k.

mpimem's wire format is part of the operator, so it is modelled here, honestly:
  none     u = float32(v)                                  (memory meaningless: kept at 0)
  top_k    u_i = float32(v_i) on the k_r largest |v_i| (ties: smaller index), 0 elsewhere
  rand_k   u_i = float32(v_i) on k_r indices uniform without replacement, 0 elsewhere
  qsgd     u_i = sign(v_i) (scale l_i) / s,  scale = float32up(||v||_2) / divisor, l_i the
           stochastically rounded level of s |v_i| / float32up(||v||_2) (SPEC "QSGD with s
           levels"); divisor = 1 + beta, beta = min(d/s^2, sqrt(d)/s) with memory (and always
           under EF21), 1 without; float32up rounds the norm up to float32 (the value sent)
  ternary  qsgd with s = 1
  sign     u_i = scale sign(v_i), sign(0) = +1, scale = float32(||v||_1 / d)
(both norms summed in index order, in float64)
so with memory the float32 rounding residual v - u stays in m (m := v - u exactly), and under
EF21 h moves by the float32 values sent.

The random streams are mpimem's, re-implemented from their definitions so that the same seed
gives the same trajectory: xoshiro256** seeded by splitmix64 from (seed, owner, purpose);
the sampler shuffles its shard's rows 0..n_w-1 by Fisher-Yates at start and at every epoch end;
rand-k draws worker w's round-r indices by Floyd's algorithm from a per-round splitmix64
expansion of the (seed, w, RAND_K) stream; the quantisers draw one uniform per coordinate.
Not modelled: --mode async (and its --async-step mean). The topologies (allgather, the
trees) and checkpoint/resume are the same mathematics as the sync server, summed in another
order, and are checked against the simulator (tests/test_train_mpi.py and others), not here.
"""
import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SAMPLING, QUANTISE, RAND_K = 1, 2, 3      # stream purposes


# ---------------------------------------------------------------- random streams
def _mix(z: int) -> int:
    """The splitmix64 output function."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK


class Xoshiro:
    """xoshiro256** (Blackman & Vigna) on four 64-bit words, in pure Python."""

    __slots__ = ("s",)

    def __init__(self, words):
        self.s = [int(w) for w in words]

    @classmethod
    def keyed(cls, seed: int, owner: int, purpose: int) -> "Xoshiro":
        """The stream of (seed, owner, purpose): four splitmix64 outputs from the mixed key."""
        x = (seed * 0x100000001B3 + owner * 0x9E3779B1 + purpose * 0x85EBCA77) & MASK
        words = []
        for _ in range(4):
            x = (x + GOLDEN) & MASK
            words.append(_mix(x))
        return cls(words)

    def for_round(self, r: int) -> "Xoshiro":
        """A fresh stream for round r from this stream's words (not advancing them):
        word i = splitmix64 output i of (s_0 xor r GOLDEN), xor s_{(i+1) mod 4}."""
        x = self.s[0] ^ ((r * GOLDEN) & MASK)
        words = []
        for i in range(4):
            x = (x + GOLDEN) & MASK
            words.append(_mix(x) ^ self.s[(i + 1) % 4])
        return Xoshiro(words)

    def next(self) -> int:
        s0, s1, s2, s3 = self.s
        result = (_rotl((s1 * 5) & MASK, 7) * 9) & MASK
        t = (s1 << 17) & MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        self.s = [s0, s1, s2, _rotl(s3, 45)]
        return result

    def uniform(self) -> float:
        """Uniform on [0, 1): the top 53 bits over 2^53."""
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, n: int) -> int:
        """Uniform on {0..n-1}: outputs >= the largest multiple of n under 2^64 - 1 are redrawn."""
        limit = MASK - MASK % n
        while True:
            r = self.next()
            if r < limit:
                return r % n


class Sampler:
    """Rows of a shard without replacement within an epoch: a Fisher-Yates permutation, read
    in order by a cursor, reshuffled (in place, continuing from the last one) at epoch end."""

    def __init__(self, n: int, rng: Xoshiro):
        self.perm, self.rng, self.pos = list(range(n)), rng, 0
        self._shuffle()

    def _shuffle(self):
        perm, below = self.perm, self.rng.below
        for i in range(len(perm) - 1, 0, -1):
            j = below(i + 1)
            perm[i], perm[j] = perm[j], perm[i]

    def take(self, b: int) -> list:
        rows = []
        for _ in range(b):
            if self.pos == len(self.perm):
                self._shuffle()
                self.pos = 0
            rows.append(self.perm[self.pos])
            self.pos += 1
        return rows


# ---------------------------------------------------------------- settings, schedule, weights
@dataclass(frozen=True)
class Settings:
    """The run's settings, concrete (shift a in samples, k and levels resolved)."""

    compressor: str = "top_k"     # none, top_k, rand_k, qsgd, ternary, sign
    k: int = 1
    levels: int = 1               # QSGD's s (ternary: 1)
    memory: bool = True
    batch_size: int = 1
    schedule: str = "decay"       # decay, bottou, constant
    gamma: float = 2.0
    shift: float = 1.0
    averaging: str = "quadratic"  # quadratic, uniform, none
    lam: float = 0.0
    seed: int = 0
    method: str = "memsgd"        # memsgd (Algorithm 1) or ef21
    downlink_k: int = None        # K of the top-K downlink with a server memory (None: off)
    k_warmup: int = 0             # epochs of sparsity warm-up (top_k, rand_k)
    l2: str = "worker"            # worker: lam x in every gradient; server: x shrunk in step 3

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        """The same-named fields of a resolved configuration object (mpimem's TrainConfig)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def k_at(self, r: int, n: int, workers: int, d: int) -> int:
        """k_r of round r (module docstring, sparsity warm-up): epoch e = (r W b) // n."""
        if self.compressor not in ("top_k", "rand_k") or not self.k_warmup:
            return self.k
        e = (r * workers * self.batch_size) // n
        return k_warmup_value(self.k, d, e, self.k_warmup)

    def eta(self, t: float) -> float:
        """decay: gamma / (lam (t + a));  bottou: gamma / (1 + gamma lam t);  constant: gamma."""
        if self.schedule == "decay":
            return self.gamma / (self.lam * (t + self.shift))
        if self.schedule == "bottou":
            return self.gamma / (1.0 + self.gamma * self.lam * t)
        return self.gamma

    def factor(self, t: float) -> float:
        """The scale of x_r in step 3: 1 - b eta_t lam with l2 = "server", else 1."""
        return 1.0 - self.batch_size * self.eta(t) * self.lam if self.l2 == "server" else 1.0

    def weight(self, t: float) -> float:
        """quadratic: (a + t)^2; otherwise 1."""
        return (self.shift + t) ** 2 if self.averaging == "quadratic" else 1.0


def k_warmup_value(k: int, d: int, e: int, epochs: int) -> int:
    """k in epoch e of a warm-up of E = `epochs` epochs: max(k, min(d, round(d (k/d)^(e/E))))
    for e < E, then k."""
    if e >= epochs:
        return k
    return max(k, min(d, round(d * (k / d) ** (e / epochs))))


def k_schedule(k: int, d: int, epochs: int) -> list:
    """The k of each warm-up epoch 0..epochs-1 (mpimem stores it as RUN.h5 attrs k_schedule)."""
    return [k_warmup_value(k, d, e, epochs) for e in range(epochs)]


# ---------------------------------------------------------------- compression operators
def _f32(v):
    """The float32 value sent, as float64."""
    return np.asarray(v, dtype=np.float32).astype(np.float64)


def _sparse(v, idx):
    """u = float32(v) on the coordinates idx, 0 elsewhere."""
    u = np.zeros_like(v)
    u[idx] = _f32(v[idx])
    return u


def top_k_indices(v, k):
    """The k largest |v_i|, ties broken toward the smaller index (O(d))."""
    a = np.abs(v)
    if k == 1:
        return np.array([np.argmax(a)])  # argmax returns the first (smallest) index of a tie
    idx = np.argpartition(-a, k - 1)[:k]  # (selecting at the low end stays O(d) with many ties)
    theta = a[idx].min()
    if np.count_nonzero(a >= theta) == k:  # no tie at the threshold: the selection is unique
        return idx
    above = np.flatnonzero(a > theta)
    return np.concatenate([above, np.flatnonzero(a == theta)[: k - above.size]])


def rand_k_indices(stream: Xoshiro, r: int, d: int, k: int):
    """Floyd's k distinct indices of [0, d) from the round-r stream of `stream`."""
    rng, chosen = stream.for_round(r), []
    seen = set()
    for j in range(d - k, d):
        t = rng.below(j + 1)
        if t in seen:
            t = j
        seen.add(t)
        chosen.append(t)
    return np.array(chosen, dtype=np.int64)


def _sum_in_order(a) -> float:
    """a_0 + a_1 + ... + a_{d-1} in float64, added left to right (np.cumsum is sequential;
    np.sum and np.dot sum pairwise or in SIMD lanes, another rounding: one ulp of ||v|| can
    move its float32 value by a float32 ulp, for unit-norm rows at x = 0 in particular)."""
    return float(np.cumsum(a)[-1]) if a.size else 0.0


def _norm32_up(v) -> float:
    """||v||_2 (the squares summed in index order) rounded up to float32 (so that
    s |v_i| / norm <= s), as float64."""
    n = math.sqrt(_sum_in_order(v * v))
    n32 = np.float32(n)
    if float(n32) < n:
        n32 = np.nextafter(n32, np.float32(np.inf))
    return float(n32)


def quantise(v, s: int, divisor: float, rng: Xoshiro):
    """Stochastic s-level quantisation of v (one uniform per coordinate), scaled by 1/divisor."""
    n32 = _norm32_up(v)
    if n32 == 0.0:
        return np.zeros_like(v)
    r = np.abs(v) * (s / n32)
    level = np.floor(r)
    draws = np.array([rng.uniform() for _ in range(v.size)])
    level += draws < r - level
    mag = n32 / divisor * level / s
    return np.where(v < 0.0, -mag, mag)


def scaled_sign(v):
    """(||v||_1 / d, rounded to float32) sign(v), sign(0) = +1."""
    scale = float(np.float32(_sum_in_order(np.abs(v)) / v.size))
    return np.where(v < 0.0, -scale, scale)


def quantiser_divisor(d: int, s: int, memory: bool) -> float:
    """1 + beta, beta = min(d / s^2, sqrt(d) / s), for the rescaled operator (with memory)."""
    return 1.0 + min(d / s**2, math.sqrt(d) / s) if memory else 1.0


# ---------------------------------------------------------------- Algorithm 1
class Worker:
    """Worker w's state: its shard, memory m^w (EF21: h^w), sampler and random streams."""

    def __init__(self, w: int, X, y, d: int, seed: int):
        self.w, self.X, self.y = w, X, np.asarray(y, dtype=np.float64)
        self.m = np.zeros(d)          # Mem-SGD's m^w, or EF21's h^w
        self.sampler = Sampler(self.y.size, Xoshiro.keyed(seed, w, SAMPLING))
        self.quant = Xoshiro.keyed(seed, w, QUANTISE)
        self.randk = Xoshiro.keyed(seed, w, RAND_K)


class Reference:
    """W synchronous workers and a server running Algorithm 1 (see the module docstring)."""

    def __init__(self, settings: Settings, shards, d: int):
        if settings.method not in ("memsgd", "ef21"):
            raise ValueError(f"unknown method {settings.method!r}")
        if settings.l2 not in ("worker", "server"):
            raise ValueError(f"unknown L2 placement {settings.l2!r}")
        self.cfg, self.d = settings, d
        self.workers = [Worker(w, X, y, d, settings.seed) for w, (X, y) in enumerate(shards, 1)]
        self.n = sum(wk.y.size for wk in self.workers)
        self.ef21 = settings.method == "ef21"
        self.memory = settings.memory and settings.compressor != "none"
        self.x = np.zeros(d)
        self.G = np.zeros(d)          # EF21: the aggregate (1/W) sum_w h^w as sent
        self.e = np.zeros(d)          # the server's downlink memory (downlink_k)
        self.xsum = np.zeros(d)
        self.wsum = 0.0
        self.rounds = 0

    @property
    def xbar(self):
        if self.cfg.averaging == "none" or self.wsum == 0.0:
            return self.x.copy()
        return self.xsum / self.wsum

    @property
    def memories(self):
        """Every worker's m^w (EF21: h^w), one row per worker."""
        return np.array([wk.m for wk in self.workers])

    def k_at(self, r: int) -> int:
        return self.cfg.k_at(r, self.n, len(self.workers), self.d)

    def gradient_sum(self, wk: Worker, rows):
        """sum_{i in rows} grad f_i(x) = sum_i -y_i sigma(-y_i a_i^T x) a_i + b lam x (the last
        term only with l2 = "worker"); dense rows at once, CSR rows one at a time over their
        nonzeros."""
        x, X = self.x, wk.X
        if sp.issparse(X):
            g = np.zeros(self.d)
            for i in rows:
                cols, vals = X.indices[X.indptr[i]:X.indptr[i + 1]], X.data[X.indptr[i]:X.indptr[i + 1]]
                g[cols] += -wk.y[i] * expit(-wk.y[i] * vals.dot(x[cols])) * vals
        else:
            A, y = X.take(rows, axis=0), wk.y.take(rows)
            g = (-y * expit(-y * A.dot(x))).dot(A)
        if self.cfg.l2 != "server":
            g += len(rows) * self.cfg.lam * x
        return g

    def compress(self, wk: Worker, v, r: int):
        """u = comp_r(v) for worker wk in round r, the values as sent (module docstring table)."""
        name, k = self.cfg.compressor, self.k_at(r)
        if name == "none":
            return _f32(v)
        if name == "top_k":
            return _sparse(v, top_k_indices(v, k))
        if name == "rand_k":
            return _sparse(v, rand_k_indices(wk.randk, r, self.d, k))
        if name == "sign":
            return scaled_sign(v)
        s = 1 if name == "ternary" else self.cfg.levels
        divisor = quantiser_divisor(self.d, s, self.cfg.memory or self.ef21)
        return quantise(v, s, divisor, wk.quant)

    def shrink(self, factor: float) -> None:
        """x := factor x, the server-side L2 term of step 3 (factor 1 with l2 = "worker")."""
        if self.cfg.l2 == "server":
            self.x *= factor

    def downlink(self, add, factor):
        """Steps 2'-3' (downlink_k = K): e += add; D = top-K(e) as sent; e -= D;
        x := factor x - D."""
        self.e += add
        D = _sparse(self.e, top_k_indices(self.e, self.cfg.downlink_k))
        self.e -= D
        self.shrink(factor)
        self.x -= D

    def round(self):
        """One round r: steps 1-3 of the module docstring (Mem-SGD or EF21, downlink or not)."""
        cfg, r = self.cfg, self.rounds
        t = r * cfg.batch_size
        eta, factor = cfg.eta(t), cfg.factor(t)
        sent = []
        for wk in self.workers:                                       # 1.
            g = self.gradient_sum(wk, wk.sampler.take(cfg.batch_size))
            if self.ef21:                                             # 1.1-1.2 (EF21)
                c = self.compress(wk, g - wk.m, r)
                wk.m += c
                sent.append(c)
                continue
            v = wk.m                                                  # 1.1 (v in place of m)
            v += eta * g
            u = self.compress(wk, v, r)                               # 1.2
            if self.memory:
                v -= u
            else:
                v[:] = 0.0
            sent.append(u)
        mean = sum(sent) / len(sent)                                  # 2. (0 + u_1 + u_2 ...)
        if cfg.averaging != "none":                                   # 3. (w_t x_r first)
            w = cfg.weight(t)
            self.xsum += w * self.x
            self.wsum += w
        if self.ef21:
            self.G += _f32(mean)                                      # G += P
            if cfg.downlink_k:
                self.downlink(eta * self.G, factor)                   # EF21-BC: 2'-3'
            else:
                self.shrink(factor)
                self.x -= eta * self.G
        elif cfg.downlink_k:
            self.downlink(mean, factor)                               # 2'-3', unrounded mean
        else:
            self.shrink(factor)                                       # (l2 = "server")
            self.x -= _f32(mean)
        self.rounds += 1

    def run(self, rounds: int) -> "Reference":
        for _ in range(rounds):
            self.round()
        return self
