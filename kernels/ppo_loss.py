"""PPO clipped loss in one fused pass: RL4VLM's sequence level, and a token-level variant.

Sequence level (RL4VLM): the policy scores a whole output as one action,
``seq_logp[b] = sum_t token_weight[t] * token_logp[t]`` over the tokens of sequence b, with
weight λ on thought tokens, 1 on action tokens and 0 on prompt/padding. The forward kernel runs
one program per sequence that reduces its tokens and computes everything per sequence (loss,
value loss, statistics and the gradient coefficients), so the backward only broadcasts
``coef[b] * token_weight[t]`` back onto the tokens; the only other work is a sum over ``[6, B]``.

Ratio cap (RL4VLM ``VLM_PPO/a2c_ppo_acktr/algo/ppo.py``, after TRL): when a ratio exceeds
``ratio_cap`` (10), only the clipped term ``clip(ratio) * A`` is used, whatever the sign of the
advantage, so a stale sample with a runaway ratio contributes no gradient. RL4VLM tests the cap on
the whole mini-batch (``torch.any``) with mini-batches of one sample; applying it per sequence is
the same rule for its setting and does not let one sample silence a whole batch here.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._dispatch import load_jit, next_power_of_2, use_triton
from ._types import PPOLossOutput

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEQ_BLOCK = 256
_TOKEN_BLOCK = 1024


def _check_1d(name: str, t: torch.Tensor, n: int, device: torch.device, float_only: bool = True):
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if float_only and t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (where token_logp is)")


def _check_clip(clip_eps: float, ratio_cap: float | None, clip_high: float) -> None:
    if not (math.isfinite(clip_eps) and 0 <= clip_eps < 1):
        raise ValueError(f"clip_eps must be in [0, 1), got {clip_eps!r}")
    if not (math.isfinite(clip_high) and clip_high >= 0):
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_high!r}")
    if ratio_cap is not None and not ratio_cap > 1.0 + clip_high:
        raise ValueError(f"ratio_cap must be > 1 + clip_eps ({1 + clip_high}) or None, got {ratio_cap!r}")


def _weight_as_float(token_weight: torch.Tensor) -> torch.Tensor:
    if token_weight.dtype == torch.bool or not token_weight.dtype.is_floating_point:
        return token_weight.to(torch.float32)
    return token_weight.contiguous()


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of the upstream gradients that exist (None: not differentiated)."""
    if a is None:
        return b
    return a if b is None else a + b


class PPOSeqLossFunction(torch.autograd.Function):
    """Sequence-level PPO loss; gradients for ``token_logp`` and ``values``."""

    @staticmethod
    def forward(ctx, token_logp, token_weight, cu_seqlens, old_logp, advantages,
                values, old_values, returns, clip_eps, ratio_cap, value_clip, value_coef):
        jit = load_jit("_ppo_loss_jit")
        B = old_logp.shape[0]
        dev = token_logp.device
        per_seq = torch.empty((6, B), device=dev, dtype=torch.float32)
        dseq = torch.empty(B, device=dev, dtype=torch.float32)
        has_value = values is not None
        dval = torch.empty(B, device=dev, dtype=torch.float32) if has_value else dseq
        jit.ppo_seq_fwd_kernel[(B,)](
            token_logp, token_weight, cu_seqlens, old_logp, advantages,
            values if has_value else old_logp, old_values if has_value else old_logp,
            returns if has_value else old_logp,
            per_seq, dseq, dval, B,
            clip_eps, math.log(ratio_cap) if ratio_cap is not None else 0.0, value_clip,
            HAS_CAP=ratio_cap is not None, HAS_VALUE=has_value, BLOCK=_SEQ_BLOCK,
        )
        means = per_seq.sum(1) / B
        policy_loss, value_loss = means[0], means[1]
        loss = policy_loss + value_coef * value_loss
        ctx.save_for_backward(token_weight, cu_seqlens, dseq, dval if has_value else None)
        ctx.shape, ctx.dtype, ctx.value_coef, ctx.value_dtype = (
            token_logp.shape, token_logp.dtype, value_coef, values.dtype if has_value else None)
        stats = tuple(means[2:].clone())
        ctx.mark_non_differentiable(*stats)
        # Outputs nobody differentiates arrive as None, not as zero tensors built for nothing.
        ctx.set_materialize_grads(False)
        return (loss, policy_loss.clone(), value_loss.clone()) + stats

    @staticmethod
    def backward(ctx, g_loss, g_policy, g_value, *_):
        token_weight, cu_seqlens, dseq, dval = ctx.saved_tensors
        B = dseq.shape[0]
        grad_logp = grad_values = None
        g_pg = _add(g_loss, g_policy)
        if ctx.needs_input_grad[0] and g_pg is not None:
            jit = load_jit("_ppo_loss_jit")
            g_pg = g_pg.float().reshape(1).contiguous()
            grad_logp = torch.zeros(ctx.shape, device=dseq.device, dtype=ctx.dtype)
            jit.ppo_seq_bwd_kernel[(B,)](
                token_weight, cu_seqlens, dseq, g_pg, grad_logp, 1.0 / B, BLOCK=_SEQ_BLOCK,
            )
        g_v = _add(g_loss * ctx.value_coef if g_loss is not None else None, g_value)
        if dval is not None and ctx.needs_input_grad[5] and g_v is not None:
            grad_values = (dval * (g_v.float() / B)).to(ctx.value_dtype)
        return (grad_logp, None, None, None, None, grad_values) + (None,) * 6


