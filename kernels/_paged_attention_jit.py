"""Triton kernels for the paged KV cache (loaded lazily by ``paged_attention.py``)."""

import triton
import triton.language as tl


@triton.jit
def store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    HKV: tl.constexpr, HKV_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    # One program per token: all its KV heads in one [HKV, D] tile.
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        h = tl.arange(0, HKV_PAD)
        d = tl.arange(0, D_PAD)
        mask = (h[:, None] < HKV) & (d[None, :] < D)
        k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
        kc = k_cache_ptr + block * stride_kcb + offset * stride_kcs + h[:, None] * stride_kch + d[None, :]
        vc = v_cache_ptr + block * stride_vcb + offset * stride_vcs + h[:, None] * stride_vch + d[None, :]
        tl.store(kc, k.to(kc.dtype.element_ty), mask=mask)
        tl.store(vc, v.to(vc.dtype.element_ty), mask=mask)


@triton.jit
def paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_ml_ptr,
    qk_scale,
    stride_qb, stride_qh,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    stride_btb, stride_ob, stride_oh,
    tokens_per_split, num_splits,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, TILE_IN_BLOCK: tl.constexpr,
    SPLIT: tl.constexpr, IEEE: tl.constexpr,
):
    # One program per (sequence, KV head, context split). The G query heads sharing the KV head
    # are processed together so each K/V tile is read from memory once (decode is bandwidth
    # bound); they are padded to 16 rows so the two products run on tensor cores.
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    start = split * tokens_per_split
    end = tl.minimum(seq_len, start + tokens_per_split)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_mask = g < G
    d_mask = d < D
    heads = kvh * G + g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    m = tl.full([G_PAD], float("-inf"), tl.float32)
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    for t0 in range(start, end, TILE):
        pos = t0 + tl.arange(0, TILE)
        t_mask = pos < end
        kv_mask = t_mask[:, None] & d_mask[None, :]
        if TILE_IN_BLOCK:
            # The tile lies inside one cache block (TILE divides BLOCK_SIZE, tiles start at
            # multiples of TILE): one block-table read and one 64-bit base pointer per tile,
            # 32-bit offsets inside it, far fewer registers than a pointer per element.
            block = tl.load(block_table_ptr + b * stride_btb + t0 // BLOCK_SIZE).to(tl.int64)
            in_block = (t0 % BLOCK_SIZE) + tl.arange(0, TILE)
            k_tile = (k_cache_ptr + block * stride_kcb + kvh * stride_kch
                      + (in_block[:, None] * stride_kcs + d[None, :]))
            v_tile = (v_cache_ptr + block * stride_vcb + kvh * stride_vch
                      + (in_block[:, None] * stride_vcs + d[None, :]))
        else:
            # Blocks smaller than the tile: gather the physical block of every token.
            block = tl.load(block_table_ptr + b * stride_btb + pos // BLOCK_SIZE, mask=t_mask, other=0)
            block = block.to(tl.int64)
            offset = (pos % BLOCK_SIZE).to(tl.int64)
            k_tile = (k_cache_ptr + block[:, None] * stride_kcb + offset[:, None] * stride_kcs
                      + kvh * stride_kch + d[None, :])
            v_tile = (v_cache_ptr + block[:, None] * stride_vcb + offset[:, None] * stride_vcs
                      + kvh * stride_vch + d[None, :])
        k = tl.load(k_tile, mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(t_mask[None, :], s * qk_scale, float("-inf"))
        # Every tile holds at least one valid token, so m_new is finite: no inf - inf.
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_tile, mask=kv_mask, other=0.0)
        if IEEE:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m = m_new

    if SPLIT:
        # Unnormalised partial results; the reduce kernel rescales and sums them.
        row = (b * (G * tl.num_programs(1)) + heads) * num_splits + split
        tl.store(part_out_ptr + row[:, None] * D + d[None, :], acc, mask=g_mask[:, None] & d_mask[None, :])
        tl.store(part_ml_ptr + row * 2, m, mask=g_mask)
        tl.store(part_ml_ptr + row * 2 + 1, l, mask=g_mask)
    else:
        out = tl.where(l[:, None] > 0, acc / tl.where(l > 0, l, 1.0)[:, None], 0.0)
        o_ptrs = out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def paged_decode_reduce_kernel(
    part_out_ptr, part_ml_ptr, out_ptr, stride_ob, stride_oh, num_splits,
    D: tl.constexpr, D_PAD: tl.constexpr, S_PAD: tl.constexpr,
):
    # One program per (sequence, query head): merge the splits' (max, sum, acc) triples.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    s_mask = s < num_splits
    row = (b * tl.num_programs(1) + h) * num_splits + s
    m = tl.load(part_ml_ptr + row * 2, mask=s_mask, other=float("-inf"))
    l = tl.load(part_ml_ptr + row * 2 + 1, mask=s_mask, other=0.0)
    acc = tl.load(part_out_ptr + row[:, None] * D + d[None, :],
                  mask=s_mask[:, None] & (d[None, :] < D), other=0.0)
    m_all = tl.max(m, axis=0)
    # Splits past the sequence's end have m = -inf: weight 0 (also when every split is empty).
    w = tl.where(m > float("-inf"), tl.exp2(m - tl.where(m_all > float("-inf"), m_all, 0.0)), 0.0)
    total = tl.sum(l * w, axis=0)
    out = tl.sum(acc * w[:, None], axis=0)
    out = tl.where(total > 0, out / tl.where(total > 0, total, 1.0), 0.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < D)
