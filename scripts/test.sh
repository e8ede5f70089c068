#!/usr/bin/env bash
# Set up, then run every test tier (unit, component, end-to-end, slow real-model checks) and the
# benchmark scripts' --quick modes. FLOWERTUNE_DATA_DIR (default ../shared/data) holds the real eval sets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLOWERTUNE_DATA_DIR="${FLOWERTUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
