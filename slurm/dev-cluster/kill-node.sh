#!/usr/bin/env bash
# Kill one node of a multi-node dev cluster, as a power cut would: its slurmd and every process
# in its network namespace get SIGKILL at once. Slurm notices within SlurmdTimeout (10 s), marks
# the node DOWN and requeues its jobs. Bring it back with start.sh (same DIR), which starts the
# missing slurmd; ReturnToService=2 then returns the node to service.
#
#   kill-node.sh NODE [DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"
# shellcheck source-path=SCRIPTDIR source=multinode.sh
source "$here/multinode.sh"

node=${1:?usage: kill-node.sh NODE [DIR]}
DIR=$(cluster_dir "${2:-}")
RUN=$DIR/run
multinode_read "$DIR" || die "$DIR holds no multi-node cluster (start it with start.sh --nodes N)"
for k in "${!NODE_NAMES[@]}"; do
    if [[ ${NODE_NAMES[k]} == "$node" ]]; then
        multinode_kill "$k"
        log "killed node $node (namespace ${NODE_NS[k]})"
        exit 0
    fi
done
die "no node '$node' in $DIR (nodes: ${NODE_NAMES[*]})"
