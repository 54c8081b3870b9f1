"""Training configuration resolved for a world: the settings (TrainConfig), their checks, and
what depends on the data and the world (k, lambda, the steps, the shift).

The flow is one way: mpimem.cli.options parses the user's TOML and command line into a
TrainConfig (defaults < `--config FILE.toml` < command-line options); `resolve` here makes it
concrete for n, d and W (the step settings left unset resolve per operator and mode,
mpimem.core.schedule.default_steps, measured in docs/defaults.md) and checks every setting
before any rank does work (one line naming the setting); mpimem.run.algorithm turns the
result into the arrays of the compiled code (core). The resolved configuration (every field,
plus extra["notes"]: what was chosen for the user) is stored in RUN.h5.

scale_note is the start-up hint for data whose rows are far from unit norm.
"""
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from mpimem.core.operators import COMPRESSORS, OPERATORS, SPARSIFIERS
from mpimem.errors import MpimemError
from mpimem.core.schedule import (ASYNC_DEFAULT_STEPS, AVERAGINGS, DEFAULT_GAMMA, SCHEDULES,
                                  default_steps, parse_shift)

L2_PLACEMENTS = ("server", "worker")
MODES = ("sync", "async")
TOPOLOGIES = ("server", "allgather", "sparse-allreduce", "hierarchical")


def has_server(topology: str) -> bool:
    """Whether rank 0 is a server (mpiexec -n W+1); the other topologies make every rank a
    worker (mpiexec -n W)."""
    return topology == "server"
ASYNC_STEPS = ("full", "mean")
METHODS = ("memsgd", "ef21")


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
    method: str = "memsgd"        # memsgd (Algorithm 1) or ef21 (docs/spec.md "EF21")
    k_warmup: int = 0             # epochs from dense to k (top_k/rand_k; 0: off)
    # budget
    epochs: float = 1.0
    samples: int = None
    batch_size: int = 1
    # steps and averaging (SPEC "Step sizes and averaging"); None: the operator's default
    schedule: str = None
    gamma: float = None
    shift: str = None
    averaging: str = "quadratic"
    lam: float = None
    l2: str = "worker"
    # system
    mode: str = "sync"
    topology: str = "server"
    async_step: str = "full"      # --mode async: server applies u_w ("full", Hogwild) or u_w/W
    downlink_k: int = None        # sync server: top-K downlink with a server memory (None: off)
    group_size: int = None        # --topology hierarchical: ranks per group (None: per node)
    seed: int = 0
    eval_every: float = None
    quiet: bool = False
    # checkpoints (mpimem.run.checkpoint; docs/checkpoints.md)
    checkpoint_every: str = None
    keep_checkpoints: int = 2
    resume: str = None
    overwrite: bool = False       # replace an existing run file (and its RUN.ckpt/ checkpoints)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
FIELDS = set(FIELD_TYPES)


def _choice(name, value, choices):
    if value not in choices:
        raise MpimemError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got '{value}'")


ZERO_INTERVAL = re.compile(r"0*(\.0*)?\s*(s|sec|m|min|h)?")


def parse_every(text):
    """(rounds, seconds) from '500', '30s', '5m', '1h'; (None, None) for 'off'/'0'."""
    s = str(text).strip().lower()
    if s in ("off", "0", "none", "no"):
        return None, None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(s|sec|m|min|h)?", s)
    if not m:
        raise MpimemError(f"--checkpoint-every must be a number of rounds (500) or a time "
                          f"(30s, 5m, 1h) or 'off', got '{text}'")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if value != int(value) or value < 1:
            raise MpimemError(f"--checkpoint-every: rounds must be a whole number >= 1, got '{text}'")
        return int(value), None
    seconds = value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise MpimemError(f"--checkpoint-every must be > 0, got '{text}'")
    return None, seconds


def check_checkpoints(cfg: TrainConfig) -> None:
    """--checkpoint-every and --keep-checkpoints, as mpimem.run.checkpoint reads them: a zero
    interval ('0', '0s', 0.0 in TOML) is refused with the spelling that turns checkpoints off
    ('off': none at all, not even the final one), never read as 'off'."""

    every = cfg.checkpoint_every
    if every is not None:
        text = str(every).strip().lower()
        if ZERO_INTERVAL.fullmatch(text) and any(ch == "0" for ch in text):
            raise MpimemError(f"--checkpoint-every must be > 0, got '{every}' (a number of "
                              f"rounds like 500 or a time like 30s; --checkpoint-every off "
                              f"writes no checkpoints, not even the final one)")
        parse_every(text)
    if cfg.keep_checkpoints is None or cfg.keep_checkpoints < 1:
        raise MpimemError(f"--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}")


