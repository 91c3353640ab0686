#!/usr/bin/env bash
# Stop the dev cluster started by start.sh in the same directory (first argument, else
# $VIGSP_SLURM_DIR, else /tmp/vigsp-slurm). Cancels its jobs first so no job processes outlive it;
# for a multi-node cluster, also removes every namespace, link and /etc/hosts line start.sh made.
# Idempotent: stopping a stopped (or never started) cluster is fine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"
# shellcheck source-path=SCRIPTDIR source=multinode.sh
source "$here/multinode.sh"

DIR=$(cluster_dir "${1:-}")
RUN=$DIR/run
export SLURM_CONF=$DIR/etc/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin

any_slurmd() {
    local pidfile
    for pidfile in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid; do
        [[ -e $pidfile ]] && pid_of slurmd "$pidfile" >/dev/null && return 0
    done
    return 1
}

if pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null && any_slurmd; then
    # slurmstepd and the job's processes outlive slurmd, so end the jobs while slurmd can still do it.
    jobs=$(squeue --noheader --format=%i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z $(squeue --noheader --format=%i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
fi

stop_daemon slurmd "$RUN/slurmd.pid"
if multinode_read "$DIR"; then
    multinode_down
fi
stop_daemon slurmctld "$RUN/slurmctld.pid"
stop_daemon slurmdbd "$RUN/slurmdbd.pid"
stop_daemon mariadbd "$RUN/mariadbd.pid"
stop_daemon munged "$RUN/munged.pid"
log "cluster in $DIR is stopped"
