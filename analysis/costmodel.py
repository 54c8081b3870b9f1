"""Alpha-beta cost model of the three designs, fitted on the machine at hand.

Parameters (all measured here, `python -m analysis.costmodel measure`):
  alpha  latency of one MPI message (s)           } fitted to an MPI ping-pong (mpiexec -n 2,
  B      bandwidth (bytes/s)                       } from a compiled loop as in mpimem.segments):
                                                     t(m) = alpha + m / B, least squares on medians
  c      worker compute per sample (s): gradient + compression (mpimem.step.worker_step)
  c_a    cost of aggregating + applying one message (s): step.agg_add + agg_finish + apply,
         both timed inside the compiled in-process loop (mpimem.segments.local_segment)

Per design, W workers, mini-batch b, uplink message m bytes (top-k 8k, rand-k 4k, dense 4d),
k_eff entries per message (k, or d dense):

  sync server (ranks W+1): the server receives the W messages one after the other, sums them
      and broadcasts an 8-byte header and the union (binomial trees, log2(W+1) hops each; one
      Bcast when the downlink has the same size every round: W = 1, or a dense downlink;
      two, header then payload, otherwise: n_b = 1 or 2):
      T_sync = c b + W (alpha + m/B) + W c_a + ceil(log2(W+1)) (n_b alpha + m_down/B),
      m_down = min(8 min(W k_eff, d), 4 d)
  async server (ranks W+1): each worker cycles c b + 2 alpha + (m + m_reply)/B; the server
      serves one message in S = 2 alpha + (m + m_reply)/B + c_a, m_reply the changes of the
      W-1 other updates since the worker's last pull: min(12 (W-1) k_eff, 8 d).
      Throughput = b min(W / (c b + S), 1 / S)  (the server is a single queue)
  allgather (ranks W): every rank receives the other W-1 messages (Allgatherv, recursive
      doubling / ring: log2(W) alpha + (W-1) m / B) and sums all W:
      T_ag = c b + 2 ceil(log2 W) alpha + (W-1) m/B + W c_a
Samples per second = W b / T for the synchronous designs; speed-up = samples/s over one worker
without communication (1 / c, the sequential program), efficiency = speed-up / W.

On an oversubscribed node (ranks > cores) compute and polling share cores; `predict(...,
cores=...)` scales the compute terms by max(1, ranks / cores) for the validation against the
measured runs here. The extrapolation to 64 .. 10,000 workers assumes one core per rank and
this node's alpha and B (shared memory); `--alpha/--bandwidth` give a network's values instead.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
from numba import njit

from mpimem import mpicall as mc
from mpimem.launch import core_binding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGNS = ("sync", "async", "allgather")
SIZES = (8, 64, 512, 4096, 16384, 65536)  # the range of our messages (dense d=2000: 8 KB)


# ------------------------------------------------------------------------------ measurement
@njit(cache=True)
def _pingpong_loop(mpi, buf, size, n, rank, out):
    """Compiled: n round trips of `size` bytes between ranks 0 and 1 (mpimem.mpicall, as the
    compiled loops call MPI); out[i] = half the i-th round trip (s)."""
    for i in range(n):
        t0 = mc.now(mpi)
        if rank == 0:
            mc.send(mpi, buf, size, 1, 1)
            mc.recv(mpi, buf, size, 1, 2)
        else:
            mc.recv(mpi, buf, size, 0, 1)
            mc.send(mpi, buf, size, 0, 2)
        out[i] = (mc.now(mpi) - t0) / 2


def pingpong(sizes=SIZES, reps=200):
    """Run under mpiexec -n 2: median one-way time per size (half the round trip), rank 0,
    from a compiled loop calling MPI as the training loops do (mpimem.segments)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != 2:
        raise SystemExit(f"costmodel pingpong: needs exactly 2 ranks, got {comm.Get_size()}")
    mpi = mc.table()
    out = {}
    for size in sizes:
        buf = np.zeros(max(1, size), np.uint8)
        n = max(5, reps if size <= 65536 else reps // 10)
        times = np.zeros(n + 2)
        comm.Barrier()
        _pingpong_loop(mpi, buf, size, n + 2, rank, times)
        out[size] = float(np.median(times[2:]))
    return out if rank == 0 else None


def measure_pingpong(reps=200, timeout=120):
    """Launch the ping-pong with this interpreter's mpiexec; {bytes: seconds one-way}."""
    bindir = os.path.dirname(sys.executable)
    mpiexec = os.path.join(bindir, "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    cmd = [mpiexec, *core_binding(2), "-n", "2", sys.executable, "-m", "analysis.costmodel", "pingpong",
           "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=True)
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def fit_alpha_beta(times: dict):
    """Least squares t = alpha + m / B on the measured medians, weighted by 1/t (relative
    error); returns alpha, B and the largest relative error of the fit at the measured sizes."""
    m = np.array(sorted(times), float)
    t = np.array([times[int(s)] for s in m])
    A = np.stack([np.ones_like(m), m], axis=1) / t[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones_like(m), rcond=None)
    alpha, inv_b = max(coef[0], 1e-9), max(coef[1], 1e-15)
    pred = alpha + m * inv_b
    return alpha, 1.0 / inv_b, float(np.max(np.abs(pred - t) / t))


def measure_compute(d=400, n=20000, k=10, reps=3, seed=0, data=None):
    """Per-sample worker compute c (gradient + compression) for top_k, rand_k and none, and the
    cost c_a of aggregating + applying one message (s), on the data set `data` (all its rows:
    the runs the model is validated against, so that the rows come from the same level of the
    memory hierarchy), or on a dense n x d Gaussian matrix when there is none."""
    from mpimem.compressors import make_compressor
    from mpimem.config import TrainConfig, resolve
    from mpimem.data.dataset import read_shard
    from mpimem.engine import RoundRule, ShardData

    if data and os.path.exists(data):
        part = read_shard(data, 0, 1)
        shard = ShardData(part.X, part.y)
        n, d = shard.n, part.X.shape[1]
    else:
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((n, d)) / math.sqrt(d)
        shard = ShardData(X, np.where(rng.random(n) < 0.5, -1.0, 1.0))
    out = {}
    for name in ("top_k", "rand_k", "none"):
        cfg = resolve(TrainConfig(data="-", compressor=name, k=k, schedule="bottou", gamma=1.0),
                      n, d, 1)
        comp = make_compressor(name, d, cfg.k, None, True, 0)
        rule = RoundRule(cfg, d, 1, comp)
        ws = rule.new_worker(1, shard)
        rep, agg = rule.new_replica(), rule.make_aggregator()
        rule.run_local(ws, shard, rep, agg, None, 0, 200)   # warm-up
        best_c = best_a = float("inf")
        for rep_i in range(reps):
            steps, r0 = 2000, 200 + rep_i * 2000
            ws.timing[:] = 0
            server = rule.run_local(ws, shard, rep, agg, None, r0, r0 + steps)
            best_c = min(best_c, (ws.timing[0] + ws.timing[1]) / steps)
            best_a = min(best_a, server / steps)
        out[name] = {"c": best_c, "c_a": best_a, "k": cfg.k if name != "none" else d}
    out["d"] = d
    return out


# ------------------------------------------------------------------------------ the model
def message_bytes(compressor, k, d):
    return {"top_k": 8 * k, "rand_k": 4 * k}.get(compressor, 4 * d)


def predict(params, design, W, compressor, d, k, b=1, cores=None):
    """Predicted seconds per sample-batch round and samples/s for one design at W workers."""
    alpha, B = params["alpha"], params["bandwidth"]
    prof = params["compute"][compressor]
    c, c_a = prof["c"], prof["c_a"]
    keff = k if compressor in ("top_k", "rand_k") else d
    m = message_bytes(compressor, k, d)
    ranks = W if design == "allgather" else W + 1
    slow = max(1.0, ranks / cores) if cores else 1.0
    cb = c * b * slow
    if design == "sync":
        m_down = min(8 * min(W * keff, d), 4 * d)
        n_b = 1 if W == 1 or compressor not in ("top_k", "rand_k") else 2
        T = (cb + W * (alpha + m / B) + W * c_a * slow
             + math.ceil(math.log2(W + 1)) * (n_b * alpha + m_down / B))
        rate = W * b / T
    elif design == "async":
        m_reply = min(12 * (W - 1) * keff, 8 * d)
        S = 2 * alpha + (m + m_reply) / B + c_a * slow
        rate = b * min(W / (cb + S), 1.0 / S)
        T = W * b / rate
    else:
        hops = math.ceil(math.log2(W)) if W > 1 else 0
        T = cb + 2 * hops * alpha + (W - 1) * m / B + W * c_a * slow
        rate = W * b / T
    return {"round_s": T, "samples_per_s": rate, "speedup": rate * c,
            "efficiency": rate * c / W}


def validate(params, measured, cores):
    """Relative error of predicted vs measured samples/s for every measured run."""
    rows = []
    for run in measured:
        p = predict(params, run["design"], run["W"], run["compressor"], params["d"], params["k"],
                    b=run.get("b", 1), cores=cores)
        rows.append(dict(run, predicted=p["samples_per_s"],
                         rel_error=p["samples_per_s"] / run["samples_per_s"] - 1.0))
    return rows


def plot(params, path, max_w=10000):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ws = np.unique(np.round(np.logspace(0, math.log10(max_w), 60)).astype(int))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for design, color in zip(DESIGNS, ("C0", "C1", "C2")):
        for comp, style in (("rand_k", "-"), ("none", "--")):
            s = [predict(params, design, int(w), comp, params["d"], params["k"])["speedup"]
                 for w in Ws]
            label = f"{design}, {'rand-%d' % params['k'] if comp == 'rand_k' else 'dense SGD'}"
            ax.loglog(Ws, s, style, color=color, label=label)
    ax.loglog(Ws, Ws, ":", color="gray", label="linear")
    for w in (64, 1024, 10000):
        ax.axvline(w, color="lightgray", lw=0.8)
    ax.set_xlabel("workers W")
    ax.set_ylabel("predicted speed-up over 1 worker")
    ax.set_title(f"alpha-beta model: alpha={params['alpha'] * 1e6:.2f} us, "
                 f"B={params['bandwidth'] / 1e9:.2f} GB/s, d={params['d']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)


def table(params, Ws=(1, 64, 1024, 10000)):
    lines = ["| design | operator | " + " | ".join(f"W={w}" for w in Ws) + " |",
             "|---|---|" + "---|" * len(Ws)]
    for design in DESIGNS:
        for comp in ("rand_k", "top_k", "none"):
            cells = [predict(params, design, w, comp, params["d"], params["k"])["speedup"]
                     for w in Ws]
            lines.append(f"| {design} | {comp} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pingpong", help="(under mpiexec -n 2) print {bytes: seconds} as JSON")
    p.add_argument("--reps", type=int, default=200)
    p = sub.add_parser("measure", help="measure, fit, plot, write the parameters")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "costmodel.json"))
    p.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "costmodel.png"))
    p.add_argument("--scaling", default=os.path.join(ROOT, "bench", "results", "scaling.json"),
                   help="measured runs (bench.bench_scaling) to validate against")
    p.add_argument("--d", type=int, default=400)
    p.add_argument("--data", default=os.path.join(ROOT, "bench", "results", ".scaling-work",
                                                  "eps-20000x400.h5"),
                   help="measure c and c_a on this data set (default: bench.bench_scaling's)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--alpha", type=float, help="use this latency (s) instead of the measured one")
    p.add_argument("--bandwidth", type=float, help="use this bandwidth (B/s) instead")
    p.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    if args.cmd == "pingpong":
        res = pingpong(reps=args.reps)
        if res is not None:
            print(json.dumps(res))
        return 0
    times = measure_pingpong(args.reps)
    alpha, bw, fit_err = fit_alpha_beta(times)
    params = {"alpha": args.alpha or alpha, "bandwidth": args.bandwidth or bw,
              "fit_rel_error": fit_err, "pingpong": times, "d": args.d, "k": args.k,
              "compute": measure_compute(args.d, k=args.k, data=args.data),
              "cores": os.cpu_count()}
    if os.path.exists(args.scaling):
        with open(args.scaling) as fh:
            measured = json.load(fh)["runs"]
        rows = validate(params, measured, os.cpu_count())
        params["validation"] = rows
        errs = np.abs([r["rel_error"] for r in rows])
        params["validation_median_abs_rel_error"] = float(np.median(errs))
        params["validation_max_abs_rel_error"] = float(np.max(errs))
        fits = [abs(r["rel_error"]) for r in rows if r["ranks"] <= os.cpu_count()]
        if fits:  # runs with a core for every rank: the regime the model describes
            params["validation_within_cores_runs"] = len(fits)
            params["validation_within_cores_median_abs_rel_error"] = float(np.median(fits))
            params["validation_within_cores_max_abs_rel_error"] = float(np.max(fits))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(params, fh, indent=1)
    plot(params, args.figure)
    print(f"alpha {params['alpha'] * 1e6:.2f} us  bandwidth {params['bandwidth'] / 1e9:.2f} GB/s  "
          f"fit max rel error {fit_err:.1%}")
    for name in ("top_k", "rand_k", "none"):
        pr = params["compute"][name]
        print(f"compute {name}: c = {pr['c'] * 1e6:.2f} us/sample, c_a = {pr['c_a'] * 1e6:.2f} us/message")
    if "validation" in params:
        print(f"validation vs {len(params['validation'])} measured runs: median |rel error| "
              f"{params['validation_median_abs_rel_error']:.0%}, max "
              f"{params['validation_max_abs_rel_error']:.0%}")
        if "validation_within_cores_runs" in params:
            print(f"  of which {params['validation_within_cores_runs']} runs with a core per rank: "
                  f"median |rel error| {params['validation_within_cores_median_abs_rel_error']:.0%}, "
                  f"max {params['validation_within_cores_max_abs_rel_error']:.0%}")
    print(table(params))
    print(f"-> {args.out}, {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
