"""The base of every compression operator (the interface: mpimem.core.operators)."""
import numpy as np

from mpimem.core import layout as L


class Compressor:
    """Base: the operator's parameters (its slots of P, mpimem.core.layout) and its scratch arrays
    (`scratch`: selections, heaps, rand-k stream bases); no state of the algorithm. The class
    attributes and classmethods are what the settings, labels and commands read (the operator
    table of mpimem.core.operators); the defaults here are those of a dense operator without
    options."""

    name = "?"
    code = -1              # its op code, P[P_OP]: the branch of mpimem.core.step's dispatch
    sparsifier = False     # sends k coordinates: takes --k / --k-fraction and --k-warmup
    quantiser = False      # its label and `mpimem info` name the bits per entry
    takes_levels = False   # takes --bits / --levels (QSGD's s)
    keeps_memory = True    # error feedback applies (plain SGD has none)
    # (schedule, gamma) when neither --schedule nor --gamma is given: with memory, without
    # (mpimem.core.schedule.DEFAULT_STEPS, measured in docs/design.md "Default steps")
    steps = (("decay", 2.0), ("decay", 2.0))
    k = 0
    levels, bits, divisor = 0, 0, 1.0

    def __init__(self, d: int):
        self.d = d
        self.sel = np.zeros(1, np.int64)
        self.hkey, self.hidx = np.zeros(1), np.zeros(1, np.int64)
        self.floyd_mark = np.zeros(0, np.uint8)
        self.bases = np.zeros((1, 4), np.uint64)

    # ------------------------------------------------------------ from the settings
    @classmethod
    def build(cls, d: int, k=None, levels=None, memory=True, seed=0) -> "Compressor":
        """The operator for dimension d (mpimem.core.operators.make_compressor); MpimemError
        for impossible settings."""
        return cls(d)

    @classmethod
    def resolve(cls, cfg, d: int) -> None:
        """Make the operator's settings of a TrainConfig concrete (k = d for those without k);
        MpimemError naming the setting on the first fault (mpimem.run.config.resolve)."""
        cfg.k = d

    @classmethod
    def contraction_rounds(cls, cfg, d: int) -> float:
        """1/delta of the operator as a delta-contraction, E||C(v) - v||^2 <= (1 - delta)||v||^2
        (mpimem.run.config.contraction_rounds); 1 for the identity."""
        return 1.0

    @classmethod
    def bits_per_entry(cls, cfg: dict, d: int):
        """Bits per entry on the wire, for the quantisers' labels; None for the others."""
        return None

    @classmethod
    def label(cls, cfg: dict, bits) -> str:
        """The operator and its size in a run's label (mpimem.run.runlabel.compressor_label;
        bits: bits_per_entry, None when unknown)."""
        return str(cls.name)

    # ------------------------------------------------------------ the wire
    def max_message_bytes(self) -> int:
        raise NotImplementedError

    def fixed_size(self, every_coordinate: bool, memory: bool) -> bool:
        """Whether every message has max_message_bytes() (mpimem.run.algorithm's fixed sizes):
        every_coordinate when each round changes every coordinate of v (dense rows, or the L2
        term on the worker); memory: the error memory is on."""
        return True

    def fill_params(self, P: np.ndarray) -> np.ndarray:
        """Write the operator's slots of P (mpimem.core.layout) and return P."""
        P[L.P_OP] = self.code
        P[L.P_D] = self.d
        P[L.P_K] = self.k
        P[L.P_LEVELS], P[L.P_BITS], P[L.P_DIVISOR] = self.levels, self.bits, self.divisor
        P[L.P_MSG_BYTES] = self.max_message_bytes()
        P[L.P_MEMORY] = 1.0
        return P

    def scratch(self, workers: int = 1) -> tuple:
        """The scratch tuple `cs` of mpimem.core.step (rand-k stream bases for workers 1..workers)."""
        return self.sel, self.hkey, self.hidx, self.floyd_mark, self.bases
