"""Result types shared by the fast ops and their references."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PPOLossOutput(NamedTuple):
    """What :func:`ppo_clip_loss` and :func:`ppo_clip_loss_token_level` return.

    Only ``loss``, ``policy_loss`` and ``value_loss`` carry gradients; the statistics are
    detached 0-d float32 tensors (no host sync: call ``.item()`` when you log them).

    - ``loss``: ``policy_loss + value_coef * value_loss``.
    - ``policy_loss``: mean clipped surrogate (negated, to minimise).
    - ``value_loss``: ``0.5 * mean(max((v - R)^2, (v_clipped - R)^2))``; 0 without values.
    - ``clip_fraction``: share of ratios with ``|ratio - 1| > clip_eps``.
    - ``approx_kl``: mean of ``(ratio - 1) - log(ratio)`` (the k3 estimator of KL(old || new)).
    - ``ratio_mean``: mean importance ratio.
    - ``capped_fraction``: share of ratios above ``ratio_cap`` (only the clipped term used there).
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor
    capped_fraction: torch.Tensor


class FusedPPOLossOutput(NamedTuple):
    """What :func:`fused_linear_ppo_loss` returns.

    - ``loss``: policy loss + entropy term + KL term, differentiable with respect to the hidden
      states, the LM-head weight and bias (the value loss is the caller's: it has no logits).
    - ``policy_loss``: the clipped surrogate's part of ``loss`` (detached).
    - ``token_logp``, ``entropy``: ``[T]`` float32, detached (the metrics a trainer logs).
    - ``clip_fraction``, ``approx_kl``, ``ratio_mean``, ``capped_fraction``: as in
      :class:`PPOLossOutput` (0-d float32, detached).
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    token_logp: torch.Tensor
    entropy: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor
    capped_fraction: torch.Tensor
