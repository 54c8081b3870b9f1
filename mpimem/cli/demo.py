"""`make demo`: the paper's first experiment in miniature, end to end, in about a minute.

1. generate a small epsilon-like data set (n = 10,000, d = 2,000) and its optimum f*;
2. train with `mpiexec -n 3` (1 server + 2 workers): top-1 with memory, top-1 without memory,
   plain SGD, each 3 epochs with the paper's settings (gamma = 2, a = d/k, (a+t)^2 averaging);
3. print f(xbar) - f* and the MB each method communicated; the RUN.h5 files stay in demo-out/.
"""
import os
import subprocess
import sys
import time

from mpimem.run.runfile import read_run

OUT = "demo-out"
RUNS = [("top-1, memory", ["--compressor", "top_k", "--k", "1"]),
        ("top-1, no memory", ["--compressor", "top_k", "--k", "1", "--no-memory"]),
        ("SGD (no compression)", ["--compressor", "none"])]


def mpimem(*args):
    return [sys.executable, "-m", "mpimem", *map(str, args)]


def _usable(path) -> bool:
    """A demo data set from an earlier `make demo` that this version still reads (with f*)."""
    from mpimem.data.dataset import read_meta
    from mpimem.errors import MpimemError

    try:
        return read_meta(path).fstar_for(1.0 / 10000) is not None
    except (MpimemError, OSError):
        return False


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    data = os.path.join(OUT, "epsilon-like.h5")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    started = time.time()
    if not _usable(data):
        subprocess.run(mpimem("data", "synth", "--like", "epsilon", "--n", 10000, "--d", 2000,
                              "--seed", 1, "--overwrite", data), check=True)
        subprocess.run(mpimem("data", "optimum", data), check=True)
    rows = []
    for i, (label, opts) in enumerate(RUNS, start=1):
        out = os.path.join(OUT, f"run{i}.h5")
        print(f"\n== {label}: mpiexec -n 3 mpimem train {data} {' '.join(opts)} --epochs 3 --out {out}",
              flush=True)
        subprocess.run([mpiexec, "-n", "3", *mpimem("train", data, *opts, "--epochs", 3,
                                                    "--eval-every", 0.5, "--out", out,
                                                    "--overwrite")], check=True)
        last = {k: v[-1] for k, v in read_run(out)["metrics"].items()}
        rows.append((label, last["subopt_xbar"], last["acc_xbar"], last["bytes_up"] / 1e6,
                     last["bytes_down"] / 1e6, out))
    print(f"\n{'method':22s} {'f(xbar)-f*':>11s} {'accuracy':>9s} {'MB up':>9s} {'MB down':>9s}  run file")
    for label, gap, acc, up, down, out in rows:
        print(f"{label:22s} {gap:11.3e} {acc:9.4f} {up:9.3f} {down:9.3f}  {out}")
    print(f"\ndemo finished in {time.time() - started:.0f} s; inspect a run with: "
          f"{os.path.basename(sys.executable)} -m mpimem info {rows[0][-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
