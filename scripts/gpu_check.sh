#!/usr/bin/env bash
# On a GPU machine without network (python3 with torch there): install the wheels carried in .whl/ (made here by
# scripts/gpu_wheels.sh) into /tmp/site, then run every GPU check (scripts/gpu_check.py; its docstring says how to
# call this). Figures go to $OUT/gpu_check.json and $OUT/gpu_check.md when $OUT is set, else experiments/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
echo "[gpu_check.sh] wheels installed in $(( $(date +%s) - start )) s"
out=${OUT:-experiments/bench}
PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} python3 scripts/gpu_check.py --out "$out/gpu_check.json" "$@"
