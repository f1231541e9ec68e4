"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, prefix caching.

A block holds ``block_size`` consecutive tokens of one sequence (their K/V for every layer live in
:class:`~fastvlmrl.engine.kv_cache.KVCache` at row ``block_id``). Blocks are reference counted so
that sequences whose prompts share full leading blocks (every env's prompt starts with the same
task description) point at the same physical block, and the shared prefix is prefilled once.

Prefix key of block i = hash(key of block i-1, token ids of block i, digests of the images whose
tokens fall in block i): a chain, so equal keys mean equal content up to the end of the block,
images included (two envs with the same text but different frames never share image blocks).

Freed blocks keep their key until they are handed out again, so a later request can revive them
(a cheap LRU prefix cache). Only blocks fully inside the prompt and before its last token are
shared: at least one prompt token is always computed, which yields the first output's logits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from fastvlmrl.engine.sequence import Sequence


def mm_digest(mm_inputs: dict[str, torch.Tensor]) -> bytes:
    """Content hash of a request's image inputs (pixel bytes, shapes, dtypes)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(mm_inputs):
        t = mm_inputs[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def block_keys(
    token_ids: list[int], block_size: int, image_token_id: int | None, image_digest: bytes | None
) -> list[bytes]:
    """Chained keys of the prompt's shareable blocks (full blocks ending before the last token):
    what a sequence's ``prefix_keys`` holds and :meth:`BlockManager.allocate` looks up."""
    keys: list[bytes] = []
    prev = b""
    for i in range((len(token_ids) - 1) // block_size):
        tokens = token_ids[i * block_size : (i + 1) * block_size]
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(torch.tensor(tokens, dtype=torch.int64).numpy().tobytes())
        if image_digest is not None and image_token_id in tokens:
            h.update(image_digest)
        prev = h.digest()
        keys.append(prev)
    return keys


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None
    token_ids: tuple[int, ...] = field(default_factory=tuple)  # collision guard for `key`


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in the order they were freed: the oldest is reused first, so recently freed
        # prefix blocks stay revivable longest.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.key_to_block: dict[bytes, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt block: their K/V was computed with weights that changed, or
        by a step that failed before writing it. Blocks held by sequences stay allocated."""
        for block in self.blocks:
            block.key, block.token_ids = None, ()
        self.key_to_block.clear()

    # -- prefill admission ---------------------------------------------------------------------

    def _lookup(self, seq: Sequence) -> list[int]:
        """Physical blocks holding the sequence's leading shareable blocks (stops at first miss)."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for i, key in enumerate(seq.prefix_keys):
            block_id = self.key_to_block.get(key)
            if block_id is None:
                break
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            if self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._lookup(seq)
        # Reviving a free cached block also takes it off the free list.
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        fresh = self.blocks_needed(len(seq)) - len(hits)
        return fresh + revived <= self.num_free

    def allocate(self, seq: Sequence) -> None:
        assert not seq.block_table, f"sequence {seq.seq_id} already holds blocks"
        hits = self._lookup(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_cached_tokens = len(hits) * self.block_size
        for i in range(len(hits), self.blocks_needed(len(seq))):
            block = self._take_free()
            if self.enable_prefix_caching and i < len(seq.prefix_keys):
                # Registered now, computed in this step's prefill: a sequence scheduled in the same
                # step that hits it reads it after this one wrote it (all K/V of a layer are stored
                # before that layer's attention runs).
                block.key = seq.prefix_keys[i]
                block.token_ids = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
                self.key_to_block[block.key] = block.block_id
            seq.block_table.append(block.block_id)

    def _take_free(self) -> Block:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None and self.key_to_block.get(block.key) == block_id:
            del self.key_to_block[block.key]
        block.key, block.token_ids, block.ref_count = None, (), 1
        return block

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table.clear()
        seq.num_cached_tokens = 0

    # -- decode growth ---------------------------------------------------------------------------

    def can_append(self, seq: Sequence) -> bool:
        """Whether the sequence's newest token (not yet in the cache) has, or can get, a slot."""
        missing = self.blocks_needed(len(seq)) - len(seq.block_table)
        return missing <= self.num_free

    def append(self, seq: Sequence) -> None:
        while len(seq.block_table) < self.blocks_needed(len(seq)):
            seq.block_table.append(self._take_free().block_id)
