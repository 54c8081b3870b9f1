#!/usr/bin/env bash
# `make figures`: the four studies end to end at tiny sizes on generated data, then the figures.
# Runs the real job scripts (jobs/*.sbatch) with bash, outside SLURM (launcher: mpiexec), so it
# works on any machine; the SLURM path is exercised by tests/test_jobs.py.
#   FIGURES_OUT (build/figures): where the figures go; the committed docs/figures are replaced
#     only when asked: `make figures FIGURES_OUT=docs/figures`
#   FIG_RESULTS (build/figures/results)  FIG_DATA (build/figures/data)
#   STUDIES ("theory qsgd scaling weak"): the studies to run
#   KEEP=1 keeps earlier results (complete runs are then skipped, not rerun)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
RESULTS=${FIG_RESULTS:-build/figures/results}
FIGDIR=${FIGURES_OUT:-build/figures}
export RESULTS DATA_DIR=${FIG_DATA:-build/figures/data} JOB_ID=figures RUN_TIMEOUT=${RUN_TIMEOUT:-120}
export LAUNCHER=mpiexec
[[ ${KEEP:-0} == 1 ]] || rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$FIGDIR"
t0=$SECONDS
study() {   # study name, then tiny-size overrides
    local s=$1; shift
    echo "make-figures: study $s ($*)"
    env "$@" bash jobs/$s.sbatch 2>&1 | sed "s/^/  /" || { echo "make-figures: study $s failed" >&2; return 1; }
}
declare -A SIZES=(
    [theory]='N=300 D_EPSILON=30 D_RCV1=300 EVAL_EVERY=0.25'
    [qsgd]='N=300 D=30 EPOCHS=3 EVAL_EVERY=0.2'
    [scaling]='N=600 D_EPSILON=30 D_RCV1=300 WORKERS=1\ 2\ 3 EPOCHS=1 EVAL_EVERY=0.1'
    [weak]='N_PER_WORKER=200 D=30 WORKERS=1\ 2\ 3 EPOCHS=1 EVAL_EVERY=0.25')
for s in ${STUDIES:-theory qsgd scaling weak}; do
    [[ -n ${SIZES[$s]:-} ]] || { echo "make-figures: unknown study $s (theory qsgd scaling weak)" >&2; exit 2; }
    eval "study $s ${SIZES[$s]}"
done
python -m analysis.figures "$RESULTS" --out "$FIGDIR" --overwrite   # this target regenerates them
echo "make-figures: done in $((SECONDS - t0)) s; figures and summary in $FIGDIR"
