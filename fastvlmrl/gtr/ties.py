"""TIES merging (Yadav et al. 2023), for GTR-Turbo's self-teacher: a merge of the agent's last K
LoRA checkpoints. Each checkpoint is a task vector (its change to the base weights); TIES
  1. trims each task vector to its `density` share of largest-magnitude entries (per tensor),
  2. elects a sign per entry: the sign of the trimmed vectors' sum,
  3. averages, per entry, only the trimmed values that agree with the elected sign (disjoint mean),
so that small, conflicting updates cancel instead of dragging the merge toward zero.

For LoRA the task vector of a module is its exact delta `scale * B @ A` (adapters of any rank
merge); the merged delta is written back as a LoRA pair of the wanted rank by truncated SVD (exact
when the merged delta's rank is within it), so the teacher runs as one more adapter on the shared
base weights.
"""

from __future__ import annotations

import torch


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """`delta` with all but its round(density * numel) largest-magnitude entries zeroed."""
    if not 0 < density <= 1:
        raise ValueError(f"the TIES density must be in (0, 1], got {density}")
    keep = int(round(density * delta.numel()))
    if keep >= delta.numel():
        return delta.clone()
    out = torch.zeros_like(delta).flatten()
    if keep > 0:
        index = delta.abs().flatten().topk(keep).indices
        out[index] = delta.flatten()[index]
    return out.view_as(delta)


def ties_merge(deltas: list[torch.Tensor], density: float = 0.8) -> torch.Tensor:
    """The TIES merge of same-shaped task vectors (computed in float32, returned in their dtype)."""
    if not deltas:
        raise ValueError("TIES needs at least one task vector")
    trimmed = torch.stack([trim(d.float(), density) for d in deltas])
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(dim=0)
    merged = torch.where(agree, trimmed, 0.0).sum(dim=0) / count.clamp(min=1)
    return merged.to(deltas[0].dtype)


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An adapter state dict (peft's saved names: `<module>.lora_A.weight`, `<module>.lora_B.weight`)
    as {module: (A [r, in], B [out, r])}."""
    pairs = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b = state.get(module + ".lora_B.weight")
            if b is None:
                raise ValueError(f"adapter state has {key} but no {module}.lora_B.weight")
            pairs[module] = (a, b)
    return pairs


_OVERSAMPLE = 8  # randomized SVD: extra directions beyond the rank (Halko et al.)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) with B @ A the best rank-`rank` approximation of delta [out, in]
    (the singular values split evenly between the two factors). A matrix much larger than the rank
    (a 7B model's 4096 x 14336 layers) takes a randomized SVD of rank + 8 directions (2 power
    iterations), exact when the delta's rank is within that; a small one the full SVD."""
    if rank + _OVERSAMPLE < min(delta.shape):
        devices = [delta.device] if delta.is_cuda else []
        with torch.random.fork_rng(devices=devices):  # its random projection: seeded, the caller's stream untouched
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta.float(), q=rank + _OVERSAMPLE, niter=2)
        vh = v.T
    else:
        u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(delta.dtype), (u[:, :rank] * root[None, :]).to(delta.dtype)


def merge_lora_adapters(adapters: list[dict[str, torch.Tensor]], *, scale: float, density: float = 0.8,
                        rank: int, device=None) -> dict[str, torch.Tensor]:
    """The TIES merge of LoRA adapters (same modules, LoRA scale `scale` = alpha / r) as one adapter
    state dict of rank `rank` at the same scale: per module, TIES over the exact deltas, then the
    truncated SVD of the merge divided by the scale; computed on `device` (default: where the
    adapters are), returned on the adapters' device."""
    if not adapters:
        raise ValueError("no adapters to merge")
    pairs = [lora_pairs(a) for a in adapters]
    modules = set(pairs[0])
    if any(set(p) != modules for p in pairs[1:]):
        raise ValueError("the adapters to merge adapt different modules")
    merged = {}
    for module in sorted(modules):
        home = pairs[0][module][0]
        deltas = [scale * (b.to(device).float() @ a.to(device).float()) for a, b in (p[module] for p in pairs)]
        a, b = low_rank(ties_merge(deltas, density) / scale, rank)
        merged[module + ".lora_A.weight"] = a.to(home.device, home.dtype)
        merged[module + ".lora_B.weight"] = b.to(home.device, home.dtype)
    return merged
