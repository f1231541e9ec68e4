#!/usr/bin/env bash
# The rollout engine's GPU benchmark in one command: engine vs Hugging Face `generate` (and
# transformers' continuous batching, text only) on random-weight Qwen2-VL-2B and LLaVA-1.6-Mistral-7B
# configs in bf16, batch 64, ~600-token prompts with one image, 256 new tokens (EOS ignored).
# Prints tokens/s, the ratio and the fraction of the decode HBM roofline; full timings go to the
# JSON file (first argument, default .benchmarks/engine_gpu.json). Extra arguments go to pytest.
# Set FASTVLMRL_HBM_GBPS to the GPU's memory bandwidth if the device is not in the built-in table.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.benchmarks/engine_gpu.json}"
shift || true
mkdir -p "$(dirname "$out")"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
# GPU correctness first (CUDA graphs on/off, flash-attn or Triton backends), then the benchmark.
python -m pytest tests/engine -m gpu -q -p no:cacheprovider
python -m pytest bench/test_bench_engine.py -m gpu -s -q -p no:cacheprovider \
    --benchmark-only --benchmark-json="$out" "$@"
