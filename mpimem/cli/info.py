"""`mpimem info [--json] RUN.h5`: a summary of a run file (settings, status, progress, losses,
traffic, per-rank times).

Works on a run in progress (the run file on disk is always complete, mpimem.run.runfile): status
running, the last evaluation point, the speed and an ETA. Works on any damaged file: a file that
is not a readable run file (damaged config, no status, ...) is one line `mpimem: error: ...`,
exit 2; an attribute that is missing or of the wrong type is shown as '?' (null in JSON).

A file left "running" by a job that was killed (kill -9 of rank 0, a lost node) keeps that
status: info says when the file was last written and, when the lock's process is dead (same
host) or the file is old, that the job may be gone (and how to resume it), with no ETA.

Speed and ETA, from the last evaluation row (round R, train_time T, wall_time S; both times count
from the start of the run, across resumptions): rounds/s = R / T (training only, evaluation
excluded), R / S overall; ETA = (rounds - R) S / R seconds after the last point was written
(the file's modification time), shown only while the status is running.

The settings line says what ran: the compressor with k (top_k/rand_k) or the QSGD levels s and
the bits per entry as sent (1 sign bit + ceil(log2(s+1)) level bits, mpimem.core.operators.quantiser), the
k warm-up when set (epochs and the k of each), the error memory as it ran (never with
compressor none) or "method ef21" (EF21-BC with downlink-k), where the L2 term acts, the step schedule,
gamma and shift a (in samples), the averaging, mode, topology, downlink-k when set, the batch size b and the
number of workers W. A run whose curve enters no number prints `flag: DIVERGED|RISING|FLAT: why`
(mpimem.run.runlabel.convergence_flag, the rule of compare and plot too; "flag" below). The
per-rank timing table has a server row only where there is a server
(the other topologies have none: rank r is worker r+1).

`--json` prints one JSON object with these keys (always all of them; a value that is unknown,
or a float that is not finite, is null):
- "path": the run file as given; "status": running, complete, failed, preempted or
  diverged (stopped by mpimem.core.metrics.divergence; the reason in attrs.error);
- "attrs": every root attribute of the file except config; an attribute stored as a JSON string
  (hosts, bytes_per_rank, k_schedule, groups) is decoded into its JSON value (list or object);
- "settings": the resolved configuration as recorded (the config attribute);
- "as_run": {"memory": the error memory as it ran, "bits_per_entry": QSGD/ternary bits per
  entry on the wire (null for the others), "server": whether a server rank took part};
- "points": the number of evaluation points; "last": {metric: value} of the last one, or null;
- "flag": null, or why the curve enters no number (mpimem.run.runlabel.convergence_flag, the
  one rule of info, compare, plot and analysis/): "diverged: ..." (run-file status diverged, a
  non-finite f(xbar) or a final f(xbar) above the start), "rising: ..." (the last f(xbar) - f*
  above 3 times the run's best), "flat: ..." (never below the start);
- "progress": {"round", "rounds", "rounds_per_s" (R / T), "rounds_per_s_wall" (R / S),
  "eta_s" (null unless running, and null when the job may be gone), "written": the file's
  modification time, UTC ISO 8601, "age_s": seconds since then, "job": {"lock": the fields of
  RUN.h5.lock (host, pid, since, ...; mpimem.run.lock) or null when there is none, "alive":
  whether its process runs (null: no lock, or a lock of another host, which this host cannot
  check), "maybe_gone": true for a running file whose lock's process is dead on this host or
  that was last written longer ago than GONE_AFTER (at least 10 minutes, or three times the
  mean time between its evaluation points), "why": the reason, or null}};
- "timing": null, or {"columns": [...], "ranks": [{"rank", "role", "seconds": [...]}]}.
"""
import json
import math
import os
from datetime import datetime, timezone

import numpy as np

from mpimem.core.operators import OPERATORS
from mpimem.run.config import has_server as topology_has_server
from mpimem.core.metrics import METRICS
from mpimem.run.runfile import read_run
from mpimem.run.runlabel import bits_per_entry, memory_ran, run_flag
from mpimem.run.lock import holder, lock_path

GONE_AFTER = 600.0   # seconds without a write after which a running file's job may be gone


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a run file (RUN.h5), also while it runs")
    p.add_argument("run", help="run file written by mpimem train")
    p.add_argument("--json", action="store_true", help="one JSON object (keys: `pydoc mpimem.cli.info`)")
    p.set_defaults(func=show)


def fmt(value, spec: str = "") -> str:
    """`value` formatted with `spec`, or '?' when it is missing or does not fit the spec."""
    if value is None:
        return "?"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return "?"


# ---------------------------------------------------------------------- what the file holds
def metric_table(metrics: dict):
    """(names, rows): the metric columns (METRICS order, then any other, sorted) and the number
    of complete evaluation points (the shortest column)."""
    names = [k for k in METRICS if k in metrics] + sorted(set(metrics) - set(METRICS))
    return names, min((len(metrics[k]) for k in names), default=0)


def last_point(metrics: dict):
    """{metric: float} of the last evaluation point, or None when there is none."""
    names, rows = metric_table(metrics)
    return {k: float(metrics[k][rows - 1]) for k in names} if rows else None


