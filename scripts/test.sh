#!/usr/bin/env bash
# Installs everything (scripts/install.sh), then runs the whole test suite with pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DS_ACCELERATOR=cpu
exec "${VIGSP_VENV:-.venv}/bin/python" -m pytest "$@"
