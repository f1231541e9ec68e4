"""LM head + per-token log-prob + PPO loss in one pass over the logits: 3 GEMMs, not 4.

:func:`fused_linear_logprob` cannot know the loss's gradient in its forward (its outputs are per
token), so its backward recomputes every logits tile: 4 GEMMs. Here the loss is part of the op,
and a sequence's gradient depends on that sequence alone (its λ-weighted log-prob, ratio and
advantage; the entropy and KL terms are per token). So the tokens are cut into tiles of whole
sequences, and each tile, in forward:

1. GEMM 1: the tile's fp32 logits (:mod:`.linear`);
2. the log-prob kernel: log-prob, log-sum-exp and entropy per token;
3. the loss of the tile's sequences (:func:`reference.ppo_terms`, the reference's own math) and,
   by autograd over those few vectors, each token's ``d loss / d logp`` and ``d loss / d entropy``;
4. the log-prob backward kernel turns the logits tile into ``d loss / d logits`` in place;
5. GEMM 2: ``grad_hidden`` of the tile; GEMM 3: ``grad_weight += dlogits^T hidden`` (skipped for
   a frozen head, as with LoRA).

The gradients are kept and scaled by the upstream gradient in backward (Liger's fused-linear
trick). Memory: one logits tile (at least the longest sequence) plus ``grad_hidden`` ``[T, H]``
and ``grad_weight`` ``[V, H]`` in the inputs' dtype; ``grad_weight`` accumulates over tiles with
``addmm`` (fp32 inside the GEMM, the running sum in the weight's dtype, as Liger does).
"""

from __future__ import annotations

import torch

from . import reference
from ._dispatch import load_jit, next_power_of_2, use_triton
from ._types import FusedPPOLossOutput
from . import logprob as _logprob
from .logprob import DEFAULT_CHUNK_ELEMENTS, _check_args, _tile_logits
from .ppo_loss import _check_clip

_LEVELS = ("sequence", "token")


def _tiles(cu: list[int], rows: int) -> list[tuple[int, int]]:
    """Consecutive runs of whole sequences ``[s0, s1)`` holding at most ``rows`` tokens each (one
    sequence longer than that gets a tile of its own)."""
    tiles, s0 = [], 0
    n = len(cu) - 1
    while s0 < n:
        s1 = s0 + 1
        while s1 < n and cu[s1 + 1] - cu[s0] <= rows:
            s1 += 1
        tiles.append((s0, s1))
        s0 = s1
    return tiles


