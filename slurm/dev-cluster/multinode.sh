# shellcheck shell=bash
# The hosts of a multi-node dev cluster on one machine, for start.sh, stop.sh and kill-node.sh.
# Sourced, not run. Each node is a network namespace (its own address on a bridge this file
# creates) plus, for its slurmd, a UTS namespace (its own hostname). The mount namespace stays
# shared: the munge socket, /etc/hosts and the cluster directory are the same files everywhere.
#
# Started with nsenter + unshare, not `ip netns exec`: that remounts /sys, and slurmd then dies
# with "No filesystem mounted on /sys/fs/cgroup" (FACTS.md).

HOSTS_TAG="# vigsp-dev-cluster"

# multinode_layout DIR PORT N PREFIX: names and addresses, derived from the port so that two
# clusters (a developer's and the tests') never share a bridge, a namespace or a subnet.
multinode_layout() {
    local dir=$1 port=$2 n=$3 prefix=$4 k
    if multinode_read "$dir"; then
        [[ ${#NODE_NAMES[@]} -eq $n && $NODE_PORT == "$port" && $NODE_PREFIX == "$prefix" ]] && return 0
        die "$dir holds a ${#NODE_NAMES[@]}-node cluster (port $NODE_PORT, nodes ${NODE_NAMES[*]}); stop it first with stop.sh $dir, or start it as it was"
    fi
    LAYOUT_DIR=$dir
    BRIDGE=vsb$port
    local subnet="10.$((200 + (port / 256) % 50)).$((port % 256))"
    BRIDGE_ADDR=$subnet.1
    NODE_NAMES=() NODE_ADDRS=() NODE_NS=() NODE_VETH=()
    for ((k = 1; k <= n; k++)); do
        NODE_NAMES+=("$prefix$k")
        NODE_ADDRS+=("$subnet.$((10 + k))")
        NODE_NS+=("vigsp$port-n$k")
        NODE_VETH+=("vs${port}n$k")
    done
    # What stop.sh needs to undo it all, even after a change of the defaults.
    {
        echo "port $port"
        echo "prefix $prefix"
        echo "bridge $BRIDGE $BRIDGE_ADDR"
        for ((k = 0; k < n; k++)); do
            echo "node ${NODE_NAMES[k]} ${NODE_NS[k]} ${NODE_ADDRS[k]} ${NODE_VETH[k]}"
        done
    } >"$dir/nodes"
}

# multinode_read DIR: the layout start.sh recorded (false when there is none).
multinode_read() {
    local dir=$1 kind a b c d
    [[ -f $dir/nodes ]] || return 1
    LAYOUT_DIR=$dir
    NODE_NAMES=() NODE_ADDRS=() NODE_NS=() NODE_VETH=()
    while read -r kind a b c d; do
        case $kind in
        port) NODE_PORT=$a ;;
        prefix) NODE_PREFIX=$a ;;
        bridge) BRIDGE=$a BRIDGE_ADDR=$b ;;
        node) NODE_NAMES+=("$a") NODE_NS+=("$b") NODE_ADDRS+=("$c") NODE_VETH+=("$d") ;;
        esac
    done <"$dir/nodes"
}

_hosts_without_ours() { grep -vF "$HOSTS_TAG $LAYOUT_DIR" /etc/hosts || true; }

# /etc/hosts is rewritten in place (it may be a bind mount, which a rename would not replace).
_write_hosts() {
    local content
    content=$(cat)
    printf '%s\n' "$content" >/etc/hosts
}

multinode_network_up() {
    local k
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for k in "${!NODE_NAMES[@]}"; do
        local ns=${NODE_NS[k]} veth=${NODE_VETH[k]}
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns"
            ip link add "$veth" type veth peer name "${veth}p"
            ip link set "${veth}p" netns "$ns"
            ip link set "$veth" master "$BRIDGE"
            ip link set "$veth" up
            ip netns exec "$ns" ip addr add "${NODE_ADDRS[k]}/24" dev "${veth}p"
            ip netns exec "$ns" ip link set "${veth}p" up
            ip netns exec "$ns" ip link set lo up
        fi
    done
    {
        _hosts_without_ours
        for k in "${!NODE_NAMES[@]}"; do
            echo "${NODE_ADDRS[k]} ${NODE_NAMES[k]} $HOSTS_TAG $LAYOUT_DIR"
        done
    } | _write_hosts
}

# multinode_start_slurmd K: node K's slurmd in its namespaces, unless it runs already.
multinode_start_slurmd() {
    local k=$1 node=${NODE_NAMES[$1]}
    if pid_of slurmd "$RUN/slurmd-$node.pid" >/dev/null; then
        log "slurmd of $node already running"
        return
    fi
    mkdir -p "$DIR/spool/$node"
    # slurmd takes its node name from the namespace's hostname, and daemonizes inside it.
    nsenter --net="/var/run/netns/${NODE_NS[k]}" unshare --uts \
        sh -c "hostname $node; exec slurmd -f '$SLURM_CONF'" </dev/null >>"$LOGS/slurmd-$node.log" 2>&1 ||
        die "slurmd of $node failed to start; see $LOGS/slurmd-$node.log"
    log "started slurmd of $node (${NODE_ADDRS[k]})"
}

multinode_up() {
    local k
    multinode_network_up
    for k in "${!NODE_NAMES[@]}"; do
        multinode_start_slurmd "$k"
    done
}

# multinode_kill K: the node dies: its slurmd and every process in its network namespace, at once.
multinode_kill() {
    local ns=${NODE_NS[$1]}
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "$ns") 2>/dev/null || true
    rm -f "$RUN/slurmd-${NODE_NAMES[$1]}.pid"
}

multinode_down() {
    local k
    for k in "${!NODE_NAMES[@]}"; do
        stop_daemon slurmd "$RUN/slurmd-${NODE_NAMES[k]}.pid"
        multinode_kill "$k" # job processes that outlived their slurmd
        ip netns del "${NODE_NS[k]}" 2>/dev/null || true
        ip link del "${NODE_VETH[k]}" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    _hosts_without_ours | _write_hosts
    rm -f "$LAYOUT_DIR/nodes"
    log "removed the nodes' namespaces, links and /etc/hosts lines"
}
