#!/usr/bin/env bash
# Start a real Slurm cluster on this machine, without systemd:
#   munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd (one per node)
#
#   start.sh [--nodes N] [DIR]
#
# One node (the default): node `localhost` with all CPUs. N nodes: nodes PREFIX1..PREFIXN, each a
# separate host as far as a job can tell: its own hostname (a UTS namespace), its own address (a
# network namespace on a bridge of this script's own, 10.x.y.0/24 derived from the port) and its
# own slurmd; their names resolve everywhere through tagged /etc/hosts lines. The CPUs and memory
# are divided among them. stop.sh removes every namespace, link and line this made.
#
# Everything (config, state, spool, pids, logs, munge key and socket, database) lives in one
# directory: DIR, else $VIGSP_SLURM_DIR, else /tmp/vigsp-slurm.
#
# Idempotent: daemons already running from this directory are left alone.
# Prints `export SLURM_CONF=...` on stdout (everything else goes to stderr), so
#   eval "$(slurm/dev-cluster/start.sh)"
# sets up the current shell.
#
# Environment (all optional):
#   VIGSP_SLURM_PORT        slurmctld port; slurmd uses +1, slurmdbd +2   (default 6817)
#   VIGSP_SLURM_DB_PORT     MariaDB port on 127.0.0.1                     (default 3307)
#   VIGSP_SLURM_FAKE_GPUS   GPUs the node advertises as gres (no devices) (default 0)
#   VIGSP_SLURM_TIMEOUT_S   how long to wait for each daemon and the node (default 60)
#   VIGSP_SLURM_NODES       nodes, like --nodes                            (default 1)
#   VIGSP_SLURM_NODE_PREFIX names of the nodes of a multi-node cluster     (default vn: vn1, vn2 ...)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"

NODES=${VIGSP_SLURM_NODES:-}
if [[ ${1:-} == --nodes ]]; then
    NODES=${2:?--nodes needs a number}
    shift 2
