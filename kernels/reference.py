"""Plain PyTorch implementations of every op in ``fastvlmrl.kernels``.

They are the ground truth the Triton kernels are tested against, the baseline the benchmarks
compare with, and the path the public functions take on CPU (unless ``TRITON_INTERPRET=1``).
They favour obviousness over memory: :func:`fused_linear_logprob` here materialises the whole
``[T, V]`` logits. Inputs are assumed valid (the public functions validate before dispatching).
Math runs in float32, or float64 when the inputs are float64.
"""

from __future__ import annotations

import math

import torch

from ._types import FusedPPOLossOutput, PPOLossOutput
from .linear import linear_fp32


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------------------------------------
# log-prob


def fused_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob (and entropy) of ``targets`` under ``softmax((hidden @ weight.T + bias) / T)``.

    The logits are fp32 (fp64 for fp64 inputs) from bf16/fp16 inputs without rounding the GEMM's
    output (:func:`fastvlmrl.kernels.linear.linear_fp32`, the rollout engine's definition too),
    then divided by the temperature. Ignored positions get 0 for both outputs.
    """
    cdt = _compute_dtype(hidden, weight)
    logits = linear_fp32(hidden, weight, bias).to(cdt) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = logp_all.gather(-1, safe_targets[:, None]).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    if not return_entropy:
        return logp.to(torch.float32) if cdt == torch.float32 else logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    if cdt == torch.float32:
        return logp.float(), entropy.float()
    return logp, entropy


# --------------------------------------------------------------------------------------------
# PPO loss


def _surrogate(log_ratio, adv, clip_low, clip_high, ratio_cap):
    """Per-element clipped surrogate (to minimise) with RL4VLM's ratio cap.

    Above the cap only the clipped term is used (RL4VLM ``algo/ppo.py``: ``if ratio > 10:
    action_loss = -surr2``). The ratio fed to both terms is ``exp(min(log_ratio, log(cap)))``:
    it changes no value (above the cap the clipped term is the constant ``(1 + clip_high) * A``)
    but keeps ``exp`` finite, so a huge ratio never turns a zero gradient into ``0 * inf = NaN``.
    """
    if ratio_cap is None:
        capped = torch.zeros_like(log_ratio, dtype=torch.bool)
        ratio = log_ratio.exp()
    else:
        log_cap = math.log(ratio_cap)
        capped = log_ratio > log_cap
        ratio = log_ratio.clamp(max=log_cap).exp()
    surr1 = ratio * adv
    surr2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.where(capped, surr2, torch.minimum(surr1, surr2)), capped


def _ratio_stats(log_ratio, weight, denom, clip_low, clip_high, capped):
    with torch.no_grad():
        ratio = log_ratio.exp()
        clipped = ((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)).to(log_ratio.dtype)
        kl = (ratio - 1.0) - log_ratio
        stats = [(clipped * weight).sum() / denom, (kl * weight).sum() / denom,
                 (ratio * weight).sum() / denom, (capped.to(log_ratio.dtype) * weight).sum() / denom]
    return [s.float() for s in stats]


def ppo_clip_loss(
    token_logp: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.1,
    ratio_cap: float | None = 10.0,
    values: torch.Tensor | None = None,
    old_values: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
    value_clip: float | None = 0.1,
    value_coef: float = 0.5,
) -> PPOLossOutput:
    """RL4VLM's sequence-level PPO loss over packed sequences (see ``fastvlmrl.kernels.ppo_clip_loss``)."""
    cdt = _compute_dtype(token_logp, old_logp, advantages)
    B = old_logp.shape[0]
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(B, device=cu.device), lengths)
    start, end = int(cu[0]), int(cu[-1])
    weighted = token_logp[start:end].to(cdt) * token_weight[start:end].to(cdt)
    seq_logp = torch.zeros(B, dtype=cdt, device=token_logp.device).index_add(0, seg, weighted)
    log_ratio = seq_logp - old_logp.to(cdt)
    per_seq, capped = _surrogate(log_ratio, advantages.to(cdt), clip_eps, clip_eps, ratio_cap)
    policy_loss = per_seq.mean()
    if values is not None:
        v, v_old, ret = values.to(cdt), old_values.to(cdt), returns.to(cdt)
        v_clipped = v if value_clip is None else v_old + (v - v_old).clamp(-value_clip, value_clip)
        value_loss = 0.5 * torch.maximum((v - ret) ** 2, (v_clipped - ret) ** 2).mean()
    else:
        value_loss = torch.zeros((), dtype=cdt, device=token_logp.device)
    loss = policy_loss + value_coef * value_loss
    ones = torch.ones_like(log_ratio)
    stats = _ratio_stats(log_ratio, ones, max(B, 1), clip_eps, clip_eps, capped)
    if cdt == torch.float32:
        loss, policy_loss, value_loss = loss.float(), policy_loss.float(), value_loss.float()
    return PPOLossOutput(loss, policy_loss, value_loss, *stats)


