#!/usr/bin/env bash
# One whole PPO iteration on GPU, fast path vs RL4VLM's reference path, in one command: CLIP
# ViT-L/14-336 + a TinyLlama-1.1B-sized decoder (random weights, bf16), 16 envs x 2 steps, 128 new
# tokens per step (EOS ignored). Prints env steps/s, tokens/s and the ratio; full timings go to
# the JSON file (first argument, default .benchmarks/ppo_iteration_gpu.json). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.benchmarks/ppo_iteration_gpu.json}"
shift || true
mkdir -p "$(dirname "$out")"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
python -m pytest bench/test_bench_ppo_iteration.py -m gpu -s -q -p no:cacheprovider \
    --benchmark-json="$out" "$@"
