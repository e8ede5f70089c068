#!/usr/bin/env bash
# Set up, then run the quickstart: a real federated LoRA fine-tuning of the embedded model, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec flowertune run "$@"
