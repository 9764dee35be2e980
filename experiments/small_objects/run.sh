#!/usr/bin/env bash
# The small-objects benchmark (docs/small_objects.md) on large canvases with 10-40 px objects (data=synthetic_large),
# one `python -m frcnn_lab.train experiment=small_objects/large` per cell, the same step budget for all:
#   resize   data.resize=shortest_side (600 px shortest side): every canvas shrunk to the same input size
#   fixed    data.resize=fixed_scale data.scale=1.0: the canvases' own pixels, whole canvases
#   tiles    fixed scale, training on 400 px tiles, validation on whole canvases
#   sliced   fixed scale, training on 400 px tiles, validation on 400 px slices (inference.slicing)
#   tiles_equal  as tiles, at the cost of the whole-canvas cell's 1,500 steps: a whole-canvas step costs 5.24 tile
#            steps (experiments/bench/small_objects_steps_cpu.json, ratio_to_tiles), so 7,860 steps, the schedule
#            stretched over them (run it alone with ONLY='tiles_equal_s[0-2]')
# x seeds 0, 1, 2; then the anchor fit of the train boxes before and after rpn.anchor_sizes=auto (browse, into
# RUNS_DIR.anchor_fit/). Extra overrides go to every cell (and the data.* ones to browse), e.g. trainer.max_steps=20.
# Usage: bash experiments/small_objects/run.sh RUNS_DIR [python] [override ...]
# ONLY=<regex> runs just the matching cells. Resumable and shared by several drivers (experiments/findings/run_cells.sh).
# Report: python -m frcnn_lab.report RUNS_DIR --output experiments/small_objects/report
set -euo pipefail
runs=${1:?usage: run.sh RUNS_DIR [python] [override ...]}
python=${2:-python}
shift $(( $# < 2 ? $# : 2 ))
experiment=small_objects/large
tiles="data.resize=fixed_scale data.scale=1.0 data.tiles.size=400 data.tiles.overlap=0.2"

cells=()
for seed in 0 1 2; do
  cells+=("resize_s$seed data.resize=shortest_side data.image_size=600 data.max_size=1000 seed=$seed"
          "fixed_s$seed data.resize=fixed_scale data.scale=1.0 seed=$seed"
          "tiles_s$seed $tiles seed=$seed"
          "sliced_s$seed $tiles inference.slicing.size=400 inference.slicing.overlap=0.2 seed=$seed"
          "tiles_equal_s$seed $tiles trainer.max_steps=7860 seed=$seed")
done

source "$(dirname "${BASH_SOURCE[0]}")/../findings/run_cells.sh"
run_cells "$runs" "$python" "$@"

data_overrides=()   # browse has no trainer or model keys: it takes the data.* overrides
for override in "$@"; do
  [[ $override == data.* ]] && data_overrides+=("$override")
done
for anchors in "[16,32,64,128]" auto; do   # the fit of the fixed-scale train boxes (data_summary.json: anchors)
  name=$([[ $anchors == auto ]] && echo auto || echo configured)
  dir="$runs.anchor_fit/$name"
  [[ -f "$dir/data_summary.json" ]] && continue
  if "$python" -m frcnn_lab.browse data=synthetic_large rpn.anchor_sizes="$anchors" n=4 \
      "${data_overrides[@]}" hydra.run.dir="$dir" > "$runs.anchor_fit.$name.log" 2>&1; then
    echo "$(date -u +%FT%TZ) anchor fit $name: $dir/data_summary.json"
  else
    echo "$(date -u +%FT%TZ) FAILED anchor fit $name (see $runs.anchor_fit.$name.log)"
  fi
done
