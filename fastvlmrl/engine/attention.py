"""The only layer the engine replaces: attention over the paged KV cache.

The function below is registered in transformers' ``AttentionInterface`` under
:data:`ATTN_IMPL` and selected on the language model's config while the engine runs, so the
Hugging Face model keeps its embeddings, rotary (M-RoPE included), norms, MLPs and LoRA layers.
Each attention layer calls it with the step's query/key/value after rotary,
``[1, heads, tokens, head_dim]`` (the engine packs every sequence of a step into one row); it
stores the new K/V into the cache and attends with the step's :class:`AttentionContext`, which the
model runner sets around the forward (a module-level slot, as nano-vllm does, because transformers
would otherwise forward extra kwargs to the vision tower too).

Backends, chosen once per engine (:func:`select_backend`):
- prefill: flash-attn's varlen kernel when installed (CUDA, fp16/bf16), else PyTorch SDPA per
  sequence (causal, or lower-right causal after a cached prefix; an explicit mask only for
  Gemma 3's image blocks);
- decode: flash-attn's ``flash_attn_with_kvcache`` with a block table when installed and the block
  size is a multiple of 256 (flash-attn 2's paged-cache rule), else ``fastvlmrl.kernels``'
  paged-decode kernel (Triton on CUDA, its PyTorch reference on CPU).

A decode step stores its K/V and attends through one custom op, ``torch.ops.fastvlmrl.paged_decode``:
opaque to ``torch.compile``, so a compiled decode step (``Engine(compile_decode=...)``) is one graph
around it (the kernels' data-dependent lengths and launches would otherwise break the graph). On
CPU a compiled step instead traces :func:`decode_traced` (the same attention in plain tensor ops,
sized by the block table's width): inductor fuses the cache reads into its reductions, so the
context is never gathered into a copy, which is most of the eager reference's time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

ATTN_IMPL = "fastvlmrl_paged"

try:
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

    HAS_FLASH_ATTN = True
except ImportError:  # optional accelerator
    HAS_FLASH_ATTN = False


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # e.g. "prefill: torch sdpa; decode: fastvlmrl.kernels torch reference"
    prefill: Callable
    decoder: str  # a key of DECODERS (the custom op takes its decoder by name)


@dataclass
class AttentionContext:
    """What every attention layer needs to know about the current step."""

    backend: AttentionBackend
    is_prefill: bool
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token (-1 = do not store)
    k_caches: list[torch.Tensor]  # per layer [num_blocks, block_size, kv_heads, head_dim]
    v_caches: list[torch.Tensor]
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int32
    # prefill: query tokens [q_start, q_end) of sequence i attend over k_lens[i] cached positions,
    # the last (q_end - q_start) of which are the new ones.
    cu_seqlens_q: torch.Tensor | None = None  # [B + 1] int32
    cu_seqlens_k: torch.Tensor | None = None  # [B + 1] int32
    q_bounds: list[tuple[int, int]] | None = None
    k_lens: list[int] | None = None
    has_cached_prefix: bool = False
    # per sequence, the image index of each of its tokens (-1 text), or None (plain causal): a
    # token also attends to the later tokens of its own image (Gemma 3; only the SDPA prefill).
    image_blocks: list[torch.Tensor | None] | None = None
    # decode
    seq_lens: torch.Tensor | None = None  # [B] int32, tokens to attend over (current one included)
    traced: bool = False  # decode through decode_traced (a compiled CPU step; no padded rows: slots >= 0)


_CONTEXT: AttentionContext | None = None


@contextlib.contextmanager
def attention_context(ctx: AttentionContext) -> Iterator[None]:
    global _CONTEXT
    previous, _CONTEXT = _CONTEXT, ctx
    try:
        yield
    finally:
        _CONTEXT = previous


def _kernels():
    # Imported at call time: fastvlmrl.kernels is an independent package (torch + triton only).
    from fastvlmrl import kernels

    return kernels


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    ctx = _CONTEXT
    if ctx is None:
        raise RuntimeError(
            f"attention implementation {ATTN_IMPL!r} only runs inside fastvlmrl's Engine; "
            "set the model back to 'sdpa' to use it outside the engine"
        )
    assert query.shape[0] == 1, "the engine packs a step's tokens into one row"
    layer = module.layer_idx
    q = query[0].transpose(0, 1).contiguous()  # [T, Hq, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    k_cache, v_cache = ctx.k_caches[layer], ctx.v_caches[layer]
    if ctx.is_prefill:
        _kernels().store_kv(k, v, k_cache, v_cache, ctx.slot_mapping)
        out = ctx.backend.prefill(q, k, v, k_cache, v_cache, ctx, scaling)
    else:
        scale = float(scaling) if scaling is not None else q.shape[-1] ** -0.5
        if ctx.traced:
            out = decode_traced(q, k, v, k_cache, v_cache, ctx.slot_mapping, ctx.block_tables, ctx.seq_lens, scale)
            return out.unsqueeze(0), None
        # the op under torch.compile (opaque there); eager, the same function without the dispatcher
        decode = torch.ops.fastvlmrl.paged_decode if torch.compiler.is_compiling() else paged_decode_impl
        out = decode(q, k, v, k_cache, v_cache, ctx.slot_mapping, ctx.block_tables, ctx.seq_lens, scale,
                     ctx.backend.decoder)
    return out.unsqueeze(0), None  # [1, T, Hq, D], as transformers' attention functions return


AttentionInterface.register(ATTN_IMPL, paged_attention_forward)


# -- prefill ------------------------------------------------------------------------------------


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` cached positions of one sequence, ``[length, kv_heads, head_dim]``."""
    block_size = cache.shape[1]
    blocks = block_table[: -(-length // block_size)].long()
    return cache[blocks].flatten(0, 1)[:length]


def prefill_sdpa(q, k, v, k_cache, v_cache, ctx: AttentionContext, scale):
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    for i, ((qs, qe), k_len) in enumerate(zip(ctx.q_bounds, ctx.k_lens)):
        q_len = qe - qs
        blocks = ctx.image_blocks[i] if ctx.image_blocks is not None else None
        if k_len == q_len:
            ki, vi = k[qs:qe], v[qs:qe]
        else:  # cached prefix: read it back from the paged cache (this step's tokens included)
            ki = _gather_context(k_cache, ctx.block_tables[i], k_len)
            vi = _gather_context(v_cache, ctx.block_tables[i], k_len)
        mask, causal = None, True
        if blocks is not None:  # causal, and both ways within an image: an explicit mask
            rows = torch.arange(q_len, device=q.device)[:, None] + (k_len - q_len)
            mask, causal = torch.arange(k_len, device=q.device)[None, :] <= rows, False
            own = blocks[k_len - q_len : k_len, None]
            mask = mask | ((own == blocks[None, :k_len]) & (own >= 0))
        elif k_len != q_len:
            # Causal aligned to the end of the cached prefix: a CausalBias, which SDPA runs with its
            # fused kernels (an explicit boolean mask would send it to the math backend).
            mask, causal = causal_lower_right(q_len, k_len), False
        # 4-D [1, heads, tokens, head_dim]: with 3-D inputs SDPA takes its math backend (CPU: 7x slower)
        o = F.scaled_dot_product_attention(
            q[qs:qe].transpose(0, 1)[None],
            ki.transpose(0, 1)[None],
            vi.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=causal,
            scale=scale,
            enable_gqa=gqa,
        )
        out[qs:qe] = o[0].transpose(0, 1)
    return out


def prefill_flash(q, k, v, k_cache, v_cache, ctx: AttentionContext, scale):
    if ctx.has_cached_prefix:
        k = torch.cat([_gather_context(k_cache, ctx.block_tables[i], n) for i, n in enumerate(ctx.k_lens)])
        v = torch.cat([_gather_context(v_cache, ctx.block_tables[i], n) for i, n in enumerate(ctx.k_lens)])
    max_q = max(qe - qs for qs, qe in ctx.q_bounds)
    # flash-attn aligns the causal mask bottom-right, which is the cached-prefix offset we need.
    return flash_attn_varlen_func(
        q, k, v, ctx.cu_seqlens_q, ctx.cu_seqlens_k, max_q, max(ctx.k_lens), softmax_scale=scale, causal=True
    )


# -- decode -------------------------------------------------------------------------------------


def decode_kernels(q, k_cache, v_cache, block_tables, seq_lens, scale):
    return _kernels().paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=scale)


def decode_flash(q, k_cache, v_cache, block_tables, seq_lens, scale):
    out = flash_attn_with_kvcache(
        q.unsqueeze(1),
        k_cache,
        v_cache,
        cache_seqlens=seq_lens,
        block_table=block_tables,
        softmax_scale=scale,
        causal=True,
    )
    return out.squeeze(1)


DECODERS: dict[str, Callable] = {"kernels": decode_kernels, "flash": decode_flash}


def paged_decode_impl(q, k, v, k_cache, v_cache, slot_mapping, block_tables, seq_lens, scale: float,
                      decoder: str) -> torch.Tensor:
    """One decode step's attention for one layer: store the new K/V ``[B, Hkv, D]`` at their
    slots (< 0: skipped), then attend each query ``[B, Hq, D]`` over its sequence's cache."""
    _kernels().store_kv(k, v, k_cache, v_cache, slot_mapping)
    return DECODERS[decoder](q, k_cache, v_cache, block_tables, seq_lens, scale)


@torch.library.custom_op("fastvlmrl::paged_decode", mutates_args=("k_cache", "v_cache"))
def paged_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                 decoder: str) -> torch.Tensor:
    """:func:`paged_decode_impl` as a custom op ``[B, Hq, D]``: what a compiled step calls."""
    return paged_decode_impl(q, k, v, k_cache, v_cache, slot_mapping, block_tables, seq_lens, scale, decoder)


