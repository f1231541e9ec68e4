"""Prefix caching: a prompt prefix shared by many requests is prefilled once, results unchanged."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams

BS = 8
SP = SamplingParams(temperature=0, max_new_tokens=6)
TASK = "You are playing NumberLine. Move the current number to the target with + or -. "


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_shared_prefix_prefilled_once(models, tiny):
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    n = 8
    images = [tiny.frame(i, 56, 56) for i in range(n)]
    prompts = [TASK + f"<image> env {i}: answer in JSON" for i in range(n)]

    plain = Engine(model, processor, block_size=BS, num_blocks=256, enable_prefix_caching=False)
    want = plain.generate(images, prompts, SP)
    cached = Engine(model, processor, block_size=BS, num_blocks=256)
    got = cached.generate(images, prompts, SP)

    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.hidden_state, w.hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), rtol=0, atol=1e-5)
    ids = [g.prompt_token_ids for g in got]
    # Full blocks before the first image token (the images differ, so image blocks are not shared).
    shared = min(common_prefix(ids[0], ids[1]), ids[0].index(tiny.IMAGE)) // BS * BS
    assert shared >= 5 * BS
    total = sum(len(i) for i in ids)
    assert plain.stats.prefill_tokens == total
    assert cached.stats.prefill_tokens == total - (n - 1) * shared
    assert cached.stats.cached_prompt_tokens == (n - 1) * shared
    assert [g.num_cached_tokens for g in got] == [0] + [shared] * (n - 1)


def test_image_content_is_part_of_the_key(models, tiny):
    """Same text and image: the whole prompt (but its last block) is shared; another image: only
    the blocks before the image."""
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=BS, num_blocks=256)
    prompt = TASK + "<image> what now? " + "more text " * 3
    a, b = tiny.frame(1), tiny.frame(2)
    outs = engine.generate([a, a, b], [prompt] * 3, SP)
    ids = outs[0].prompt_token_ids
    first_image_block = ids.index(tiny.IMAGE) // BS
    assert outs[1].num_cached_tokens == (len(ids) - 1) // BS * BS
    assert outs[2].num_cached_tokens == first_image_block * BS
    assert outs[0].token_ids == outs[1].token_ids

    plain = Engine(model, processor, block_size=BS, num_blocks=256, enable_prefix_caching=False)
    assert [o.token_ids for o in plain.generate([a, a, b], [prompt] * 3, SP)] == [o.token_ids for o in outs]


def test_cache_reused_across_calls_until_weights_change(tiny):
    model = tiny.build_model("llava", seed=3)
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=BS, num_blocks=256)
    images = [tiny.frame(i) for i in range(4)]
    prompts = [TASK + f"<image> env {i}" for i in range(4)]
    first = engine.generate(images, prompts, SP)
    cached_first = engine.stats.cached_prompt_tokens
    second = engine.generate(images, prompts, SP)
    assert [o.token_ids for o in second] == [o.token_ids for o in first]
    assert engine.stats.cached_prompt_tokens > cached_first  # request 0's blocks now cached too
    assert second[0].num_cached_tokens > 0

    with torch.no_grad():
        model.model.language_model.layers[0].mlp.down_proj.weight.mul_(3.0)  # an in-place update
    third = engine.generate(images, prompts, SP)
    assert engine.stats.cached_prompt_tokens == cached_first  # stale blocks were dropped
    assert third[0].num_cached_tokens == 0
    plain = Engine(model, processor, block_size=BS, num_blocks=256, enable_prefix_caching=False)
    assert [o.token_ids for o in plain.generate(images, prompts, SP)] == [o.token_ids for o in third]


def test_optimizer_updates_invalidate_the_cache(tiny):
    """Optimizers update parameters in place (foreach kernels included): the version check sees it."""
    model = tiny.build_model("llava", seed=4)
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=BS, num_blocks=64)
    engine.generate([tiny.frame(0)], [TASK + "<image>"], SP)
    versions = engine.weight_versions.version
    for foreach in (False, True):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=foreach)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        engine.generate([tiny.frame(0)], [TASK + "<image>"], SP)
        assert engine.stats.cached_prompt_tokens == 0
        assert engine.weight_versions.version != versions
        versions = engine.weight_versions.version


@pytest.mark.parametrize("family,hw", [("gemma3", (56, 56)), ("qwen3_vl", (64, 64))])
def test_a_cache_hit_that_ends_inside_an_image(family, hw, models, tiny):
    """Gemma 3's image tokens attend to each other both ways and Qwen3-VL adds DeepStack features
    at them: a request whose cached prefix stops in the middle of its image computes the rest of
    the image exactly as a request with nothing cached."""
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    bs = 4
    image = tiny.frame(7, *hw)

    def image_span(ids):
        return ids.index(tiny.IMAGE), len(ids) - 1 - ids[::-1].index(tiny.IMAGE)

    def split_inside(prompt):
        # The hit covers the full blocks before the last token: at least two image tokens after it.
        ids = processor(images=[image], text=[prompt])["input_ids"][0].tolist()
        first, last = image_span(ids)
        return first < (len(ids) - 1) // bs * bs < last

    prompt = next(p for p in ("x" * n + "<image>" for n in range(bs)) if split_inside(p))
    sp = SamplingParams(temperature=0, max_new_tokens=4)
    plain = Engine(model, processor, block_size=bs, num_blocks=128, enable_prefix_caching=False)
    want = plain.generate([image, image], [prompt] * 2, sp)
    cached = Engine(model, processor, block_size=bs, num_blocks=128)
    got = cached.generate([image, image], [prompt] * 2, sp)
    first, last = image_span(got[1].prompt_token_ids)
    assert first < got[1].num_cached_tokens < last, "the cached prefix must end inside the image"
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), rtol=0, atol=1e-5)
        torch.testing.assert_close(g.hidden_state, w.hidden_state, rtol=1e-5, atol=1e-5)
