#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for trying job scripts.
#
#   bash jobs/local-cluster.sh up       install (if missing), configure, start, wait for `idle`
#   bash jobs/local-cluster.sh status   print the node state; exit 0 idle, 1 up but not idle, 2 down
#   bash jobs/local-cluster.sh down     stop the daemons this script started
#
# Needs root and (for the first install) apt-get; without them `up` exits 3 with one line.
# No systemd: the daemons are started directly and tracked by pid. See docs/local-slurm.md.
# Environment: MPIMEM_SLURM_STATE (state dir, default /var/lib/mpimem-slurm),
#              MPIMEM_SLURM_CPUS (node CPUs, default 8), MPIMEM_SLURM_TIMEOUT (idle wait, default 30 s).
set -euo pipefail

STATE=${MPIMEM_SLURM_STATE:-/var/lib/mpimem-slurm}
CPUS=${MPIMEM_SLURM_CPUS:-8}
IDLE_TIMEOUT=${MPIMEM_SLURM_TIMEOUT:-30}
CONF=/etc/slurm/slurm.conf
MARKER="# managed by mpimem jobs/local-cluster.sh"
PKGS=(slurmctld slurmd slurm-client munge)
NODE=$(hostname -s 2>/dev/null || echo localnode)
NODE=${NODE:-localnode}
EXIT_CANNOT=3

say() { echo "local-slurm: $*"; }
die() { echo "local-slurm: ERROR: $1" >&2; exit "${2:-1}"; }
cannot() { echo "local-slurm: local SLURM needs root and apt-get ($1)" >&2; exit "$EXIT_CANNOT"; }

# ---------------------------------------------------------------- pid tracking
# A pid file is trusted only if the process is alive AND /proc/<pid>/comm names the daemon:
# slurmctld leaves stale pid files behind, and pids get reused.
pid_alive() {  # pid_alive PID COMM
    local pid=$1 comm=$2
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}
pid_from() { [[ -r $1 ]] && head -n1 "$1" | tr -dc '0-9' || true; }
daemon_pid() {  # daemon_pid NAME -> pid if running (from our pid file), else empty
    local name=$1 pidfile
    case $name in
        munged)    pidfile=/run/munge/munged.pid ;;
        slurmctld) pidfile=$STATE/run/slurmctld.pid ;;
        slurmd)    pidfile=$STATE/run/slurmd.pid ;;
    esac
    local pid; pid=$(pid_from "$pidfile")
    if pid_alive "$pid" "$name"; then echo "$pid"; fi
}
started_by_us() { grep -qx "$1" "$STATE/started" 2>/dev/null; }
mark_started() { mkdir -p "$STATE"; grep -qx "$1" "$STATE/started" 2>/dev/null || echo "$1" >>"$STATE/started"; }
unmark_started() { [[ -f $STATE/started ]] && sed -i "/^$1\$/d" "$STATE/started" || true; }

stop_daemon() {  # stop_daemon NAME: TERM, wait up to 10 s, then KILL; by pid only
    local name=$1 pid i
    pid=$(daemon_pid "$name")
    if [[ -z $pid ]]; then unmark_started "$name"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" "$name" || break; sleep 0.1; done
    if pid_alive "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    unmark_started "$name"
    say "stopped $name (pid $pid)"
}

node_state() {  # node_state -> sinfo's state of our node ('' if the controller does not answer)
    command -v sinfo >/dev/null || return 0
    timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true
}

# ---------------------------------------------------------------- install
restore_policy_cmd() {  # the command that puts policy-rc.d back as it was before the install
    if [[ -n $1 ]]; then echo "mv -f '$1' /usr/sbin/policy-rc.d"; else echo "rm -f /usr/sbin/policy-rc.d"; fi
}
install_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && { say "packages present (${PKGS[*]})"; return 0; }
    command -v apt-get >/dev/null || cannot "apt-get not found; missing: ${missing[*]}"
    local log=$STATE/apt.log t0=$SECONDS
    say "installing ${missing[*]} (log: $log)"
    # Keep package post-install scripts from starting daemons: policy-rc.d exit 101.
    # Preserve any policy-rc.d already there (Docker images ship one) and put it back.
    local prc=/usr/sbin/policy-rc.d saved=""
    if [[ -e $prc ]]; then saved=$STATE/policy-rc.d.saved; cp -p "$prc" "$saved"; fi
    # shellcheck disable=SC2064  # expand now: restore even if apt-get is interrupted
    trap "$(restore_policy_cmd "$saved")" EXIT
    printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 755 "$prc"
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update && apt-get install -y --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    } >"$log" 2>&1 || rc=$?
    eval "$(restore_policy_cmd "$saved")"; trap - EXIT
    if [[ $rc -ne 0 ]]; then
        tail -n 15 "$log" >&2
        die "apt-get failed (exit $rc); full log: $log"
    fi
    say "installed in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- configure
write_config() {  # writes $STATE/slurm.conf.new; echoes 'changed' if it differs from $CONF
    mkdir -p "$STATE"/{ctld,spool,run,log}
    chown slurm:slurm "$STATE/ctld" "$STATE/log" "$STATE/run"
    chmod 755 "$STATE" "$STATE/run" "$STATE/log"
    cat >"$STATE/slurm.conf.new" <<EOF
$MARKER ($STATE); edit that script, not this file.
ClusterName=mpimem-local
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
MinJobAge=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away to use the local cluster"
    fi
    if ! cmp -s "$STATE/slurm.conf.new" "$CONF" 2>/dev/null; then echo changed; fi
}