def _forward(hidden, weight, bias, targets, token_weight, cu, old_logp, advantages, temperature, ignore_index,
             chunk_elements, need, terms):
    jit = load_jit("_logprob_jit")
    T, H = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    logp = torch.zeros(T, device=device, dtype=torch.float32)
    entropy = torch.zeros_like(logp)
    lse = torch.zeros_like(logp)
    need_h, need_w, need_b = need
    grad_h = torch.empty_like(hidden) if need_h else None
    tiles = _tiles(cu, max(1, chunk_elements // V))
    # grad_weight sums over tiles: in fp32 when there are several and the weight is bf16/fp16
    # (a bf16 running sum loses ~3x the precision of one GEMM over 48 tiles).
    acc_dtype = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) and len(tiles) > 1 else weight.dtype
    grad_w = torch.zeros(weight.shape, device=device, dtype=acc_dtype) if need_w else None
    grad_b = torch.zeros(V, device=device, dtype=torch.float32) if need_b else None
    loss = torch.zeros((), device=device, dtype=torch.float64)
    policy = torch.zeros_like(loss)
    sums = torch.zeros(5, device=device, dtype=torch.float64)
    block_v = min(_logprob._MAX_BLOCK_V, next_power_of_2(V))
    warps = 8 if block_v >= 2048 else 4
    inv_temp = 1.0 / temperature
    lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=device)
    all_index = torch.repeat_interleave(torch.arange(len(cu) - 1, device=device), lengths, output_size=T)
    for s0, s1 in tiles:
        t0, t1 = cu[s0], cu[s1]
        n = t1 - t0
        seq_index = all_index[t0:t1] - s0
        tile_terms = dict(terms)
        for key in ("old_token_logp", "ref_logp", "kl_weight"):
            if tile_terms[key] is not None:
                tile_terms[key] = tile_terms[key][t0:t1]
        if n == 0:  # sequences without tokens still have a loss (of their old log-prob alone)
            part, pol, s = reference.ppo_terms(logp[:0], entropy[:0], token_weight[:0], seq_index, s1 - s0,
                                               old_logp[s0:s1], advantages[s0:s1], **tile_terms)
            loss, policy, sums = loss + part.detach(), policy + pol, sums + s
            continue
        logits = _tile_logits(hidden, weight, bias, t0, t1, 0, V)  # GEMM 1
        jit.logprob_fwd_kernel[(n,)](
            logits, logits.stride(0), targets[t0:t1], logp[t0:t1], lse[t0:t1], entropy[t0:t1],
            V, inv_temp, ignore_index, BLOCK_V=block_v, WITH_ENTROPY=True, num_warps=warps,
        )
        tile_logp = logp[t0:t1].clone().requires_grad_()
        tile_ent = entropy[t0:t1].clone().requires_grad_()
        with torch.enable_grad():
            part, pol, s = reference.ppo_terms(tile_logp, tile_ent, token_weight[t0:t1], seq_index, s1 - s0,
                                               old_logp[s0:s1], advantages[s0:s1], **tile_terms)
            g_logp, g_ent = torch.autograd.grad(part, [tile_logp, tile_ent], allow_unused=True)
        loss, policy, sums = loss + part.detach(), policy + pol, sums + s
        if not (need_h or need_w or need_b):
            continue
        g_logp = torch.zeros(n, device=device) if g_logp is None else g_logp.float().contiguous()
        has_ent = g_ent is not None
        jit.logprob_bwd_kernel[(n, -(-V // block_v))](
            logits, logits.stride(0), targets[t0:t1], lse[t0:t1], entropy[t0:t1], g_logp,
            g_ent.float().contiguous() if has_ent else lse[t0:t1],
            0, V, inv_temp, ignore_index,
            BLOCK_V=block_v, HAS_G_LOGP=True, HAS_G_ENT=has_ent, num_warps=warps,
        )
        d = logits if logits.dtype == hidden.dtype else logits.to(hidden.dtype)
        if need_h:
            torch.mm(d, weight, out=grad_h[t0:t1])  # GEMM 2
        if need_w:
            if grad_w.dtype == d.dtype:
                grad_w.addmm_(d.t(), hidden[t0:t1])  # GEMM 3
            else:
                grad_w += d.t() @ hidden[t0:t1]  # GEMM 3 (fp32 running sum)
        if need_b:
            grad_b += logits.sum(0, dtype=torch.float32)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    return loss, policy, sums, logp, entropy, (grad_h, grad_w, grad_b)


class FusedLinearPPOLossFunction(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales them by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weight, cu, old_logp, advantages, temperature,
                ignore_index, chunk_elements, need, terms):
        loss, policy, sums, logp, entropy, grads = _forward(
            hidden, weight, bias, targets, token_weight, cu, old_logp, advantages, temperature, ignore_index,
            chunk_elements, need, terms)
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has = [g is not None for g in grads]
        ctx.scaled = False
        ctx.set_materialize_grads(False)
        policy = policy.float()
        ctx.mark_non_differentiable(policy, sums, logp, entropy)
        return loss.float(), policy, sums, logp, entropy

    @staticmethod
    def backward(ctx, g_loss, *_):
        none = (None,) * 10
        if g_loss is None:
            return (None, None, None) + none
        # Scaled in place (no second [V, H] copy), by the fp32 scalar: so one backward per forward.
        if ctx.scaled:
            raise RuntimeError("fused_linear_ppo_loss: backward ran twice on one forward (retain_graph): "
                               "its gradients were computed in forward and are scaled in place; run the op again")
        ctx.scaled = True
        scale = g_loss.float()
        grads = [g.mul_(scale) if has else None for g, has in zip(ctx.saved_tensors, ctx.has)]
        return (*grads, *none)


def fused_linear_ppo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor | list[int],
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    level: str = "sequence",
    old_token_logp: torch.Tensor | None = None,
    clip_eps: float = 0.1,
    clip_eps_high: float | None = None,
    ratio_cap: float | None = 10.0,
    policy_denominator: float | torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    token_denominator: float | torch.Tensor | None = None,
    kl_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> FusedPPOLossOutput:
    """PPO's policy loss straight from the final hidden states and the LM head, in 3 GEMMs and
    one logits tile of memory.

    Per token t: ``logp_t = log_softmax((hidden @ weight.T + bias) / temperature)[t, targets[t]]``
    and its entropy ``H_t``. Then, with ``w`` = ``token_weight`` (λ on thought tokens):

    - ``level="sequence"`` (RL4VLM): ``seq_i = sum_t w_t logp_t`` over sequence i,
      ``r_i = exp(seq_i - old_logp[i])``, policy loss ``sum_i surr(r_i, A_i) / policy_denominator``
      (default: the number of sequences);
    - ``level="token"`` (GRPO/DAPO): ``r_t = exp(logp_t - old_token_logp[t])`` with its sequence's
      advantage, policy loss ``sum_t w_t surr(r_t, A) / policy_denominator`` (default ``sum w``);

    ``surr`` is the clipped surrogate of :func:`ppo_clip_loss` (``clip_eps``, ``clip_eps_high``,
    RL4VLM's ``ratio_cap``). ``loss = policy - entropy_coef * sum H / token_denominator +
    kl_coef * sum kl_weight * k3(logp, ref_logp) / token_denominator`` (default: the number of
    tokens; kl_weight ``[T]`` default 1: e.g. 0 on the tokens the KL should not hold). The
    denominators let a micro-batch give its share of a larger mini-batch's loss.

    Args:
        hidden ``[T, H]``, weight ``[V, H]``, bias ``[V]``, targets ``[T]``: as in
            :func:`fused_linear_logprob`.
        token_weight ``[T]``; cu_seqlens ``[N+1]`` (a tensor or a list; 0 first, T last; read on
            the host once); old_logp, advantages ``[N]``; old_token_logp, ref_logp ``[T]``.

    Returns :class:`FusedPPOLossOutput`. CUDA tensors run the Triton kernels; CPU tensors the
    reference (full logits, autograd), unless ``TRITON_INTERPRET=1``.
    """
    _check_args(hidden, weight, targets, bias, temperature, chunk_elements)
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else [int(c) for c in cu_seqlens]
    T, N = hidden.shape[0], len(cu) - 1
    if N < 0 or cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to the number of tokens ({T}), got {cu[:4]}...{cu[-2:]}")
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    if level == "token" and old_token_logp is None:
        raise ValueError("level='token' needs old_token_logp [T]")
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef needs ref_logp [T]")
    for name, t, n in (("token_weight", token_weight, T), ("old_logp", old_logp, N), ("advantages", advantages, N),
                       ("old_token_logp", old_token_logp, T), ("ref_logp", ref_logp, T),
                       ("kl_weight", kl_weight, T)):
        if t is not None and (t.shape != (n,) or t.device != hidden.device):
            raise ValueError(f"{name} must be [{n}] on {hidden.device}, got {tuple(t.shape)} on {t.device}")
    _check_clip(clip_eps, ratio_cap, clip_eps if clip_eps_high is None else clip_eps_high)
    token_weight = token_weight.float() if not token_weight.dtype.is_floating_point else token_weight
    if policy_denominator is None:
        policy_denominator = max(N, 1) if level == "sequence" else token_weight.double().sum().clamp_min(1e-12)
    if token_denominator is None:
        token_denominator = max(T, 1)
    terms = dict(level=level, old_token_logp=old_token_logp, ref_logp=ref_logp, clip_eps=float(clip_eps),
                 clip_eps_high=clip_eps_high, ratio_cap=ratio_cap, entropy_coef=float(entropy_coef),
                 kl_coef=float(kl_coef), policy_denominator=policy_denominator, token_denominator=token_denominator,
                 kl_weight=kl_weight)
    if not use_triton(hidden, weight):
        return reference.fused_linear_ppo_loss(hidden, weight, targets, token_weight, torch.tensor(cu), old_logp,
                                               advantages, bias=bias, temperature=float(temperature),
                                               ignore_index=ignore_index, **terms)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    grad_on = torch.is_grad_enabled()
    need = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad)
    loss, policy, sums, logp, entropy = FusedLinearPPOLossFunction.apply(
        hidden, weight, bias, targets.contiguous(), token_weight, cu, old_logp, advantages, float(temperature),
        int(ignore_index), int(chunk_elements), need, terms)
    return FusedPPOLossOutput(loss, policy, logp, entropy, *reference.ppo_stats_from_sums(sums))
