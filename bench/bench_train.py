"""Speed of Mem-SGD training, written to bench/results/train.md.

Every ratio is against a baseline run in the same command, on the same data, at equal settings:
the reference loop (mpimem.reference: Algorithm 1 in plain numpy, dense float64, O(d) per
sample, what the paper's published code does per sample) with the same b, the same k (so the
same coordinates per sample), the same schedule, timed in-process after as many warm-up rounds
and within one epoch (no reshuffle in the timed window).
1. worker and server work per sample, in-process (no MPI), against the reference;
2. end to end under `mpiexec -n 2` (1 worker), one epoch: us/sample against the reference at
   the same (b, k); scikit-learn's SGDClassifier (log loss, L2 alpha = lambda, no intercept)
   on the same data: time to reach the f(xbar) - f* our run reaches;
3. W = 1..4 workers for each compressor: samples/s, bytes up per sample, time split.
mpimem runs with `--l2 worker` (the paper-exact update, the same algorithm as the reference)
and, where named, `--l2 server` (the fast path: L2 as a scale on the server, another placement
of the same term). A run whose f(xbar) - f* exceeds f(0) - f*, or is not finite, is marked
diverged in every table.

    python -m bench.bench_train [--eps-n N] [--rcv-n N] [--quick]
"""
import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

from mpimem.run.config import resolve
from mpimem.cli.options import merge
from mpimem.data.dataset import read_meta, read_shard
from mpimem.comm.launch import mpiexec_command
from mpimem.run.algorithm import Algorithm, ShardData, compressor_for, make_averager
from mpimem.core.objective import objective
from mpimem.reference import Reference, Settings
from mpimem.run.runfile import read_run

RESULTS = os.path.join(os.path.dirname(__file__), "results")
MAIN_OP = {"epsilon": dict(compressor="top_k", k=1), "rcv1": dict(compressor="top_k", k=50)}
REF_SAMPLES = {"epsilon": 4000, "rcv1": 1000}  # timed reference samples (and as many warm-up)


def ensure_data(path, like, n):
    if not os.path.exists(path):
        for args in (["synth", "--like", like, "--n", str(n), "--seed", "1", path], ["optimum", path]):
            subprocess.run([sys.executable, "-m", "mpimem", "data", *args], check=True)
    return path


def resolved(data, meta, opts, workers=1):
    return resolve(merge(dict(data=data, **opts)), meta.n, meta.d, workers)


