#!/usr/bin/env bash
# Set up a test environment (dev tools, the CPU build of vLLM) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not vllm" -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Real datasets beside the checkout (never in it) enable the tests marked slow.
if [ -z "${LOCALSYNTH_REAL_DATA:-}" ] && [ -d ../shared/data ]; then
  export LOCALSYNTH_REAL_DATA="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m pytest "$@"
