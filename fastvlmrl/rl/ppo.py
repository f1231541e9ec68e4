"""PPO as RL4VLM: λ-weighted sequence log-probs of the outputs, clipped surrogate with the ratio
cap, clipped value loss, Adam with a cosine learning rate, gradient-norm clipping; a mini-batch
whose loss is not finite is skipped and counted.

The training forward stops at the final hidden states; the per-token log-probs come from
`fastvlmrl.kernels.fused_linear_logprob` (no [T, V] logits) and the loss from
`fastvlmrl.kernels.ppo_clip_loss` (their PyTorch references on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastvlmrl.kernels import fused_linear_logprob, ppo_clip_loss
from fastvlmrl.rl.storage import RolloutStorage, Transition


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + output
    attention_mask: torch.Tensor  # [B, L]
    mm: dict  # image inputs, concatenated along dim 0
    prompt_lens: torch.Tensor  # [B]
    rows: torch.Tensor  # [T]: flat index (b * L + position) of the hidden state predicting each output token
    targets: torch.Tensor  # [T] output token ids
    token_weight: torch.Tensor  # [T]
    cu_seqlens: torch.Tensor  # [B + 1] int32


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
    mm = {}
    for key in transitions[0].mm:
        mm[key] = torch.cat([t.mm[key] for t in transitions]).to(device)
    return PackedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        mm=mm,
        prompt_lens=torch.tensor([len(t.prompt_ids) for t in transitions], device=device),
        rows=torch.cat(rows).to(device),
        targets=torch.cat([t.output_ids for t in transitions]).to(device),
        token_weight=torch.cat([t.token_weight for t in transitions]).to(device),
        cu_seqlens=torch.tensor(lens, dtype=torch.int32, device=device),
    )


def forward_logp_and_values(policy, batch: PackedBatch, temperature: float, logit_bias: torch.Tensor | None = None):
    """(per-token log-probs [T] at the sampling temperature, values [B]) in one forward.

    logit_bias [V] (large negative at tokens the sampler never emits, 0 elsewhere) makes the
    log-probs those of the distribution the rollout sampled from."""
    hidden = policy.hidden_states(batch.input_ids, batch.attention_mask, **batch.mm)  # [B, L, H]
    B, L, H = hidden.shape
    flat = hidden.reshape(B * L, H)
    token_logp = fused_linear_logprob(flat[batch.rows], policy.lm_head_weight(), batch.targets, bias=logit_bias,
                                      temperature=temperature)
    last_prompt = flat[torch.arange(B, device=flat.device) * L + batch.prompt_lens - 1]
    return token_logp, policy.value(last_prompt)


def cosine_lr(update: int, total: int, lr: float, lr_end: float, warmup: int = 0) -> float:
    """Cosine decay from lr to lr_end over the planned updates, held at lr_end after (no restart).
    With warmup > 0 the first `warmup` updates ramp linearly up to the schedule (Adam's first
    steps move every weight by about lr whatever its gradient: a ramp keeps them from undoing
    the warm start)."""
    progress = min(update / max(total, 1), 1.0)
    value = lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * progress))
    return value * min(1.0, (update + 1) / warmup) if warmup > 0 else value


def ppo_update(policy, optimizer, storage: RolloutStorage, cfg, *, temperature: float, pad_id: int,
               device, generator: torch.Generator, logit_bias: torch.Tensor | None = None) -> dict[str, float]:
    """cfg.epochs passes over the rollout in mini-batches; returns the update's metrics."""
    params = [p for p in policy.parameters() if p.requires_grad]
    sums = {"actor/pg_loss": 0.0, "critic/value_loss": 0.0, "actor/clip_frac": 0.0, "actor/approx_kl": 0.0,
            "actor/ratio_mean": 0.0, "actor/grad_norm": 0.0}
    steps = skipped = 0
    policy.train()
    for _ in range(cfg.epochs):
        for samples in storage.minibatches(cfg.minibatch_size, generator):
            transitions = [s[0] for s in samples]
            batch = pack(transitions, pad_id, device)
            advantages = torch.tensor([s[1] for s in samples], device=device)
            returns = torch.tensor([s[2] for s in samples], device=device)
            old_logp = torch.tensor([t.logp for t in transitions], device=device)
            old_values = torch.tensor([t.value for t in transitions], device=device)
            token_logp, values = forward_logp_and_values(policy, batch, temperature, logit_bias)
            out = ppo_clip_loss(token_logp, batch.token_weight, batch.cu_seqlens, old_logp, advantages,
                                clip_eps=cfg.clip, ratio_cap=cfg.ratio_cap, values=values, old_values=old_values,
                                returns=returns, value_clip=cfg.value_clip, value_coef=cfg.value_coef)
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(out.loss):
                skipped += 1  # never applied: a NaN/inf step would ruin the weights
                continue
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            steps += 1
            sums["actor/pg_loss"] += float(out.policy_loss.detach())
            sums["critic/value_loss"] += float(out.value_loss.detach())
            sums["actor/clip_frac"] += float(out.clip_fraction)
            sums["actor/approx_kl"] += float(out.approx_kl)
            sums["actor/ratio_mean"] += float(out.ratio_mean)
            sums["actor/grad_norm"] += float(grad_norm)
    metrics = {k: v / max(steps, 1) for k, v in sums.items()}
    metrics["actor/optimizer_steps"] = steps
    metrics["actor/skipped_nonfinite"] = skipped
    return metrics