def ppo_clip_loss_token_level(
    token_logp: torch.Tensor,
    token_weight: torch.Tensor,
    old_token_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ratio_cap: float | None = None,
) -> PPOLossOutput:
    """Token-level PPO loss, weighted token mean (see ``fastvlmrl.kernels.ppo_clip_loss_token_level``)."""
    cdt = _compute_dtype(token_logp, old_token_logp, advantages)
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    w = token_weight.to(cdt)
    log_ratio = token_logp.to(cdt) - old_token_logp.to(cdt)
    per_tok, capped = _surrogate(log_ratio, advantages.to(cdt), clip_eps, clip_high, ratio_cap)
    wsum = w.sum()
    denom = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    policy_loss = (per_tok * w).sum() / denom
    stats = _ratio_stats(log_ratio, w, denom, clip_eps, clip_high, capped)
    zero = torch.zeros((), dtype=torch.float32 if cdt == torch.float32 else cdt,
                       device=token_logp.device)
    if cdt == torch.float32:
        policy_loss = policy_loss.float()
    return PPOLossOutput(policy_loss, policy_loss, zero, *stats)


# --------------------------------------------------------------------------------------------
# fused linear PPO loss


def ppo_terms(token_logp, entropy, token_weight, seq_index, num_seqs, old_logp, advantages, *,
              level, old_token_logp, ref_logp, clip_eps, clip_eps_high, ratio_cap, entropy_coef, kl_coef,
              policy_denominator, token_denominator, kl_weight=None):
    """The loss of :func:`fused_linear_ppo_loss` over some whole sequences, from their tokens'
    log-probs and entropies: (loss, policy_loss, [clipped, kl, ratio, capped, weight] sums).

    ``seq_index`` [n] maps each token to its sequence in ``0..num_seqs-1``; ``old_logp`` and
    ``advantages`` are per sequence. The loss of a set of sequences is the sum of their losses, so
    the fused op evaluates this tile by tile (and differentiates it with autograd for the
    gradient of each token) and the reference on everything at once: one definition for both.
    """
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    logp, ent = token_logp.double(), entropy.double()
    w = token_weight.double()
    if level == "sequence":
        seq_logp = torch.zeros(num_seqs, dtype=torch.float64, device=logp.device).index_add(0, seq_index, w * logp)
        log_ratio = seq_logp - old_logp.double()
        per, capped = _surrogate(log_ratio, advantages.double(), clip_eps, clip_high, ratio_cap)
        policy = per.sum() / policy_denominator
        stat_weight = torch.ones_like(log_ratio)
    else:
        log_ratio = logp - old_token_logp.double()
        per, capped = _surrogate(log_ratio, advantages.double()[seq_index], clip_eps, clip_high, ratio_cap)
        policy = (per * w).sum() / policy_denominator
        stat_weight = w
    loss = policy
    if entropy_coef:
        loss = loss - entropy_coef * ent.sum() / token_denominator
    if kl_coef and ref_logp is not None:
        r = ref_logp.double() - logp
        k3 = torch.exp(r) - r - 1
        if kl_weight is not None:  # per token (e.g. the thought tokens only)
            k3 = k3 * kl_weight.double()
        loss = loss + kl_coef * k3.sum() / token_denominator
    with torch.no_grad():
        ratio = log_ratio.exp()
        clipped = ((ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_high)).double()
        sums = torch.stack([(clipped * stat_weight).sum(), (((ratio - 1.0) - log_ratio) * stat_weight).sum(),
                            (ratio * stat_weight).sum(), (capped.double() * stat_weight).sum(), stat_weight.sum()])
    return loss, policy.detach(), sums


