#!/usr/bin/env bash
# Kernel correctness on CUDA, then the kernel benchmarks at real shapes (one command).
#   scripts/bench_kernels_gpu.sh [extra pytest-benchmark args, e.g. --benchmark-json=out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" - <<'PYCHECK'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench_kernels_gpu.sh: no CUDA device visible")
print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
PYCHECK
unset TRITON_INTERPRET
# Compiled Triton kernels against the references (tests marked gpu are skipped by default).
"$PY" -m pytest tests/kernels -m gpu -q -p no:cacheprovider
# Fast path vs reference, same run: time, peak memory, TFLOP/s, bandwidth vs device copy.
"$PY" -m pytest bench/test_bench_kernels.py -q -p no:cacheprovider \
    --benchmark-columns=min,median,max,rounds --benchmark-group-by=group "$@"
