#!/usr/bin/env bash
# The main job on a fresh machine, with no flags needed:
#   1. install everything (scripts/install.sh: apt, .venv, torch, DALI, vigsp's C++ core);
#   2. prepare the embedded real dataset: Fashion-MNIST from Debian's dataset-fashion-mnist
#      (or from idx files you point to: VIGSP_FASHION_MNIST=/path/to/idx/dir);
#   3. train the tiny ViG-SP with DeepSpeed on the DALI pipeline through submitit: on the local
#      Slurm cluster when `sinfo` answers, as local processes otherwise;
#   4. track it in the embedded MLflow store (./mlruns.db), then print the `vigsp compare` table
#      and the path of the curves PNG.
# Extra arguments go to `vigsp submit`, e.g.  bash scripts/quickstart.sh run.epochs=1
# Set VIGSP_QUICKSTART_BASELINE=1 to also train the patch baseline (quickstart_patch.yaml) beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
vigsp="${VIGSP_VENV:-.venv}/bin/vigsp"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*"; }

log "dataset: Fashion-MNIST -> data/fashion_mnist"
"$vigsp" data prepare fashion-mnist ${VIGSP_FASHION_MNIST:+--source "$VIGSP_FASHION_MNIST"}

where=(--local)
if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then
  where=()
  log "Slurm answers (sinfo): submitting to it"
else
  log "no Slurm cluster here: running the same submitit job as local processes"
fi
configs=(quickstart)
[[ "${VIGSP_QUICKSTART_BASELINE:-0}" == 1 ]] && configs+=(quickstart_patch)
for config in "${configs[@]}"; do
  log "training $config"
  "$vigsp" submit "$config" "${where[@]}" --wait --follow "$@"
done

log "runs in the embedded MLflow store (mlflow ui --backend-store-uri sqlite:///mlruns.db)"
"$vigsp" compare --experiment quickstart --png runs/quickstart/compare_curves.png
log "curves: $(pwd)/runs/quickstart/compare_curves.png"
