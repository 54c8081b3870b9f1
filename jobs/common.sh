# jobs/common.sh: the launcher logic shared by jobs/*.sbatch (see jobs/README.md).
#
# Sourced by a job script after it sets STUDY; `mm_main` then runs this array task's share of
# the study. Also usable directly:
#     bash jobs/common.sh count STUDY     number of runs the study expands to (env applied)
#     bash jobs/common.sh list STUDY      one line per run: index, dataset, label, workers, seed
#
# A study (jobs/studies/STUDY.toml, or $STUDY_TOML) is expanded into runs by mpimem/cli/studyplan.py
#     datasets x methods x workers x seeds        (methods may name the datasets they apply to)
# which also checks every run's `mpimem train` options with mpimem's own parser: a study that asks
# for anything this mpimem cannot run (an unknown option, mode or label) fails at once, exit 2.
# Array task i of T runs the runs i, i+T, i+2T, ... so any --array size works: one task per run
# (--array=0-$((count-1))), or fewer tasks that each run several. Without an array every run.
# Run r of job J writes $RESULTS/$STUDY/$J/r/{RUN.h5, meta.json, train.log}; train.log gets
# mpimem's output: one progress line per evaluation point (rounds/s, ETA), warnings, errors.
#
# Settings: study TOML < environment variables (all optional):
#   RESULTS (results)  DATA_DIR (data)  DATA_<NAME> (explicit data file, e.g. DATA_EPSILON)
#   DATASETS "epsilon rcv1"  METHODS "top-1 SGD" (labels)  WORKERS "1 2 4"  SEEDS "0 1"
#   N, D, N_<NAME>, D_<NAME>, N_PER_WORKER (weak), DATA_SEED (1)   (size of synthetic data)
#   EPOCHS  EVAL_EVERY  BATCH_SIZE  MODE  EXTRA_ARGS (appended to every `mpimem train`)
#   TOPOLOGY server|allgather|sparse-allreduce|hierarchical (`mpimem train --topology`; default:
#     the study's, else mpimem's: server)  GROUP_SIZE (hierarchical: --group-size G)
#   A run takes W+1 MPI ranks with the server (rank 0), W ranks with the other topologies.
#   CHECKPOINT_EVERY (passed to mpimem train --checkpoint-every, e.g. 10m)
#   RUN_TIMEOUT (seconds; kill a run that takes longer)
#   SYNTH=0 (never generate a missing data set)  LAUNCHER auto|srun|mpiexec  SRUN_MPI (pmi2)
#   JOB_ID (result folder name; default $SLURM_ARRAY_JOB_ID / $SLURM_JOB_ID / local-<time>)
#   PYTHON (python)  MPIMEM_ROOT (the repository; default: found from the job script)
# Exit status: 0 when every run of the task is complete or diverged (mpimem train exit 3, run file
# status "diverged": a result, logged and counted, never rerun or resumed); 75 when stopped by a
# signal (the job requeues itself); 2 when the study cannot run as written; 1 otherwise.

_mm_log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${STUDY:-?}" "$*" >&2; }

_mm_find_root() {
    if [[ -n ${MPIMEM_ROOT:-} ]]; then echo "$MPIMEM_ROOT"; return; fi
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." 2>/dev/null && pwd)
    if [[ -f $here/jobs/common.sh ]]; then echo "$here"; return; fi
    echo "${SLURM_SUBMIT_DIR:-$PWD}"
}

_mm_setup() {
    MM_ROOT=$(_mm_find_root)
    PYTHON=${PYTHON:-python}
    STUDY_TOML=${STUDY_TOML:-$MM_ROOT/jobs/studies/$STUDY.toml}
    RESULTS=${RESULTS:-results}
    DATA_DIR=${DATA_DIR:-data}
    LAUNCHER=${LAUNCHER:-auto}
    SRUN_MPI=${SRUN_MPI:-pmi2}
    export DATA_DIR STUDY
    [[ -f $STUDY_TOML ]] || { _mm_log "no study file $STUDY_TOML"; return 2; }
    "$PYTHON" -c 'import mpimem.cli.studyplan' 2>/dev/null ||
        { _mm_log "mpimem is not importable with $PYTHON (activate its environment)"; return 2; }
}

