#!/usr/bin/env bash
# The findings ablation on the hard embedded benchmark, one `python -m frcnn_lab.train` per cell:
#   rpn.num_rois 4/16/64/256 x data.image_size 300/600 x seeds 0,1,2, then the three RoI ops and the
#   background band's lower edge 0 vs 0.1 at the default (64 RoIs, 600 px), 3 seeds each.
# Usage: bash experiments/findings/run.sh RUNS_DIR [python]
# Cells go in order of importance, seed by seed; resumable and shared by several drivers (run_cells.sh).
# Report: python -m frcnn_lab.report RUNS_DIR --output experiments/findings/report
set -euo pipefail
runs=${1:?usage: run.sh RUNS_DIR [python]}
python=${2:-python}

cells=()
for seed in 0 1 2; do   # the calibration cells first: 64 vs 4 RoIs at 600 px, 600 vs 300 px at 64 RoIs
  cells+=("rois64_px600_s$seed rpn.num_rois=64 data.image_size=600 seed=$seed"
          "rois4_px600_s$seed rpn.num_rois=4 data.image_size=600 seed=$seed"
          "rois64_px300_s$seed rpn.num_rois=64 data.image_size=300 seed=$seed")
done
for seed in 0 1 2; do
  for cell in "16 600" "256 600" "4 300" "16 300" "256 300"; do
    set -- $cell
    cells+=("rois$1_px$2_s$seed rpn.num_rois=$1 data.image_size=$2 seed=$seed")
  done
done
for seed in 0 1 2; do
  cells+=("roipool_s$seed roi_head.pooler=roi_pool seed=$seed"
          "cropresize_s$seed roi_head.pooler=crop_resize seed=$seed"
          "bglo01_s$seed roi_head.bg_iou_lo=0.1 seed=$seed")
done

source "$(dirname "${BASH_SOURCE[0]}")/run_cells.sh"
run_cells "$runs" "$python"
