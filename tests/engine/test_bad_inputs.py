"""A bad request fails on its own, with a clear error; the rest of the batch completes."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, Request, SamplingParams

SP = SamplingParams(temperature=0, max_new_tokens=6)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_bad_requests_fail_alone(family, models, tiny):
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    hw = (56, 56) if family.startswith("qwen") else (28, 28)
    good_images = [tiny.frame(0, *hw), tiny.frame(1, *hw)]
    good_prompts = ["<image> first", "second <image> prompt"]
    engine = Engine(model, processor, block_size=8, num_blocks=128)
    clean = engine.generate(good_images, good_prompts, SP)

    too_long = "x" * (model.config.get_text_config().max_position_embeddings + 10) + "<image>"
    wrong_shape = tiny.frame(2, 20, 30) if family == "llava" else tiny.frame(2, 42, 42)  # 3x3 grid: not mergeable
    images = [good_images[0], tiny.frame(3, *hw), None, wrong_shape, tiny.frame(4, *hw), good_images[1]]
    prompts = [good_prompts[0], too_long, "", "<image> bad image", "two placeholders <image><image>", good_prompts[1]]
    outs = engine.generate(images, prompts, SP)

    assert [o.token_ids for o in (outs[0], outs[5])] == [c.token_ids for c in clean]
    assert all(o.error is None for o in (outs[0], outs[5]))
    errors = [o.error for o in outs[1:5]]
    assert "context" in errors[0]
    assert "empty prompt" in errors[1]
    assert "pixel_values" in errors[2] or "image_grid_thw" in errors[2]
    assert "preprocessing failed" in errors[3]
    for o in outs[1:5]:
        assert o.finish_reason == "error" and o.token_ids == [] and o.hidden_state is None


def test_token_level_errors(models, tiny):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=8, num_blocks=16)
    enc = processor(images=[tiny.frame(0)], text=["<image> ok"])
    ids, pv = enc["input_ids"][0], enc["pixel_values"]
    requests = [
        Request(ids, {"pixel_values": pv}),
        Request([], {}),  # empty
        Request(ids, {}),  # image tokens without an image
        Request(torch.tensor([1, 5, 6]), {"pixel_values": pv}),  # image without image tokens
        Request(torch.cat([ids[:2], ids]), {"pixel_values": pv}),  # more image tokens than features
        Request([1, 999], {}),  # token out of the vocabulary
        Request(ids, {"pixel_values": pv}, SamplingParams(max_new_tokens=500)),  # can never fit the cache
        Request(ids, {"pixel_values": pv}),
    ]
    outs = engine.generate_requests(requests, SP)
    assert outs[0].error is None and outs[7].error is None and outs[0].token_ids == outs[7].token_ids
    expect = ["empty prompt", "no images were given", "no image token", "image tokens", "vocabulary", "KV blocks"]
    for out, words in zip(outs[1:7], expect):
        assert out.error is not None and (words in out.error or words.split()[0] in out.error), out.error
    assert engine.block_manager.num_free == engine.block_manager.num_blocks


def test_vision_tower_failure_is_isolated(models, tiny, monkeypatch):
    """An image that passes the shape checks but breaks the vision tower fails only its request."""
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    images = [tiny.frame(i) for i in range(3)]
    images[1][:] = 0  # the poisoned image: all black
    prompts = [f"<image> p{i}" for i in range(3)]
    want = engine.generate(images, prompts, SP)

    original = engine.family.image_features

    def image_features(mm):
        if any(float(pv.abs().sum()) == 0 for pv in mm["pixel_values"]):
            raise RuntimeError("vision tower exploded")
        return original(mm)

    monkeypatch.setattr(engine.family, "image_features", image_features)
    outs = engine.generate(images, prompts, SP)
    assert "vision tower exploded" in outs[1].error
    assert outs[0].token_ids == want[0].token_ids and outs[2].token_ids == want[2].token_ids


def test_generate_argument_errors(models, tiny):
    model = models("llava")
    engine = Engine(model, tiny.TinyProcessor(model, "llava"), block_size=8, num_blocks=16)
    with pytest.raises(ValueError, match="images for"):
        engine.generate([tiny.frame(0)], ["a", "b"])
    with pytest.raises(ValueError, match="SamplingParams for"):
        engine.generate([tiny.frame(0)], ["<image>"], [SP, SP])
    with pytest.raises(ValueError, match="processor"):
        Engine(model, None, block_size=8, num_blocks=16).generate([tiny.frame(0)], ["<image>"])
    with pytest.raises(ValueError, match="model_type"):
        Engine(_FakeModel(), None)


class _FakeModel(torch.nn.Module):
    class config:
        model_type = "gpt2"


def test_engine_recovers_after_a_failed_step(models, tiny, monkeypatch):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    images, prompts = [tiny.frame(0), tiny.frame(1)], ["<image> a", "<image> b"]
    want = engine.generate(images, prompts, SP)
    runner_decode = engine.runner.decode
    monkeypatch.setattr(engine.runner, "decode", lambda seqs: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        engine.generate(images, prompts, SP)
    monkeypatch.setattr(engine.runner, "decode", runner_decode)
    assert engine.block_manager.num_free == engine.block_manager.num_blocks
    assert [o.token_ids for o in engine.generate(images, prompts, SP)] == [w.token_ids for w in want]


@pytest.mark.parametrize("block_size", [0, 12])
def test_block_size_must_be_a_power_of_two(block_size, models):
    with pytest.raises(ValueError, match="power of two"):
        Engine(models("llava"), None, block_size=block_size, num_blocks=8)