# The study planner (mpimem/cli/studyplan.py): count | list | run INDEX. It refuses a study that
# asks for anything this mpimem cannot run (one line, exit 2).
_mm_plan() { "$PYTHON" -m mpimem.cli.studyplan "$1" "$STUDY_TOML" "${@:2}"; }

# status and ranks of a run file: "complete 3", "diverged 3", "running 3", "missing", "unreadable"
_mm_run_status() {
    [[ -e $1 ]] || { echo missing; return; }
    "$PYTHON" - "$1" <<'PY' 2>/dev/null || echo unreadable
import sys, h5py
with h5py.File(sys.argv[1], "r") as h:
    s = h.attrs["status"]; s = s.decode() if isinstance(s, bytes) else s
    print(s, int(h.attrs.get("ranks", -1)))
PY
}

# Make the synthetic data set if missing (one array task does it; the others wait on the lock).
_mm_data() {
    [[ -f $RUN_DATA ]] && return 0
    if [[ $RUN_SYNTH != 1 || ${SYNTH:-1} == 0 ]]; then
        _mm_log "data set $RUN_DATA is missing (stage it, or set DATA_${RUN_DATASET^^}=path)"; return 1
    fi
    mkdir -p "$(dirname "$RUN_DATA")"
    (
        flock -w 3600 9 || exit 1
        [[ -f $RUN_DATA ]] && exit 0
        tmp="$RUN_DATA.tmp.$$"
        _mm_log "generating $RUN_DATA ($RUN_LIKE-like n=$RUN_N d=$RUN_D)"
        "$PYTHON" -m mpimem data synth --like "$RUN_LIKE" --n "$RUN_N" --d "$RUN_D" \
            --seed "$RUN_DATA_SEED" "$tmp" >&2 &&
        "$PYTHON" -m mpimem data optimum "$tmp" >&2 &&
        mv "$tmp" "$RUN_DATA" || { rm -f "$tmp"; exit 1; }
    ) 9>"$RUN_DATA.lock"
}

# Tasks in this SLURM allocation: SLURM_NTASKS (sbatch -n, or --nodes x --ntasks-per-node);
# else the sum of SLURM_TASKS_PER_NODE ("12(x2),8" = 32); empty outside an allocation.
_mm_alloc_tasks() {
    if [[ -n ${SLURM_NTASKS:-} ]]; then echo "$SLURM_NTASKS"; return; fi
    [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_TASKS_PER_NODE:-} ]] || return 0
    local part n=0 per times
    for part in ${SLURM_TASKS_PER_NODE//,/ }; do
        per=${part%%(*}; times=1
        [[ $part == *"(x"* ]] && { times=${part#*(x}; times=${times%)}; }
        n=$((n + per * times))
    done
    echo "$n"
}

# Pick the MPI launcher for RANKS processes and PROVE it builds one world of that size
# (plain srun, or the wrong --mpi, starts RANKS separate size-1 programs that exit 0).
# WHY names the rank count in messages (e.g. "W+1 = 3 for --topology server").
# srun places the ranks by the allocation (--nodes/--ntasks-per-node; block distribution:
# consecutive ranks share a node, which --topology hierarchical groups by); mpiexec (Hydra)
# inside an allocation reads its node list from SLURM.
_mm_launcher() {
    local ranks=$1 why=${2:-$1} cands=() c probe_out tasks
    local cache="MM_LAUNCH_$ranks"
    if [[ -n ${!cache:-} ]]; then eval "MM_LAUNCH=(${!cache})"; return 0; fi
    case $LAUNCHER in
        auto)
            if [[ -n ${SLURM_JOB_ID:-} ]] && command -v srun >/dev/null &&
               srun --mpi=list 2>&1 | grep -qw "$SRUN_MPI"; then cands=(srun mpiexec)
            else cands=(mpiexec); fi ;;
        srun|mpiexec) cands=("$LAUNCHER") ;;
        *) _mm_log "LAUNCHER must be auto, srun or mpiexec (got $LAUNCHER)"; return 2 ;;
    esac
    tasks=$(_mm_alloc_tasks)
    if [[ -n $tasks && $ranks -gt $tasks ]]; then
        _mm_log "needs $ranks MPI ranks ($why) but the allocation has $tasks tasks (sbatch -n, or --nodes x --ntasks-per-node)"
        return 2
    fi
    for c in "${cands[@]}"; do
        if [[ $c == srun ]]; then
            MM_LAUNCH=(srun "--mpi=$SRUN_MPI" -n "$ranks")
            # --ntasks-per-node P: the run's ranks packed onto the fewest nodes, ceil(ranks/P)
            [[ ${SLURM_NTASKS_PER_NODE:-} =~ ^[0-9]+$ ]] &&
                MM_LAUNCH+=(-N "$(( (ranks + SLURM_NTASKS_PER_NODE - 1) / SLURM_NTASKS_PER_NODE ))")
            MM_LAUNCH+=(--kill-on-bad-exit=1)
        else MM_LAUNCH=(mpiexec -n "$ranks"); fi
        if probe_out=$(timeout 120 "${MM_LAUNCH[@]}" "$PYTHON" "$MM_ROOT/jobs/slurm_probe.py" \
                       --expect "$ranks" 2>&1); then
            _mm_log "launcher: ${MM_LAUNCH[*]} (probe: world size $ranks)"
            printf -v "$cache" '%q ' "${MM_LAUNCH[@]}"
            return 0
        fi
        _mm_log "launcher ${MM_LAUNCH[*]} failed the size-$ranks probe: $( (grep -m1 '^slurm_probe:' <<<"$probe_out" || tail -n 2 <<<"$probe_out") | tr '\n' ' ')"
    done
    return 1
}

