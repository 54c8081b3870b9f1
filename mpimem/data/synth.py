"""`mpimem data synth`: look-alikes of the paper's data sets, generated chunk by chunk.

Both kinds have rows of unit Euclidean norm and labels from a noisy linear model

    b_i = sign(a_i^T w + sigma * e_i),   e_i ~ N(0, 1),

with a fixed ground truth w: a Gaussian weight on every feature plus a few strong features
(so the optimum is not trivial and top-k has something to find). For RCV1-like data the
weights fall with word rarity, w_j ~ N(0, 1) ((rank_j + 30)/30)^-1/2, and the strong features are
among the 1,000 most frequent words (topics are carried by common words; a weight on a word
seen a handful of times could not be learned at lambda = 1/n). sigma is
NOISE * std(a^T w), the std measured on a pilot chunk, so the problem is never separable;
NOISE is set so that the optimum's training accuracy lands near the paper's data sets
(about 89% epsilon-like, about 96% RCV1-like at full size; smaller n fit more closely).

- epsilon-like: d = 2,000 dense, stored float32; a_i = normalise(s * g_i), g_i ~ N(0, I)
  with feature scales s_j = exp(N(0, 0.5^2)).
- RCV1-like: d = 47,236 CSR, stored float32, about 74 nonzeros a row (0.16%): a row draws
  its length from a log-normal law and its words with replacement from a Zipf-like
  popularity p_j ~ (rank_j + 30)^-1.1; repeated words make the term frequency, values are
  tf-idf (1 + log tf) log(1/p_j), then the row is normalised.

Chunk c of CHUNK_ROWS rows uses its own stream SeedSequence(seed, spawn_key=(1, c)), so a
set is deterministic per (kind, seed, d) and a smaller n gives a prefix of a larger one.
Memory is one chunk at a time, whatever n.
"""
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from mpimem.data.h5write import CSRWriter, DenseWriter, atomic_h5, check_data_output, write_header

CHUNK_ROWS = 4096
SYNTH_VERSION = 2


@dataclass(frozen=True)
class Kind:
    """The paper's shape of one data set and the knobs of its look-alike."""

    n: int
    d: int
    storage: str
    noise: float          # sigma / std(a^T w)
    strong: int           # number of strong features in w
    strong_weight: float  # their |weight|, relative to the N(0, 1) weights of the rest
    w_decay: float = 0.0  # RCV1-like: w_j scaled by ((popularity rank_j + 30) / 30)^-w_decay
    strong_among: int = 0  # RCV1-like: strong features drawn from this many most frequent words


KINDS = {
    "epsilon": Kind(n=400_000, d=2_000, storage="dense", noise=0.36, strong=20, strong_weight=4.0),
    "rcv1": Kind(n=677_399, d=47_236, storage="csr", noise=0.12, strong=200, strong_weight=4.0,
                 w_decay=0.5, strong_among=1000),
}
RCV1_LOG_LENGTH = (np.log(66.0), 0.6)   # mean and std of log(words drawn per row)


def _stream(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class _Generator:
    """Rows of one look-alike: `rows(rng, count)` -> (dense rows or CSR pieces), and w."""

    def __init__(self, like, d, seed):
        self.kind, self.d = KINDS[like], d
        rng = _stream(seed, 0)
        if self.kind.storage == "dense":
            self.scale = np.exp(rng.normal(0.0, 0.5, d))
        else:
            rank = rng.permutation(d)
            popularity = (rank + 30.0) ** -1.1
            self.p = popularity / popularity.sum()
            self.cdf = np.cumsum(self.p)
            self.idf = np.log(1.0 / self.p)
        self.w = rng.normal(0.0, 1.0, d)
        candidates = d
        if self.kind.storage == "csr":
            self.w *= ((rank + 30.0) / 30.0) ** -self.kind.w_decay
            candidates = np.argsort(rank)[: min(d, self.kind.strong_among)]
        strong = rng.choice(candidates, size=min(d, self.kind.strong), replace=False)
        self.w[strong] = self.kind.strong_weight * rng.choice([-1.0, 1.0], size=strong.size)
        pilot = self.rows(_stream(seed, 2), CHUNK_ROWS)
        self.sigma = self.kind.noise * float(np.std(self._scores(pilot)))

    def rows(self, rng, count):
        """`count` unit-norm rows: a float64 array (dense) or (indptr, indices, values)."""
        if self.kind.storage == "dense":
            X = rng.standard_normal((count, self.d)) * self.scale
            return X / np.linalg.norm(X, axis=1, keepdims=True)
        lengths = np.maximum(1, rng.lognormal(*RCV1_LOG_LENGTH, count).astype(np.int64))
        words = np.minimum(np.searchsorted(self.cdf, rng.random(lengths.sum())), self.d - 1)
        key, tf = np.unique(np.repeat(np.arange(count), lengths) * self.d + words,
                            return_counts=True)
        row, indices = np.divmod(key, self.d)
        values = (1.0 + np.log(tf)) * self.idf[indices]
        norms = np.sqrt(np.bincount(row, values**2, minlength=count))
        values /= norms[row]
        indptr = np.zeros(count + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=count), out=indptr[1:])
        return indptr, indices, values

    def _scores(self, rows):
        """a_i^T w for every row."""
        if self.kind.storage == "dense":
            return rows @ self.w
        indptr, indices, values = rows
        row = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
        return np.bincount(row, values * self.w[indices], minlength=indptr.size - 1)

    def labels(self, rng, rows):
        """b_i = sign(a_i^T w + sigma e_i) in {-1, +1}."""
        scores = self._scores(rows)
        noisy = scores + self.sigma * rng.standard_normal(scores.size)
        return np.where(noisy > 0, 1, -1).astype(np.int8)


def synthesize(out, like: str, n: int | None = None, seed: int = 0, d: int | None = None,
               overwrite: bool = False) -> dict:
    """Write a look-alike of data set `like` ("epsilon" or "rcv1") to `out`; a summary dict.
    An existing `out` is replaced only with overwrite (mpimem.outputs), checked first."""
    check_data_output(out, overwrite)
    kind = KINDS[like]
    n, d = n or kind.n, d or kind.d
    gen = _Generator(like, d, seed)
    params = dict(like=like, n=n, d=d, seed=seed, synth_version=SYNTH_VERSION)
    with atomic_h5(out, overwrite) as f:
        writer = DenseWriter(f, d, np.float32) if kind.storage == "dense" else \
            CSRWriter(f, np.float32)
        for chunk, start in enumerate(range(0, n, CHUNK_ROWS)):
            rng = _stream(seed, 1, chunk)
            rows = gen.rows(rng, CHUNK_ROWS)          # always whole chunks: n only truncates
            labels = gen.labels(rng, rows)
            keep = min(CHUNK_ROWS, n - start)
            if kind.storage == "dense":
                writer.append(rows[:keep].astype(np.float32), labels[:keep])
            else:
                indptr, indices, values = rows
                end = indptr[keep]
                writer.append(indptr[:keep + 1], indices[:end], values[:end].astype(np.float32),
                              labels[:keep])
        write_header(f, writer, d=d, source=f"synthetic:{like}", source_bytes=0,
                     source_sha256=hashlib.sha256(json.dumps(params, sort_keys=True).encode())
                     .hexdigest(), seed=seed, label_noise=kind.noise)
    return dict(params, nnz=writer.nnz, storage=kind.storage)
