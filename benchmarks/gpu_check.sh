#!/usr/bin/env bash
# One command on a CUDA machine, after `pip install -e ".[test,gpu]"`: parity of every Triton path
# against the native one, then speed (benchmarks/gpu_check.py writes benchmarks/results/gpu_check.csv).
# Each step runs even if an earlier one failed; the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
status=0
run() { echo "== $*"; "$@" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }; }
run python -c "import torch, triton, flashrnn, mlstm_kernels; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"
run python -m pytest -q -p no:cacheprovider tests/test_gpu_kernels.py
run python benchmarks/gpu_check.py
# the mLSTM backward question on the hardware (docs/mlstm_triton_backward.md)
run python benchmarks/mlstm_triton_backward.py
exit $status