def has_server(cfg: dict) -> bool:
    """A server rank (rank 0) took part: the server topology (mpimem.run.config.has_server)."""
    return topology_has_server(cfg.get("topology", "server"))


def _number(value):
    """A finite float or int as it is, anything else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def progress(run: dict, path: str) -> dict:
    """Speed and ETA of a run from its last evaluation row (module docstring)."""
    a, last = run["attrs"], last_point(run["metrics"]) or {}
    rounds, r = _number(a.get("rounds")), last.get("round")
    train, wall = last.get("train_time"), last.get("wall_time")
    rate = r / train if r and train and train > 0 else None
    wall_rate = r / wall if r and wall and wall > 0 else None
    mtime = os.stat(path).st_mtime
    age = max(0.0, datetime.now(timezone.utc).timestamp() - mtime)
    job = job_state(run, path, age)
    eta = None
    if a.get("status") == "running" and wall_rate and rounds is not None and not job["maybe_gone"]:
        eta = max(0.0, rounds - r) / wall_rate
    written = datetime.fromtimestamp(mtime, timezone.utc)
    return {"round": int(r) if r is not None and math.isfinite(r) else None, "rounds": rounds,
            "rounds_per_s": rate, "rounds_per_s_wall": wall_rate, "eta_s": eta,
            "written": written.isoformat(timespec="seconds"), "age_s": age, "job": job}


def job_state(run: dict, path: str, age: float) -> dict:
    """Whether the job writing a running file may be gone (module docstring, "job")."""
    fields, alive = holder(path)
    job = {"lock": fields or None, "alive": alive, "maybe_gone": False, "why": None}
    if run["attrs"].get("status") != "running":
        return job
    if alive is False:
        job["why"] = (f"its process (pid {fields.get('pid')} on host {fields.get('host')}, "
                      f"{lock_path(path)}) is not running")
    else:
        wall = (last_point(run["metrics"]) or {}).get("wall_time")
        points = metric_table(run["metrics"])[1]
        every = wall / (points - 1) if wall and points > 1 and math.isfinite(wall) else 0.0
        limit = max(GONE_AFTER, 3 * every)
        if age > limit:
            job["why"] = (f"not written for {duration(age)} (more than {duration(limit)})" +
                          ("" if fields else "; no run lock") +
                          (f"; its lock is of host {fields.get('host')}, pid {fields.get('pid')}"
                           if fields and alive is None else ""))
    job["maybe_gone"] = job["why"] is not None
    return job


def timing_rows(run: dict):
    """[(rank, role, seconds per column)] of the per-rank timing table ([] when absent)."""
    if run["timing"] is None:
        return []
    server = has_server(run["attrs"]["config"])
    return [(rank, "server" if server and rank == 0 else f"worker {rank if server else rank + 1}",
             [float(v) for v in row]) for rank, row in enumerate(run["timing"]["seconds"])]


# ---------------------------------------------------------------------- JSON
def _plain(value):
    """A JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def decoded(value):
    """An attribute as a JSON value: a string holding a JSON list or object (hosts,
    bytes_per_rank, k_schedule, groups, ...) decoded, anything else as it is."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def summary(run: dict, path: str) -> dict:
    """The `--json` object (module docstring)."""
    a, cfg = run["attrs"], run["attrs"]["config"]
    attrs = {k: decoded(v) for k, v in a.items() if k != "config"}
    timing = None
    if run["timing"] is not None:
        timing = {"columns": run["timing"]["columns"],
                  "ranks": [{"rank": rank, "role": role, "seconds": secs}
                            for rank, role, secs in timing_rows(run)]}
    return _plain({
        "path": path, "status": a["status"], "attrs": attrs, "settings": cfg,
        "as_run": {"memory": memory_ran(cfg), "bits_per_entry": bits_per_entry(cfg, a.get("d")),
                   "server": has_server(cfg)},
        "points": metric_table(run["metrics"])[1], "last": last_point(run["metrics"]),
        "flag": run_flag(run) or None,
        "progress": progress(run, path), "timing": timing,
    })


# ---------------------------------------------------------------------- text
def operator_text(cfg: dict, d) -> str:
    """The compressor with what sets its message size: k, or QSGD levels and bits per entry."""
    name = cfg.get("compressor")
    op = OPERATORS.get(name)
    if op is None:
        return fmt(name)
    if op.sparsifier:
        return f"{name} k={fmt(cfg.get('k'))}"
    bits = bits_per_entry(cfg, d)
    if op.takes_levels:
        return f"{name} s={fmt(cfg.get('levels'))} levels ({fmt(bits)} bits per entry)"
    if op.quantiser:
        return f"{name} ({fmt(bits)} bits per entry)"
    return fmt(name)


def settings_text(cfg: dict, a: dict) -> str:
    """The settings line (module docstring)."""
    memory = memory_ran(cfg)
    parts = [operator_text(cfg, a.get("d"))]
    if cfg.get("k_warmup"):
        ks = a.get("k_schedule", "?")
        ks = ks.decode() if isinstance(ks, bytes) else ks
        parts.append(f"k warm-up {cfg['k_warmup']} epochs (k {ks})")
    parts += ["method ef21" if cfg.get("method") == "ef21" else
              "memory " + ("?" if memory is None else "on" if memory else "off"),
             f"l2 {fmt(cfg.get('l2'))}",
             f"schedule {fmt(cfg.get('schedule'))} gamma={fmt(cfg.get('gamma'), 'g')} "
             f"a={fmt(cfg.get('shift'), 'g')} samples",
             f"averaging {fmt(cfg.get('averaging'))}",
             f"mode {fmt(cfg.get('mode'))}" + (f" ({cfg['async_step']} step)"
                                                if cfg.get("mode") == "async" else ""),
             f"topology {fmt(cfg.get('topology'))}" + (f" (groups of {cfg['group_size']})"
                                                      if cfg.get("group_size") else "")]
    if cfg.get("downlink_k") is not None:
        parts.append(f"downlink-k {fmt(cfg['downlink_k'])}")
    parts += [f"b={fmt(cfg.get('batch_size'))}", f"W={fmt(a.get('workers'))}",
              f"seed {fmt(cfg.get('seed'))}"]
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """'42 s', '3m07s' or '2h05m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(p: dict) -> str:
    """'round R of N, X rounds/s (Y with evaluation)[, ETA ...]'."""
    text = (f"round {fmt(p['round'])} of {fmt(p['rounds'])}, {fmt(p['rounds_per_s'], '.1f')} "
            f"rounds/s ({fmt(p['rounds_per_s_wall'], '.1f')} with evaluation)")
    if p["eta_s"] is not None:
        text += f", ETA {duration(p['eta_s'])} after the last point (written {p['written']})"
    return text


