"""Decode attention over a paged KV cache, and the store of new keys/values into it.

Layout contract (the rollout engine builds against it; flash-attn's ``flash_attn_with_kvcache``
paged layout):

- ``q``: ``[B, num_q_heads, head_dim]``, one query token per sequence; the output has the same
  shape and dtype.
- ``k_cache``/``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]``, ``block_size`` a
  power of two, last dim contiguous.
- ``block_table``: ``[B, max_blocks_per_seq]`` int32 (int64 accepted); row b lists the physical
  blocks of sequence b in order. Entries past the sequence's length are never read.
- ``seq_lens``: ``[B]`` int32 (int64 accepted), tokens to attend over per sequence, the current
  token included (it was stored with :func:`store_kv` first).
- ``slot_mapping``: ``[T]`` int64 (int32 accepted), ``slot = block_id * block_size + offset``;
  a negative slot is skipped (padding, e.g. the static buffers of a CUDA graph).

Grouped-query attention: ``num_q_heads`` is a multiple of ``num_kv_heads``; query head ``h``
reads KV head ``h // (num_q_heads // num_kv_heads)``.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._dispatch import interpreter_requested, load_jit, next_power_of_2, use_triton

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4:
        raise ValueError(
            "k_cache must be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got shape {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}")
    if k_cache.dtype not in _FLOAT_DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k_cache/v_cache must share a float dtype, got {k_cache.dtype} and {v_cache.dtype}")
    block_size = k_cache.shape[1]
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size (k_cache.shape[1]) must be a power of two, got {block_size}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache/v_cache must be contiguous in head_dim (last dimension)")
    if k_cache.device != v_cache.device:
        raise ValueError(f"k_cache on {k_cache.device} but v_cache on {v_cache.device}")


def _check_decode_args(q, k_cache, v_cache, block_table, seq_lens) -> None:
    _check_cache(k_cache, v_cache)
    if q.dim() != 3:
        raise ValueError(f"q must be [batch, num_q_heads, head_dim], got shape {tuple(q.shape)}")
    B, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if q.dtype != k_cache.dtype:
        raise ValueError(f"q dtype {q.dtype} must match the cache dtype {k_cache.dtype}")
    if head_dim != k_cache.shape[3]:
        raise ValueError(f"q head_dim {head_dim} != cache head_dim {k_cache.shape[3]}")
    if num_q_heads % num_kv_heads:
        raise ValueError(
            f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
        )
    if block_table.dim() != 2 or block_table.shape[0] != B:
        raise ValueError(
            f"block_table must be [batch={B}, max_blocks_per_seq], got shape {tuple(block_table.shape)}"
        )
    if block_table.dtype not in _INDEX_DTYPES:
        raise ValueError(f"block_table must be int32 (or int64), got {block_table.dtype}")
    if seq_lens.shape != (B,):
        raise ValueError(f"seq_lens must be [batch={B}], got shape {tuple(seq_lens.shape)}")
    if seq_lens.dtype not in _INDEX_DTYPES:
        raise ValueError(f"seq_lens must be int32 (or int64), got {seq_lens.dtype}")
    for name, t in (("k_cache", k_cache), ("block_table", block_table), ("seq_lens", seq_lens)):
        if t.device != q.device:
            raise ValueError(f"q is on {q.device} but {name} is on {t.device}")


def _check_store_args(k, v, k_cache, v_cache, slot_mapping) -> None:
    _check_cache(k_cache, v_cache)
    expected = (k_cache.shape[2], k_cache.shape[3])
    if k.dim() != 3 or tuple(k.shape[1:]) != expected:
        raise ValueError(
            f"k must be [tokens, num_kv_heads={expected[0]}, head_dim={expected[1]}], "
            f"got shape {tuple(k.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    if k.dtype not in _FLOAT_DTYPES or v.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"k/v must be floating point, got {k.dtype} and {v.dtype}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be [tokens={k.shape[0]}], got shape {tuple(slot_mapping.shape)}")
    if slot_mapping.dtype not in _INDEX_DTYPES:
        raise ValueError(f"slot_mapping must be int64 (or int32), got {slot_mapping.dtype}")
    for name, t in (("v", v), ("k_cache", k_cache), ("slot_mapping", slot_mapping)):
        if t.device != k.device:
            raise ValueError(f"k is on {k.device} but {name} is on {t.device}")


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys/values into the paged caches, in place.

    Args:
        k, v: ``[T, num_kv_heads, head_dim]`` (cast to the cache dtype).
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        slot_mapping: ``[T]`` int64, ``block_id * block_size + offset`` per token; ``< 0`` skips.

    Returns None. Slots must be distinct (two tokens to one slot leave either value).
    """
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    if k.shape[0] == 0:
        return None
    if not use_triton(k, v, k_cache, v_cache, slot_mapping):
        reference.store_kv(k, v, k_cache, v_cache, slot_mapping)
        return None
    jit = load_jit("_paged_attention_jit")
    T, num_kv_heads, head_dim = k.shape
    # The kernel indexes k/v as [T, Hkv, D] with D contiguous. A dtype cast, if any, is done by
    # torch so the cache holds exactly what ``k.to(cache dtype)`` gives (same rounding).
    k = k.to(k_cache.dtype) if k.dtype != k_cache.dtype else k
    v = v.to(v_cache.dtype) if v.dtype != v_cache.dtype else v
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    slot_mapping = slot_mapping.contiguous()
    jit.store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HKV=num_kv_heads, HKV_PAD=next_power_of_2(num_kv_heads),
        D=head_dim, D_PAD=next_power_of_2(head_dim), BLOCK_SIZE=k_cache.shape[1],
    )
    return None


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its paged KV cache.

    Args:
        q: ``[B, num_q_heads, head_dim]``.
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        block_table: ``[B, max_blocks_per_seq]`` int32.
        seq_lens: ``[B]`` int32, cached tokens to attend over (current token included).
        scale: softmax scale, default ``1 / sqrt(head_dim)``.

    Returns:
        ``[B, num_q_heads, head_dim]`` in ``q``'s dtype (softmax and accumulation in fp32). A
        sequence with ``seq_lens == 0`` gets zeros.
    """
    _check_decode_args(q, k_cache, v_cache, block_table, seq_lens)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not use_triton(q, k_cache, v_cache, block_table, seq_lens):
        return reference.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return _decode_triton(q, k_cache, v_cache, block_table, seq_lens, scale)


def _tile_for(block_size: int) -> int:
    """Tokens per inner step: inside one cache block when blocks are >= 16 tokens (cheap
    addressing), else 32 tokens gathered from several blocks through the block table."""
    return min(block_size, 64) if block_size >= 16 else 32


_SM_COUNT: dict[int, int] = {}


def _choose_num_splits(q: torch.Tensor, num_kv_heads: int, max_ctx: int) -> int:
    """Split the context (flash-decoding) only when B * num_kv_heads programs cannot fill the GPU.

    Decided from shapes alone (no ``seq_lens.max()`` host sync), so the launch stays
    CUDA-graph friendly.
    """
    if not q.is_cuda:
        return 1
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    programs = q.shape[0] * num_kv_heads
    target = 4 * _SM_COUNT[index]  # a few programs per SM to keep loads in flight
    if programs >= target:
        return 1
    return max(1, min(math.ceil(target / programs), math.ceil(max_ctx / 256), 64))


def _decode_triton(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits=None):
    jit = load_jit("_paged_attention_jit")
    B, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    if B == 0:
        return torch.empty_like(q)
    max_ctx = block_table.shape[1] * block_size
    if num_splits is None:
        num_splits = _choose_num_splits(q, num_kv_heads, max_ctx)
    tile = _tile_for(block_size)
    tokens_per_split = math.ceil(math.ceil(max_ctx / num_splits) / tile) * tile
    num_splits = max(1, math.ceil(max_ctx / tokens_per_split))
    # The kernel assumes unit stride along head_dim, block_table rows and seq_lens (no-ops
    # for the engine's tensors, so nothing is copied on the hot path).
    q = q if q.stride(-1) == 1 else q.contiguous()
    block_table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
    seq_lens = seq_lens.contiguous()
    out = torch.empty_like(q)
    d_pad = max(16, next_power_of_2(head_dim))
    meta = dict(
        G=group, G_PAD=max(16, next_power_of_2(group)), D=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=block_size, TILE=tile, TILE_IN_BLOCK=block_size % tile == 0,
        SPLIT=num_splits > 1,
        # fp32 inputs keep exact fp32 products (no tf32). The interpreter's bf16/fp16 tl.dot
        # returns garbage (triton 3.9), so interpreted runs take the fp32 products too.
        IEEE=q.dtype == torch.float32 or interpreter_requested(), num_warps=4,
    )
    if num_splits > 1:
        part_out = torch.empty((B, num_q_heads, num_splits, head_dim), device=q.device, dtype=torch.float32)
        part_ml = torch.empty((B, num_q_heads, num_splits, 2), device=q.device, dtype=torch.float32)
    else:  # unused by the kernel when SPLIT is False
        part_out = part_ml = out
    jit.paged_decode_kernel[(B, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_table, seq_lens, out, part_out, part_ml,
        scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_table.stride(0), out.stride(0), out.stride(1),
        tokens_per_split, num_splits,
        **meta,
    )
    if num_splits > 1:
        jit.paged_decode_reduce_kernel[(B, num_q_heads)](
            part_out, part_ml, out, out.stride(0), out.stride(1), num_splits,
            D=head_dim, D_PAD=d_pad, S_PAD=max(2, next_power_of_2(num_splits)),
        )
    return out
