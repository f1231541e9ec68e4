"""Triton kernels for the PPO clipped loss (loaded lazily by ``ppo_loss.py``)."""

import triton
import triton.language as tl


@triton.jit
def _surrogate(log_ratio, adv, clip_low, clip_high, log_cap, HAS_CAP: tl.constexpr):
    # Clipped surrogate (to minimise) and its derivative w.r.t. log_ratio, with RL4VLM's cap:
    # above the cap only the clipped term counts, which is constant there (zero gradient).
    # exp() is taken of the capped log-ratio so it stays finite; the values are unchanged.
    if HAS_CAP:
        capped = log_ratio > log_cap
        ratio = tl.exp(tl.minimum(log_ratio, log_cap))
    else:
        capped = log_ratio != log_ratio  # all False, same shape
        ratio = tl.exp(log_ratio)
    ratio_clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    surr1 = ratio * adv
    surr2 = ratio_clipped * adv
    use_unclipped = (surr1 < surr2) & (capped == 0)
    loss = -tl.where(capped | (surr2 <= surr1), surr2, surr1)
    in_bounds = (ratio >= 1.0 - clip_low) & (ratio <= 1.0 + clip_high)
    # d loss / d log_ratio = -A * ratio where the unclipped term (or an unclamped ratio) is used.
    dloss = tl.where(use_unclipped | (in_bounds & (capped == 0)), -adv * ratio, 0.0)
    return loss, dloss, capped


@triton.jit
def _stats(log_ratio, clip_low, clip_high):
    ratio = tl.exp(log_ratio)
    clipped = tl.where((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high), 1.0, 0.0)
    kl = (ratio - 1.0) - log_ratio
    return ratio, clipped, kl


@triton.jit
def ppo_seq_fwd_kernel(
    logp_ptr, weight_ptr, cu_ptr, old_ptr, adv_ptr,
    values_ptr, old_values_ptr, returns_ptr,
    out_ptr, dseq_ptr, dval_ptr, B,
    clip_eps, log_cap, value_clip,
    HAS_CAP: tl.constexpr, HAS_VALUE: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per sequence: the weighted segment sum, then the whole per-sequence loss,
    # its statistics and its gradient coefficients, in one pass over the tokens.
    # out_ptr rows (each [B]): policy loss, value loss, clipped, kl, ratio, capped.
    b = tl.program_id(0)
    start = tl.load(cu_ptr + b).to(tl.int64)
    end = tl.load(cu_ptr + b + 1).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for t0 in range(start, end, BLOCK):
        offs = t0 + tl.arange(0, BLOCK)
        mask = offs < end
        lp = tl.load(logp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # A zero weight (prompt, padding) masks the token even if its log-prob is -inf.
        acc += tl.where(w != 0.0, lp * w, 0.0)
    seq_logp = tl.sum(acc, axis=0)
    log_ratio = seq_logp - tl.load(old_ptr + b).to(tl.float32)
    adv = tl.load(adv_ptr + b).to(tl.float32)
    loss, dloss, capped = _surrogate(log_ratio, adv, clip_eps, clip_eps, log_cap, HAS_CAP)
    ratio, clipped, kl = _stats(log_ratio, clip_eps, clip_eps)
    tl.store(out_ptr + b, loss)
    tl.store(out_ptr + 2 * B + b, clipped)
    tl.store(out_ptr + 3 * B + b, kl)
    tl.store(out_ptr + 4 * B + b, ratio)
    tl.store(out_ptr + 5 * B + b, tl.where(capped, 1.0, 0.0))
    tl.store(dseq_ptr + b, dloss)
    if HAS_VALUE:
        v = tl.load(values_ptr + b).to(tl.float32)
        v_old = tl.load(old_values_ptr + b).to(tl.float32)
        ret = tl.load(returns_ptr + b).to(tl.float32)
        delta = v - v_old
        v_clipped = v_old + tl.minimum(tl.maximum(delta, -value_clip), value_clip)
        l1 = (v - ret) * (v - ret)
        l2 = (v_clipped - ret) * (v_clipped - ret)
        tl.store(out_ptr + B + b, 0.5 * tl.maximum(l1, l2))
        in_clip = (delta >= -value_clip) & (delta <= value_clip)
        tl.store(dval_ptr + b, tl.where(l1 >= l2, v - ret, tl.where(in_clip, v_clipped - ret, 0.0)))
    else:
        tl.store(out_ptr + B + b, 0.0)


@triton.jit
def ppo_seq_bwd_kernel(
    weight_ptr, cu_ptr, dseq_ptr, g_ptr, grad_ptr, inv_b,
    BLOCK: tl.constexpr,
):
    # One program per sequence: d loss / d token_logp[t] = g * dloss_b / B * weight[t].
    b = tl.program_id(0)
    start = tl.load(cu_ptr + b).to(tl.int64)
    end = tl.load(cu_ptr + b + 1).to(tl.int64)
    coef = tl.load(dseq_ptr + b) * tl.load(g_ptr) * inv_b
    for t0 in range(start, end, BLOCK):
        offs = t0 + tl.arange(0, BLOCK)
        mask = offs < end
        w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + offs, (coef * w).to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ppo_token_fwd_kernel(
    logp_ptr, old_ptr, adv_ptr, weight_ptr, partial_ptr, dtok_ptr, T, num_blocks,
    clip_low, clip_high, log_cap,
    HAS_CAP: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per block of tokens: per-token loss and gradient coefficient, and the block's
    # weighted partial sums (loss, weight, clipped, kl, ratio, capped), reduced by the caller.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < T
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    active = w != 0.0
    lp = tl.load(logp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    log_ratio = tl.where(active, lp - old, 0.0)
    loss, dloss, capped = _surrogate(log_ratio, adv, clip_low, clip_high, log_cap, HAS_CAP)
    ratio, clipped, kl = _stats(log_ratio, clip_low, clip_high)
    tl.store(dtok_ptr + offs, tl.where(active, w * dloss, 0.0), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(active, w * loss, 0.0), axis=0))
    tl.store(partial_ptr + num_blocks + pid, tl.sum(w, axis=0))
    tl.store(partial_ptr + 2 * num_blocks + pid, tl.sum(tl.where(active, w * clipped, 0.0), axis=0))
    tl.store(partial_ptr + 3 * num_blocks + pid, tl.sum(tl.where(active, w * kl, 0.0), axis=0))
    tl.store(partial_ptr + 4 * num_blocks + pid, tl.sum(tl.where(active, w * ratio, 0.0), axis=0))
    tl.store(partial_ptr + 5 * num_blocks + pid,
             tl.sum(tl.where(active & capped, w, 0.0), axis=0))
