"""Triton kernels for the fused linear log-prob (loaded lazily by ``logprob.py``).

Both kernels read a tile of logits produced by a torch matmul (input dtype) and do the softmax
math in fp32. Temperature is applied after the upcast (dividing bf16 logits by a temperature in
bf16 loses precision that shows up as a rollout-vs-trainer log-prob gap).
"""

import triton
import triton.language as tl


@triton.jit
def logprob_fwd_kernel(
    logits_ptr, stride_row, targets_ptr, logp_ptr, lse_ptr, ent_ptr,
    V, inv_temp, ignore_index,
    BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr,
):
    # One program per token: one pass over its logits row with an online log-sum-exp.
    # Besides m (running max) and s = sum exp(z - m), the entropy needs sum p * z; it is kept
    # as w = sum exp(z - m) * (z - m), relative to the running max, so that
    # H = log(s) - w / s has no cancellation between two large numbers (lse and E[z]).
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row).to(tl.int64)
    if target == ignore_index:
        tl.store(logp_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        if WITH_ENTROPY:
            tl.store(ent_ptr + row, 0.0)
    else:
        base = logits_ptr + row * stride_row
        # The first block is peeled so the running max starts finite (V >= 1): no -inf - -inf.
        cols = tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp
        m = tl.max(z, axis=0)
        e = tl.exp(z - m)  # masked columns: exp(-inf) = 0
        s = tl.sum(e, axis=0)
        w = tl.sum(e * tl.where(mask, z - m, 0.0), axis=0)
        for v0 in range(BLOCK_V, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = cols < V
            z = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, axis=0))
            alpha = tl.exp(m - m_new)
            e = tl.exp(z - m_new)
            if WITH_ENTROPY:
                w = alpha * (w + s * (m - m_new)) + tl.sum(e * tl.where(mask, z - m_new, 0.0), axis=0)
            s = s * alpha + tl.sum(e, axis=0)
            m = m_new
        lse = m + tl.log(s)
        # A target outside [0, V) reads nothing and gives logp = -inf (never a wild read).
        in_range = (target >= 0) & (target < V)
        z_t = tl.load(base + target, mask=in_range, other=float("-inf")).to(tl.float32) * inv_temp
        tl.store(logp_ptr + row, z_t - lse)
        tl.store(lse_ptr + row, lse)
        if WITH_ENTROPY:
            tl.store(ent_ptr + row, tl.log(s) - w / s)


@triton.jit
def logprob_bwd_kernel(
    logits_ptr, stride_row, targets_ptr, lse_ptr, ent_ptr, g_logp_ptr, g_ent_ptr,
    col_offset, n_cols, inv_temp, ignore_index,
    BLOCK_V: tl.constexpr, HAS_G_LOGP: tl.constexpr, HAS_G_ENT: tl.constexpr,
):
    # One program per (token, block of columns) of a [tokens, vocab-slice] tile of logits,
    # overwritten in place with d(loss)/d(logits). With lse and H saved by the forward, every
    # entry's gradient is local, so the tile may be any slice of the vocabulary:
    #   d logp / d z_j = onehot_j - p_j,   d H / d z_j = -p_j (log p_j + H),   z = logits / T.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < n_cols
    ptrs = logits_ptr + row * stride_row + cols
    target = tl.load(targets_ptr + row).to(tl.int64)
    if target == ignore_index:
        tl.store(ptrs, tl.zeros([BLOCK_V], tl.float32).to(logits_ptr.dtype.element_ty), mask=mask)
    else:
        z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) * inv_temp
        logp_all = z - tl.load(lse_ptr + row)
        p = tl.exp(logp_all)
        d = tl.zeros([BLOCK_V], tl.float32)
        if HAS_G_LOGP:
            onehot = tl.where(cols + col_offset == target, 1.0, 0.0)
            d += tl.load(g_logp_ptr + row) * (onehot - p)
        if HAS_G_ENT:
            d -= tl.load(g_ent_ptr + row) * p * (logp_all + tl.load(ent_ptr + row))
        tl.store(ptrs, (d * inv_temp).to(logits_ptr.dtype.element_ty), mask=mask)
