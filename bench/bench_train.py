"""Speed of Mem-SGD training (issue 3), written to bench/results/train.md.

Three measurements, each side by side with its baseline in the same command:
1. worker work per sample (gradient + memory + compression), timed inside the worker, and the
   server's work per sample (aggregate + apply + lazy xbar), in-process so no MPI noise;
2. end to end under `mpiexec -n 2` (1 worker), one epoch, b = 1 and larger local mini-batches:
   microseconds per sample and f(xbar) - f*, against the paper's code's per-sample times
   (../shared/notes/reference-timings.md: 53.4 us epsilon-like top-1, ~475 us RCV1-like top-50);
3. scikit-learn's SGDClassifier (log loss, L2 alpha = lambda, no intercept) on the same data:
   time to reach the f(xbar) - f* our run reaches.
4. W = 1..4 workers for each compressor: samples/s, us/sample, bytes up per sample, time split.

    python -m bench.bench_train [--eps-n N] [--rcv-n N] [--quick]
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

from mpimem.compressors import make_compressor
from mpimem.config import merge, resolve
from mpimem.data.dataset import read_meta, read_shard
from mpimem.engine import RoundRule, ShardData, WorkerState, make_averager
from mpimem.model import Replica
from mpimem.objective import objective
from mpimem.runfile import read_run

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PAPER_US = {"epsilon": 53.4, "rcv1": 475.0}
BIN = os.path.dirname(sys.executable)


def ensure_data(path, like, n):
    if not os.path.exists(path):
        for args in (["synth", "--like", like, "--n", str(n), "--seed", "1", path], ["optimum", path]):
            subprocess.run([sys.executable, "-m", "mpimem", "data", *args], check=True)
    return path


def worker_micro(data, shard, opts, rounds):
    """(worker us/sample, server us/sample) over `rounds` rounds after a warm-up."""
    meta = read_meta(data)
    cfg = resolve(merge(dict(data=data, **opts)), meta.n, meta.d, 1)
    comp = make_compressor(cfg.compressor, meta.d, cfg.k, cfg.levels, cfg.memory, cfg.seed)
    rule = RoundRule(cfg, meta.d, 1, comp)
    ws = WorkerState(1, shard, meta.d, cfg.batch_size, cfg.seed, comp, rule.uses_pool(shard))
    replica, averager, agg = Replica(meta.d), make_averager(cfg, meta.d), rule.make_aggregator()
    server = 0.0
    for phase, count in (("warm", 200), ("run", rounds)):
        ws.timing[:] = 0
        server = 0.0
        for r in range(count):
            nbytes = rule.worker_step(ws, shard, replica, r)
            t0 = time.perf_counter()
            payload = rule.aggregate(agg, [ws.msg[:nbytes]], r)
            rule.apply(replica, payload, r, averager)
            server += time.perf_counter() - t0
    samples = rounds * cfg.batch_size
    return (ws.timing[0] + ws.timing[1]) / samples * 1e6, server / samples * 1e6


def mpi_run(data, workers, opts, out):
    args = [os.path.join(BIN, "mpiexec"), "-n", str(workers + 1), sys.executable, "-m", "mpimem",
            "train", data, "--out", out, "--quiet"]
    for key, value in opts.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            args += [flag, str(value)]
    subprocess.run(args, check=True, timeout=1800)
    return read_run(out)


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
    main_op = {"epsilon": dict(compressor="top_k", k=1), "rcv1": dict(compressor="top_k", k=50)}
    lines = ["# Training speed (issue 3)", "",
             f"Command: `{os.path.basename(sys.executable)} -m bench.bench_train "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; epsilon-like n={args.eps_n} d=2000, "
             f"RCV1-like n={args.rcv_n} d=47236.", ""]

    lines += ["## 1. Per-sample work, in-process (no MPI)", "",
              "| data | method | b | worker us/sample | server us/sample |", "|---|---|---|---|---|"]
    for like, data in sets.items():
        shard = ShardData(*(lambda s: (s.X, s.y))(read_shard(data, 0, 1)))
        for b in (1, 4, 16):
            for label, opts in (("top-k mem", main_op[like]), ("plain SGD", dict(compressor="none"))):
                w, s = worker_micro(data, shard, dict(opts, batch_size=b), 20000 // b)
                lines.append(f"| {like} | {label} k={opts.get('k', '-')} | {b} | {w:.2f} | {s:.2f} |")
                print(lines[-1], flush=True)

    lines += ["", "## 2-3. End to end, 1 worker, one epoch (`mpiexec -n 2`), against the paper's code and scikit-learn", "",
              "b > 1 keeps the coordinates per sample of b = 1 (k = b k_1; the shift d/k rounds stays d/k_1 samples).",
              "us/sample is training wall time (evaluation excluded) over samples; 'sklearn s to same gap' is",
              "SGDClassifier's partial_fit time (epoch by epoch) until its f - f* <= our final f(xbar) - f*;",
              "'ours s' is our wall time at the first evaluation point (every 0.25 epoch) reaching that gap.", "",
              "| data | method | b | us/sample | x faster than paper code | f(xbar)-f* (within 1.5x of b=1?) | sklearn s to same gap | ours s |",
              "|---|---|---|---|---|---|---|---|"]
    for like, data in sets.items():
        meta = read_meta(data)
        k1 = main_op[like]["k"]
        base_gap = None
        grid = [(1, k1)] + [(b, k1 * b) for b in (8, 16, 32, 64)] + \
            ([(b, k1) for b in (16, 64, 128)] if like == "rcv1" else [])
        for b, k in grid:  # k = b k_1 keeps the coordinates per sample of b = 1
            run = mpi_run(data, 1, dict(main_op[like], k=k, batch_size=b, epochs=1, eval_every=0.25),
                          f"{args.work}/e2e-{like}-{b}.h5")
            m = run["metrics"]
            us = m["train_time"][-1] / m["samples"][-1] * 1e6
            gap = m["subopt_xbar"][-1]
            base_gap = gap if base_gap is None else base_gap
            sk_s, sk_ep, _ = sklearn_time_to(data, gap, 1.0 / meta.n, meta.fstar)
            ours = time_to_gap(run, gap)
            same = "yes" if gap <= 1.5 * base_gap else "no"
            lines.append(f"| {like} | top-k k={k} mem | {b} | {us:.2f} | "
                         f"{PAPER_US[like] / us:.1f} | {gap:.3e} ({same}) | {sk_s:.2f} ({sk_ep} ep) | {ours:.2f} |")
            print(lines[-1], flush=True)

    lines += ["", "## 4. Workers and compressors (epsilon-like, b = 16, 1 epoch, oversubscribed beyond 1 worker on 2 cores)", "",
              "| method | W | samples/s | us/sample | bytes up/sample | f(xbar)-f* | worker s: grad / comp / comm / wait |",
              "|---|---|---|---|---|---|---|"]
    methods = [("top_k k=1", dict(compressor="top_k", k=1)), ("rand_k k=1", dict(compressor="rand_k", k=1)),
               ("qsgd 4 bit", dict(compressor="qsgd", bits=4, memory=False)),
               ("ternary", dict(compressor="ternary")), ("sign", dict(compressor="sign")),
               ("none", dict(compressor="none"))]
    for label, opts in methods:
        for workers in ((1, 2) if args.quick else (1, 2, 3, 4)):
            run = mpi_run(sets["epsilon"], workers, dict(opts, batch_size=16, epochs=1),
                          f"{args.work}/w-{label.split()[0]}-{workers}.h5")
            m, t = run["metrics"], run["timing"]["seconds"]
            wall = m["train_time"][-1]
            n = m["samples"][-1]
            split = " / ".join(f"{v:.2f}" for v in t[1:, :4].mean(axis=0))
            lines.append(f"| {label} | {workers} | {n / wall:,.0f} | {wall / n * 1e6:.2f} | "
                         f"{m['bytes_up'][-1] / n:.2f} | {m['subopt_xbar'][-1]:.3e} | {split} |")
            print(lines[-1], flush=True)
    with open(os.path.join(RESULTS, "train.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}/train.md")


if __name__ == "__main__":
    main()
