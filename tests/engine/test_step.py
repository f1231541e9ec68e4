"""``Engine.step``: one scheduling step; ``generate`` is steps until the queue is empty."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams


def test_generate_runs_steps_that_return_what_finished(models, tiny):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    images = [tiny.frame(i) for i in range(3)] + [None]
    prompts = ["<image> a", "b <image> b", "<image> c c c", "   "]  # the last one fails before queueing
    sps = [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True) for n in (2, 5, 3, 4)]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    step, finished = engine.step, []

    def recording_step():
        out = step()
        finished.append(out)
        return out

    engine.step = recording_step
    outs = engine.generate(images, prompts, sps)
    assert [o.error is None for o in outs] == [True, True, True, False]
    assert len(finished) == engine.stats.prefill_steps + engine.stats.decode_steps == 5
    # One prefill gives every request its first token, then one decode step per token.
    index = [[next(i for i, o in enumerate(outs) if o is g) for g in step_out] for step_out in finished]
    assert index == [[], [0], [2], [], [1]]


def test_step_runs_only_inside_generate(models):
    engine = Engine(models("llava"), None, num_blocks=8)
    with pytest.raises(RuntimeError, match="inside generate"):
        engine.step()


def test_decode_inputs_are_one_buffer_with_the_steps_values(models):
    """The decode step's five inputs come from one host buffer (one copy): the same values as
    built one by one, for sequences of different lengths, block counts and rope offsets, and the
    buffer reused by a smaller step and regrown by a larger one."""
    from fastvlmrl.engine.sequence import Sequence

    engine = Engine(models("llava"), None, block_size=4, num_blocks=64)
    runner = engine.runner

    def seq(i, n, blocks, delta):
        s = Sequence(i, list(range(7, 7 + n)), max(1, n - 2), SamplingParams(temperature=0), {}, None)
        s.block_table, s.rope_delta = blocks, delta
        return s

    for seqs in ([seq(0, 9, [5, 2, 8], 0), seq(1, 2, [3], 4), seq(2, 13, [1, 9, 4, 6], -2)],
                 [seq(3, 1, [0], 0)],
                 [seq(4, 17, [10, 11, 12, 13, 14], 1), seq(5, 5, [20, 21], 0)] * 3):
        ids, positions, slots, table, seq_lens = runner.decode_inputs(seqs)
        width = max(len(s.block_table) for s in seqs)
        assert ids.tolist() == [s.token_ids[-1] for s in seqs] and ids.dtype == torch.long
        assert positions.shape == (runner.rows, len(seqs))
        assert positions[0].tolist() == [len(s) - 1 + s.rope_delta for s in seqs]
        assert slots.tolist() == [s.block_table[(len(s) - 1) // 4] * 4 + (len(s) - 1) % 4 for s in seqs]
        assert seq_lens.tolist() == [len(s) for s in seqs] and seq_lens.dtype == torch.int32
        assert table.dtype == torch.int32 and table.is_contiguous()
        assert table.tolist() == [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
