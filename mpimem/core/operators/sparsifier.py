"""What top-k and rand-k share: the parameter k, 1 <= k <= d (--k, --k-fraction), and the
settings, labels and step defaults that follow from it (SPEC "Compression operators": both are
k-contractions, delta = k/d)."""
from mpimem.core.operators.base import Compressor
from mpimem.errors import MpimemError


class Sparsifier(Compressor):
    """Base of the operators that send k coordinates of v."""

    sparsifier = True

    @classmethod
    def check_k(cls, d, k):
        if k is None or not 1 <= k <= d:
            raise MpimemError(f"--k must satisfy 1 <= k <= d = {d} for {cls.name}, got {k}")

    @classmethod
    def resolve(cls, cfg, d):
        """k from --k, else --k-fraction of d, else 1."""
        if cfg.k is None and cfg.k_fraction is not None:
            if not 0 < cfg.k_fraction <= 1:
                raise MpimemError(f"--k-fraction must be in (0, 1], got {cfg.k_fraction}")
            cfg.k = max(1, int(round(cfg.k_fraction * d)))
        if cfg.k is None:
            cfg.k = 1
        if not 1 <= cfg.k <= d:
            raise MpimemError(f"--k must satisfy 1 <= k <= d = {d}, got k = {cfg.k}")

    @classmethod
    def contraction_rounds(cls, cfg, d):
        """d/k (the paper's shift a = d/k)."""
        return d / cfg.k

    @classmethod
    def label(cls, cfg, bits):
        """"top-1", "rand-10"."""
        return f"{cls.name[:-2]}-{cfg.get('k')}"
