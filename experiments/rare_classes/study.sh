#!/usr/bin/env bash
# The rare-class study: experiment=rare/phone (phones at 0.05 the odds of cameras in the train split, balanced
# val), trained with the default random sampler and with data.sampler=repeat_factor, at equal optimiser steps
# (the preset's trainer.max_steps), seed by seed: 2 cells per seed.
# Usage: bash experiments/rare_classes/study.sh RUNS_DIR [SEEDS="0 1 2"] [python]
# Resumable and shared by several drivers (e.g. two at OMP_NUM_THREADS=1 on two cores): see
# experiments/findings/run_cells.sh. Report: python -m frcnn_lab.report RUNS_DIR --output <report dir>
# (AP@0.5 per class in "AP by class and object size"; data.sampler's pair in "Which choice mattered").
set -euo pipefail
runs=${1:?usage: study.sh RUNS_DIR [SEEDS] [python]}
seeds=${2:-0 1 2}
python=${3:-python}

cells=()
for seed in $seeds; do
  cells+=("random_s$seed data.sampler=random seed=$seed"
          "repeat_s$seed data.sampler=repeat_factor seed=$seed")
done

experiment=rare/phone
source "$(dirname "${BASH_SOURCE[0]}")/../findings/run_cells.sh"
run_cells "$runs" "$python"
