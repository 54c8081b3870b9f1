"""Checkpoint cost: write time and size against d and W, and the overhead on training throughput.

  .venv/bin/python bench/bench_checkpoint.py [--quick] [--out bench/results/checkpoint.md]

Part 1 (in process): rank 0's CheckpointWriter.write of a full sync-mode state (server x, S,
Cmark; per worker m, perm of an n/W shard, RNG states) plus load() with checksum verification.
Part 2 (mpiexec): wall time of `mpimem train` on an RCV1-like synthetic set with checkpoints
off, at the default interval, and every 1 s (and the time of the final checkpoint alone).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mpimem.run import checkpoint as CK  # noqa: E402

PY = sys.executable
MPIEXEC = os.path.join(os.path.dirname(PY), "mpiexec")


def state(d, workers, n):
    rng = np.random.default_rng(0)
    server = {"z": rng.standard_normal(d), "s": np.float64(0.9), "timing": np.zeros(5),
              "S": rng.standard_normal(d), "Cmark": rng.standard_normal(d),
              "C": np.float64(1.0), "wsum": np.float64(2.0)}
    parts = [{"m": rng.standard_normal(d), "perm": rng.permutation(n // workers),
              "cursor": np.zeros(2, np.int64), "rng_sample": np.zeros(4, np.uint64),
              "rng_quant": np.zeros(4, np.uint64), "timing": np.zeros(5),
              "bytes_up": np.int64(1), "bytes_down": np.int64(1)} for _ in range(workers)]
    return server, parts


def bench_write(ds, ws, n, repeats):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in ds:
            for w in ws:
                server, parts = state(d, w, n)
                writer = CK.CheckpointWriter(os.path.join(tmp, f"d{d}w{w}"), 2)
                times, loads = [], []
                for i in range(repeats):
                    attrs = {"round": i + 1, "workers": w, "config": "{}", "elapsed": 0.0,
                             "dataset_fingerprint": "x"}
                    t0 = time.perf_counter()
                    path = writer.write(attrs, server, parts, {"round": [0.0]})
                    times.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    CK.load(path)
                    loads.append(time.perf_counter() - t0)
                rows.append((d, w, os.path.getsize(path), statistics.median(times),
                             statistics.median(loads)))
    return rows


def train(data, out, every, extra):
    cmd = [MPIEXEC, "-n", "3", PY, "-m", "mpimem", "train", data, "--out", out, "--quiet",
           "--checkpoint-every", every, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=ROOT)
    wall = time.perf_counter() - t0
    import h5py
    with h5py.File(out) as h5:
        return wall, float(h5["metrics/wall_time"][-1])


def bench_overhead(n, d, epochs, repeats):
    extra = ["--compressor", "top_k", "--k", "50", "--epochs", str(epochs), "--eval-every",
             str(epochs)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "rcv.h5")
        subprocess.run([PY, "-m", "mpimem", "data", "synth", "--like", "rcv1", "--n", str(n),
                        "--d", str(d), data], check=True, capture_output=True, cwd=ROOT)
        train(data, os.path.join(tmp, "warm.h5"), "off", extra)  # numba cache warm
        for every in ["off", CK.DEFAULT_EVERY, "1s"]:
            loop = []
            for i in range(repeats):
                out = os.path.join(tmp, f"r{every}{i}.h5")
                loop.append(train(data, out, every, extra)[1])
            ckdir = CK.checkpoint_dir(out)
            count = len(os.listdir(ckdir)) if os.path.isdir(ckdir) else 0
            rows.append((every, statistics.median(loop), min(loop), count))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "checkpoint.md"))
    args = ap.parse_args()
    ds = [2000, 47236, 500000] if not args.quick else [2000, 47236]
    write = bench_write(ds, [1, 2, 4], 20000, 3 if args.quick else 5)
    n, d, epochs = (20000, 47236, 3) if not args.quick else (6000, 47236, 2)
    over = bench_overhead(n, d, epochs, 2 if args.quick else 3)
    base = over[0][1]
    lines = ["# Checkpoint cost", "",
             f"Command: `.venv/bin/python bench/bench_checkpoint.py{' --quick' if args.quick else ''}`"
             f" ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared with other jobs)", "",
             "## Write (rank 0, incl. SHA-256, fsync, rename) and verified load",
             "n = 20,000 rows split over W shards; median of repeats.", "",
             "| d | W | size (MB) | write (ms) | load+verify (ms) |", "|---:|---:|---:|---:|---:|"]
    for d, w, size, t, lt in write:
        lines.append(f"| {d:,} | {w} | {size / 1e6:.2f} | {t * 1e3:.1f} | {lt * 1e3:.1f} |")
    lines += ["", "## Training throughput (mpiexec -n 3, W = 2, RCV1-like synthetic "
              f"n = {n:,}, d = {d:,}, top-50, {epochs} epochs)",
              "Loop wall time from RUN.h5 (metrics/wall_time at the end; the final checkpoint "
              "is written after it and not included); median and min of repeats.", "",
              "| --checkpoint-every | loop s (median) | loop s (min) | overhead vs off (median) | checkpoints kept |",
              "|---|---:|---:|---:|---:|"]
    for every, med, mn, count in over:
        lines.append(f"| {every} | {med:.2f} | {mn:.2f} | {100 * (med / base - 1):+.1f}% | {count} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
