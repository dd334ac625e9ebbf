#!/usr/bin/env bash
# The wheels the GPU machine lacks, downloaded into .whl/ (git-ignored) for the device tool to
# carry there. That machine has no package registry; its python3 (3.12, x86-64) already holds
# torch, torchvision, typer, rich, pyyaml, numpy, pillow, onnx, onnxruntime, matplotlib and
# pytest (.library/device/KINDS.md), so only pycocotools travels; its one requirement, numpy,
# is there. Run from the repository root, on a machine that reaches PyPI:
#
#     bash bench/gpu_wheels.sh
#
# Then, in the device tool's `run`, with carry [".whl"] (docs/gpu.md):
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py $OUT/gpu --device cuda
#
# PYTHONPATH=$PWD imports the project from the tree itself (no pip install, which would want a
# registry for its build backend); gpu_check.py runs the CLI as `python -m dynamicdet_cli`.
set -euo pipefail

PYCOCOTOOLS=${PYCOCOTOOLS:-2.0.11}   # the version the project's .venv tests with
PYTHON=${PYTHON:-python3}

cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/pycocotools-*.whl          # one version of each: two stop the install there
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "pycocotools==${PYCOCOTOOLS}"
ls -l .whl
for w in .whl/*.whl; do
    echo "$w requires:"; unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
