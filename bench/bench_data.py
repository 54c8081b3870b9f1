"""Data pipeline figures: LIBSVM conversion throughput and peak RSS (next to scikit-learn's
`load_svmlight_file` on the same file, in the same run) and the time of `data optimum` on an
RCV1-like set. Writes bench/results/data.md.

    python -m bench.bench_data [--quick] [--rcv1-n N] [--text-mb MB]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "data.md"


def timed_peak(cmd):
    """(seconds, peak RSS MiB) of running `cmd` as a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr.read().decode()}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def write_rcv1_text(path, megabytes, folder):
    """An RCV1-like LIBSVM text of about `megabytes` MB (from `data synth`, one-based)."""
    from mpimem.data.dataset import read_shard
    from mpimem.data.synth import synthesize
    rows = int(megabytes * 1e6 / 1150) + 1          # about 1.15 kB of text per row
    synthesize(folder / "text-src.h5", "rcv1", n=rows, seed=11)
    shard = read_shard(folder / "text-src.h5")
    X, y = shard.X, shard.y
    with open(path, "w") as f:
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            feats = " ".join(f"{j + 1}:{v:.7g}" for j, v in zip(X.indices[lo:hi], X.data[lo:hi]))
            f.write(f"{int(y[i]):+d} {feats}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--rcv1-n", type=int, default=None,
                        help="rows of the RCV1-like set for `data optimum` (default 677,399; "
                             "--quick: 50,000)")
    parser.add_argument("--text-mb", type=float, default=None,
                        help="size of the LIBSVM text (default 300; --quick: 60)")
    args = parser.parse_args(argv)
    n = args.rcv1_n or (50_000 if args.quick else 677_399)
    text_mb = args.text_mb or (60 if args.quick else 300)
    mpimem = [sys.executable, "-m", "mpimem", "data"]
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        folder = Path(tmp)
        text = folder / "rcv1.svm"
        # In a child: a child's peak RSS counts the parent's at the fork, so the parent stays small.
        timed_peak([sys.executable, "-c", "import sys; from bench.bench_data import write_rcv1_text as "
                    "w; from pathlib import Path as P; w(P(sys.argv[1]), float(sys.argv[2]), "
                    "P(sys.argv[3]))", text, str(text_mb), folder])
        size = text.stat().st_size / 1e6
        sec, peak = timed_peak([*mpimem, "convert", text, folder / "c.h5", "--storage", "csr"])
        rows.append(("mpimem data convert (4 MiB blocks)", f"{size:.0f} MB text",
                     f"{sec:.2f} s", f"{size / sec:.1f} MB/s", f"{peak:.0f} MiB"))
        sk = "from sklearn.datasets import load_svmlight_file as L; import sys; L(sys.argv[1])"
        sec_sk, peak_sk = timed_peak([sys.executable, "-c", sk, text])
        rows.append(("sklearn load_svmlight_file (in memory)", f"{size:.0f} MB text",
                     f"{sec_sk:.2f} s", f"{size / sec_sk:.1f} MB/s", f"{peak_sk:.0f} MiB"))
        rows.append(("ratio mpimem / sklearn", "", "", f"{sec_sk / sec:.2f}x", ""))
        sec, peak = timed_peak([*mpimem, "synth", "--like", "rcv1", "--n", str(n), folder / "r.h5"])
        rows.append(("mpimem data synth --like rcv1", f"n={n:,}", f"{sec:.1f} s", "", f"{peak:.0f} MiB"))
        sec, peak = timed_peak([*mpimem, "optimum", folder / "r.h5"])
        from mpimem.data.dataset import read_meta
        meta = read_meta(folder / "r.h5")
        rows.append(("mpimem data optimum (lambda = 1/n)", f"n={n:,} d={meta.d:,}",
                     f"{sec:.1f} s", f"f*={meta.fstar:.10g}, grad norm {meta.grad_norm_star:.1e}",
                     f"{peak:.0f} MiB"))
    lines = ["# Data pipeline benchmark", "",
             f"Command: `{' '.join(['python -m bench.bench_data', *(argv or sys.argv[1:])])}`",
             f"Machine: {os.cpu_count()} cores, load average at the end "
             f"{os.getloadavg()[0]:.1f} (other work shares the machine: compare rows of one run, "
             f"not runs); numpy {np.__version__}; each step one process.", "",
             "| step | size | time | rate / result | peak RSS |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
