#!/usr/bin/env bash
# Nsight Systems profile of a training run: the NVTX ranges fastvlmrl marks (rollout, rollout/generate,
# engine/vision, engine/prefill, engine/decode, rollout/parse, rollout/env_step, update, ppo/forward,
# ppo/backward, ppo/optimizer_step) on the CUDA timeline.
#   scripts/profile.sh [train settings...]     e.g. scripts/profile.sh configs/tiny/numberline.yaml ppo.updates=3
# Writes runs/profile.nsys-rep; open it in nsys-ui, or `nsys stats runs/profile.nsys-rep`.
set -euo pipefail
command -v nsys >/dev/null || { echo "nsys (Nsight Systems) is not on PATH" >&2; exit 1; }
mkdir -p runs
exec nsys profile --trace=cuda,nvtx,osrt --sample=none --force-overwrite=true --output=runs/profile \
    python3 -m fastvlmrl train "$@"
