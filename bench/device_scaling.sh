#!/usr/bin/env bash
# The scaling table on a machine with 16 cores (issues 9 and 12): every design (sync server,
# async server, allgather, sparse allreduce, hierarchical), top-k and rand-k, b = 16, W = 1, 2,
# 4, 8, 15 workers (at most 16 ranks: a core per rank), one command, about 5-8 minutes.
# Writes bench/results/scaling-16core.{md,json} (and a copy under $OUT when it is set).
#
# On a lent device machine (no network there; its python3 has numpy, scipy, numba, h5py):
#   1. here, once:  echo /.whl/ >> .git/info/exclude
#                   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                     --implementation cp --platform manylinux_2_28_x86_64 \
#                     --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 \
#                     -d .whl mpi4py==4.1.2 mpich==5.0.2          # 14.6 MB: the MPI it lacks
#   2. device run, carry [".whl"], timeout_s 600:  bash bench/device_scaling.sh
# Anywhere else with 16 cores: `make install` first, then `.venv/bin/python` is used.
# WORKERS=1,2 (say) runs a smaller table (a dry run on a small machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
elif [[ -d .whl ]]; then   # a venv over the machine's packages: the MPICH wheel's libmpi
    python3 -m venv --system-site-packages /tmp/mpimem-venv     # lands in its lib/, mpiexec in bin/
    /tmp/mpimem-venv/bin/python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
    PY=/tmp/mpimem-venv/bin/python
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/mpimem-numba}
echo "device_scaling: $(nproc) cores, $($PY --version), mpiexec $(command -v mpiexec || echo '(venv)')"
$PY -m bench.bench_scaling --workers "${WORKERS:-1,2,4,8,15}" --operators top_k,rand_k --batch-size 16 \
    --n 100000 --epochs 5 --timeout 120 --out bench/results/scaling-16core.md
if [[ -n "${OUT:-}" ]]; then
    cp bench/results/scaling-16core.md bench/results/scaling-16core.json "$OUT"/
fi
