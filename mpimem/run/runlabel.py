"""What a run is, read from its run file: a label saying what was sent, its data set, the
settings that tell runs apart, whether it converged (shared by `mpimem plot`, `mpimem compare`
and analysis/figures.py).

A label names what went over the wire: the compressor with its k, or QSGD's levels s and the
bits per entry it packed; memory on or off (no memory word for plain SGD, which sends x
uncompressed), or "EF21" / "EF21-BC" for --method ef21 (its state is not an optional memory);
and, when not the default, the k warm-up, mode, topology (and its group size), downlink top-K
and L2 placement.
"""
import json
import math
import os

import h5py
import numpy as np

from mpimem.core.operators import OPERATORS

DEFAULTS = {"mode": "sync", "topology": "server", "group_size": None, "downlink_k": None,
            "l2": "worker"}
# settings of a launch, not of the training: never "what differs" between two runs
NOT_SETTINGS = {"out", "quiet", "resume", "overwrite", "checkpoint_every", "keep_checkpoints",
                "extra"}


def keeps_memory(cfg: dict) -> bool:
    """Whether the run's operator has an error memory at all (plain SGD has none); an operator
    this version does not know counts as having one."""
    op = OPERATORS.get(cfg.get("compressor"))
    return op is None or op.keeps_memory


def memory_ran(cfg: dict):
    """The error memory as it ran: the setting, except that compressor none has none
    (mpimem.run.algorithm.Algorithm); None when unknown."""
    if not isinstance(cfg.get("memory"), bool):
        return None
    return cfg["memory"] and keeps_memory(cfg)


def bits_per_entry(cfg: dict, d):
    """Bits per entry on the wire of QSGD/ternary with s levels (1 sign bit + ceil(log2(s+1))
    level bits, as mpimem.core.operators.quantiser packs them; each message adds a float32 norm);
    None for the other operators or when unknown."""
    op = OPERATORS.get(cfg.get("compressor"))
    if op is None or not isinstance(d, (int, np.integer)):
        return None
    return op.bits_per_entry(cfg, int(d))


def compressor_label(cfg: dict, d: int) -> str:
    """The operator and its size (its label, mpimem.core.operators): "SGD", "top-1", "rand-10",
    "QSGD s=256 (10 bits/entry)"."""
    comp = cfg.get("compressor", "?")
    op = OPERATORS.get(comp)
    return str(comp) if op is None else op.label(cfg, bits_per_entry(cfg, d))


def run_label(cfg: dict, d: int) -> str:
    """What a run sent: the operator, memory on/off (not for SGD) or EF21 / EF21-BC, then the
    non-default k warm-up, mode, topology, group size, downlink top-K and L2 placement,
    comma-separated."""
    parts = [compressor_label(cfg, d)]
    if cfg.get("method", "memsgd") == "ef21":
        parts.append("EF21-BC" if cfg.get("downlink_k") else "EF21")
    elif keeps_memory(cfg):
        parts.append("memory" if cfg.get("memory", True) else "no memory")
    if cfg.get("k_warmup"):
        parts.append(f"k warm-up {cfg['k_warmup']} epochs")
    for key, default in DEFAULTS.items():
        value = cfg.get(key, default)
        if value != default:
            parts.append(f"downlink top-{value}" if key == "downlink_k" else
                         f"groups of {value}" if key == "group_size" else f"{key} {value}")
    return ", ".join(parts)


def differing_settings(settings: list) -> list:
    """The keys whose values are not the same in every dict of `settings` (a missing key counts
    as a value), in sorted order; launch options (NOT_SETTINGS) never count."""
    keys = sorted(set().union(*settings) - NOT_SETTINGS) if settings else []
    return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]


def synthetic_of(attrs: dict, meta: dict):
    """True/False when it is known whether the run's data set is a synthetic look-alike, else
    None: the study's meta.json says so (`synthetic`); otherwise the data file named by the run
    file, when it is still there, says so by its `source` attribute ("synthetic:<like>")."""
    if "synthetic" in meta:
        return bool(meta["synthetic"])
    path = attrs.get("dataset")
    if not path or not os.path.exists(str(path)):
        return None
    try:
        with h5py.File(str(path), "r", locking=False) as h5:
            source = h5.attrs.get("source", "")
    except OSError:
        return None
    source = source.decode() if isinstance(source, bytes) else str(source)
    return source.startswith("synthetic:")


def data_label(name: str, attrs: dict, meta: dict) -> str:
    """A data set's name with its size, and "synthetic" for a generated look-alike:
    "epsilon (synthetic, n=400, d=20)"; "(..., n=?, ...)" where the run file lacks a size."""
    synth = synthetic_of(attrs, meta)
    kind = {True: "synthetic, ", False: "", None: "synthetic or real: unknown, "}[synth]
    return f"{name} ({kind}n={attrs.get('n', '?')}, d={attrs.get('d', '?')})"


RISING = 3.0   # a run whose last f(xbar) - f* is above RISING times its best is "rising"


def convergence_flag(loss, subopt=None, status=None) -> str:
    """THE flag of a run (info, compare, plot and analysis/ all call this one function): why a
    loss_xbar curve (evaluation points, the first at the start) must not enter any number.

    "diverged" when the run file's status is "diverged" (the run stopped itself, exit status 3,
    mpimem.core.metrics.divergence), a value is not finite or the last is above the first;
    "rising" when the last f(xbar) - f* (subopt, where f* is known) is above RISING (3) times
    the run's best; "flat" when no later value is below the first; "" for a curve that made
    progress."""
    if status == "diverged":
        return "diverged: the run stopped itself (run-file status diverged)"
    loss = np.asarray(loss, float)
    if loss.size < 2:
        return "flat: fewer than two evaluation points"
    if not np.all(np.isfinite(loss)):
        return "diverged: f(xbar) is not finite"
    if loss[-1] > loss[0]:
        return f"diverged: final f(xbar) {loss[-1]:.6g} above the starting {loss[0]:.6g}"
    if subopt is not None:
        gap = np.asarray(subopt, float)
        finite = gap[np.isfinite(gap)]
        if finite.size and np.isfinite(gap[-1]):
            best = float(finite.min())
            if best > 0 and gap[-1] > RISING * best:
                return (f"rising: final f(xbar)-f* {gap[-1]:.4g} is {gap[-1] / best:.1f}x its "
                        f"best {best:.4g}")
    if np.min(loss[1:]) >= loss[0]:
        return f"flat: f(xbar) never below its starting value {loss[0]:.6g}"
    return ""


def run_flag(run: dict) -> str:
    """convergence_flag of a run as mpimem.run.runfile.read_run returns it (attrs, metrics)."""
    m = run.get("metrics") or {}
    return convergence_flag(m.get("loss_xbar", []), m.get("subopt_xbar"),
                            run.get("attrs", {}).get("status"))


def first_crossing(x, y, target):
    """The x at which y first reaches <= target, linearly interpolated between the two
    evaluation points around the crossing; NaN if never reached."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    hit = np.nonzero(y <= target)[0]
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0 or y[i - 1] == y[i]:
        return float(x[i])
    frac = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(x[i - 1] + frac * (x[i] - x[i - 1]))
