"""MPI from compiled code: mpimem.comm.mpicall against numba-mpi, written to bench/results/mpicall.md.

The round trip of the sync loop at b = 1 (a worker's Send to rank 0, then rank 0's Bcast back)
from a compiled loop, under `mpiexec -n 2`, both bindings in the same processes on the same
buffers, alternated in blocks so that load drift hits both alike; and the start-up cost of each
binding's loop in a fresh process (compile or load from numba's cache). numba-mpi 1.3 binds MPI
as ctypes globals, which numba will not cache, so its loop compiles again in every process;
mpicall's loop loads from the cache.

    python -m bench.bench_mpicall [--rounds N]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import warnings

import numba_mpi as nm
import numpy as np
from numba import njit

from mpimem.comm import mpicall as mc
from mpimem.comm.launch import mpiexec_command

warnings.filterwarnings("ignore", message="Cannot cache compiled function")
RESULTS = os.path.join(os.path.dirname(__file__), "results")


@njit(cache=True)
def ours(mpi, n, buf, down, rank):
    for i in range(n):
        if rank == 0:
            mc.recv(mpi, buf, 8, 1, 11)
            mc.bcast(mpi, down, 8, 0)
        else:
            mc.send(mpi, buf, 8, 0, 11)
            mc.bcast(mpi, down, 8, 0)


@njit(cache=True)   # numba refuses: "Cannot cache ... dynamic globals"; it compiles each time
def theirs(n, buf, down, rank):
    for i in range(n):
        if rank == 0:
            nm.recv(buf, 1, 11)
            nm.bcast(down, 0)
        else:
            nm.send(buf, 0, 11)
            nm.bcast(down, 0)


def child(rounds, blocks):
    """Under mpiexec -n 2: per-round microseconds and start-up seconds of both bindings."""
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    buf, down, mpi = np.zeros(8, np.uint8), np.zeros(8, np.uint8), mc.table()
    t1 = time.perf_counter()
    ours(mpi, 1, buf, down, rank)
    start_ours = time.perf_counter() - t1
    t1 = time.perf_counter()
    theirs(1, buf, down, rank)
    start_theirs = time.perf_counter() - t1
    per = {"mpicall": [], "numba-mpi": []}
    for _ in range(blocks):
        for name, run in (("mpicall", lambda: ours(mpi, rounds, buf, down, rank)),
                          ("numba-mpi", lambda: theirs(rounds, buf, down, rank))):
            MPI.COMM_WORLD.Barrier()
            t = time.perf_counter()
            run()
            per[name].append((time.perf_counter() - t) / rounds * 1e6)
    if rank == 0:
        print(json.dumps({"per_round_us": {k: float(np.median(v)) for k, v in per.items()},
                          "start_s": {"mpicall": start_ours, "numba-mpi": start_theirs}}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20000)
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.rounds, args.blocks)
    cmd = [*mpiexec_command(2), sys.executable, "-m",
           "bench.bench_mpicall",
           "--child", "--rounds", str(args.rounds), "--blocks", str(args.blocks)]
    runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                      timeout=600).stdout.strip().splitlines()[-1])
            for _ in range(2)]   # the second launch finds mpicall's loop in the cache
    last = runs[-1]
    lines = ["# MPI from compiled code: mpimem.comm.mpicall vs numba-mpi", "",
             f"Command: `python -m bench.bench_mpicall` ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"load average {os.getloadavg()[0]:.1f}); `mpiexec -n 2`, a worker's 8-byte Send to "
             f"rank 0 then rank 0's 8-byte Bcast, from a compiled loop; median of "
             f"{args.blocks} blocks of {args.rounds} rounds, the bindings alternated.", "",
             "| binding | us per round (Send + Bcast) | start-up, 1st launch (s) | start-up, 2nd launch (s) |",
             "|---|---|---|---|"]
    for name in ("mpicall", "numba-mpi"):
        lines.append(f"| {name} | {last['per_round_us'][name]:.2f} | {runs[0]['start_s'][name]:.2f} | "
                     f"{last['start_s'][name]:.2f} |")
    lines += ["", "Start-up = the first call of the loop in a process: numba-mpi's loop compiles "
              "in every process (numba cannot cache ctypes globals); mpicall's compiles once and "
              "then loads from numba's cache."]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "mpicall.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
