"""Alpha-beta cost model of the five designs, fitted on the machine at hand.

Parameters (all measured here, `python -m analysis.costmodel measure`):
  alpha  latency of one MPI message (s)           } fitted to an MPI ping-pong (mpiexec -n 2,
  B      bandwidth (bytes/s)                       } from a compiled loop as in mpimem.comm.segments):
                                                     t(m) = alpha + m / B, least squares on medians
  c      worker compute per sample (s): gradient + compression (mpimem.core.step.worker_step)
  c_a    cost of aggregating + applying one message (s): step.agg_add + agg_finish + apply,
         both timed inside the compiled in-process loop (mpimem.comm.segments.local_segment)

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
  sparse-allreduce (ranks W, no server; SparCML-style recursive doubling of float64 partial
      sums, = hierarchical with G = 1): with p = 2^floor(log2 W), rank i >= p first sends its
      sum to rank i - p (pre) and gets the result back at the end (post); the p others exchange
      for log2 p stages with partner i XOR 2^s. A partial sum holding j messages has
      n(j) entries (the union of their coordinates, expected: top-k min(j k, d), the worst
      case of j independent top-k sets; rand-k d (1 - (1 - k/d)^j), the expectation of j
      independent uniform k-sets; dense d) and travels as M(n) = 8 + 12 n bytes (float64 value +
      int32 index) when 12 n < 8 d, else 8 + 8 d (dense float64). Merging a received sum of n
      entries costs c_m(n) = f + min(n, d) e: the affine fit of c_a through the top-k and the
      dense profile (e = (c_a[none] - c_a[top_k]) / (d - k) per entry, f = c_a[top_k] - k e per
      message: partial sums carry explicit indices, so their merge costs what a top-k one does):
      T_sar = c b + c_a + [W > p] (alpha + M(n_pre)/B + c_m(n_pre))
              + sum_{s=0}^{log2 p - 1} (alpha + M(n_s)/B + c_m(n_s))
              + [W > p] (alpha + M(n(W))/B) + c_m(n(W)),
      n_s = n(largest count a rank holds at stage s): 2^s, or 2^(s+1) where a pre-exchange
      folded a second rank in (so n_s <= min(2^(s+1) k_eff, d)); the last term applies U.
  hierarchical (ranks W, groups of G consecutive ranks, one per node, L = ceil(W/G) leaders):
      members Send u_w to the leader (intra-node alpha_n, B_n: the measured shared-memory ones),
      the leader decodes the G messages, the L leaders run the sparse allreduce above over the
      inter-node network (alpha, B: --alpha/--bandwidth) with counts G 2^s, and Bcast the U
      (8 + |U| bytes, |U| = 8 n when 8 n < 4 d else 4 d, n = n(W)) within the group (binomial
      tree, n_b Bcasts as the sync server's):
      T_h = c b + (G-1)(alpha_n + m/B_n) + G c_a + AR(L; alpha, B)
            + ceil(log2 G) (n_b alpha_n + (8 + |U|)/B_n) + c_m(n(W)),
      AR the allreduce terms of T_sar between leaders (pre, stages, post).

Bytes per rank and round (`bytes_per_rank`, each message counted as handed to MPI, the
RUN.h5 bytes_up / bytes_down rule; averaged over the W ranks that compute, the sync server's
rank 0 counts none): n_U = n(W) the union of all W messages, |U| as above.
  server:     up m, down 8 + |U|.
  allgather:  up m, down (W - 1)(m + 8) (the others' messages and their 8-byte sizes).
  sparse-allreduce / hierarchical: members up m, down 8 + |U|; leaders down the members' m,
      up and down every allreduce message M(n) they send / receive (pre, stages, post, with
      each sender's count of messages), up 8 + |U| once when the group has > 1 rank. Sum over
      ranks / W. Top-k's union is data-dependent: n(j) = min(j k, d) (independent, disjoint
      top-k sets) is an upper bound, and the model's stated assumption.

Samples per second = W b / T for the synchronous designs; speed-up = samples/s over one worker
without communication (1 / c, the sequential program), efficiency = speed-up / W.

On an oversubscribed node (ranks > cores) compute and polling share cores; `predict(...,
cores=...)` scales the compute terms by max(1, ranks / cores) for the validation against the
measured runs here. The extrapolation to 64 .. 10,000 workers assumes one core per rank and
this node's alpha and B (shared memory); `--alpha/--bandwidth` give a network's values instead:
then every message of the flat designs (sync, async, allgather, sparse-allreduce) and the
leaders' allreduce of hierarchical cross the network, and only hierarchical's in-group
messages keep the measured shared-memory alpha_n = params["alpha_node"], B_n =
params["bandwidth_node"] (absent: alpha, B).

`predict` takes the user's problem: `--d`, `--k`, `--batch-size`, `--compressor` (top_k,
rand_k, none: the operators with a compute profile), or `--from-run RUN.h5` for d, k, b, the
operator and c = the workers' gradient + compression seconds over the samples (options given
win over the run's). Without a run c and c_a are the recorded profile's (measured at its d).
A bad value is one line `costmodel: error: ...`, exit status 2.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
from numba import njit

from mpimem.comm import mpicall as mc
from mpimem.core.clock import now
from mpimem.comm.launch import mpiexec_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGNS = ("sync", "async", "allgather", "sparse-allreduce", "hierarchical")
BYTE_DESIGNS = ("server", "allgather", "sparse-allreduce", "hierarchical")
GROUP = 32          # hierarchical: ranks per node assumed by the extrapolation (plot, table)
SIZES = (8, 64, 512, 4096, 16384, 65536)  # the range of our messages (dense d=2000: 8 KB)


# ------------------------------------------------------------------------------ measurement
@njit(cache=True)
def _pingpong_loop(mpi, buf, size, n, rank, out):
    """Compiled: n round trips of `size` bytes between ranks 0 and 1 (mpimem.comm.mpicall, as the
    compiled loops call MPI); out[i] = half the i-th round trip (s)."""
    for i in range(n):
        t0 = now(mpi)
        if rank == 0:
            mc.send(mpi, buf, size, 1, 1)
            mc.recv(mpi, buf, size, 1, 2)
        else:
            mc.recv(mpi, buf, size, 0, 1)
            mc.send(mpi, buf, size, 0, 2)
        out[i] = (now(mpi) - t0) / 2


def pingpong(sizes=SIZES, reps=200):
    """Run under mpiexec -n 2: median one-way time per size (half the round trip), rank 0,
    from a compiled loop calling MPI as the training loops do (mpimem.comm.segments)."""
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
    cmd = [*mpiexec_command(2), sys.executable, "-m", "analysis.costmodel", "pingpong",
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
    from mpimem.core.operators import make_compressor
    from mpimem.run.config import TrainConfig, resolve
    from mpimem.data.dataset import read_shard
    from mpimem.run.algorithm import Algorithm, ShardData

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
        rule = Algorithm(cfg, d, 1, comp)
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
def message_bytes(compressor, k, d, bits=None):
    """Uplink message m (interface): top-k 8k, rand-k 4k, qsgd 4 + ceil(d bits / 8) (with
    `bits`), every other operator dense 4d."""
    if compressor == "qsgd" and bits:
        return 4 + math.ceil(d * bits / 8)
    return {"top_k": 8 * k, "rand_k": 4 * k}.get(compressor, 4 * d)


def union_size(j, compressor, k, d):
    """n(j): expected entries of a sum of j messages (the union of their coordinates; module
    docstring). top-k min(j k, d) (disjoint sets: the stated assumption, an upper bound), rand-k
    the expectation over j independent uniform k-subsets, a dense operator d."""
    if j <= 0:
        return 0.0
    if compressor == "top_k":
        return float(min(j * k, d))
    if compressor == "rand_k":
        return d * (1.0 - (1.0 - k / d) ** j)
    return float(d)


def sum_message_bytes(n, d):
    """M(n): one allreduce message, 8-byte header + sparse float64 (12 n) or dense (8 d)."""
    return 8 + (12 * n if 12 * n < 8 * d else 8 * d)


def downlink_bytes(n, d):
    """|U|: U = float32(sum / W) as int32 idx + float32 vals (8 n) when 8 n < 4 d, else 4 d."""
    return 8 * n if 8 * n < 4 * d else 4 * d


def group_sizes(W, G):
    """Sizes of the groups of G consecutive ranks (rank // G); the last may be smaller."""
    G = max(1, min(G, W))
    return [G] * (W // G) + ([W % G] if W % G else [])


def allreduce_schedule(counts):
    """Recursive doubling between leaders holding counts[i] messages each (interface step 3).

    Returns the phases in order, each (kind, [(sender, receiver, messages the sent sum
    holds), ...]), kind "pre", "stage" or "post": the pre-exchange (leader i >= p sends to
    i - p, p = 2^floor(log2 L)), the log2 p stages (i <-> i XOR 2^s), the post-exchange (i - p
    returns the full sum to i)."""
    L = len(counts)
    c = list(counts)
    if L <= 1:
        return []
    p = 1 << (L.bit_length() - 1)
    phases = []
    pre = [(i, i - p, c[i]) for i in range(p, L)]
    if pre:
        phases.append(("pre", pre))
        for i in range(p, L):
            c[i - p] += c[i]
    s = 1
    while s < p:
        phases.append(("stage", [(i, i ^ s, c[i]) for i in range(p)]))
        c = [c[i] + c[i ^ s] for i in range(p)] + c[p:]
        s <<= 1
    if pre:
        phases.append(("post", [(i - p, i, sum(counts)) for i in range(p, L)]))
    return phases


def bytes_per_rank(design, W, compressor, k, d, G=1, bits=None):
    """Expected bytes per rank and round {"up", "down", "total"} (module docstring; the RUN.h5
    counters' rules): summed over the W ranks that compute, divided by W. design: "server"
    (the sync server, "sync" too), "allgather", "sparse-allreduce", "hierarchical" (groups of
    G consecutive ranks; G = 1 is sparse-allreduce)."""
    m = message_bytes(compressor, k, d, bits)
    nU = union_size(W, compressor, k, d)
    U = 8 + downlink_bytes(nU, d)
    if design in ("server", "sync"):
        up, down = W * m, W * U
    elif design == "allgather":
        up, down = W * m, W * (W - 1) * (m + 8)
    elif design in ("sparse-allreduce", "hierarchical"):
        sizes = group_sizes(W, 1 if design == "sparse-allreduce" else G)
        members = W - len(sizes)
        up = down = members * m                        # members' Send = the leaders' receives
        down += members * U                            # each member's Bcast of U
        up += sum(U for g in sizes if g > 1)           # each leader's Bcast, counted once
        for _, phase in allreduce_schedule(sizes):
            for _, _, j in phase:                      # counted by sender and by receiver
                M = sum_message_bytes(union_size(j, compressor, k, d), d)
                up += M
                down += M
    else:
        raise ValueError(f"bytes_per_rank: unknown design {design!r}")
    return {"up": up / W, "down": down / W, "total": (up + down) / W}


def merge_cost(params, compressor):
    """c_m(n) = f + min(n, d) e (module docstring): the affine fit of c_a through the top-k
    and the dense profile (the d and k they were measured at); without both, c_a per message."""
    comp = params["compute"]
    d = comp.get("d", params["d"])
    if "top_k" in comp and "none" in comp:
        k = comp["top_k"].get("k", params["k"])
        e = max(0.0, (comp["none"]["c_a"] - comp["top_k"]["c_a"]) / max(1, d - k))
        f = max(0.0, comp["top_k"]["c_a"] - k * e)
    else:
        e, f = 0.0, comp[compressor]["c_a"]
    return lambda n: f + min(n, d) * e


def _allreduce_time(phases, compressor, k, d, alpha, B, cm, slow):
    """The allreduce's terms of T_sar: per phase alpha + the largest message's M(n)/B, plus the
    merge c_m(n) except in the post-exchange (the result overwrites the receiver's sum)."""
    T = 0.0
    for kind, phase in phases:
        n = max(union_size(j, compressor, k, d) for _, _, j in phase)
        T += alpha + sum_message_bytes(n, d) / B + (0.0 if kind == "post" else cm(n) * slow)
    return T


def predict(params, design, W, compressor, d, k, b=1, cores=None, G=None):
    """Predicted seconds per sample-batch round and samples/s for one design at W workers
    (hierarchical: groups of G ranks, default params["group_size"] or GROUP)."""
    alpha, B = params["alpha"], params["bandwidth"]
    prof = params["compute"][compressor]
    c, c_a = prof["c"], prof["c_a"]
    keff = k if compressor in ("top_k", "rand_k") else d
    m = message_bytes(compressor, k, d)
    ranks = W + 1 if design in ("sync", "async") else W
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
    elif design == "allgather":
        hops = math.ceil(math.log2(W)) if W > 1 else 0
        T = cb + 2 * hops * alpha + (W - 1) * m / B + W * c_a * slow
        rate = W * b / T
    elif design in ("sparse-allreduce", "hierarchical"):
        if design == "sparse-allreduce":
            G = 1
        elif G is None:
            G = params.get("group_size", GROUP)
        G = max(1, min(G, W))
        a_n = params.get("alpha_node", alpha)
        B_n = params.get("bandwidth_node", B)
        cm = merge_cost(params, compressor)
        sizes = group_sizes(W, G)
        nU = union_size(W, compressor, k, d)
        n_b = 1 if compressor not in ("top_k", "rand_k") else 2
        T = (cb + (G - 1) * (a_n + m / B_n) + G * c_a * slow
             + _allreduce_time(allreduce_schedule(sizes), compressor, k, d, alpha, B, cm, slow)
             + math.ceil(math.log2(G)) * (n_b * a_n + (8 + downlink_bytes(nU, d)) / B_n)
             + cm(nU) * slow)
        rate = W * b / T
    else:
        raise ValueError(f"predict: unknown design {design!r}")
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


def plot(params, path, max_w=10000, bs=(1, 64), G=None):
    """Predicted speed-up against W up to max_w for every design, top-k (solid) and rand-k
    (dashed), one panel per mini-batch b."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G = G or params.get("group_size", GROUP)
    Ws = np.unique(np.round(np.logspace(0, math.log10(max_w), 60)).astype(int))
    fig, axes = plt.subplots(1, len(bs), figsize=(6.5 * len(bs), 4.8), squeeze=False)
    for ax, b in zip(axes[0], bs):
        for design, color in zip(DESIGNS, ("C0", "C1", "C2", "C3", "C4")):
            for comp, style in (("top_k", "-"), ("rand_k", "--")):
                s = [predict(params, design, int(w), comp, params["d"], params["k"], b=b,
                             G=G)["speedup"] for w in Ws]
                name = design if design != "hierarchical" else f"hierarchical G={G}"
                ax.loglog(Ws, s, style, color=color,
                          label=f"{name}, {'top' if comp == 'top_k' else 'rand'}-{params['k']}")
        ax.loglog(Ws, Ws, ":", color="gray", label="linear")
        for w in (64, 1024, 10000):
            ax.axvline(w, color="lightgray", lw=0.8)
        ax.set_xlabel("workers W")
        ax.set_ylabel("predicted speed-up over 1 worker")
        ax.set_title(f"b = {b}", fontsize=10)
        ax.legend(fontsize=6.5, ncol=2)
    net = (f"network alpha={params['alpha'] * 1e6:.2f} us, B={params['bandwidth'] / 1e9:.2f} GB/s; "
           f"node alpha={params.get('alpha_node', params['alpha']) * 1e6:.2f} us, "
           f"B={params.get('bandwidth_node', params['bandwidth']) / 1e9:.2f} GB/s")
    fig.suptitle(f"alpha-beta model (analysis/costmodel.py), d={params['d']}: {net}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(params, Ws=(1, 64, 1024, 10000), b=1, G=None, designs=DESIGNS,
          comps=("rand_k", "top_k", "none")):
    """Markdown table of the predicted speed-ups (hierarchical: groups of G)."""
    lines = ["| design | operator | " + " | ".join(f"W={w}" for w in Ws) + " |",
             "|---|---|" + "---|" * len(Ws)]
    for design in designs:
        for comp in comps:
            cells = [predict(params, design, w, comp, params["d"], params["k"], b=b,
                             G=G)["speedup"] for w in Ws]
            lines.append(f"| {design} | {comp} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def advice(params, Ws=(64, 1024, 10000), bs=(1, 64), comps=("top_k", "rand_k"), G=None):
    """Markdown: the design predicted fastest (and the runner-up) per b, operator and W."""
    lines = ["| b | operator | " + " | ".join(f"W={w}" for w in Ws) + " |",
             "|---|---|" + "---|" * len(Ws)]
    for b in bs:
        for comp in comps:
            cells = []
            for w in Ws:
                s = sorted(((predict(params, des, w, comp, params["d"], params["k"], b=b,
                                     G=G)["speedup"], des) for des in DESIGNS), reverse=True)
                fmt = lambda v: f"{v:.1f}x" if v < 10 else f"{v:.0f}x"
                cells.append(f"**{s[0][1]}** {fmt(s[0][0])} (then {s[1][1]} {fmt(s[1][0])})")
            lines.append(f"| {b} | {comp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bytes_model_table(d, k, Ws=(64, 1024, 10000), comps=("top_k", "rand_k"), G=GROUP):
    """Markdown: modelled bytes per rank and round (up + down) at scale."""
    lines = ["| design | operator | " + " | ".join(f"W={w}" for w in Ws) + " |",
             "|---|---|" + "---|" * len(Ws)]
    for design in BYTE_DESIGNS:
        for comp in comps:
            cells = [bytes_per_rank(design, w, comp, k, d, G=G)["total"] for w in Ws]
            name = design + (f" (G={G})" if design == "hierarchical" else "")
            lines.append(f"| {name} | {comp} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ bytes: model vs RUN.h5
TOPOLOGY = {"server": "server", "allgather": "allgather", "sparse-allreduce": "sparse-allreduce",
            "hierarchical": "hierarchical"}


def measured_bytes(design, W, compressor, k, data, workdir, G=2, epochs=1.0, timeout=300):
    """Run `mpiexec -n ranks python -m mpimem train DATA --topology ...` (ranks W + 1 for the
    server, else W; oversubscribed is fine: bytes do not depend on timing) and return the
    RUN.h5 counters per computing rank and round: bytes_up / rounds / W (last row)."""
    from mpimem.run.runfile import read_run

    ranks = W + 1 if design == "server" else W
    tag = f"{design}-W{W}-{compressor}-k{k}" + (f"-G{G}" if design == "hierarchical" else "")
    out = os.path.join(workdir, tag + ".h5")
    cmd = [*mpiexec_command(ranks), sys.executable, "-m", "mpimem", "train", data,
           "--topology", TOPOLOGY[design], "--compressor", compressor, "--k", str(k),
           "--epochs", str(epochs), "--out", out, "--overwrite", "--quiet",
           "--checkpoint-every", "off", "--eval-every", str(epochs)]
    if design == "hierarchical":
        cmd += ["--group-size", str(G)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPIMEM_EXPECT_RANKS=str(ranks))   # a launcher that started singletons fails
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    m = read_run(out)["metrics"]
    rounds = float(m["round"][-1])
    up, down = float(m["bytes_up"][-1]) / rounds / W, float(m["bytes_down"][-1]) / rounds / W
    return {"up": up, "down": down, "total": up + down, "rounds": rounds}


def validate_bytes(data, Ws=(2, 3, 4, 5), designs=BYTE_DESIGNS, compressors=("top_k", "rand_k"),
                   k=10, G=2, workdir=None, epochs=1.0, log=None):
    """Measured (RUN.h5) beside predicted (bytes_per_rank) bytes per rank and round, every
    design x W x operator; rel_error = predicted / measured - 1 on up + down."""
    import h5py
    import tempfile

    workdir = workdir or tempfile.mkdtemp(prefix="costmodel-bytes-")
    with h5py.File(data, "r") as h5:
        d = int(h5.attrs["d"])
    rows = []
    for comp in compressors:
        for design in designs:
            for W in Ws:
                got = measured_bytes(design, W, comp, k, data, workdir, G=G, epochs=epochs)
                pred = bytes_per_rank(design, W, comp, k, d, G=G if design == "hierarchical" else 1)
                row = {"design": design, "W": W, "compressor": comp, "k": k, "d": d,
                       "G": G if design == "hierarchical" else None, "rounds": got["rounds"],
                       "measured_up": got["up"], "measured_down": got["down"],
                       "measured": got["total"], "predicted_up": pred["up"],
                       "predicted_down": pred["down"], "predicted": pred["total"],
                       "rel_error": pred["total"] / got["total"] - 1.0}
                rows.append(row)
                if log:
                    log(row)
    return rows


def bytes_table(rows):
    lines = ["| design | operator | W | measured B/rank/round (up + down) | predicted | error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        name = r["design"] + (f" (G={r['G']})" if r.get("G") else "")
        lines.append(f"| {name} | {r['compressor']} | {r['W']} | "
                     f"{r['measured_up']:.1f} + {r['measured_down']:.1f} = {r['measured']:.1f} | "
                     f"{r['predicted_up']:.1f} + {r['predicted_down']:.1f} = "
                     f"{r['predicted']:.1f} | "
                     f"{r['rel_error']:+.1%} |")
    errs = [abs(r["rel_error"]) for r in rows]
    lines.append(f"\nmedian |error| {np.median(errs):.1%}, max {np.max(errs):.1%} "
                 f"({len(rows)} runs)")
    return "\n".join(lines)


def with_network(params, alpha=None, bandwidth=None, group_size=None):
    """The parameters with a network's alpha/B (the measured ones stay as the in-node
    alpha_node/bandwidth_node of hierarchical) and hierarchical's group size."""
    p = dict(params)
    p.setdefault("alpha_node", params["alpha"])
    p.setdefault("bandwidth_node", params["bandwidth"])
    if alpha:
        p["alpha"] = alpha
    if bandwidth:
        p["bandwidth"] = bandwidth
    if group_size:
        p["group_size"] = group_size
    return p


def _print_tables(params, bs=(1, 64), comps=None):
    G = params.get("group_size", GROUP)
    print(f"network alpha {params['alpha'] * 1e6:.2f} us, B {params['bandwidth'] / 1e9:.2f} GB/s; "
          f"in-node alpha {params['alpha_node'] * 1e6:.2f} us, "
          f"B {params['bandwidth_node'] / 1e9:.2f} GB/s; hierarchical G = {G}")
    for b in bs:
        print(f"\nb = {b}:")
        print(table(params, Ws=(1, 64, 1024, 10000), b=b,
                    **({"comps": comps} if comps else {})))
    print("\nfastest design (predicted speed-up over one worker):")
    print(advice(params, bs=bs, comps=comps or ("top_k", "rand_k")))
    print(f"\nbytes per rank and round (up + down), d = {params['d']}, k = {params['k']}:")
    print(bytes_model_table(params["d"], params["k"], G=G, comps=comps or ("top_k", "rand_k")))


# ------------------------------------------------------------------ predict: the user's problem
PREDICT_COMPRESSORS = ("top_k", "rand_k", "none")   # the operators the model has profiles of


class CostModelError(Exception):
    """A bad `predict` setting: one line `costmodel: error: ...`, exit status 2."""


def run_problem(path) -> dict:
    """d, k, b, the operator and the measured compute per sample of a run file (RUN.h5):
    c = the workers' gradient + compression seconds (/timing/seconds) over the samples they
    processed (/metrics/samples, last point). CostModelError when it is not usable."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") not in ("mpimem-run", b"mpimem-run"):
                raise CostModelError(f"--from-run {path}: not an mpimem run file")
            cfg = json.loads(h5.attrs["config"])
            d = int(h5.attrs["d"])
            seconds = h5["timing/seconds"][()] if "timing/seconds" in h5 else None
            columns = (json.loads(h5["timing/seconds"].attrs["columns"])
                       if seconds is not None else [])
            samples = float(h5["metrics/samples"][-1]) if "metrics/samples" in h5 else 0.0
    except CostModelError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        raise CostModelError(f"--from-run {path}: cannot read it as a run file "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    comp = cfg.get("compressor")
    if comp not in PREDICT_COMPRESSORS:
        raise CostModelError(f"--from-run {path}: compressor {comp!r} has no cost model "
                             f"(the model knows {', '.join(PREDICT_COMPRESSORS)})")
    out = {"d": d, "k": d if comp == "none" else int(cfg.get("k") or 1),
           "b": int(cfg.get("batch_size") or 1), "compressor": comp, "c": None}
    if seconds is not None and samples > 0 and {"gradient", "compression"} <= set(columns):
        server = cfg.get("topology", "server") == "server"
        workers = seconds[1:] if server else seconds
        gi, ci = columns.index("gradient"), columns.index("compression")
        c = float(workers[:, gi].sum() + workers[:, ci].sum()) / samples
        if c > 0:
            out["c"] = c
    return out


def problem(params, d=None, k=None, compressor=None, c=None):
    """The parameters for the user's problem: d and k (the tables' and the bytes'), and, with c,
    the compute per sample of `compressor` (measured by a run; else the recorded profile's,
    measured at params' own d and k)."""
    p = dict(params)
    p["compute"] = {name: dict(prof) if isinstance(prof, dict) else prof
                    for name, prof in params["compute"].items()}
    p["compute"].setdefault("d", params["d"])   # merge_cost's fit stays at the measured d
    if d is not None:
        p["d"] = d
    if k is not None:
        p["k"] = k
    if c is not None:
        p["compute"][compressor]["c"] = c
    return p


def predict_settings(args) -> dict:
    """The checked settings of `predict` (CostModelError on the first bad one): d, k, b,
    compressors and c, from --from-run first, then the explicit options over it."""
    run = run_problem(args.from_run) if args.from_run else {}
    d = args.d if args.d is not None else run.get("d")
    comp = args.compressor or run.get("compressor")
    k = args.k if args.k is not None else run.get("k")
    b = args.batch_size if args.batch_size is not None else run.get("b")
    for name, value in (("--d", d), ("--k", k), ("--batch-size", b), ("--group-size",
                                                                       args.group_size)):
        if value is not None and value < 1:
            raise CostModelError(f"{name} {value}: must be at least 1")
    for name, value in (("--alpha", args.alpha), ("--bandwidth", args.bandwidth)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CostModelError(f"{name} {value}: must be a positive number")
    if comp == "none" and k is not None and d is not None and args.k is None:
        k = d
    if k is not None and d is not None and k > d:
        raise CostModelError(f"--k {k} is above --d {d}: k coordinates of d")
    return {"d": d, "k": k, "b": b, "compressor": comp,
            "c": run.get("c") if comp == run.get("compressor") else None}


def bytes_grid(rows):
    """Markdown, one row per design and operator, one column per W: measured / predicted bytes
    per rank and round (up + down) and the error."""
    Ws = sorted({r["W"] for r in rows})
    keys = []
    for r in rows:
        if (r["design"], r["compressor"], r.get("G")) not in keys:
            keys.append((r["design"], r["compressor"], r.get("G")))
    lines = ["| design | operator | " + " | ".join(f"W={w}" for w in Ws) + " |",
             "|---|---|" + "---|" * len(Ws)]
    for design, comp, G in keys:
        cells = []
        for w in Ws:
            hit = [r for r in rows if (r["design"], r["compressor"], r.get("G"), r["W"])
                   == (design, comp, G, w)]
            cells.append(f"{hit[0]['measured']:,.0f} / {hit[0]['predicted']:,.0f} "
                         f"({hit[0]['rel_error']:+.1%})" if hit else "")
        name = design + (f" (G={G})" if G else "")
        lines.append(f"| {name} | {comp} k={rows[0]['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line `costmodel: error: ...`, exit status 2 (as mpimem)."""

    def error(self, message):
        print(f"costmodel: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    ap = OneLineParser(description=__doc__.splitlines()[0])
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
    p = sub.add_parser("predict", help="tables (b = 1, 64) and the figure from the recorded "
                       "parameters, optionally with a network's alpha/B and the user's problem "
                       "(d, k, b, operator, or --from-run); measures nothing")
    p.add_argument("--params", default=os.path.join(ROOT, "bench", "results", "costmodel.json"))
    p.add_argument("--alpha", type=float, help="network latency (s) (default: the measured one)")
    p.add_argument("--bandwidth", type=float, help="network bandwidth (B/s)")
    p.add_argument("--group-size", type=int, default=GROUP,
                   help=f"hierarchical: ranks per node (default {GROUP})")
    p.add_argument("--figure", help="write the speed-up figure here (PNG)")
    p.add_argument("--d", type=int, help="dimension d of the problem (default: the recorded "
                   "parameters' d, 400)")
    p.add_argument("--k", type=int, help="coordinates sent by top-k / rand-k (default: the "
                   "recorded k, 10)")
    p.add_argument("--batch-size", type=int, help="mini-batch b (default: tables for b = 1 and 64)")
    p.add_argument("--compressor", choices=PREDICT_COMPRESSORS,
                   help="only this operator (default: all of them)")
    p.add_argument("--from-run", metavar="RUN.h5", help="take d, k, b, the operator and the "
                   "measured compute per sample from a run file (options given win)")
    p = sub.add_parser("bytes", help="bytes per rank and round: RUN.h5 of real runs "
                       "(mpiexec) beside bytes_per_rank")
    p.add_argument("data", help="an mpimem data set (e.g. mpimem data synth --like rcv1 --n 2000 "
                   "--d 3000)")
    p.add_argument("--workers", default="2,3,4,5")
    p.add_argument("--designs", default=",".join(BYTE_DESIGNS))
    p.add_argument("--compressors", default="top_k,rand_k")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--workdir", help="where the run files go (default: a temporary folder)")
    p.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.cmd == "pingpong":
        res = pingpong(reps=args.reps)
        if res is not None:
            print(json.dumps(res))
        return 0
    if args.cmd == "predict":
        try:
            want = predict_settings(args)
        except CostModelError as err:
            print(f"costmodel: error: {err}", file=sys.stderr)
            return 2
        with open(args.params) as fh:
            params = with_network(json.load(fh), args.alpha, args.bandwidth, args.group_size)
        measured_at = params["compute"].get("d", params["d"])
        params = problem(params, want["d"], want["k"], want["compressor"], want["c"])
        bs = (want["b"],) if want["b"] else (1, 64)
        comps = (want["compressor"],) if want["compressor"] else None
        c_note = (f"c = {want['c'] * 1e6:.3g} us/sample measured by {args.from_run}"
                  if want["c"] else f"c and c_a of the recorded profile (measured at d = "
                  f"{measured_at})")
        print(f"problem: d = {params['d']}, k = {params['k']}, b = {', '.join(map(str, bs))}, "
              f"operator {', '.join(comps or ('rand_k', 'top_k', 'none'))}; {c_note}")
        _print_tables(params, bs=bs, comps=comps)
        if args.figure:
            plot(params, args.figure, bs=bs)
            print(f"-> {args.figure}")
        return 0
    if args.cmd == "bytes":
        rows = validate_bytes(args.data, [int(w) for w in args.workers.split(",")],
                              args.designs.split(","), args.compressors.split(","), args.k,
                              args.group_size, args.workdir, args.epochs,
                              log=lambda r: print(f"{r['design']:17s} {r['compressor']:6s} "
                                                  f"W={r['W']}  measured {r['measured']:9.1f}  "
                                                  f"predicted {r['predicted']:9.1f}  "
                                                  f"{r['rel_error']:+.1%}", flush=True))
        print(bytes_table(rows))
        print(bytes_grid(rows))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"data": args.data, "rows": rows}, fh, indent=1)
        return 0
    times = measure_pingpong(args.reps)
    alpha, bw, fit_err = fit_alpha_beta(times)
    params = {"alpha": args.alpha or alpha, "bandwidth": args.bandwidth or bw,
              "alpha_node": alpha, "bandwidth_node": bw,
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
    _print_tables(with_network(params))
    print(f"-> {args.out}, {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