def decode_traced(q, k, v, k_cache, v_cache, slot_mapping, block_tables, seq_lens, scale: float) -> torch.Tensor:
    """:func:`paged_decode` in plain tensor ops, for ``torch.compile`` to trace (CPU): the store as
    an in-place ``index_copy_`` (every slot >= 0: no padded rows), the attention over the block
    table's whole width (no data-dependent length) masked to each sequence's length, softmax and
    accumulation in fp32. Eager it gathers the context as the reference does; compiled, the
    gathers fuse into the two reductions."""
    B, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    k_cache.view(-1, Hkv, D).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, Hkv, D).index_copy_(0, slot_mapping, v.to(v_cache.dtype))
    blocks = block_tables.long()  # whole blocks: contiguous rows, vectorised reads
    keys = k_cache[blocks][:, :, :, :, None, :].float()  # [B, W, block, Hkv, 1, D]
    values = v_cache[blocks][:, :, :, :, None, :].float()
    scores = (q.view(B, 1, 1, Hkv, Hq // Hkv, D).float() * scale * keys).sum(-1)  # [B, W, block, Hkv, G]
    pos = torch.arange(blocks.shape[1] * block_size, device=q.device).view(-1, block_size)
    past = (pos[None] >= seq_lens[:, None, None].long())[..., None, None]  # [B, W, block, 1, 1]
    scores = scores.masked_fill(past, float("-inf"))
    weights = torch.softmax(scores.flatten(1, 2), dim=1).view(scores.shape)
    values = values.masked_fill(past[..., None], 0.0)  # stale slots past the end (a NaN there: 0 * NaN)
    out = (weights[..., None] * values).sum((1, 2))  # [B, Hkv, G, D]
    return torch.nan_to_num(out.reshape(B, Hq, D), nan=0.0).to(q.dtype)  # (length 0: zeros)


@paged_decode.register_fake
def _paged_decode_shape(q, k, v, k_cache, v_cache, slot_mapping, block_tables, seq_lens, scale, decoder):
    return torch.empty_like(q)


def flash_usable(device: torch.device, dtype: torch.dtype) -> bool:
    return HAS_FLASH_ATTN and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def select_backend(
    device: torch.device, dtype: torch.dtype, block_size: int, use_flash_attn: bool | None, image_blocks: bool = False
) -> AttentionBackend:
    """Choose the attention backend for a model on ``device`` in ``dtype``.

    ``use_flash_attn``: None = when installed and usable, False = never, True = required.
    ``image_blocks``: the family's prefill mask is bidirectional within an image (Gemma 3), which
    flash-attn's causal varlen kernel cannot express: prefill goes through SDPA with the mask.
    """
    flash_ok = flash_usable(device, dtype)
    if use_flash_attn and not flash_ok:
        raise ValueError(
            "use_flash_attn=True needs flash-attn installed, a CUDA model and fp16/bf16 weights "
            f"(flash-attn installed: {HAS_FLASH_ATTN}, device: {device}, dtype: {dtype})"
        )
    flash = flash_ok and use_flash_attn is not False
    if flash and not image_blocks:
        prefill, prefill_name = prefill_flash, "flash-attn varlen"
    else:
        prefill, prefill_name = prefill_sdpa, "torch sdpa" + (" (image-block mask)" if image_blocks else "")
    if flash and block_size % 256 == 0:
        decoder, decode_name = "flash", "flash-attn kvcache (paged)"
    else:
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        kind = "triton" if device.type == "cuda" else ("triton interpreter" if interpret else "torch reference")
        decoder, decode_name = "kernels", f"fastvlmrl.kernels paged_decode_attention ({kind})"
    return AttentionBackend(f"prefill: {prefill_name}; decode: {decode_name}", prefill, decoder)
