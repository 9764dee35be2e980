#!/usr/bin/env bash
# The converged findings study on the hard embedded benchmark, one `python -m frcnn_lab.train` per cell, each
# trained for EPOCHS epochs (the budget B read off the convergence curves of converge.sh):
#   rpn.num_rois 4 / 16 / 64 at 600 px; data.image_size 300 vs 600 at 64 RoIs; roi_head.bg_iou_lo 0 vs 0.1 at the
#   default (64 RoIs, 600 px). The default cell is shared by the three comparisons: 5 cells per seed.
# Usage: bash experiments/findings/study.sh RUNS_DIR EPOCHS [SEEDS="0 1 2"] [python]
# Cells go seed by seed, so that every comparison has its first seeds before any has its last.
# Resumable (a killed cell continues from its last.ckpt) and shared by several drivers: see run_cells.sh.
# Report: python -m frcnn_lab.report RUNS_DIR --output <report dir>
set -euo pipefail
runs=${1:?usage: study.sh RUNS_DIR EPOCHS [SEEDS] [python]}
epochs=${2:?usage: study.sh RUNS_DIR EPOCHS [SEEDS] [python]}
seeds=${3:-0 1 2}
python=${4:-python}

cells=()
for seed in $seeds; do
  cells+=("rois64_px600_s$seed rpn.num_rois=64 data.image_size=600 seed=$seed"
          "rois4_px600_s$seed rpn.num_rois=4 data.image_size=600 seed=$seed"
          "rois16_px600_s$seed rpn.num_rois=16 data.image_size=600 seed=$seed"
          "rois64_px300_s$seed rpn.num_rois=64 data.image_size=300 seed=$seed"
          "bglo01_s$seed roi_head.bg_iou_lo=0.1 seed=$seed")
done

source "$(dirname "${BASH_SOURCE[0]}")/run_cells.sh"
run_cells "$runs" "$python" trainer.max_epochs="$epochs"
