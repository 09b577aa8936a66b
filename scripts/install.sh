#!/usr/bin/env bash
# Installs Bio-xLSTM with every extra (`[all]`: chem, train, eval, gpu) and its test and benchmark
# tools into the current Python environment. A user who only loads, generates, scores and embeds
# needs the base install alone: `pip install .` (scripts/test_base_install.sh checks it).
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so that
# resolving `torch` below never pulls a multi-GB CUDA build. Set BIOXLSTM_TORCH_INDEX to a
# wheel index (e.g. the PyTorch CPU index) where plain PyPI would serve a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1); then
    python -m pip install -q "torch==2.13.0" ${BIOXLSTM_TORCH_INDEX:+--index-url "$BIOXLSTM_TORCH_INDEX"}
fi
python -m pip install -q -e ".[all,test,bench]"
