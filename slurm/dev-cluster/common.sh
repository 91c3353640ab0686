# shellcheck shell=bash
# Shared by start.sh and stop.sh: where the dev cluster lives and how to find its daemons.
# Sourced, not run.

# The cluster directory: first argument, else $VIGSP_SLURM_DIR, else /tmp/vigsp-slurm.
cluster_dir() {
    local dir=${1:-${VIGSP_SLURM_DIR:-/tmp/vigsp-slurm}}
    mkdir -p "$dir"
    (cd "$dir" && pwd -P)
}

log() { echo "[slurm-dev] $*" >&2; }
die() {
    echo "[slurm-dev] error: $*" >&2
    exit 1
}

# pid_of NAME PIDFILE: print the pid if PIDFILE names a live process called NAME.
# Checking the name guards against a stale pid file whose pid was reused by something else.
pid_of() {
    local name=$1 pidfile=$2 pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    # A zombie has exited already: it only waits for its parent to reap it.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    echo "$pid"
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pid
    pid=$(pid_of "$name" "$pidfile") || {
        rm -f "$pidfile"
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        pid_of "$name" "$pidfile" >/dev/null || break
        sleep 0.1
    done
    if pid_of "$name" "$pidfile" >/dev/null; then
        log "$name ($pid) ignored SIGTERM for 15 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name"
}
