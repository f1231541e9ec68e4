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
        Request(None, {}),  # not token ids at all
        Request(ids, None),  # not a dict of image tensors
    ]
    outs = engine.generate_requests(requests, SP)
    assert outs[0].error is None and outs[7].error is None and outs[0].token_ids == outs[7].token_ids
    expect = ["empty prompt", "no images were given", "no image token", "image tokens", "vocabulary", "KV blocks"]
    for out, words in zip(outs[1:7], expect):
        assert out.error is not None and (words in out.error or words.split()[0] in out.error), out.error
    assert outs[8].error is not None and outs[9].error is not None
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


def test_failed_prefill_does_not_poison_the_prefix_cache(models, tiny, monkeypatch):
    """Blocks are registered in the prefix cache when allocated and computed by the prefill that
    follows: if that prefill raises, the next call must not reuse their (never written) contents."""
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    task = "You are playing NumberLine. Move the current number to the target with + or -. "
    images, prompts = [tiny.frame(0), tiny.frame(1)], [task + "<image> a", task + "<image> b"]
    want = Engine(model, processor, block_size=8, num_blocks=64, enable_prefix_caching=False).generate(
        images, prompts, SP
    )
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    runner_prefill = engine.runner.prefill
    monkeypatch.setattr(engine.runner, "prefill", lambda seqs: (_ for _ in ()).throw(RuntimeError("OOM")))
    with pytest.raises(RuntimeError, match="OOM"):
        engine.generate(images, prompts, SP)
    monkeypatch.setattr(engine.runner, "prefill", runner_prefill)
    outs = engine.generate(images, prompts, SP)
    assert outs[0].num_cached_tokens == 0
    assert [o.token_ids for o in outs] == [w.token_ids for w in want]
    torch.testing.assert_close(outs[0].hidden_state, want[0].hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_nan_image_fails_alone(family, models, tiny):
    """NaN pixels are rejected up front (they would give NaN logits, and torch.multinomial raises
    for the whole batch on a NaN row)."""
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    hw = (56, 56) if family.startswith("qwen") else (28, 28)
    encs = [processor(images=[tiny.frame(i, *hw)], text=[f"<image> r{i}"]) for i in range(3)]
    keys = ("pixel_values", "image_grid_thw")
    requests = [Request(e["input_ids"][0], {k: e[k] for k in keys if k in e}) for e in encs]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    sp = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    want = engine.generate_requests(requests, sp)
    requests[1].mm_inputs["pixel_values"] = torch.full_like(requests[1].mm_inputs["pixel_values"], float("nan"))
    outs = engine.generate_requests(requests, sp)
    assert "NaN" in outs[1].error and outs[1].token_ids == []
    assert [outs[0].token_ids, outs[2].token_ids] == [want[0].token_ids, want[2].token_ids]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_fail_alone(temperature, models, tiny, monkeypatch):
    """Whatever makes a forward produce NaN/inf for one request (bf16 overflow, a poisoned input
    the checks missed), that request fails with a clear error, its blocks are freed, and the
    others complete as they would have without it."""
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    images, prompts = [tiny.frame(i) for i in range(3)], [f"<image> nan {i}" for i in range(3)]
    sp = SamplingParams(temperature=temperature, max_new_tokens=6, seed=11, ignore_eos=True)
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    want = engine.generate(images, prompts, sp)
    victim = processor(images=[images[1]], text=[prompts[1]])["input_ids"][0].tolist()
    runner_decode = engine.runner.decode

    def decode(seqs):  # request 1's 3rd decode step gives NaN logits
        logits = runner_decode(seqs).clone()
        for i, s in enumerate(seqs):
            if s.token_ids[: s.num_prompt_tokens] == victim and s.num_outputs == 3:
                logits[i] = float("nan")
        return logits

    monkeypatch.setattr(engine.runner, "decode", decode)
    outs = engine.generate(images, prompts, sp)
    assert outs[1].finish_reason == "error" and "non-finite" in outs[1].error
    assert outs[1].token_ids == [] and outs[1].logprobs == [] and outs[1].hidden_state is None
    assert [outs[0].token_ids, outs[2].token_ids] == [want[0].token_ids, want[2].token_ids]
    for i in (0, 2):  # batch composition changes the float rounding a little, nothing more
        torch.testing.assert_close(torch.tensor(outs[i].logprobs), torch.tensor(want[i].logprobs), rtol=0, atol=1e-5)
    assert engine.block_manager.num_free == engine.block_manager.num_blocks
