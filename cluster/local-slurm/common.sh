# Shell functions shared by start.sh and stop.sh (sourced; needs T0 set to the start time, $(date +%s.%N)).

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# pid_alive FILE NAME: the pid in FILE is a running process called NAME (guards against stale files and pid reuse)
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] && [[ $(<"/proc/$pid/comm") == "$2" ]]
}

# wait_for SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds; fails after SECONDS
wait_for() {
    local deadline
    deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.2
    done
}