def job_text(p: dict, path: str, a: dict) -> str:
    """A running file: when it was last written, and whether its job may be gone."""
    text = f"last written {p['written']} ({duration(p['age_s'])} ago)"
    job = p["job"]
    if job["maybe_gone"]:
        return (f"{text}; the job may be gone: {job['why']}; if so, resume it with "
                f"mpiexec -n {fmt(a.get('ranks'))} mpimem train --resume {path}")
    lock = job["lock"]
    if lock and job["alive"]:
        return f"{text}; written by pid {lock.get('pid')} on host {lock.get('host')} (running)"
    if lock:
        return f"{text}; written by pid {lock.get('pid')} on host {lock.get('host')}"
    return text


def show(args) -> int:
    run = read_run(args.run)
    if args.json:
        print(json.dumps(summary(run, str(args.run)), sort_keys=True))
        return 0
    a, m, cfg = run["attrs"], run["metrics"], run["attrs"]["config"]
    print(f"{args.run}: status {a['status']}, mpimem {fmt(a.get('mpimem_version'))}, "
          f"{fmt(a.get('workers'))} workers on {fmt(a.get('hosts'))}")
    print(f"  data {fmt(a.get('dataset'))} (n={fmt(a.get('n'))}, d={fmt(a.get('d'))}), "
          f"lambda {fmt(a.get('lam'), '.3g')}, f* {fmt(a.get('fstar'), '.10g')}")
    print(f"  settings: {settings_text(cfg, a)}")
    last = last_point(m)
    if last:
        print(f"  {metric_table(m)[1]} evaluation points; last: epoch {fmt(last.get('epoch'), '.3f')}, "
              f"f(xbar) {fmt(last.get('loss_xbar'), '.8g')}, "
              f"f(xbar)-f* {fmt(last.get('subopt_xbar'), '.3e')}, "
              f"f(x)-f* {fmt(last.get('subopt_x'), '.3e')}, "
              f"accuracy {fmt(last.get('acc_xbar'), '.4f')}")
        print(f"  progress: {progress_text(progress(run, args.run))}")
        flag = run_flag(run)
        if flag:   # mpimem.run.runlabel.convergence_flag: the same flag as compare and plot
            print(f"  flag: {flag.split(':')[0].upper()}:{flag.split(':', 1)[1]}")
        up, down, samples = (last.get(k) for k in ("bytes_up", "bytes_down", "samples"))
        if None not in (up, down, samples):
            print(f"  traffic: {up / 1e6:.3f} MB up, {down / 1e6:.3f} MB down, "
                  f"{up / max(1.0, samples):.2f} bytes up per sample; "
                  f"wall {fmt(last.get('wall_time'), '.2f')} s")
    if a["status"] == "running":   # when it was written; whether its job may be gone
        print(f"  {job_text(progress(run, args.run), args.run, a)}")
    rows = timing_rows(run)
    if rows:
        print("  seconds per rank: " + "  ".join(f"{c:>13s}" for c in run["timing"]["columns"]))
        for _, who, secs in rows:
            print(f"  {who:>16s}: " + "  ".join(f"{v:13.3f}" for v in secs))
    if a.get("error"):   # a diverged run (mpimem.core.metrics.divergence) says why it stopped
        print(f"  {'diverged' if a['status'] == 'diverged' else 'error'}: {a['error']}")
    return 0
