#!/usr/bin/env bash
# The collapse study: short runs of the converged study's failing seeds (bg_iou_lo=0.1 seeds 1, 2, 4; 16 RoIs seed
# 2), cut at epoch 6 of the converged recipe's 20-epoch schedule (optim.schedule_steps=1520: the same learning rate
# step for step, where the failed runs had already parted from the ones that learned), and the default cell's seeds
# 0 and 1 (does a remedy cost the default?). Each seed three ways:
#   <cell>_s<seed>        the recipe as it is
#   <cell>_prior_s<seed>  roi_head.class_prior=0.25: the head's class logits start at the sampled RoIs' foreground
#                         share, as RetinaNet initialises its classifier
#   <cell>_bn_s<seed>     backbone.frozen_bn=false: BatchNorm normalises with the batch's statistics, so the box
#                         head's units cannot all fall silent (the collapse: its ReLU6 outputs are 0 for every RoI)
# Usage: bash experiments/findings/collapse.sh RUNS_DIR [python]
# Resumable and shared by several drivers: experiments/findings/run_cells.sh (ONLY=<regex> picks cells).
# Diagnosis: diag/cls_accuracy_fg, diag/roi_fg, diag/rpn_recall per epoch in each run's csv/metrics.csv, and
# experiments/findings/head_probe.py on a checkpoint; report:
# python -m frcnn_lab.report RUNS_DIR --output experiments/findings/collapse/report
set -euo pipefail
runs=${1:?usage: collapse.sh RUNS_DIR [python]}
python=${2:-python}
short="trainer.max_epochs=6 optim.schedule_steps=1520"

cells=()
for failing in "bglo01 roi_head.bg_iou_lo=0.1 1" "bglo01 roi_head.bg_iou_lo=0.1 2" "bglo01 roi_head.bg_iou_lo=0.1 4" \
               "rois16 rpn.num_rois=16 2" "default rpn.num_rois=64 0" "default rpn.num_rois=64 1"; do
  read -r name override seed <<< "$failing"
  cells+=("${name}_s${seed} $override data.image_size=600 $short seed=$seed"
          "${name}_prior_s${seed} $override data.image_size=600 roi_head.class_prior=0.25 $short seed=$seed"
          "${name}_bn_s${seed} $override data.image_size=600 backbone.frozen_bn=false $short seed=$seed")
done

source "$(dirname "${BASH_SOURCE[0]}")/run_cells.sh"
run_cells "$runs" "$python"
