#!/usr/bin/env bash
# Old commit against the working tree, side by side in one run: benchmarks/models.py and
# benchmarks/train_step.py, alternating old/new for ROUNDS rounds (the VM's speed drifts, so only
# figures from the same run compare). Results in OUT (default /tmp/vigsp-ab/results).
#
#   bash benchmarks/ab_commits.sh 2aa697d 2
#
# The old tree runs from a git worktree with this checkout's compiled modules copied in (the C++
# core's Python API must not have changed between the two), imported instead of the editable
# install by a sitecustomize that drops it from the path.
set -euo pipefail
old_ref=${1:?usage: ab_commits.sh OLD_COMMIT [ROUNDS]}
rounds=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
work=${OUT:-/tmp/vigsp-ab}
old_tree=$work/old
mkdir -p "$work/results" "$work/site"
if [[ ! -d $old_tree ]]; then
  git -C "$repo" worktree add -f "$old_tree" "$old_ref" >/dev/null
fi
site_packages=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$site_packages"/vigsp/*.so "$old_tree/vigsp/"
cat > "$work/site/sitecustomize.py" <<EOF
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "_editable" not in type(f).__module__]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != "$repo"]
EOF
old() { (cd "$old_tree" && PYTHONPATH="$work/site:$old_tree" "$py" "$@"); }
new() { (cd "$repo" && "$py" "$@"); }
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    $side benchmarks/models.py > "$work/results/models_${side}_$round.txt" 2>&1
    $side benchmarks/train_step.py --steps 5 --repeats 3 > "$work/results/train_step_${side}_$round.txt" 2>&1
  done
done
for f in "$work"/results/*.txt; do
  echo "== $(basename "$f" .txt)"
  grep -E '^│ ' "$f" || true
done
