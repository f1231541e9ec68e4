"""The paged KV cache tensors and how many blocks fit."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers, K and V."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * itemsize


def cache_shape_for(text_config, block_size: int, dtype: torch.dtype) -> CacheShape:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    return CacheShape(text_config.num_hidden_layers, kv_heads, head_dim, block_size, dtype)


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def kv_blocks_needed(num_seqs: int, tokens_per_seq: int, block_size: int) -> int:
    """Blocks for `num_seqs` sequences of up to `tokens_per_seq` tokens each, each rounded up to
    whole blocks (an upper bound: shared prompt prefixes take fewer)."""
    return max(num_seqs, 1) * max(-(-tokens_per_seq // block_size), 1)


def num_blocks_for(shape: CacheShape, device: torch.device, memory_fraction: float, max_useful: int) -> int:
    """Blocks that fit in ``memory_fraction`` of the free memory now, capped at ``max_useful``."""
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    fit = int(free_memory_bytes(device) * memory_fraction) // shape.block_bytes
    if fit < 1:
        raise ValueError(
            f"no KV-cache block fits in {memory_fraction:.0%} of free memory on {device} "
            f"(one block = {shape.block_bytes} bytes): raise memory_fraction or lower block_size"
        )
    return min(fit, max_useful)


class KVCache:
    """One K and one V tensor per layer, ``[num_blocks, block_size, kv_heads, head_dim]``."""

    def __init__(self, shape: CacheShape, num_blocks: int, device: torch.device):
        self.shape = shape
        self.num_blocks = num_blocks
        dims = (num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
        # Separate tensors, not views of one: a compiled decode step mutates each layer's K and V
        # in place only when no two of them alias (views of one base are cloned and copied back).
        self.k = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self.v = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.shape.block_bytes