def check_settings(cfg: TrainConfig) -> None:
    """The checks that need no data set and no W (run first by resolve, so that `train` and
    `--dump-config` refuse the same; the study planner runs them before any run starts):
    budget, batch size, evaluation interval, checkpoints, the k warm-up, lambda and gamma when
    given. MpimemError on the first fault."""
    if cfg.batch_size is None or cfg.batch_size < 1:
        raise MpimemError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.samples is not None and cfg.samples < 1:
        raise MpimemError(f"--samples must be >= 1, got {cfg.samples}")
    if cfg.samples is None and not (cfg.epochs is not None and cfg.epochs > 0
                                    and math.isfinite(cfg.epochs)):
        raise MpimemError(f"--epochs must be > 0 and finite, got {cfg.epochs}")
    if cfg.eval_every is not None and not cfg.eval_every > 0:
        raise MpimemError(f"--eval-every must be > 0 epochs, got {cfg.eval_every}")
    check_checkpoints(cfg)
    if cfg.k_warmup is None or cfg.k_warmup < 0:
        raise MpimemError(f"--k-warmup must be a whole number of epochs >= 0, got {cfg.k_warmup}")
    if cfg.lam is not None and not (math.isfinite(cfg.lam) and cfg.lam >= 0):
        raise MpimemError(f"--lam must be a finite number >= 0, got {cfg.lam}")
    if cfg.gamma is not None and not (cfg.gamma > 0 and math.isfinite(cfg.gamma)):
        raise MpimemError(f"--gamma must be > 0, got {cfg.gamma}")


def resolve(cfg: TrainConfig, n: int, d: int, workers: int) -> TrainConfig:
    """Check every setting against the data set (n rows, d features) and W workers; make k,
    lambda, the steps, the shift and the evaluation interval concrete. Raises MpimemError on the
    first fault. `mpimem train` and `--dump-config` both call it: one validation for both."""
    check_settings(cfg)
    _choice("compressor", cfg.compressor, COMPRESSORS)
    _choice("averaging", cfg.averaging, AVERAGINGS)
    _choice("l2", cfg.l2, L2_PLACEMENTS)
    _choice("mode", cfg.mode, MODES)
    _choice("topology", cfg.topology, TOPOLOGIES)
    _choice("async_step", cfg.async_step, ASYNC_STEPS)
    _choice("method", cfg.method, METHODS)
    _check_system(cfg, n, d, workers)
    _resolve_operator(cfg, d)
    _check_method(cfg)
    _resolve_steps(cfg, n, d)
    if cfg.eval_every is None:
        total = cfg.samples / n if cfg.samples else cfg.epochs
        cfg.eval_every = total / 10
    if not cfg.eval_every > 0:
        raise MpimemError(f"--eval-every must be > 0 epochs, got {cfg.eval_every}")
    return cfg


def _check_system(cfg: TrainConfig, n: int, d: int, workers: int) -> None:
    """Mode, topology, downlink, W and the budget against the data set."""
    if cfg.mode == "async" and cfg.topology != "server":
        raise MpimemError(f"--mode async needs --topology server ({cfg.topology} is a "
                          "synchronous collective)")
    if cfg.group_size is not None:
        if cfg.topology != "hierarchical":
            raise MpimemError("--group-size needs --topology hierarchical")
        if not 1 <= cfg.group_size <= workers:
            raise MpimemError(f"--group-size must satisfy 1 <= G <= W = {workers}, got "
                              f"{cfg.group_size}")
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
    if cfg.samples is not None and cfg.samples < 1:
        raise MpimemError(f"--samples must be >= 1, got {cfg.samples}")
    if cfg.samples is None and not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        raise MpimemError(f"--epochs must be > 0 and finite, got {cfg.epochs}")


def _resolve_operator(cfg: TrainConfig, d: int) -> None:
    """The operator's settings made concrete by the operator (mpimem.core.operators): k
    (top_k/rand_k; d for the others) and the QSGD levels."""
    OPERATORS[cfg.compressor].resolve(cfg, d)


def _check_method(cfg: TrainConfig) -> None:
    """EF21 and the k warm-up against the mode and operator (docs/spec.md "EF21")."""
    if cfg.method == "ef21":
        if cfg.mode != "sync":
            raise MpimemError("--method ef21 needs --mode sync (EF21's server estimate G is "
                              "the mean of the workers' estimates of one round)")
        if not cfg.memory:
            raise MpimemError("--method ef21 keeps each worker's gradient estimate by "
                              "definition: --no-memory is for --method memsgd")
    if cfg.k_warmup is None or cfg.k_warmup < 0:
        raise MpimemError(f"--k-warmup must be a whole number of epochs >= 0, got {cfg.k_warmup}")
    if cfg.k_warmup:
        if not OPERATORS[cfg.compressor].sparsifier:
            raise MpimemError(f"--k-warmup grows k: it needs --compressor "
                              f"{' or '.join(SPARSIFIERS)}, not {cfg.compressor}")
        if cfg.mode != "sync":
            raise MpimemError("--k-warmup needs --mode sync (every message of a round has the "
                              "round's k)")


def contraction_rounds(cfg: TrainConfig, d: int) -> float:
    """1/delta for the operator as a delta-contraction, E||C(v) - v||^2 <= (1 - delta)||v||^2: the
    default shift a in rounds (the paper's a = d/k generalised). top-k/rand-k: d/k; rescaled
    QSGD/ternary Q(v)/(1+beta): 1 + beta; scaled sign (delta = ||v||_1^2/(d ||v||^2), between
    1/d and 1, data-dependent): ternary's 1 + sqrt(d), measured; none: 1. Each operator's
    contraction_rounds (mpimem.core.operators)."""
    return OPERATORS[cfg.compressor].contraction_rounds(cfg, d)