install_config() {
    mkdir -p /etc/slurm
    mv -f "$STATE/slurm.conf.new" "$CONF"
    chmod 644 "$CONF"
}

setup_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
        say "wrote munge key /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
}

# ---------------------------------------------------------------- start
start_munged() {
    if [[ -n $(daemon_pid munged) ]]; then return 0; fi
    runuser -u munge -- /usr/sbin/munged >>"$STATE/log/munged.out" 2>&1 \
        || die "munged failed to start; see $STATE/log/munged.out and /var/log/munge/munged.log"
    mark_started munged
    local i
    for ((i = 0; i < 50; i++)); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munge does not work (munge -n | unmunge failed); see /var/log/munge/munged.log"
}

start_slurm_daemon() {  # start_slurm_daemon NAME ARGS...
    local name=$1; shift
    [[ -n $(daemon_pid "$name") ]] && return 0
    rm -f "$STATE/run/$name.pid"  # stale pid file from an earlier run
    "/usr/sbin/$name" "$@" >>"$STATE/log/$name.out" 2>&1 \
        || die "$name failed to start; see $STATE/log/$name.log"
    mark_started "$name"
    local i
    for ((i = 0; i < 50; i++)); do [[ -n $(daemon_pid "$name") ]] && return 0; sleep 0.1; done
    die "$name exited right after starting; see $STATE/log/$name.log"
}

wait_idle() {
    local t0=$SECONDS st=""
    while ((SECONDS - t0 < IDLE_TIMEOUT)); do
        st=$(node_state)
        case $st in
            idle) return 0 ;;
            down*|drain*|fail*)
                # After a restart the node may come back 'down'; bring it back once slurmd answers.
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    echo "local-slurm: ERROR: node $NODE not idle after ${IDLE_TIMEOUT} s (state: '${st:-no answer}')." >&2
    echo "  logs: $STATE/log/slurmctld.log $STATE/log/slurmd.log" >&2
    tail -n 5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    exit 1
}

all_running() { [[ -n $(daemon_pid munged) && -n $(daemon_pid slurmctld) && -n $(daemon_pid slurmd) ]]; }

cmd_up() {
    local t0=$SECONDS
    if [[ $(id -u) -ne 0 ]]; then cannot "running as uid $(id -u)"; fi
    mkdir -p "$STATE"
    install_packages
    local changed; changed=$(write_config)
    if all_running && [[ -z $changed ]]; then
        local st; st=$(node_state)
        if [[ $st == idle || $st == mixed* || $st == allocated* || $st == completing* ]]; then
            say "already up: node $NODE $st ($CPUS CPUs, partition local)"
            rm -f "$STATE/slurm.conf.new"; return 0
        fi
    fi
    # Refuse to fight a SLURM we did not start (e.g. a system service): ports would clash.
    # A daemon that was just killed may take a moment to exit (or linger as a zombie): wait 10 s.
    local d p foreign i
    for ((i = 0; i < 100; i++)); do
        foreign=""
        for d in slurmctld slurmd; do
            for p in $(pgrep -x "$d" || true); do
                [[ $p == "$(daemon_pid "$d")" ]] && continue
                [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) == Z ]] && continue
                foreign="$d (pid $p)"
            done
        done
        [[ -z $foreign ]] && break
        sleep 0.1
    done
    [[ -z $foreign ]] || die "a $foreign not started by this script is running; stop it first"
    # Config changed or a daemon is missing: (re)start slurm daemons from a clean slate.
    # A config change needs a restart; `scontrol reconfigure` is not enough for node changes.
    [[ -n $changed ]] && say "writing $CONF"
    stop_daemon slurmd; stop_daemon slurmctld
    install_config
    setup_munge
    say "starting munged, slurmctld, slurmd (node $NODE, $CPUS CPUs)"
    start_munged
    start_slurm_daemon slurmctld -i
    start_slurm_daemon slurmd -N "$NODE"
    wait_idle
    say "up: node $NODE idle, partition local, $CPUS CPUs ($((SECONDS - t0)) s)"
}

cmd_down() {
    if [[ $(id -u) -ne 0 ]]; then cannot "running as uid $(id -u)"; fi
    local d any=0
    for d in slurmd slurmctld munged; do
        if started_by_us "$d"; then stop_daemon "$d"; any=1; fi
    done
    rm -f "$STATE/run/slurmctld.pid" "$STATE/run/slurmd.pid"
    [[ $any -eq 1 ]] && say "down" || say "down (nothing of ours was running)"
}

cmd_status() {
    local d pid
    for d in munged slurmctld slurmd; do
        pid=$(daemon_pid "$d")
        if [[ -n $pid ]]; then say "$d: running (pid $pid)"; else say "$d: not running"; fi
    done
    local st; st=$(node_state)
    if [[ -z $st ]]; then say "node $NODE: controller not answering"; exit 2; fi
    say "node $NODE: $st"
    # The controller notices a dead slurmd only after SlurmdTimeout: idle needs all three alive.
    if ! all_running; then say "not all daemons are running: run '$0 up'"; exit 1; fi
    [[ $st == idle ]] && exit 0 || exit 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 64 ;;
esac
