"""``Engine.step``: one scheduling step; ``generate`` is steps until the queue is empty."""

from __future__ import annotations

import pytest

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