EF21_MULTIPLE = 4    # EF21's default gamma in units of its theoretical step (docs/spec.md "EF21")


def ef21_gamma(cfg: TrainConfig, d: int) -> float:
    """EF21's default gamma per sample: EF21_MULTIPLE times the theoretical step of Richtarik,
    Sokolov, Fatkhullin (2021, Theorem 1) gamma_th = 1 / (L (1 + sqrt(beta / theta))),
    theta = 1 - sqrt(1 - alpha), beta = (1 - alpha) / theta, alpha = 1 / contraction_rounds
    (k/d for top-k), L = 1/4 + lam (unit-norm rows), divided by b because eta_t multiplies the
    sum of b gradients. The schedule is bottou: eta_t = gamma / (1 + gamma lam t)."""
    alpha = 1.0 / contraction_rounds(cfg, d)
    if alpha >= 1.0:
        ratio = 0.0
    else:
        theta = 1.0 - math.sqrt(1.0 - alpha)
        ratio = math.sqrt((1.0 - alpha) / theta / theta)
    smooth = 0.25 + cfg.lam
    return EF21_MULTIPLE / (smooth * (1.0 + ratio)) / cfg.batch_size


def _resolve_steps(cfg: TrainConfig, n: int, d: int) -> None:
    """lambda, schedule, gamma and shift: unset ones take the operator's default (or, under
    --mode async with neither schedule nor gamma set, the paper's asynchronous setting, with a
    note in extra["notes"] that rank 0 prints at start)."""
    if cfg.lam is None:
        cfg.lam = 1.0 / n
    if not math.isfinite(cfg.lam) or cfg.lam < 0:
        raise MpimemError(f"--lam must be a finite number >= 0, got {cfg.lam}")
    if cfg.schedule is None and cfg.gamma is None and cfg.method == "ef21":
        cfg.schedule, cfg.gamma = "bottou", ef21_gamma(cfg, d)
    if cfg.schedule is None and cfg.gamma is None:
        schedule, gamma = default_steps(cfg.compressor, cfg.memory)
        if cfg.mode == "async" and (schedule, gamma) != ASYNC_DEFAULT_STEPS:
            schedule, gamma = ASYNC_DEFAULT_STEPS
            cfg.extra.setdefault("notes", []).append(
                f"--mode async: steps {schedule} gamma = {gamma:g} (the paper's asynchronous "
                f"setting; give --schedule/--gamma to choose others)")
        cfg.schedule, cfg.gamma = schedule, gamma
    elif cfg.schedule is None:
        cfg.schedule = default_steps(cfg.compressor, cfg.memory)[0]
    _choice("schedule", cfg.schedule, SCHEDULES)
    if cfg.gamma is None:
        cfg.gamma = DEFAULT_GAMMA[cfg.schedule]
    if cfg.schedule == "decay" and cfg.lam <= 0:
        raise MpimemError("--schedule decay (eta = gamma/(lam (t+a))) needs --lam > 0")
    if not (cfg.gamma > 0 and math.isfinite(cfg.gamma)):
        raise MpimemError(f"--gamma must be > 0, got {cfg.gamma}")
    if cfg.shift is None:
        shift = contraction_rounds(cfg, d) * cfg.batch_size
    else:
        try:
            shift = parse_shift(cfg.shift, d, cfg.k, cfg.batch_size)
        except ValueError:
            raise MpimemError(f"--shift must be a number or a multiple of d/k like '5d/k', "
                              f"got '{cfg.shift}'") from None
    if not shift >= 0:
        raise MpimemError(f"--shift must be >= 0, got {cfg.shift}")
    if cfg.schedule == "decay" and shift == 0:
        raise MpimemError("--schedule decay needs --shift > 0 (eta_0 = gamma/(lam a))")
    cfg.shift = shift


# ---------------------------------------------------------------------- scale hint
NORM_RANGE = (0.5, 2.0)   # mean row norm the default steps are fine with (squared: 0.25..4)


def row_norm_sum(X) -> float:
    """sum_i ||a_i||_2 over the rows of a dense array or a scipy CSR matrix (float64 sums)."""
    if hasattr(X, "indptr"):
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        squares = np.bincount(rows, np.square(X.data, dtype=np.float64), minlength=X.shape[0])
    else:
        squares = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    return float(np.sqrt(squares).sum())


def scale_note(mean_norm: float):
    """The start-up note when the mean row norm is outside NORM_RANGE (the default steps,
    gamma/(lam (t+a)) with gamma = 2, assume ||a_i|| ~ 1: f's smoothness grows with ||a_i||^2,
    and raw LIBSVM features diverge), else None."""
    if NORM_RANGE[0] <= mean_norm <= NORM_RANGE[1]:
        return None
    return (f"rows have mean norm {mean_norm:.3g} (not ~1): the default steps assume unit-norm "
            f"rows; normalise the data (mpimem data convert --normalize) or lower --gamma")