_mm_forward() {   # forward a signal (SLURM --signal=B:USR1@T, scancel, time limit) to training
    MM_GOT_SIGNAL=$1
    _mm_log "received SIG$1; forwarding to the training launcher"
    [[ -n ${MM_CHILD:-} ]] && kill -s "$1" "$MM_CHILD" 2>/dev/null
}

_mm_run_one() {
    local idx=$1 dir run st rc=0 n
    local plan
    plan=$(_mm_plan run "$idx") || return 1
    eval "$plan"
    dir=$RESULTS/$STUDY/$MM_JOB/$idx
    run=$dir/RUN.h5
    mkdir -p "$dir"
    st=$(_mm_run_status "$run")
    if [[ $st == complete* ]]; then _mm_log "run $idx ($RUN_DATASET $RUN_LABEL W=$RUN_WORKERS): already complete"; return 0; fi
    if [[ $st == diverged* ]]; then _mm_log "run $idx ($RUN_DATASET $RUN_LABEL W=$RUN_WORKERS): already diverged (kept, not rerun)"; return 4; fi
    local resume=()
    if [[ $st != missing ]]; then
        if compgen -G "${run%.h5}.ckpt/ckpt-*.h5" >/dev/null; then
            resume=(--resume "$run")          # continue from the newest valid checkpoint
        else
            n=1; while [[ -e $run.prev-$n ]]; do n=$((n + 1)); done
            mv "$run" "$run.prev-$n"; _mm_log "run $idx: kept the earlier attempt ($st) as $run.prev-$n"
        fi
    fi
    _mm_data || return 1
    # the planner's rank count: W+1 with the server (rank 0), W for the serverless topologies
    local ranks=$RUN_RANKS why
    if [[ $RUN_TOPOLOGY == server ]]; then why="W+1 = $ranks for --topology server"
    else why="W = $ranks for --topology $RUN_TOPOLOGY"; fi
    _mm_launcher "$ranks" "$why" || { _mm_log "run $idx: no launcher builds a world of $ranks ranks ($why)"; return 1; }
    printf '%s\n' "$RUN_META" | "$PYTHON" -c '
import json, sys, os
m = json.load(sys.stdin); e = os.environ.get
m.update(job=sys.argv[1], launcher=sys.argv[2], slurm_job_id=e("SLURM_JOB_ID"),
         slurm_nodes=e("SLURM_JOB_NUM_NODES"), slurm_nodelist=e("SLURM_JOB_NODELIST"))
json.dump(m, open(sys.argv[3], "w"), indent=1)' "$MM_JOB" "${MM_LAUNCH[*]}" "$dir/meta.json"
    _mm_log "run $idx: $RUN_DATASET $RUN_LABEL W=$RUN_WORKERS topology=$RUN_TOPOLOGY ($ranks ranks) seed=$RUN_SEED -> $run"
    local train=("$RUN_DATA" --out "$run" "${RUN_ARGS[@]}")
    # with --resume the settings come from the checkpoint (docs/checkpoints.md)
    [[ ${#resume[@]} -gt 0 ]] && train=("${resume[@]}" --out "$run")
    # RUN_CKPT: --checkpoint-every CHECKPOINT_EVERY (every mode and topology checkpoints)
    train+=("${RUN_CKPT[@]}")
    MPIMEM_EXPECT_RANKS=$ranks "${MM_LAUNCH[@]}" "$PYTHON" -m mpimem train "${train[@]}" >>"$dir/train.log" 2>&1 &
    MM_CHILD=$!
    local watchdog=
    if [[ -n ${RUN_TIMEOUT:-} ]]; then   # a hung run (deadlock) must not hold the allocation
        ( trap 'kill $sp 2>/dev/null; exit 0' TERM
          sleep "$RUN_TIMEOUT" & sp=$!; wait $sp
          _mm_log "run $idx: RUN_TIMEOUT=${RUN_TIMEOUT}s reached; killing it"
          kill -TERM "$MM_CHILD"; sleep 10; kill -KILL "$MM_CHILD" ) >>"$dir/train.log" 2>&1 &
        watchdog=$!
    fi
    while :; do   # `wait` returns early when a trapped signal arrives: wait again
        wait "$MM_CHILD"; rc=$?
        kill -0 "$MM_CHILD" 2>/dev/null || break
    done
    MM_CHILD=
    [[ -n $watchdog ]] && { kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null; }
    st=$(_mm_run_status "$run")
    if [[ $rc -eq 75 || $st == preempted* || ( -n ${MM_GOT_SIGNAL:-} && $st != complete* ) ]]; then
        _mm_log "run $idx: stopped by SIG${MM_GOT_SIGNAL:-?} (status: $st, exit $rc)"
        return 3
    fi
    if [[ $rc -eq 3 && $st == "diverged $ranks" ]]; then   # mpimem stopped it: a result
        _mm_log "run $idx: DIVERGED (exit 3, run file: $st); see $dir/train.log"
        tail -n 1 "$dir/train.log" >&2
        return 4
    fi
    if [[ $rc -ne 0 || $st != "complete $ranks" ]]; then
        _mm_log "run $idx: FAILED (exit $rc, run file: $st, expected complete with $ranks ranks); see $dir/train.log"
        tail -n 5 "$dir/train.log" >&2
        return 1
    fi
    return 0
}

mm_main() {
    _mm_setup || exit 2
    MM_JOB=${JOB_ID:-${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local-$(date +%Y%m%d-%H%M%S)}}}
    local count idx start=0 stride=1 failed=0 diverged=0 rc
    count=$(_mm_plan count) || exit 2
    if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
        start=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
        stride=${SLURM_ARRAY_TASK_COUNT:-1}
    fi
    _mm_log "study $STUDY: $count runs; this task runs $start, $((start + stride)), ... -> $RESULTS/$STUDY/$MM_JOB"
    trap '_mm_forward USR1' USR1
    trap '_mm_forward TERM' TERM
    for ((idx = start; idx < count; idx += stride)); do
        if [[ -n ${MM_GOT_SIGNAL:-} ]]; then rc=3; else _mm_run_one "$idx"; rc=$?; fi
        if [[ $rc -eq 3 ]]; then
            # preempted (--signal=B:USR1@T or scancel): requeue; the next start resumes or
            # restarts the unfinished runs and skips the complete ones.
            if [[ -n ${SLURM_JOB_ID:-} && ${REQUEUE:-1} == 1 ]]; then
                _mm_log "requeueing job ${SLURM_JOB_ID}"
                scontrol requeue "$SLURM_JOB_ID" || true
            fi
            exit 75
        fi
        if [[ $rc -eq 4 ]]; then diverged=$((diverged + 1)); rc=0; fi
        [[ $rc -ne 0 ]] && failed=$((failed + 1))
    done
    [[ $diverged -eq 0 ]] || _mm_log "$diverged run(s) diverged (status diverged in RUN.h5)"
    [[ $failed -eq 0 ]] || { _mm_log "$failed run(s) failed"; exit 1; }
    _mm_log "done"
}

# Direct use: bash jobs/common.sh count|list STUDY
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case ${1:-} in
        count|list) STUDY=${2:?usage: common.sh count|list STUDY}; _mm_setup || exit 2; _mm_plan "$1" ;;
        *) echo "usage: bash jobs/common.sh count|list STUDY   (job scripts source this file)" >&2; exit 2 ;;
    esac
fi
