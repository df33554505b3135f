#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (munged + slurmctld + slurmd), for tests and laptops.
#
# Usage:  bash cluster/local-slurm/start.sh          (as root; Debian/Ubuntu with apt)
#
# Exit codes:
#   0  SLURM is up (started now, or it was already up)
#   3  cannot start here: not root, no apt-get, packages cannot be installed (apt unreachable), slurmd -C fails,
#      or /etc/slurm/slurm.conf belongs to someone else. One line on stderr says which. Nothing is faked.
#   4  the daemons were started but the node did not become idle in time; what this run started is stopped
#      again and the log files are named.
#
# Settings (environment):
#   REEFMAP_SLURM_DIR      private directory for pid files, logs and spool   [/run/reefmap-slurm]
#   REEFMAP_SLURM_CPUS     CPUs the node advertises (so several 1-core workers fit on a small box) [max(8, real)]
#   REEFMAP_SLURM_TIMEOUT  seconds to wait for each daemon / the node to become idle                  [30]
#
# The configuration is written to /etc/slurm/slurm.conf (the path SLURM's client commands read by default), so
# sbatch/squeue/scancel and dask-jobqueue need no SLURM_CONF. A slurm.conf not written by this script is never
# overwritten. Recipe and reasons: /work/shared/notes/local-slurm.md and cluster/local-slurm/README.md.
set -euo pipefail

SLURM_DIR=${REEFMAP_SLURM_DIR:-/run/reefmap-slurm}
TIMEOUT=${REEFMAP_SLURM_TIMEOUT:-30}
CONF=/etc/slurm/slurm.conf
MARKER="# Written by reefmap cluster/local-slurm/start.sh"
PACKAGES=(munge slurmctld slurmd slurm-client)
T0=$(date +%s.%N)
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

say() { echo "local-slurm: $*"; }
fail() { # fail CODE MESSAGE: one line on stderr, distinct exit code
    echo "local-slurm: cannot start: $2" >&2
    exit "$1"
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -n localhost -o %t 2>/dev/null | head -n1 || true; }
node_ready() { [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]; }

have_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null
}

# ---------------------------------------------------------------------------------------------- already up?
if [[ -f $CONF ]] && command -v scontrol >/dev/null && pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld &&
    pid_alive "$SLURM_DIR/slurmd.pid" slurmd && ctld_up && node_ready; then
    say "already up (node localhost $(node_state), conf $CONF, state $SLURM_DIR)"
    exit 0
fi

[[ $(id -u) == 0 ]] || fail 3 "needs root (it installs packages, writes $CONF and runs the daemons as root); run it with sudo"

# ------------------------------------------------------------------------------------------------- packages
mkdir -p "$SLURM_DIR/log"
if ! have_packages; then
    command -v apt-get >/dev/null || fail 3 "no apt-get on this machine; install ${PACKAGES[*]} (SLURM + munge) yourself"
    APT_LOG="$SLURM_DIR/log/apt.log"
    # keep the packages' postinst scripts from trying to start daemons (there is no systemd); ours, removed after
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\n# temporary, reefmap local-slurm start.sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        trap 'rm -f "$POLICY"' EXIT
    fi
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$APT_LOG" 2>&1
    }
    if ! apt_install; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$APT_LOG" 2>&1 ||
            fail 3 "apt-get update failed (package mirror unreachable?); see $APT_LOG"
        apt_install || fail 3 "apt-get install ${PACKAGES[*]} failed (packages not available?); see $APT_LOG"
    fi
    [[ -e $POLICY ]] && grep -q 'reefmap local-slurm' "$POLICY" && rm -f "$POLICY"
    trap - EXIT
    have_packages || fail 3 "${PACKAGES[*]} still missing after apt-get install; see $APT_LOG"
fi

