#!/usr/bin/env bash
# The test suite: lint, then pytest (extra arguments go to pytest, e.g. -m "not slow" for the fast suite).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m ruff check src tests experiments
.venv/bin/python -m pytest "$@"
