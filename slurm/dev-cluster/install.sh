#!/usr/bin/env bash
# Install the Debian packages the local Slurm dev cluster needs (iproute2: the network namespaces
# and bridge of a multi-node one; util-linux, always there, has nsenter and unshare).
# Idempotent: when every binary is already there it returns at once without touching apt.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge mariadb-server slurmdbd iproute2)
# One binary per package, so a half-installed set is noticed.
BINARIES=(slurmctld slurmd sinfo munged mariadbd slurmdbd mungekey mariadb-install-db ip nsenter unshare)

missing=()
for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm dev cluster: all packages already installed"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing ${missing[*]}; run this script as root (it uses apt-get) or install: ${PACKAGES[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]} and apt-get is not available; install these packages by hand: ${PACKAGES[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the packages' own init scripts from starting system-wide daemons: start.sh runs private ones.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT

# Wait for another apt (a colleague, unattended-upgrades) instead of failing on its lock.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "slurm dev cluster: installed ${PACKAGES[*]}"