fi
DIR=$(cluster_dir "${1:-}")
# shellcheck source-path=SCRIPTDIR source=multinode.sh
source "$here/multinode.sh"
NODE_PREFIX=${VIGSP_SLURM_NODE_PREFIX:-}
if [[ -z $NODES ]] && multinode_read "$DIR"; then
    NODES=${#NODE_NAMES[@]} # starting again (say, after kill-node.sh): the same nodes as before
fi
NODES=${NODES:-1}
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number, not '$NODES'"
CTLD_PORT=${VIGSP_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=${VIGSP_SLURM_DB_PORT:-3307}
FAKE_GPUS=${VIGSP_SLURM_FAKE_GPUS:-0}
TIMEOUT_S=${VIGSP_SLURM_TIMEOUT_S:-60}

ETC=$DIR/etc
MUNGE=$DIR/munge
DB=$DIR/db
RUN=$DIR/run
LOGS=$DIR/log
SOCKET=$MUNGE/munge.socket
export SLURM_CONF=$ETC/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin

for bin in munged mungekey mariadbd mariadb-install-db mariadb-admin slurmdbd slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || die "'$bin' not found; run $here/install.sh first"
done
[[ $(id -u) -eq 0 ]] || die "the dev cluster runs its daemons as root (SlurmUser=root); run as root"
# Unix socket paths are limited to 107 bytes.
((${#DB} + 20 < 108)) || die "cluster directory '$DIR' is too long for a Unix socket path; pick a shorter one"

# munged insists that every directory above its socket be searchable by all users.
parent=$(dirname "$DIR")
while [[ $parent != / ]]; do
    [[ -n $(find "$parent" -maxdepth 0 -perm -o=x) ]] ||
        die "'$parent' is not searchable by all users (munged needs that for its socket); pick a directory elsewhere, e.g. under /tmp"
    parent=$(dirname "$parent")
done

mkdir -p "$ETC" "$MUNGE" "$DB" "$RUN" "$LOGS" "$DIR/state" "$DIR/spool"
# munged refuses a socket directory others can write to, and a key others can read.
chmod 755 "$DIR" "$MUNGE"

# ---------------------------------------------------------------- configuration
cpus=$(nproc)
# Slurm drains a node that reports less memory than configured, so stay below slurmd -C.
detected_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[[ -n $detected_mb ]] || die "could not read RealMemory from 'slurmd -C'"
real_mb=$((detected_mb * 9 / 10))
node_gres=""
gres_types=""
gres_line=""
if ((FAKE_GPUS > 0)); then
    node_gres="Gres=gpu:$FAKE_GPUS"
    gres_types="GresTypes=gpu"
    # Slurm drops a GPU without a device file, so give each one an empty stand-in file.
    mkdir -p "$DIR/fake-gpus"
    for ((i = 0; i < FAKE_GPUS; i++)); do touch "$DIR/fake-gpus/gpu$i"; done
fi

if ((NODES > 1)); then
    ((NODES <= cpus)) || die "--nodes $NODES: this machine has $cpus CPUs, at least one per node is needed"
    cpus=$((cpus / NODES))
    real_mb=$((real_mb / NODES))
    multinode_layout "$DIR" "$CTLD_PORT" "$NODES" "${VIGSP_SLURM_NODE_PREFIX:-${NODE_PREFIX:-vn}}"
    ctld_host="$(hostname -s)($BRIDGE_ADDR)"
    node_names=$(printf '%s,' "${NODE_NAMES[@]}")
    node_names=${node_names%,}
    node_lines=""
    for ((k = 0; k < NODES; k++)); do
        node_lines+="NodeName=${NODE_NAMES[k]} NodeAddr=${NODE_ADDRS[k]} CPUs=$cpus RealMemory=$real_mb $node_gres State=UNKNOWN"$'\n'
    done
    per_node_files="SlurmdSpoolDir=$DIR/spool/%n
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmdLogFile=$LOGS/slurmd-%n.log
# A dead node is noticed in seconds (the default is 300 s); node failure requeues its jobs.
SlurmdTimeout=10"
else
    ctld_host=localhost
    node_names=localhost
    node_lines="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb $node_gres State=UNKNOWN"
    per_node_files="SlurmdSpoolDir=$DIR/spool
SlurmdPidFile=$RUN/slurmd.pid
SlurmdLogFile=$LOGS/slurmd.log"
fi
if ((FAKE_GPUS > 0)); then
    gres_line="NodeName=$node_names Name=gpu File=$DIR/fake-gpus/gpu[0-$((FAKE_GPUS - 1))]"
fi

write_if_changed() { # write stdin to $1 only when the content differs, keeping daemons' view stable
    local target=$1 tmp
    tmp=$(mktemp "$target.XXXXXX")
    cat >"$tmp"
    if [[ -f $target ]] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$target"
    fi
}

write_if_changed "$ETC/slurm.conf" <<EOF
# Generated by slurm/dev-cluster/start.sh: a $NODES-node cluster for development and tests.
ClusterName=vigsp
SlurmctldHost=$ctld_host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A short credential lifetime: the default 120 s delays every requeued job by two minutes.
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOGS/slurmctld.log
$per_node_files
# No cgroups in containers: track processes by parentage and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((real_mb / cpus))
ReturnToService=2
# Schedule within seconds, not the default minute, so tests stay short.
SchedulerParameters=bf_interval=1,sched_interval=2
KillWait=5
MinJobAge=60
InactiveLimit=0
# submitit requeues preempted and timed-out jobs itself, with scontrol requeue.
JobRequeue=1
# Jobs in a higher-tier partition preempt lower ones; the victim gets its --signal (USR2) at once,
# then GraceTime seconds to checkpoint before it is requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
# Accounting: submitit needs sacct to see a cancelled job end.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCKET
JobAcctGatherType=jobacct_gather/none
$gres_types
$node_lines
PartitionName=debug Nodes=$node_names Default=YES PriorityTier=1 GraceTime=30 MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=urgent Nodes=$node_names PriorityTier=10 PreemptMode=OFF MaxTime=04:00:00 DefaultTime=00:30:00 State=UP
EOF

# Fake GPUs have empty files as devices: enough to test --gpus bookkeeping, nothing runs on them.
write_if_changed "$ETC/gres.conf" <<EOF
AutoDetect=off
$gres_line
EOF

write_if_changed "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
# slurmdbd refuses a config file others can read (it may hold the database password).
chmod 600 "$ETC/slurmdbd.conf"

# A daemon that cannot bind its port dies in its log; say so up front instead.
require_free_port() { # PORT WHO
    if (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 for $2 is taken (another dev cluster?); stop it, or set VIGSP_SLURM_PORT / VIGSP_SLURM_DB_PORT"
    fi
}

# wait_for WHAT LOGFILE COMMAND...: retry COMMAND for up to TIMEOUT_S seconds.
wait_for() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${TIMEOUT_S}s; see $logfile"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- munge
if [[ ! -f $MUNGE/munge.key ]]; then
    mungekey --create --keyfile="$MUNGE/munge.key"
fi
chmod 600 "$MUNGE/munge.key"
if pid_of munged "$RUN/munged.pid" >/dev/null; then
    log "munged already running"
else
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --key-file="$MUNGE/munge.key" --socket="$SOCKET" --pid-file="$RUN/munged.pid" \
        --seed-file="$MUNGE/munged.seed" --log-file="$LOGS/munged.log" </dev/null >>"$LOGS/munged.log" 2>&1 ||
        die "munged failed to start; see $LOGS/munged.log"
    wait_for munged "$LOGS/munged.log" munge --socket="$SOCKET" --no-input
    log "started munged"
fi

# ---------------------------------------------------------------- mariadb
if [[ ! -d $DB/data/mysql ]]; then
    rm -rf "$DB/data"
    mariadb-install-db --no-defaults --datadir="$DB/data" --user=root --auth-root-authentication-method=normal \
        --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed; see $LOGS/mariadb-install.log"
fi
if pid_of mariadbd "$RUN/mariadbd.pid" >/dev/null; then
    log "mariadbd already running"
else
    require_free_port "$DB_PORT" mariadbd
    # setsid + full redirection: the daemon must not hold the caller's terminal or pipes open.
    setsid mariadbd --no-defaults --datadir="$DB/data" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$DB/mariadb.sock" --pid-file="$RUN/mariadbd.pid" --log-error="$LOGS/mariadb.log" \
        --skip-log-bin --innodb-buffer-pool-size=32M --innodb-use-native-aio=0 \
        </dev/null >>"$LOGS/mariadb.log" 2>&1 &
    wait_for mariadbd "$LOGS/mariadb.log" mariadb-admin --no-defaults --socket="$DB/mariadb.sock" -uroot ping
    log "started mariadbd on 127.0.0.1:$DB_PORT"
fi

# ---------------------------------------------------------------- slurm daemons
if pid_of slurmdbd "$RUN/slurmdbd.pid" >/dev/null; then
    log "slurmdbd already running"
else
    require_free_port "$DBD_PORT" slurmdbd
    slurmdbd </dev/null >>"$LOGS/slurmdbd.log" 2>&1 || die "slurmdbd failed to start; see $LOGS/slurmdbd.log"
    wait_for slurmdbd "$LOGS/slurmdbd.log" sacctmgr --noheader --immediate list cluster
    log "started slurmdbd"
fi

if pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null; then
    log "slurmctld already running"
else
    require_free_port "$CTLD_PORT" slurmctld
    slurmctld -f "$SLURM_CONF" </dev/null >>"$LOGS/slurmctld.log" 2>&1 ||
        die "slurmctld failed to start; see $LOGS/slurmctld.log"
    log "started slurmctld"
fi

if ((NODES > 1)); then
    multinode_up "$SLURMD_PORT"
elif pid_of slurmd "$RUN/slurmd.pid" >/dev/null; then
    log "slurmd already running"
else
    require_free_port "$SLURMD_PORT" slurmd
    # -N: the machine's hostname is not the configured node name.
    slurmd -f "$SLURM_CONF" -N localhost </dev/null >>"$LOGS/slurmd.log" 2>&1 ||
        die "slurmd failed to start; see $LOGS/slurmd.log"
    log "started slurmd"
fi

# One line per node (sinfo --Node repeats a node for each of its partitions).
node_states() { sinfo --noheader --Node --nodes="$node_names" --format="%N %T" 2>/dev/null | sort -u | cut -d' ' -f2; }
node_ready() { # every node idle, or busy with jobs restored from the state directory
    local states
    states=$(node_states) || return 1
    [[ $(grep -c . <<<"$states") -eq $NODES ]] || return 1
    ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}
deadline=$((SECONDS + TIMEOUT_S))
resumed=0
until node_ready; do
    # The state directory remembers a drain or a down node from an earlier start (say, a killed
    # node); resume once, and if a node drains again the reason is real and shown below.
    if [[ $resumed -eq 0 ]] && grep -qE '^(drained|draining|down|inval)' <<<"$(node_states || true)"; then
        log "node(s) not up (reason: $(sinfo --noheader --nodes="$node_names" --format=%E | head -n1)); resuming"
        scontrol update nodename="$node_names" state=resume >&2 || true
        resumed=1
    fi
    if ((SECONDS >= deadline)); then
        sinfo --list-reasons >&2 || true
        die "node(s) $node_names not idle after ${TIMEOUT_S}s; see $LOGS/slurmctld.log and $LOGS/slurmd*.log"
    fi
    sleep 0.3
done
log "cluster up in $DIR ($NODES node(s): $node_names; $cpus CPUs and ${real_mb} MB each, $FAKE_GPUS fake GPUs; partitions debug, urgent)"
echo "export SLURM_CONF=$SLURM_CONF"
