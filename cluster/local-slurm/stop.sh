#!/usr/bin/env bash
# Stop the single-node SLURM started by cluster/local-slurm/start.sh.
#
# Stops only what start.sh started, by the pid files in its private directory (never by process name):
# cancels every job first (slurmd would leave slurmstepd and the job processes running), waits for the queue
# to empty, then stops slurmd, slurmctld (it takes a few seconds to exit) and munged (only if start.sh started it).
# Exit codes: 0 stopped (or nothing of ours was running); 1 a daemon did not exit in time.
set -euo pipefail

SLURM_DIR=${REEFMAP_SLURM_DIR:-/run/reefmap-slurm}
TIMEOUT=${REEFMAP_SLURM_TIMEOUT:-30}
T0=$(date +%s.%N)
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


queue_empty() { [[ -z $(squeue -h -o %i 2>/dev/null) ]]; }

stop_daemons() { # stop_daemons NAME...: SIGTERM the pids in their files (all at once), wait for all, forget them
    local name file pid pids=()
    for name in "$@"; do
        file="$SLURM_DIR/$name.pid"
        if pid_alive "$file" "$name"; then
            pid=$(<"$file")
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
            STOPPED+=("$name")
        fi
        rm -f "$file"
    done
    for pid in "${pids[@]}"; do
        if ! wait_for "$TIMEOUT" pid_gone "$pid"; then
            echo "local-slurm: pid $pid ($*) did not exit within ${TIMEOUT}s" >&2
            exit 1
        fi
    done
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

STOPPED=()
if ! pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld && ! pid_alive "$SLURM_DIR/slurmd.pid" slurmd &&
    ! pid_alive "$SLURM_DIR/munged.pid" munged; then
    rm -f "$SLURM_DIR"/{slurmctld,slurmd,munged}.pid
    echo "local-slurm: not running (nothing started by start.sh in $SLURM_DIR)"
    exit 0
fi

if pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld; then
    JOBS=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${JOBS// /} ]]; then
        # shellcheck disable=SC2086
        scancel $JOBS 2>/dev/null || true
        wait_for "$TIMEOUT" queue_empty || echo "local-slurm: jobs still listed after ${TIMEOUT}s: $(squeue -h -o '%i %t' | tr '\n' ' ')" >&2
    fi
fi
# slurmd and slurmctld each take about 2 s to exit: stop them together, then munge (they authenticate with it)
stop_daemons slurmd slurmctld
stop_daemons munged

echo "local-slurm: stopped ${STOPPED[*]:-nothing} in $(elapsed) s (cancelled jobs: ${JOBS:-none})"
