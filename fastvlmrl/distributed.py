"""Data-parallel training over processes started by `torchrun` (one per GPU, or several on CPU).

    torchrun --nproc-per-node 2 -m fastvlmrl train ...          # one node
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m fastvlmrl train ...

Each rank owns a contiguous slice of the run's `env.num_envs` games (env i of rank r is global env
r * num_envs / world + i, with the seeds the single-process run gives that env) and its own engine
over its own replica of the weights. What the ranks share, and nothing else:

- advantage normalisation over the global rollout (sums of the advantages and their squares);
- each mini-batch's totals (samples, tokens, λ weight), so that every loss term is the global
  mini-batch's mean, and the gradients: summed over ranks once per optimizer step (the reduction
  torch's DDP does, without overlapping it with the backward);
- with grpo/gigpo, each rank's number of samples (it plays whole groups on its envs, episodes of
  any length), so that the mini-batches are drawn over the global rollout;
- whether every rank's loss is finite (all skip together), the epochs' approx-KL (for target_kl);
- the metrics (counts summed, means weighted) and the evaluation's episodes (split over ranks).

Only rank 0 writes the run directory (config, metrics, checkpoints, curves, eval.json); the
others wait for it at barriers. NCCL on CUDA, gloo on CPU; every collective has a timeout
(`FASTVLMRL_DIST_TIMEOUT_S`, default 1800 s), and torchrun stops the whole job when a rank dies.
A single process needs none of this: `current()` is then a world of one whose operations are
identities.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        if not self.active:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def all_finite(self, finite: bool) -> bool:
        return self.sum([0.0 if finite else 1.0])[0] == 0.0

    def reduce_gradients(self, params: list[torch.Tensor], bucket_bytes: int = 64 * 2**20) -> None:
        """Sum each parameter's gradient over ranks, in flat buckets of about `bucket_bytes` (one
        all-reduce each; the extra memory is one bucket, not a second copy of the gradients). A
        parameter with a gradient on some rank but not this one counts as zero here; one with no
        gradient on any rank keeps none, as in a single process (Adam and weight decay skip it).
        A sharded parameter (FSDP, a DTensor) is left alone: FSDP reduce-scatters its gradient in
        the backward."""
        if not self.active:
            return
        params = [p for p in params if not _is_dtensor(p)]
        device = _collective_device()
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        torch.distributed.all_reduce(present)
        bucket, size = [], 0
        for p, anywhere in zip(params, present.tolist()):
            if not anywhere:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if bucket and (p.grad.dtype != bucket[0].grad.dtype or p.grad.device != bucket[0].grad.device
                           or size + p.grad.numel() * p.grad.element_size() > bucket_bytes):
                _all_reduce_bucket(bucket)
                bucket, size = [], 0
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
        if bucket:
            _all_reduce_bucket(bucket)

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (as DDP starts): the replicas begin equal."""
        if not self.active:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def local_slice(self, total: int, what: str) -> tuple[int, int]:
        """(start, count) of this rank's equal share of `total` items; ValueError if uneven."""
        if total % self.size:
            raise ValueError(f"{what}={total} must be a multiple of the number of processes ({self.size})")
        count = total // self.size
        return self.rank * count, count


_WORLD = World()


def current() -> World:
    """The world this process runs in (a world of one unless `init_from_environment` joined one)."""
    return _WORLD


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device_type: str) -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    NCCL when the run is on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU."""
    global _WORLD
    if not launched_by_torchrun():
        _WORLD = World()
        return _WORLD
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=float(os.environ.get("FASTVLMRL_DIST_TIMEOUT_S", "1800")))
        torch.distributed.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
    _WORLD = World(rank, size, local_rank)
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _WORLD = World()


def _all_reduce_bucket(params: list[torch.Tensor]) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _collective_device() -> torch.device:
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)
