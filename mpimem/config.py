"""Training configuration: defaults, a TOML file, the command line; validation.

Precedence: built-in defaults < `--config FILE.toml` < command-line options. The step settings
(schedule, gamma, shift) left unset resolve per operator and mode (mpimem.schedule.default_steps,
measured in docs/design.md); the resolved configuration (every field, with k, lambda, the steps
and the shift made concrete, plus extra["notes"]: what was chosen for the user) is stored in
RUN.h5. Every check runs before any rank does work and fails with one line naming the setting.

dump_toml writes a configuration back as TOML (`mpimem train --dump-config`, the examples in
docs/configs/ made by study_examples); scale_note is the start-up hint for data whose rows are
far from unit norm.
"""
import dataclasses
import json
import math
import numbers
import re
import tomllib
from dataclasses import dataclass, field

import numpy as np

from .compressors import COMPRESSORS, levels_from_bits, make_compressor
from .errors import MpimemError
from .schedule import (ASYNC_DEFAULT_STEPS, AVERAGINGS, DEFAULT_GAMMA, SCHEDULES, default_steps,
                       parse_shift)

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
    # checkpoints (mpimem.checkpoint; docs/checkpoints.md)
    checkpoint_every: str = None
    keep_checkpoints: int = 2
    resume: str = None
    overwrite: bool = False       # replace an existing run file (and its RUN.ckpt/ checkpoints)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
FIELDS = set(FIELD_TYPES)
NOT_IN_FILE = {"resume": "give --resume on the command line",   # actions of one launch, not
               "overwrite": "give --overwrite on the command line"}  # settings to reuse
NUMBER_OR_TEXT = {"shift", "checkpoint_every"}  # '5d/k' or 0.5, '30s' or 500: numbers allowed
TOML_TYPE = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
             str: "a string"}


def toml_type_name(value) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}
    return names.get(type(value), "date/time")


def toml_value(path: str, key: str, value):
    """`value` checked against the type of setting `key` (FIELD_TYPES): a boolean must be a TOML
    boolean, an integer an integer (not a float or boolean), a number an integer or float (made
    float), a string a string (numbers too for NUMBER_OR_TEXT, made text). MpimemError otherwise."""
    kind = FIELD_TYPES[key]
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind is str and key in NUMBER_OR_TEXT and type(value) in (int, float):
        return str(value)
    if type(value) is kind:
        return value
    raise MpimemError(f"{path}: setting '{key}' must be {TOML_TYPE[kind]}, got "
                      f"{toml_type_name(value)} {value!r}")


