#!/usr/bin/env bash
# Convergence curves of the findings recipe: the default cell (64 RoIs, 600 px) trained for EPOCHS epochs with
# validation every epoch, one run per seed, all seeds at once (one thread each). The curves decide the study's
# budget B (see experiments/findings/README.md and `python -m frcnn_lab.report`'s convergence section).
# Usage: bash experiments/findings/converge.sh RUNS_DIR [EPOCHS=20] [SEEDS="0 1 2"] [python]
# A seed whose status.json says "completed" is skipped; the log of each seed is RUNS_DIR.log.d/<name>.log.
set -euo pipefail
runs=${1:?usage: converge.sh RUNS_DIR [EPOCHS] [SEEDS] [python]}
epochs=${2:-20}
seeds=${3:-0 1 2}
python=${4:-python}
mkdir -p "$runs" "$runs.log.d"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

for seed in $seeds; do
  name="default_e${epochs}_s$seed"
  dir="$runs/$name"
  if [[ -f "$dir/status.json" ]] && grep -q '"completed"' "$dir/status.json"; then
    continue
  fi
  (
    echo "$(date -u +%FT%TZ) start $name"
    start=$(date +%s)
    if "$python" -m frcnn_lab.train experiment=findings/hard logger=csv trainer.max_epochs="$epochs" seed="$seed" \
        hydra.run.dir="$dir" > "$runs.log.d/$name.log" 2>&1; then
      echo "$(date -u +%FT%TZ) done  $name in $(( $(date +%s) - start )) s"
    else
      echo "$(date -u +%FT%TZ) FAILED $name after $(( $(date +%s) - start )) s (see $runs.log.d/$name.log)"
    fi
  ) &
done
wait
