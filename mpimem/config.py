"""Training configuration: defaults (the paper's), a TOML file, the command line; validation.

Precedence: built-in defaults < `--config FILE.toml` < command-line options. The resolved
configuration (every field, with k, lambda and the shift made concrete) is stored in RUN.h5.
Every check runs before any rank does work and fails with one line naming the setting.
"""
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field

from .compressors import COMPRESSORS, levels_from_bits
from .errors import MpimemError
from .schedule import AVERAGINGS, SCHEDULES, parse_shift

L2_PLACEMENTS = ("server", "worker")
MODES = ("sync", "async")
TOPOLOGIES = ("server", "allgather")
ASYNC_STEPS = ("full", "mean")


@dataclass
class TrainConfig:
    """Every setting of `mpimem train`; the defaults are the paper's experimental settings."""

    data: str = ""
    out: str = "RUN.h5"
    # compression
    compressor: str = "top_k"
    k: int = None
    k_fraction: float = None
    bits: int = None
    levels: int = None
    memory: bool = True
    # budget
    epochs: float = 1.0
    samples: int = None
    batch_size: int = 1
    # steps and averaging (SPEC "Step sizes and averaging")
    schedule: str = "decay"
    gamma: float = 2.0
    shift: str = "d/k"
    averaging: str = "quadratic"
    lam: float = None
    l2: str = "server"
    # system
    mode: str = "sync"
    topology: str = "server"
    async_step: str = "full"      # --mode async: server applies u_w ("full", Hogwild) or u_w/W
    downlink_k: int = None        # sync server: top-K downlink with a server memory (None: off)
    seed: int = 0
    eval_every: float = None
    quiet: bool = False
    # checkpoints (mpimem.checkpoint; docs/checkpoints.md)
    checkpoint_every: str = None
    keep_checkpoints: int = 2
    resume: str = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}


def load_toml(path: str) -> dict:
    """Settings from a TOML file (keys are the option names with '_' for '-')."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise MpimemError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise MpimemError(f"{path}: not valid TOML: {err}") from None
    table = table.get("train", table)
    unknown = sorted(set(table) - FIELDS)
    if unknown:
        raise MpimemError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return {key.replace("-", "_"): value for key, value in table.items()}


def merge(cli: dict, toml_path: str = None) -> TrainConfig:
    """defaults < TOML < command line (options left at None on the command line do not count)."""
    settings = load_toml(toml_path) if toml_path else {}
    settings.update({k: v for k, v in cli.items() if v is not None and k in FIELDS})
    return TrainConfig(**settings)


def _choice(name, value, choices):
    if value not in choices:
        raise MpimemError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got '{value}'")


def resolve(cfg: TrainConfig, n: int, d: int, workers: int) -> TrainConfig:
    """Check every setting against the data set (n rows, d features) and W workers; make k,
    lambda, the shift and the evaluation interval concrete. Raises MpimemError on the first fault."""
    _choice("compressor", cfg.compressor, COMPRESSORS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("averaging", cfg.averaging, AVERAGINGS)
    _choice("l2", cfg.l2, L2_PLACEMENTS)
    _choice("mode", cfg.mode, MODES)
    _choice("topology", cfg.topology, TOPOLOGIES)
    _choice("async_step", cfg.async_step, ASYNC_STEPS)
    if cfg.mode == "async" and cfg.topology != "server":
        raise MpimemError("--mode async needs --topology server (allgather is a synchronous collective)")
    if cfg.downlink_k is not None:
        if cfg.mode != "sync" or cfg.topology != "server":
            raise MpimemError("--downlink-k (server memory) needs the synchronous server "
                              "(--mode sync --topology server)")
        if not 1 <= cfg.downlink_k <= d:
            raise MpimemError(f"--downlink-k must satisfy 1 <= K <= d = {d}, got {cfg.downlink_k}")
    if workers < 1:
        raise MpimemError("mpimem train needs at least 2 MPI ranks (rank 0 is the server, "
                          "ranks 1..W the workers); run it with mpiexec -n W+1")
    if workers > n:
        raise MpimemError(f"{workers} workers but the data set has only n = {n} rows")
    if cfg.batch_size is None or cfg.batch_size < 1:
        raise MpimemError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.batch_size > n // workers:
        raise MpimemError(f"--batch-size {cfg.batch_size} exceeds the smallest shard "
                          f"({n // workers} rows for {workers} workers)")
    if cfg.lam is None:
        cfg.lam = 1.0 / n
    if not math.isfinite(cfg.lam) or cfg.lam < 0:
        raise MpimemError(f"--lam must be a finite number >= 0, got {cfg.lam}")
    if cfg.schedule == "decay" and cfg.lam <= 0:
        raise MpimemError("--schedule decay (eta = gamma/(lam (t+a))) needs --lam > 0")
    if not (cfg.gamma > 0 and math.isfinite(cfg.gamma)):
        raise MpimemError(f"--gamma must be > 0, got {cfg.gamma}")
    if cfg.samples is not None and cfg.samples < 1:
        raise MpimemError(f"--samples must be >= 1, got {cfg.samples}")
    if cfg.samples is None and not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        raise MpimemError(f"--epochs must be > 0, got {cfg.epochs}")
    if cfg.compressor in ("top_k", "rand_k"):
        if cfg.k is None and cfg.k_fraction is not None:
            if not 0 < cfg.k_fraction <= 1:
                raise MpimemError(f"--k-fraction must be in (0, 1], got {cfg.k_fraction}")
            cfg.k = max(1, int(round(cfg.k_fraction * d)))
        if cfg.k is None:
            cfg.k = 1
        if not 1 <= cfg.k <= d:
            raise MpimemError(f"--k must satisfy 1 <= k <= d = {d}, got k = {cfg.k}")
    else:
        cfg.k = d
    if cfg.compressor == "qsgd":
        if cfg.levels is None:
            if cfg.bits is None:
                cfg.bits = 4
            if not 2 <= cfg.bits <= 16:
                raise MpimemError(f"--bits must be in 2..16 (1 sign bit + level bits), got {cfg.bits}")
            cfg.levels = levels_from_bits(cfg.bits)
        if not 1 <= cfg.levels <= 32767:
            raise MpimemError(f"--levels must be in 1..32767, got {cfg.levels}")
    try:
        shift = parse_shift(cfg.shift, d, cfg.k, cfg.batch_size)
    except ValueError:
        raise MpimemError(f"--shift must be a number or a multiple of d/k like '5d/k', got '{cfg.shift}'") from None
    if not shift >= 0:
        raise MpimemError(f"--shift must be >= 0, got {cfg.shift}")
    if cfg.schedule == "decay" and shift == 0:
        raise MpimemError("--schedule decay needs --shift > 0 (eta_0 = gamma/(lam a))")
    cfg.shift = shift
    if cfg.eval_every is None:
        total = cfg.samples / n if cfg.samples else cfg.epochs
        cfg.eval_every = total / 10
    if not cfg.eval_every > 0:
        raise MpimemError(f"--eval-every must be > 0 epochs, got {cfg.eval_every}")
    return cfg