class PPOTokenLossFunction(torch.autograd.Function):
    """Token-level PPO loss (weighted token mean); gradient for ``token_logp``."""

    @staticmethod
    def forward(ctx, token_logp, token_weight, old_token_logp, advantages, clip_low, clip_high, ratio_cap):
        jit = load_jit("_ppo_loss_jit")
        T = token_logp.shape[0]
        num_blocks = max(1, -(-T // _TOKEN_BLOCK))
        partial = torch.empty((6, num_blocks), device=token_logp.device, dtype=torch.float32)
        dtok = torch.empty(T, device=token_logp.device, dtype=torch.float32)
        jit.ppo_token_fwd_kernel[(num_blocks,)](
            token_logp, old_token_logp, advantages, token_weight, partial, dtok, T, num_blocks,
            clip_low, clip_high, math.log(ratio_cap) if ratio_cap is not None else 0.0,
            HAS_CAP=ratio_cap is not None, BLOCK=min(_TOKEN_BLOCK, max(16, next_power_of_2(T))),
        )
        sums = partial.sum(1)
        denom = torch.where(sums[1] > 0, sums[1], torch.ones_like(sums[1]))
        means = sums / denom
        ctx.save_for_backward(dtok, denom)
        ctx.dtype = token_logp.dtype
        stats = tuple(means[2:].clone())
        ctx.mark_non_differentiable(*stats)
        policy_loss = means[0]
        ctx.set_materialize_grads(False)
        return (policy_loss, policy_loss.clone(), torch.zeros_like(policy_loss)) + stats

    @staticmethod
    def backward(ctx, g_loss, g_policy, g_value, *_):
        dtok, denom = ctx.saved_tensors
        grad = None
        g = _add(g_loss, g_policy)
        if ctx.needs_input_grad[0] and g is not None:
            grad = (dtok * (g.float() / denom)).to(ctx.dtype)
        return (grad,) + (None,) * 6


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
    """RL4VLM's PPO objective over B packed sequences, in one fused pass.

    Per sequence b (tokens ``cu_seqlens[b]:cu_seqlens[b+1]``):
    ``seq_logp = sum_t token_weight[t] * token_logp[t]``, ``ratio = exp(seq_logp - old_logp[b])``,
    ``policy_loss_b = -min(ratio * A, clip(ratio, 1 ± clip_eps) * A)``, except that above
    ``ratio_cap`` only the clipped term is used (RL4VLM's cap; ``None`` disables it). With
    ``values``: ``value_loss_b = 0.5 * max((v - R)^2, (v_old + clip(v - v_old, ±value_clip) - R)^2)``.
    ``loss = mean_b(policy_loss_b) + value_coef * mean_b(value_loss_b)``.

    Args:
        token_logp: ``[T]`` current per-token log-probs (e.g. from :func:`fused_linear_logprob`).
        token_weight: ``[T]`` λ for thought tokens, 1 for action tokens, 0 for prompt/padding.
        cu_seqlens: ``[B+1]`` int32/int64 sequence boundaries, ``cu_seqlens[0] = 0``,
            non-decreasing, ``cu_seqlens[B] <= T`` (tokens after it get no gradient).
        old_logp: ``[B]`` sequence log-probs at rollout time (same λ-weighting).
        advantages: ``[B]``.
        values, old_values, returns: optional ``[B]`` each (all three or none).
        value_clip: the band around ``old_values``; None: no value clip (plain squared error).

    Returns:
        :class:`PPOLossOutput` (loss, policy_loss, value_loss, clip_fraction, approx_kl,
        ratio_mean, capped_fraction; statistics over sequences). ``loss.backward()`` gives
        gradients for ``token_logp`` and ``values``.
    """
    if token_logp.dim() != 1 or token_logp.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"token_logp must be a 1-D float tensor, got {token_logp.dtype} {tuple(token_logp.shape)}")
    T, dev = token_logp.shape[0], token_logp.device
    _check_1d("token_weight", token_weight, T, dev, float_only=False)
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cu_seqlens must be a 1-D int32/int64 tensor [B+1] with B >= 1, got "
            f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    B = cu_seqlens.shape[0] - 1
    _check_1d("cu_seqlens", cu_seqlens, B + 1, dev, float_only=False)
    _check_1d("old_logp", old_logp, B, dev)
    _check_1d("advantages", advantages, B, dev)
    given = [x is not None for x in (values, old_values, returns)]
    if any(given) and not all(given):
        raise ValueError("values, old_values and returns must be given together (or none of them)")
    if values is not None:
        for name, t in (("values", values), ("old_values", old_values), ("returns", returns)):
            _check_1d(name, t, B, dev)
    _check_clip(clip_eps, ratio_cap, clip_eps)
    if value_clip is not None and not (math.isfinite(value_clip) and value_clip >= 0):
        raise ValueError(f"value_clip must be >= 0 or None (no clip), got {value_clip!r}")
    tensors = [token_logp, old_logp, advantages] + ([values, old_values, returns] if values is not None else [])
    if not use_triton(*tensors):
        return reference.ppo_clip_loss(
            token_logp, token_weight, cu_seqlens, old_logp, advantages, clip_eps=clip_eps,
            ratio_cap=ratio_cap, values=values, old_values=old_values, returns=returns,
            value_clip=value_clip, value_coef=value_coef,
        )
    c = torch.Tensor.contiguous
    out = PPOSeqLossFunction.apply(
        c(token_logp), _weight_as_float(token_weight), c(cu_seqlens), c(old_logp), c(advantages),
        *(c(x) if x is not None else None for x in (values, old_values, returns)),
        float(clip_eps), None if ratio_cap is None else float(ratio_cap),
        math.inf if value_clip is None else float(value_clip), float(value_coef),
    )
    return PPOLossOutput(*out)


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
    """Token-level PPO loss (GRPO/DAPO style): per-token ratios, weighted token mean.

    ``ratio_t = exp(token_logp[t] - old_token_logp[t])``,
    ``loss = sum_t w_t * -min(ratio_t * A_t, clip(ratio_t, 1 - clip_eps, 1 + clip_eps_high) * A_t)
    / sum_t w_t`` (DAPO's token mean over the whole batch; 0 if every weight is 0). Tokens with
    weight 0 are ignored entirely (their log-probs may be anything, even -inf).

    Args:
        token_logp, old_token_logp: ``[T]`` current and rollout-time per-token log-probs.
        token_weight: ``[T]`` mask or weights (0 = ignore).
        advantages: ``[T]`` per token (broadcast a per-sequence advantage over its tokens).
        clip_eps, clip_eps_high: lower/upper clip range (DAPO's clip-higher; upper defaults to lower).
        ratio_cap: optional RL4VLM-style cap (above it only the clipped term is used).

    Returns:
        :class:`PPOLossOutput` with ``value_loss = 0``; statistics are weighted token means.
    """
    if token_logp.dim() != 1 or token_logp.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"token_logp must be a 1-D float tensor, got {token_logp.dtype} {tuple(token_logp.shape)}")
    T, dev = token_logp.shape[0], token_logp.device
    _check_1d("token_weight", token_weight, T, dev, float_only=False)
    _check_1d("old_token_logp", old_token_logp, T, dev)
    _check_1d("advantages", advantages, T, dev)
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    _check_clip(clip_eps, ratio_cap, clip_high)
    if not use_triton(token_logp, old_token_logp, advantages):
        return reference.ppo_clip_loss_token_level(
            token_logp, token_weight, old_token_logp, advantages, clip_eps=clip_eps,
            clip_eps_high=clip_high, ratio_cap=ratio_cap,
        )
    c = torch.Tensor.contiguous
    out = PPOTokenLossFunction.apply(
        c(token_logp), _weight_as_float(token_weight), c(old_token_logp), c(advantages),
        float(clip_eps), float(clip_high), None if ratio_cap is None else float(ratio_cap),
    )
    return PPOLossOutput(*out)
