#!/usr/bin/env bash
# Installs vigsp and everything its jobs and tests need on a fresh Debian machine:
# system packages (apt), a virtual environment in .venv, CPU or CUDA torch, then vigsp itself
# (its C++ core, pybind11 module and DALI plugin are compiled here). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VIGSP_VENV:-.venv}"
python="${PYTHON:-python3}"

log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

if [[ "${VIGSP_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  log "system packages (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends build-essential git >/dev/null
  # The local Slurm cluster `vigsp submit`'s tests run on (skip with VIGSP_SKIP_SLURM=1).
  if [[ "${VIGSP_SKIP_SLURM:-0}" != 1 ]]; then
    log "Slurm dev-cluster packages (slurm/dev-cluster/install.sh)"
    bash slurm/dev-cluster/install.sh >/dev/null
  fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel
# torch first and pinned: later packages see it satisfied and pull no other build.
log "torch ${VIGSP_TORCH:-torch==2.13.0}"
"${pip[@]}" install "${VIGSP_TORCH:-torch==2.13.0}"
log "build tools and DALI (the plugin is compiled against this exact DALI)"
"${pip[@]}" install "scikit-build-core>=0.10" "pybind11>=2.13" "cmake>=3.26" ninja "nvidia-dali-cuda130==2.4.0"
log "vigsp (compiling the C++ core and the DALI plugin)"
"${pip[@]}" install --no-build-isolation -e ".[train,test]"

# Real test data: Debian's Fashion-MNIST and Pillow's odd JPEGs (skip with VIGSP_SKIP_TEST_DATA=1).
if [[ "${VIGSP_SKIP_TEST_DATA:-0}" != 1 ]]; then
  PYTHON="$venv/bin/python" bash scripts/setup/data.sh
fi
log "done: activate with  source $venv/bin/activate"