def ppo_stats_from_sums(sums: torch.Tensor) -> list[torch.Tensor]:
    """clip_fraction, approx_kl, ratio_mean, capped_fraction from :func:`ppo_terms`' sums."""
    denom = torch.where(sums[4] > 0, sums[4], torch.ones_like(sums[4]))
    return [(sums[i] / denom).float() for i in range(4)]


def fused_linear_ppo_loss(hidden, weight, targets, token_weight, cu_seqlens, old_logp, advantages, *,
                          bias=None, temperature=1.0, ignore_index=-100, **terms) -> FusedPPOLossOutput:
    """The reference of :func:`fastvlmrl.kernels.fused_linear_ppo_loss`: the whole log-prob (full
    logits) and :func:`ppo_terms` on every sequence at once, differentiated by autograd."""
    logp, ent = fused_linear_logprob(hidden, weight, targets, bias=bias, temperature=temperature,
                                     ignore_index=ignore_index, return_entropy=True)
    cu = cu_seqlens.long().to(hidden.device)
    num_seqs = cu.numel() - 1
    seq_index = torch.repeat_interleave(torch.arange(num_seqs, device=hidden.device), cu[1:] - cu[:-1])
    loss, policy, sums = ppo_terms(logp, ent, token_weight, seq_index, num_seqs, old_logp, advantages, **terms)
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return FusedPPOLossOutput(loss.to(out_dtype), policy.to(out_dtype), logp.detach().float(), ent.detach().float(),
                              *ppo_stats_from_sums(sums))


# --------------------------------------------------------------------------------------------
# paged KV cache


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k``/``v`` ``[T, Hkv, D]`` into the paged caches at ``slot_mapping`` (< 0: skip)."""
    block_size = k_cache.shape[1]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[valid].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[valid].to(v_cache.dtype)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """One-token attention per sequence over a paged cache: gather, then SDPA in fp32.

    The rollout engine runs this on CPU, so it is kept quick: one ``index_select`` per cache
    gathers every sequence's tokens into a contiguous ``[B, Hkv, L, D]``, then PyTorch's SDPA
    (grouped-query, masked to each sequence's length).
    """
    B, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    scale = D**-0.5 if scale is None else scale
    cdt = _compute_dtype(q)
    L = int(seq_lens.max()) if B > 0 else 0
    if L == 0:
        return torch.zeros_like(q)
    pos = torch.arange(L, device=q.device)
    valid = pos[None, :] < seq_lens[:, None].long()  # [B, L]
    slots = block_table.long()[:, pos // block_size] * block_size + pos % block_size
    slots = torch.where(valid, slots, torch.zeros_like(slots)).reshape(-1)  # unused entries: junk
    k = k_cache.flatten(0, 1).index_select(0, slots).view(B, L, Hkv, D).transpose(1, 2).to(cdt)
    v = v_cache.flatten(0, 1).index_select(0, slots).view(B, L, Hkv, D).transpose(1, 2).to(cdt)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(cdt)[:, :, None], k, v, attn_mask=valid[:, None, None, :], scale=scale, enable_gqa=True
    )[:, :, 0]
    out = torch.nan_to_num(out, nan=0.0)  # a sequence with no cached token attends to nothing
    return out.to(q.dtype)
