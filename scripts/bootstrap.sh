#!/usr/bin/env bash
# Create .venv (if missing) and install ms2dist with its dependencies into it.
# The CPU build of torch goes in first: a bare `torch` requirement would pull a
# multi-GB CUDA build. On a GPU machine, set TORCH_SPEC to the build you want
# (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${MS2DIST_EXTRAS:-dev,deepspeed}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$VPY" -m pip install -q $TORCH_SPEC
fi
if ! "$VPY" -c "import ms2dist, accelerate, webdataset, pypianoroll, mlflow" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.ms2dist-installed ]; then
  "$VPY" -m pip install -q -e ".[${EXTRAS}]"
  touch .venv/.ms2dist-installed
fi
