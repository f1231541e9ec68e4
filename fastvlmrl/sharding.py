"""FSDP2 under torchrun (`model.fsdp=true`): the weights, gradients and Adam state sharded over
the processes, for models whose training state does not fit one GPU.

What it shards: every layer of the language model and of the vision tower (each `layers` /
`blocks` list of the Hugging Face model) is its own FSDP unit, the value head another, and the
root (embeddings, LM head, norms, projector) the last; LoRA adapters are sharded with the layer
they sit in. The gradients are summed over ranks (divide factor 1: the losses are already the
global mini-batch's means, as with the DDP-style reduction of `distributed.py`).

What it costs, and why:
- The rollout gathers the whole model on every rank (`full_weights`): the engine reads the
  parameters directly (paged attention, its own LM head), and each rank generates a different
  number of tokens, so the per-layer all-gathers FSDP would otherwise make inside every decode
  step cannot run in lockstep. The peak of a rollout is therefore the whole model in its dtype on
  every GPU (bf16: 2 bytes a parameter) on top of the shards, plus the KV cache; what FSDP
  divides by the number of processes is the training state (the weights, their gradients and
  Adam's moments). The same holds for the no-grad scoring passes (recomputed log-probs, the KL
  reference). The prefix cache is dropped and CUDA graphs are captured again when the gathered tensors moved.
- Inside the update, every rank runs as many forwards and backwards as the rank with the most
  (`lockstep`): FSDP's all-gathers and reduce-scatters are collectives inside them. A rank
  whose part of a mini-batch is smaller runs the missing ones on one of its samples with the
  loss times 0.
- Checkpoints are written whole (`full_state`): the same files as a single process, so a run
  saved with FSDP on N processes resumes on M, with or without FSDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from fastvlmrl.distributed import current as current_world


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def shard(policy: nn.Module) -> int:
    """Shard `policy` in place (after LoRA and gradient checkpointing, before the optimizer is
    made: the parameters become new DTensor objects). Returns the number of FSDP units."""
    FSDPModule, fully_shard = _fsdp()
    units = 0
    for name, module in policy.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "blocks"):
            for layer in module:
                fully_shard(layer)
                units += 1
    fully_shard(policy.value_head)  # float32 beside a bf16 model: a unit of its own dtype
    fully_shard(policy)
    # the root's state set up now (FSDP does it at the root's first forward): the engine calls the
    # layers directly, and a layer run before the root would make itself a root
    policy._get_fsdp_state()._lazy_init()
    for module in policy.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-multiplied sum)
    return units + 2


def is_sharded(module: nn.Module) -> bool:
    FSDPModule, _ = _fsdp()
    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def full_weights(policy: nn.Module, engine=None) -> Iterator[None]:
    """Every parameter gathered whole on this rank inside the block (every rank enters it
    together: the gathers are collectives); FSDP's hooks then make no collective, so ranks may run
    different numbers of forwards (generation, no-grad scoring). Nothing happens for a policy
    that is not sharded. `engine`: its prefix cache is dropped (its K/V came from other tensors)."""
    if not is_sharded(policy):
        yield
        return
    FSDPModule, _ = _fsdp()
    units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    policy.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    if engine is not None:
        engine.reset_prefix_cache()
    try:
        yield
    finally:
        policy.set_reshard_after_forward(True)
        # the root keeps its weights after the forward (FSDP's default for a root): the LM head's
        # weight is read after the policy's forward (the fused log-prob), inside the same pass
        policy.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.reshard()


def lockstep(policy: nn.Module, parts: list[list], filler) -> list[tuple[list, bool]]:
    """The forward/backward passes this rank runs, as (samples, counts). Not sharded: `parts` as
    they are. Sharded: as many as the rank with the most, the extra ones on `[filler]` with
    counts=False (the caller multiplies their loss by 0 and keeps none of their statistics)."""
    out = [(part, True) for part in parts]
    if not is_sharded(policy):
        return out
    most = int(current_world().max(float(len(parts))))
    return out + [([filler], False)] * (most - len(parts))


def full_state(policy: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict | None, dict | None]:
    """(the policy's state dict, the optimizer's) with every tensor whole, on CPU, in the format a
    single process saves (the optimizer's keyed by parameter index), on rank 0; (None, None) on
    the others. Every rank calls it (each tensor is gathered by a collective, one at a time)."""
    from torch.distributed.tensor import DTensor

    keep = current_world().is_main

    def whole(value):
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if not torch.is_tensor(value):
            return value
        return value.detach().cpu() if keep else None  # (the other ranks drop their gathered copy at once)

    model = {name: whole(value) for name, value in policy.state_dict().items()}
    saved = None
    if optimizer is not None:
        saved = optimizer.state_dict()
        saved["state"] = {index: {key: whole(value) for key, value in state.items()}
                          for index, state in saved["state"].items()}
    return (model, saved) if keep else (None, None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """A single-process optimizer state (whole tensors, keyed by parameter index) into the
    optimizer of a sharded policy: each moment as its parameter's shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entries in saved["state"].items():
        param = params[int(index)]
        state[index] = {
            key: distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
            if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape else value
            for key, value in entries.items()}
    optimizer.load_state_dict({**saved, "state": state})
