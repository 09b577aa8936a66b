#!/usr/bin/env bash
# The project's test command: install, then run the whole suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python -m pytest -q "$@"