def reference_us(data, shard, like, opts):
    """Reference loop us/sample at the settings `opts` (1 worker), after as many warm-up rounds."""
    meta = read_meta(data)
    cfg = resolved(data, meta, opts)
    rounds = max(1, min(REF_SAMPLES[like], meta.n // 2) // cfg.batch_size)  # inside epoch 1
    ref = Reference(Settings.from_config(cfg), [(shard.X, shard.y)], meta.d).run(rounds)
    t0 = time.perf_counter()
    ref.run(rounds)
    return (time.perf_counter() - t0) / (rounds * cfg.batch_size) * 1e6


def worker_micro(data, shard, opts, rounds):
    """(worker us/sample, server us/sample) over `rounds` rounds after a warm-up, in the
    compiled in-process loop (mpimem.comm.segments.local_segment: the steps of the MPI loops)."""
    meta = read_meta(data)
    cfg = resolved(data, meta, opts)
    rule = Algorithm(cfg, meta.d, 1, compressor_for(cfg, meta.d), meta.n)
    ws = rule.new_worker(1, shard)
    replica, averager, agg = rule.new_replica(), make_averager(cfg, meta.d), rule.make_aggregator()
    rule.run_local(ws, shard, replica, agg, averager, 0, 200)   # warm-up
    ws.timing[:] = 0
    server = rule.run_local(ws, shard, replica, agg, averager, 200, 200 + rounds)
    samples = rounds * cfg.batch_size
    return (ws.timing[0] + ws.timing[1]) / samples * 1e6, server / samples * 1e6


def mpi_run(data, workers, opts, out):
    """`mpiexec -n W+1 mpimem train` (replacing an earlier bench run's file); its run file."""
    args = [*mpiexec_command(workers + 1), sys.executable, "-m", "mpimem",
            "train", data, "--out", out, "--quiet", "--overwrite"]
    for key, value in opts.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            args += [flag, str(value)]
    env = dict(os.environ, MPIMEM_EXPECT_RANKS=str(workers + 1))
    subprocess.run(args, check=True, timeout=1800, env=env)
    return read_run(out)


def diverged(run) -> str:
    """'DIVERGED' when the final f(xbar) - f* exceeds f(0) - f* (round 0: x = 0) or is not finite."""
    gaps = run["metrics"]["subopt_xbar"]
    return "DIVERGED" if not (math.isfinite(gaps[-1]) and gaps[-1] <= gaps[0]) else "no"


def sklearn_time_to(data, target_gap, lam, fstar, max_epochs=10):
    """Seconds SGDClassifier needs (epoch by epoch, partial_fit) to reach f - f* <= target_gap."""
    from sklearn.linear_model import SGDClassifier

    shard = read_shard(data, 0, 1)
    X, y = shard.X, shard.y
    clf = SGDClassifier(loss="log_loss", penalty="l2", alpha=lam, fit_intercept=False,
                        learning_rate="optimal", random_state=0)
    spent, gap = 0.0, float("inf")
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        clf.partial_fit(X, y, classes=np.array([-1.0, 1.0]))
        spent += time.perf_counter() - t0
        gap = objective(X, y, clf.coef_.ravel().astype(np.float64), lam) - fstar
        if gap <= target_gap:
            return spent, epoch, gap
    return float("nan"), max_epochs, gap


def time_to_gap(run, gap):
    """Training time (evaluation excluded) at the first evaluation point with f(xbar) - f* <= gap."""
    m = run["metrics"]
    hit = np.flatnonzero(m["subopt_xbar"] <= gap)
    return float(m["train_time"][hit[0]]) if hit.size else float("nan")


def section_micro(sets, shards, ref, headline):
    lines = ["## 1. Per-sample work, in-process (no MPI), against the reference at the same settings", "",
             "| data | method | b | l2 | worker us/sample | server us/sample | reference us/sample | x faster |",
             "|---|---|---|---|---|---|---|---|"]
    for like, data in sets.items():
        for b in (1, 16):
            for label, op in (("top-k mem", MAIN_OP[like]), ("plain SGD", dict(compressor="none"))):
                r = ref(like, dict(op, batch_size=b))
                for l2 in ("worker", "server"):
                    w, s = worker_micro(data, shards[like], dict(op, batch_size=b, l2=l2), 8000 // b)
                    lines.append(f"| {like} | {label} k={op.get('k', '-')} | {b} | {l2} | {w:.2f} | "
                                 f"{s:.2f} | {r:.1f} | {r / (w + s):.1f} |")
                    print(lines[-1], flush=True)
                    if b == 1 and op is MAIN_OP[like]:
                        headline[("in-process (worker + server work, no MPI)", like, l2)] = (w + s, r)
    return lines


def section_end_to_end(sets, work, ref, headline):
    lines = ["", "## 2. End to end, 1 worker, one epoch (`mpiexec -n 2`), against the reference and scikit-learn", "",
             "'x faster' = reference us/sample / ours, both at the same b and k (b > 1 rows with k = b k_1",
             "keep the coordinates per sample of b = 1; the shift d/k rounds stays d/k_1 samples). Only the",
             "`l2 worker` rows run the reference's algorithm; `l2 server` is mpimem's fast path.",
             "us/sample is training wall time (evaluation excluded) over samples; 'sklearn s to same gap' is",
             "SGDClassifier's partial_fit time (epoch by epoch) until its f - f* <= our final f(xbar) - f*;",
             "'ours s' is our wall time at the first evaluation point (every 0.25 epoch) reaching that gap.", "",
             "| data | method | b | l2 | us/sample | reference us/sample | x faster | f(xbar)-f* | diverged | sklearn s to same gap | ours s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for like, data in sets.items():
        meta = read_meta(data)
        k1 = MAIN_OP[like]["k"]
        grid = [(1, k1)] + [(b, k1 * b) for b in (16, 64)] + ([(b, k1) for b in (16, 64)] if like == "rcv1" else [])
        for b, k in grid:
            op = dict(MAIN_OP[like], k=k, batch_size=b)
            r = ref(like, op)
            for l2 in ("worker", "server"):
                run = mpi_run(data, 1, dict(op, l2=l2, epochs=1, eval_every=0.25),
                              f"{work}/e2e-{like}-{b}-{k}-{l2}.h5")
                m = run["metrics"]
                us = m["train_time"][-1] / m["samples"][-1] * 1e6
                gap = m["subopt_xbar"][-1]
                sk_s, sk_ep, _ = sklearn_time_to(data, gap, 1.0 / meta.n, meta.fstar)
                lines.append(f"| {like} | top-k k={k} mem | {b} | {l2} | {us:.2f} | {r:.1f} | {r / us:.1f} | "
                             f"{gap:.3e} | {diverged(run)} | {sk_s:.2f} ({sk_ep} ep) | {time_to_gap(run, gap):.2f} |")
                print(lines[-1], flush=True)
                if b == 1:
                    headline[("end to end (mpiexec -n 2, training wall time)", like, l2)] = (us, r)
    return lines


def us_per_sample(run):
    m = run["metrics"]
    return m["train_time"][-1] / m["samples"][-1] * 1e6


def section_goals(sets, work, ref):
    """The targets of the compiled loops (issue 9), each beside its baseline measured in this
    command: equal settings (same data, b, k, schedule) wherever the baseline is ours."""
    eps, rcv = sets["epsilon"], sets["rcv1"]
    rows = []

    def add(what, value, baseline, goal, met):
        rows.append(f"| {what} | {value} | {baseline} | {goal} | {'yes' if met else 'NO'} |")
        print(rows[-1], flush=True)

    top1 = dict(MAIN_OP["epsilon"], batch_size=1)
    us = us_per_sample(mpi_run(eps, 1, dict(top1, epochs=1), f"{work}/goal-eps.h5"))
    r = ref("epsilon", top1)
    add("epsilon-like top-1 + memory, b = 1, `--l2 worker`, 1 worker (`mpiexec -n 2`)",
        f"{us:.2f} us/sample", f"reference loop {r:.1f} us/sample: {r / us:.1f}x", "<= 6 us/sample",
        us <= 6)
    same = dict(top1, epochs=1, schedule="decay", gamma=2.0)   # async W = 1 equals sync W = 1
    sync_us = us_per_sample(mpi_run(eps, 1, same, f"{work}/goal-sync.h5"))
    async_us = us_per_sample(mpi_run(eps, 1, dict(same, mode="async"), f"{work}/goal-async.h5"))
    add("`--mode async`, 1 worker, same settings (epsilon-like top-1, b = 1)",
        f"{async_us:.2f} us/sample", f"sync, 1 worker: {sync_us:.2f} us/sample "
        f"({async_us / sync_us:.2f}x)", "<= 1.3x sync", async_us <= 1.3 * sync_us)
    top50 = dict(MAIN_OP["rcv1"], batch_size=1, l2="server")
    us = us_per_sample(mpi_run(rcv, 1, dict(top50, epochs=1), f"{work}/goal-rcv.h5"))
    r = ref("rcv1", top50)
    add("RCV1-like top-50 + memory, b = 1, `--l2 server`, 1 worker", f"{us:.2f} us/sample",
        f"reference loop ({'`--l2 worker`'}) {r:.1f} us/sample: {r / us:.1f}x", "<= 12 us/sample",
        us <= 12)
    for like, data, b, k in (("rcv1", rcv, 64, 50), ("rcv1", rcv, 64, 50 * 64),
                             ("epsilon", eps, 16, 16)):
        meta = read_meta(data)
        sk_s, _, sk_gap = sklearn_time_to(data, math.inf, 1.0 / meta.n, meta.fstar, max_epochs=1)
        run = mpi_run(data, 1, dict(compressor="top_k", k=k, batch_size=b, l2="server", epochs=3,
                                    eval_every=0.05), f"{work}/goal-sk-{like}-{k}.h5")
        t = time_to_gap(run, sk_gap)
        add(f"{like}-like top-{k} + memory, b = {b}, `--l2 server`: time to SGDClassifier's "
            f"one-epoch f - f* ({sk_gap:.3e})", f"{t:.3f} s",
            f"SGDClassifier, one epoch: {sk_s:.3f} s ({t / sk_s:.2f}x)",
            "<= 2x" if like == "rcv1" else "faster", t <= (2 if like == "rcv1" else 1) * sk_s)
    return ["", "## 0. Goals of the compiled loops (issue 9), each beside its baseline from this "
            "command", "",
            "Training wall time (evaluation excluded) from RUN.h5; SGDClassifier: log loss, L2 "
            "alpha = lambda, no intercept, partial_fit one epoch, timed alone; 'time to' = our "
            "training time at the first evaluation point (every 0.05 epoch) whose f(xbar) - f* "
            "reaches SGDClassifier's one-epoch f - f*.", "",
            "| what | measured | baseline (same command) | goal | met |", "|---|---|---|---|---|",
            *rows]


def section_workers(data, worker_counts, work):
    lines = ["", "## 3. Workers and compressors (epsilon-like, b = 16, `--l2 worker`, 1 epoch, "
             "each compressor's default schedule; oversubscribed beyond 1 worker on 2 cores)", "",
             "| method | W | samples/s | us/sample | bytes up/sample | f(xbar)-f* | diverged | worker s: grad / comp / comm / wait |",
             "|---|---|---|---|---|---|---|---|"]
    methods = [("top_k k=1", dict(compressor="top_k", k=1)), ("rand_k k=1", dict(compressor="rand_k", k=1)),
               ("qsgd 4 bit", dict(compressor="qsgd", bits=4, memory=False)),
               ("ternary", dict(compressor="ternary")), ("sign", dict(compressor="sign")),
               ("none", dict(compressor="none"))]
    for label, opts in methods:
        for workers in worker_counts:
            run = mpi_run(data, workers, dict(opts, batch_size=16, epochs=1, l2="worker"),
                          f"{work}/w-{label.split()[0]}-{workers}.h5")
            m, t = run["metrics"], run["timing"]["seconds"]
            wall, n = m["train_time"][-1], m["samples"][-1]
            split = " / ".join(f"{v:.2f}" for v in t[1:, :4].mean(axis=0))
            lines.append(f"| {label} | {workers} | {n / wall:,.0f} | {wall / n * 1e6:.2f} | "
                         f"{m['bytes_up'][-1] / n:.2f} | {m['subopt_xbar'][-1]:.3e} | {diverged(run)} | {split} |")
            print(lines[-1], flush=True)
    return lines


def summary(headline):
    """The equal-settings headline: b = 1, the same k, 1 worker, against the reference loop."""
    out = ["## Headline (equal settings: b = 1, the same k, 1 worker, against the reference loop)", ""]
    for (how, like, l2), (us, r) in headline.items():
        what = "the reference's algorithm" if l2 == "worker" else "fast path, L2 on the server"
        out.append(f"- {how}, {like}-like top-{MAIN_OP[like]['k']}, `--l2 {l2}` ({what}): "
                   f"{r / us:.1f}x faster ({us:.1f} against {r:.1f} us/sample)")
    return out + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps-n", type=int, default=100_000)
    p.add_argument("--rcv-n", type=int, default=200_000)
    p.add_argument("--quick", action="store_true", help="smaller sets and fewer runs")
    p.add_argument("--work", default="/tmp/mpimem-bench")
    args = p.parse_args(argv)
    if args.quick:
        args.eps_n, args.rcv_n = 20_000, 40_000
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    sets = {"epsilon": ensure_data(f"{args.work}/eps-{args.eps_n}.h5", "epsilon", args.eps_n),
            "rcv1": ensure_data(f"{args.work}/rcv-{args.rcv_n}.h5", "rcv1", args.rcv_n)}
    shards = {like: ShardData(*(lambda s: (s.X, s.y))(read_shard(data, 0, 1))) for like, data in sets.items()}

    def ref(like, opts):  # measured next to the rows it is the baseline of (the load drifts)
        return reference_us(sets[like], shards[like], like, dict(opts, l2="worker"))

    load0 = os.getloadavg()[0]
    headline = {}
    body = section_goals(sets, args.work, ref)
    body += section_micro(sets, shards, ref, headline)
    body += section_end_to_end(sets, args.work, ref, headline)
    body += section_workers(sets["epsilon"], (1, 2) if args.quick else (1, 2, 3, 4), args.work)
    lines = ["# Training speed", "",
             f"Command: `{os.path.basename(sys.executable)} -m bench.bench_train "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; epsilon-like n={args.eps_n} d=2000, "
             f"RCV1-like n={args.rcv_n} d=47236. Load average {load0:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end: absolute times are noisy on a shared machine, "
             "prefer the ratios (each against a baseline measured in the same command).", ""]
    lines += summary(headline) + body
    with open(os.path.join(RESULTS, "train.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(summary(headline)))
    print(f"wrote {RESULTS}/train.md")


if __name__ == "__main__":
    main()
