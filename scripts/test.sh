#!/usr/bin/env bash
# The test suite: lint, then pytest in PYTEST_WORKERS processes (default 2; each test runs torch on one thread),
# a test file per process so its module fixtures are built once, the longest files first (tests/conftest.py).
# Extra arguments go to pytest, e.g. -m "not slow" for the fast suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m ruff check src tests experiments
.venv/bin/lint-imports --no-cache  # the layers contract in pyproject.toml
.venv/bin/python -m pytest --numprocesses="${PYTEST_WORKERS:-2}" --dist=loadfile --no-loadscope-reorder "$@"
