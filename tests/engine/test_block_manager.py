"""Block bookkeeping and scheduling, without a model."""

from __future__ import annotations

import pytest

from fastvlmrl.engine import SamplingParams
from fastvlmrl.engine.block_manager import BlockManager, block_keys
from fastvlmrl.engine.scheduler import Scheduler
from fastvlmrl.engine.sequence import Sequence

BS = 4


def make_seq(i: int, tokens: list[int], max_new: int = 8, image_digest: bytes | None = None) -> Sequence:
    seq = Sequence(i, list(tokens), len(tokens), SamplingParams(temperature=0, max_new_tokens=max_new), {}, None)
    seq.prefix_keys = block_keys(seq.token_ids, BS, 99, image_digest)
    return seq


def test_allocate_share_free_and_revive():
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = make_seq(0, list(range(1, 12)))  # 11 tokens: 3 blocks, 2 shareable (the last token's block is not)
    b = make_seq(1, list(range(1, 9)) + [50, 51, 52])  # same first 2 blocks
    assert len(a.prefix_keys) == 2
    bm.allocate(a)
    assert a.num_cached_tokens == 0 and bm.num_free == 7
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_tokens == 2 * BS
    assert bm.num_free == 6  # only b's last block is new
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]

    bm.deallocate(a)
    bm.deallocate(b)
    assert bm.num_free == 10
    # Freed blocks keep their keys: a later identical prompt revives them.
    c = make_seq(2, list(range(1, 12)))
    bm.allocate(c)
    assert c.num_cached_tokens == 2 * BS and bm.num_free == 7


def test_reused_block_loses_its_key():
    bm = BlockManager(num_blocks=3, block_size=BS)
    a = make_seq(0, list(range(1, 10)))  # 3 blocks, 2 keyed
    bm.allocate(a)
    bm.deallocate(a)
    other = make_seq(1, [70] * 9)
    bm.allocate(other)  # takes all three blocks, overwriting a's content
    bm.deallocate(other)
    again = make_seq(2, list(range(1, 10)))
    bm.allocate(again)
    assert again.num_cached_tokens == 0


def test_image_digest_separates_blocks():
    bm = BlockManager(num_blocks=10, block_size=BS)
    tokens = [1, 2, 3, 4, 99, 99, 99, 99, 5, 6]
    a = make_seq(0, tokens, image_digest=b"frame-a")
    b = make_seq(1, tokens, image_digest=b"frame-b")
    bm.allocate(a)
    bm.allocate(b)
    assert b.num_cached_tokens == BS  # the text block before the image only


def test_append_grows_one_block_at_a_time():
    bm = BlockManager(num_blocks=4, block_size=BS)
    s = make_seq(0, [1, 2, 3, 4])
    bm.allocate(s)
    assert len(s.block_table) == 1
    s.token_ids.append(5)  # the 5th token needs a second block
    assert bm.can_append(s)
    bm.append(s)
    assert len(s.block_table) == 2 and bm.num_free == 2


def test_scheduler_admits_what_fits_and_preempts_newest():
    bm = BlockManager(num_blocks=4, block_size=BS, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=1000)
    seqs = [make_seq(i, [10 + i] * 4) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch, prefill = sched.schedule()
    assert prefill and batch == seqs  # 3 blocks used, 1 free
    for s in seqs:
        s.token_ids.append(7)  # each now needs a second block; only one is free
    batch, prefill = sched.schedule()
    assert not prefill
    assert batch == seqs[:2]  # seqs[0] took the free block; seqs[1] preempted seqs[2] for its own
    assert list(sched.waiting) == [seqs[2]] and seqs[2].block_table == [] and sched.num_preemptions == 1
    for s in seqs[:2]:
        sched.finish(s)
    batch, prefill = sched.schedule()
    assert prefill and batch == [seqs[2]]  # recomputed: prompt + its generated token
    assert bm.num_free == 2


def test_scheduler_respects_token_budget():
    bm = BlockManager(num_blocks=64, block_size=BS)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=10)
    for i in range(3):
        sched.add(make_seq(i, [i + 1] * 6))
    assert len(sched.schedule()[0]) == 1  # 6 + 6 > 10
    assert len(sched.schedule()[0]) == 1


@pytest.mark.parametrize("bad", [(0, 4), (4, 0)])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        BlockManager(*bad)