# ------------------------------------------------------------------------------------------------ slurm.conf
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    fail 3 "$CONF exists and was not written by this script (a real SLURM setup?); not overwriting it"
fi
HW=$(slurmd -C 2>/dev/null | head -n1) || fail 3 "slurmd -C failed; cannot read this machine's CPUs and memory"
REAL_CPUS=$(sed -n 's/.*\bCPUs=\([0-9]*\).*/\1/p' <<<"$HW")
REAL_MEM=$(sed -n 's/.*\bRealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[[ -n $REAL_CPUS && -n $REAL_MEM ]] || fail 3 "cannot parse 'slurmd -C' output: $HW"
CPUS=${REEFMAP_SLURM_CPUS:-$((REAL_CPUS > 8 ? REAL_CPUS : 8))}
MEM=$((REAL_MEM * 95 / 100)) # above what slurmd sees → node INVAL ("Low RealMemory"), and that survives restarts

mkdir -p "$SLURM_DIR/spool/ctld" "$SLURM_DIR/spool/d" /etc/slurm
NEW_CONF=$(
    cat <<EOF
$MARKER; rewritten on every start. Do not edit.
# A single-node cluster on localhost for tests (recipe: /work/shared/notes/local-slurm.md). Hardware seen by
# 'slurmd -C': $HW
ClusterName=reefmap-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: cgroup plugins move jobs out of a container's own cgroup and leave directories behind.
# proctrack/pgid, not linuxproc: a dask worker whose nanny dies first is re-parented and escaped linuxproc's
# process-tree tracking (it outlived scancel); it keeps the job's process group, so pgid still kills it
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job with no --mem takes the whole node and the next one pends
DefMemPerCPU=1024
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
KillWait=5
InactiveLimit=0
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
StateSaveLocation=$SLURM_DIR/spool/ctld
SlurmdSpoolDir=$SLURM_DIR/spool/d
SlurmctldDebug=info
SlurmdDebug=info
# advertise $CPUS one-thread cores (the machine has $REAL_CPUS CPUs) so several one-core workers fit
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)
# a running slurmctld keeps the configuration it started with: rewrite only when it changes
if [[ ! -f $CONF ]] || [[ $(<"$CONF") != "$NEW_CONF" ]]; then
    printf '%s\n' "$NEW_CONF" >"$CONF"
fi

STARTED=() # daemons this run started (stopped again if the node does not come up)
give_up() {
    local name pid pids=()
    for name in "${STARTED[@]}"; do
        if pid_alive "$SLURM_DIR/$name.pid" "$name"; then
            pid=$(<"$SLURM_DIR/$name.pid")
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$SLURM_DIR/$name.pid"
    done
    for pid in "${pids[@]}"; do # let them exit (and free their ports) before a retry
        wait_for 15 pid_gone "$pid" || true
    done
    echo "local-slurm: not up: $1 (logs: $SLURM_DIR/log/slurmctld.log, $SLURM_DIR/log/slurmd.log)" >&2
    exit 4
}

# ------------------------------------------------------------------------------------------------------ munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 ||
            fail 3 "no /etc/munge/munge.key and 'mungekey --create' failed"
    fi
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force </dev/null >"$SLURM_DIR/log/munged.out" 2>&1 ||
        fail 3 "munged did not start; see $SLURM_DIR/log/munged.out and /var/log/munge/munged.log"
    cp /run/munge/munged.pid "$SLURM_DIR/munged.pid" # marks it as ours, for stop.sh
    STARTED+=(munged)
    wait_for "$TIMEOUT" bash -c 'munge -n | unmunge >/dev/null 2>&1' || give_up "munged does not answer"
fi

# ------------------------------------------------------------------------------------------------- slurmctld
if ! pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld; then
    rm -f "$SLURM_DIR/slurmctld.pid"
    # -c: clean start (no old jobs, no drain states carried over)
    slurmctld -c </dev/null >"$SLURM_DIR/log/slurmctld.out" 2>&1 || give_up "slurmctld exited at start"
    STARTED+=(slurmctld)
fi
wait_for "$TIMEOUT" ctld_up || give_up "slurmctld not answering 'scontrol ping' after ${TIMEOUT}s"

# ---------------------------------------------------------------------------------------------------- slurmd
if ! pid_alive "$SLURM_DIR/slurmd.pid" slurmd; then
    rm -f "$SLURM_DIR/slurmd.pid"
    slurmd -N localhost </dev/null >"$SLURM_DIR/log/slurmd.out" 2>&1 || give_up "slurmd exited at start"
    STARTED+=(slurmd)
fi
if ! wait_for "$TIMEOUT" node_ready; then
    # a node left DOWN/DRAIN by an earlier run: resume it once
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 5 node_ready || give_up "node localhost is '$(node_state)', not idle, after ${TIMEOUT}s"
fi

say "up in $(elapsed) s: node localhost $(node_state), $CPUS CPUs, ${MEM} MB, partition local (conf $CONF, state $SLURM_DIR)"
