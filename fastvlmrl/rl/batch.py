"""Packing samples into one padded batch, and the training forward shared by SFT and PPO: one
pass of the model to final hidden states, then per-token log-probs through the fused LM-head
kernel (no [T, V] logits) and the value head on the last prompt token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvlmrl.kernels import fused_linear_logprob
from fastvlmrl.rl.storage import Transition


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + output
    attention_mask: torch.Tensor  # [B, L]
    mm: dict  # image inputs, concatenated along dim 0 (tile counts zero-padded along dim 1)
    prompt_lens: torch.Tensor  # [B]
    rows: torch.Tensor  # [T]: flat index (b * L + position) of the hidden state predicting each output token
    targets: torch.Tensor  # [T] output token ids
    is_action: torch.Tensor  # [T] bool: the token belongs to the reply's action part
    cu_seqlens: torch.Tensor  # [B + 1] int32
    cu_host: list[int]  # the same on the host (no device-to-host sync to read it)


def micro_batches(samples: list, size: int) -> list[list]:
    """Samples in pieces of `size` for one forward (and backward) each; 0: one piece."""
    size = size or len(samples) or 1
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def pack(transitions: list[Transition], pad_id: int, device) -> PackedBatch:
    """Right-pad prompt+output sequences and index the hidden states that predict output tokens."""
    seqs = [torch.cat([t.prompt_ids, t.output_ids]) for t in transitions]
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    rows, lens = [], [0]
    for b, (t, s) in enumerate(zip(transitions, seqs)):
        input_ids[b, : len(s)] = s
        attention_mask[b, : len(s)] = 1
        p, o = len(t.prompt_ids), len(t.output_ids)
        rows.append(b * L + torch.arange(p - 1, p - 1 + o))  # position k predicts token k + 1
        lens.append(lens[-1] + o)
    mm = {key: _cat_tiles([t.mm[key] for t in transitions]).to(device) for key in transitions[0].mm}
    return PackedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        mm=mm,
        prompt_lens=torch.tensor([len(t.prompt_ids) for t in transitions], device=device),
        rows=torch.cat(rows).to(device),
        targets=torch.cat([t.output_ids for t in transitions]).to(device),
        is_action=torch.cat([t.is_action for t in transitions]).to(device),
        cu_seqlens=torch.tensor(lens, dtype=torch.int32, device=device),
        cu_host=lens,
    )


def _cat_tiles(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Samples' image tensors along dim 0. Tiled families (LLaVA-NeXT, OneVision, Idefics3,
    SmolVLM: ``[1, tiles, ...]``) may differ in tile count: the shorter ones get all-zero tiles,
    which those models drop (by ``image_sizes`` or as padding), as the engine's batching does."""
    shapes = {tuple(t.shape[2:]) for t in tensors}
    if len({t.shape[1:] for t in tensors}) > 1 and len(shapes) == 1 and all(t.ndim >= 3 for t in tensors):
        from fastvlmrl.engine.families import pad_tiles

        width = max(t.shape[1] for t in tensors)
        tensors = [pad_tiles(t, width) for t in tensors]
    return torch.cat(tensors)


def forward_hidden_and_values(policy, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(the final hidden states that predict the output tokens [T, H], values [B]) in one forward:
    what the LM head turns into the tokens' log-probs, and the value head's output on the last
    prompt token."""
    from fastvlmrl.sharding import is_sharded

    # sharded: through the module's call (Policy.forward is hidden_states), so FSDP's hooks gather the root
    forward = policy if is_sharded(policy) else policy.hidden_states
    hidden = forward(batch.input_ids, batch.attention_mask, **batch.mm)  # [B, L, H]
    B, L, H = hidden.shape
    flat = hidden.reshape(B * L, H)
    last_prompt = flat[torch.arange(B, device=flat.device) * L + batch.prompt_lens - 1]
    return flat[batch.rows], policy.value(last_prompt)


def forward_logp_and_values(policy, batch: PackedBatch, temperature: float, logit_bias: torch.Tensor | None = None,
                            return_entropy: bool = False):
    """(per-token log-probs [T] at `temperature`, values [B]) in one forward; with return_entropy,
    (log-probs, values, per-token entropies [T] of the tempered distribution).

    logit_bias [V] (large negative at tokens the sampler never emits, 0 elsewhere) makes the
    log-probs those of the distribution the rollout sampled from."""
    rows, values = forward_hidden_and_values(policy, batch)
    out = fused_linear_logprob(rows, policy.lm_head_weight(), batch.targets, bias=logit_bias,
                               temperature=temperature, return_entropy=return_entropy)
    return (out[0], values, out[1]) if return_entropy else (out, values)
