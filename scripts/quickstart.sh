#!/usr/bin/env bash
# The main job on a fresh machine: installs vigsp, then runs it on real images.
# (Grows into: prepare Fashion-MNIST, train a tiny ViG-SP, compare runs in MLflow.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${VIGSP_VENV:-.venv}/bin/python" benchmarks/superpixels.py "$@"
