"""`make bench`: every benchmark of the project, each writing its table to bench/results/.

    data.md        LIBSVM conversion vs scikit-learn, synth and `data optimum` times
    train.md       per-sample worker/server work, end to end vs the paper's code and scikit-learn
    checkpoint.md  checkpoint write/load time and size against d and W
    mpicall.md     MPI from compiled loops: mpimem.comm.mpicall against numba-mpi
    methods.md     bytes to f - f* = 1e-3: Mem-SGD, EF21, EF21-BC, QSGD, SGD
(`make bench-scaling` runs the scaling study and the cost model separately: it takes longer.)
Pass --quick for smaller sizes. Timings on a shared 2-core machine are noisy: the tables put
each figure next to its baseline measured in the same command.
"""
import subprocess
import sys


def main(argv=None) -> int:
    quick = ["--quick"] if "--quick" in (argv if argv is not None else sys.argv[1:]) else []
    steps = [[sys.executable, "-m", "bench.bench_data", *quick],
             [sys.executable, "-m", "bench.bench_train", *quick],
             [sys.executable, "bench/bench_checkpoint.py", *quick],
             [sys.executable, "-m", "bench.bench_mpicall"],
             [sys.executable, "-m", "bench.bench_methods", *quick]]
    for cmd in steps:
        print("==", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
