#!/usr/bin/env bash
# What a detection checkpoint buys as a start, measured offline with the lab's own checkpoints (no COCO weights
# without a network): a detector trained with the findings recipe on the easy scenes (data=synthetic) starts the
# hard benchmark (experiment=findings/hard, data=synthetic_hard) through model.weights=<its best.ckpt>, against the
# recipe's ImageNet-trunk start, at equal optimiser steps (5 epochs, 375 steps), seed by seed: 2 cells per seed.
# The source is trained once (seed 0) into RUNS_DIR.source/source; the predictor starts anew in both arms
# (model.init_classes=new), so what transfers is the trunk, the RPN and the box head.
# Usage: bash experiments/transfer/study.sh RUNS_DIR [SEEDS="0 1 2"] [python]
# Resumable and shared by several drivers: experiments/findings/run_cells.sh.
# Report: python -m frcnn_lab.report RUNS_DIR --output experiments/transfer/report
set -euo pipefail
runs=${1:?usage: study.sh RUNS_DIR [SEEDS] [python]}
seeds=${2:-0 1 2}
python=${3:-python}
experiment=findings/hard
source "$(dirname "${BASH_SOURCE[0]}")/../findings/run_cells.sh"

cells=("source data=synthetic trainer.max_epochs=10 seed=0")
run_cells "$runs.source" "$python"
weights=$(realpath "$runs.source/source/checkpoints/best.ckpt")

cells=()
for seed in $seeds; do
  cells+=("imagenet_s$seed trainer.max_epochs=5 seed=$seed"
          "detector_s$seed trainer.max_epochs=5 model.weights=$weights seed=$seed")
done
run_cells "$runs" "$python"
