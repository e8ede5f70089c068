#!/usr/bin/env bash
# Set up, then run every test tier (unit, component, end-to-end, slow real-model checks) and the
# benchmark scripts' --quick modes. FLOWERTUNE_DATA_DIR (default ../shared/data) holds the real eval sets.
# The end of the output shows the 15 slowest tests and the elapsed time against the CI budget (30 min on the
# slowest machine kind): a change that breaks the budget shows it in its own CI log.
set -euo pipefail
export FLOWERTUNE_TEST_T0="${FLOWERTUNE_TEST_T0:-$(date +%s)}"
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLOWERTUNE_DATA_DIR="${FLOWERTUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider --durations=15 --durations-min=1.0 "$@"