def load_toml(path: str) -> dict:
    """Settings from a TOML file: the [train] table if there is one, else the top level. Keys are
    the option names with '-' or '_'; every value is checked against the option's type."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise MpimemError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MpimemError(f"{path}: cannot read the config file: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise MpimemError(f"{path}: not valid TOML: {err}") from None
    table = table.get("train", table)
    if not isinstance(table, dict):
        raise MpimemError(f"{path}: 'train' must be a table ([train]), got {toml_type_name(table)}")
    settings = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in settings:
            raise MpimemError(f"{path}: setting '{name}' given twice ('-' and '_' spellings)")
        settings[name] = value
    unknown = sorted(set(settings) - FIELDS)
    if unknown:
        raise MpimemError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    for name in settings:
        if name in NOT_IN_FILE:
            raise MpimemError(f"{path}: setting '{name}' cannot be set in a config file; "
                              f"{NOT_IN_FILE[name]}")
    return {name: toml_value(path, name, value) for name, value in settings.items()}


def merge(cli: dict, toml_path: str = None) -> TrainConfig:
    """defaults < TOML < command line (options left at None on the command line do not count)."""
    settings = load_toml(toml_path) if toml_path else {}
    settings.update({k: v for k, v in cli.items() if v is not None and k in FIELDS})
    return TrainConfig(**settings)


def _choice(name, value, choices):
    if value not in choices:
        raise MpimemError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got '{value}'")


ZERO_INTERVAL = re.compile(r"0*(\.0*)?\s*(s|sec|m|min|h)?")


def check_checkpoints(cfg: TrainConfig) -> None:
    """--checkpoint-every and --keep-checkpoints, as mpimem.checkpoint reads them: a zero
    interval ('0', '0s', 0.0 in TOML) is refused with the spelling that turns checkpoints off
    ('off': none at all, not even the final one), never read as 'off'."""
    from .checkpoint import parse_every

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
    """k (top_k/rand_k; d for the others) and the QSGD levels."""
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
        if cfg.compressor not in ("top_k", "rand_k"):
            raise MpimemError(f"--k-warmup grows k: it needs --compressor top_k or rand_k, "
                              f"not {cfg.compressor}")
        if cfg.mode != "sync":
            raise MpimemError("--k-warmup needs --mode sync (every message of a round has the "
                              "round's k)")


def contraction_rounds(cfg: TrainConfig, d: int) -> float:
    """1/delta for the operator as a delta-contraction, E||C(v) - v||^2 <= (1 - delta)||v||^2: the
    default shift a in rounds (the paper's a = d/k generalised). top-k/rand-k: d/k; rescaled
    QSGD/ternary Q(v)/(1+beta): 1 + beta; scaled sign (delta = ||v||_1^2/(d ||v||^2), between
    1/d and 1, data-dependent): ternary's 1 + sqrt(d), measured; none: 1."""
    if cfg.compressor in ("top_k", "rand_k"):
        return d / cfg.k
    if cfg.compressor in ("qsgd", "ternary", "sign"):
        name = "ternary" if cfg.compressor == "sign" else cfg.compressor
        return 1.0 + make_compressor(name, d, levels=cfg.levels).beta
    return 1.0


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


# ---------------------------------------------------------------------- writing TOML
TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quote, backslash and the control characters
    (U+0000..U+001F, U+007F) escaped, everything else literal (UTF-8). A lone surrogate (an
    undecodable byte of a file name) has no TOML spelling: MpimemError."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise MpimemError(f"{text!r} cannot be written as TOML (not valid Unicode)")
    out = (TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ord(ch) == 0x7F
                                    else ch) for ch in text)
    return '"' + "".join(out) + '"'


def toml_scalar(value) -> str:
    """A bool, int, float or str as a TOML value; a float by repr, which tomllib reads back
    to the same double (inf and nan included)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))   # not numpy's repr, 'np.float64(...)'
    return toml_string(value)


def toml_table(settings: dict, comments=()) -> str:
    """`settings` (name: bool/int/float/str) as a [train] table, `comments` as '# ' lines above."""
    lines = [f"# {c}" for c in comments] + ["[train]"]
    lines += [f"{name} = {toml_scalar(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def dump_toml(cfg: TrainConfig, comments=()) -> str:
    """The settings of `cfg` as TOML that load_toml reads back to the same values: every field
    in declaration order except those a file cannot set (NOT_IN_FILE), `extra`, and the ones
    left at None (their defaults)."""
    settings = {name: getattr(cfg, name) for name in FIELD_TYPES
                if name not in NOT_IN_FILE and getattr(cfg, name) is not None}
    return toml_table(settings, comments)


def study_examples(path: str) -> dict:
    """{file name: TOML text}: one example config per method of the study file `path`, named
    STUDY-LABEL.toml, holding the settings of that method's runs on its first data set as
    mpimem.studyplan makes them ([train] < method < the data set's epochs, the study's
    eval_every and mode; seed 0) and data = the staged data/NAME.h5. docs/configs/ holds them."""
    from .studyplan import load_study, train_options

    study = load_study(path)
    name, workers = study["study"]["name"], study["study"].get("workers", [1])
    examples = {}
    for method in study["methods"]:
        ds = method.get("datasets", study["study"]["datasets"])[0]
        opts = train_options(study, method, study["datasets"][ds], 0, {})
        settings = {"data": f"data/{ds}.h5"}
        settings.update((key, toml_value(path, key, value)) for key, value in opts.items())
        file = f"{name}-{method['label']}.toml"
        examples[file] = toml_table(settings, [
            f"Study '{name}', method '{method['label']}' on {ds} (jobs/studies/{name}.toml),",
            "written by mpimem.config.study_examples. Run with W workers (the study's W: "
            f"{', '.join(map(str, workers))}):",
            f"  mpiexec -n W+1 mpimem train --config docs/configs/{file} [DATA.h5] [OPTIONS]",
            "options given on the command line override these settings."])
    return examples


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
