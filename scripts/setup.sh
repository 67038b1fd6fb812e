#!/usr/bin/env bash
# Creates .venv when it is missing and installs SquishedNets into it.
# torch==2.13.0 comes first: pip takes the CPU wheel on disk (a plain `torch`
# would pull a multi-GB CUDA build). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0
fi
extra=${1:-}
modules="squishednets, onnxruntime, safetensors, matplotlib, tqdm"
# The extras' own imports: test needs pytest, captum (the analyze pictures' tests), optuna and ray
# (explore and the executor) and torch_pruning (compare); analyze needs captum, explore optuna, ray ray,
# compare torch_pruning.
case "$extra" in
  test) modules="$modules, pytest, captum, optuna, ray, torch_pruning" ;;
  compare) modules="$modules, torch_pruning" ;;
  analyze) modules="$modules, captum" ;;
  explore) modules="$modules, optuna" ;;
  ray) modules="$modules, ray" ;;
esac
if ! .venv/bin/python -c "import $modules" 2>/dev/null; then
  .venv/bin/pip install -q -e ".${extra:+[$extra]}"
fi
