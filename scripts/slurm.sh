#!/bin/bash
# fastvlmrl on SLURM: one torchrun per node, each starting one process per GPU; the nodes meet at
# the first node's address (torchrun's c10d rendezvous). Submit with
#   sbatch --nodes=2 scripts/slurm.sh configs/rl4vlm/points24.yaml model.path=/models/llava-sft
# The run directory (run.out_dir) must be on a filesystem every node sees: rank 0 writes it, and a
# resume (`resume=runs/<name>`) reads the checkpoint on every rank, with as many processes as wrote
# it to continue exactly (another count continues the weights and schedule with fresh episodes).
#SBATCH --job-name=fastvlmrl
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
# a collective that waits longer than this ends the job with an error instead of hanging it
export FASTVLMRL_DIST_TIMEOUT_S=${FASTVLMRL_DIST_TIMEOUT_S:-1800}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# after scancel/Ctrl-C torchrun waits this long for the workers' stop checkpoint before SIGKILL
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}

srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$HEAD:$PORT" \
    -m fastvlmrl train "$@"
