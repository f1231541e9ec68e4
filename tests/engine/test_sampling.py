"""Seeded sampling, stop conditions and SamplingParams validation."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, Request, SamplingParams
from fastvlmrl.engine.sampler import top_p_filter


@pytest.fixture(scope="module")
def setup(models, tiny):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=8, num_blocks=128)
    images = [tiny.frame(i) for i in range(4)]
    prompts = [f"<image> env {i} says" for i in range(4)]
    return engine, images, prompts


def test_same_seed_same_samples_different_seeds_differ(setup):
    engine, images, prompts = setup
    sp = SamplingParams(temperature=1.0, max_new_tokens=24, seed=7)
    a = engine.generate(images, prompts, sp)
    b = engine.generate(images, prompts, sp)
    c = engine.generate(images, prompts, SamplingParams(temperature=1.0, max_new_tokens=24, seed=8))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.logprobs for o in a] == [o.logprobs for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    # A shared SamplingParams seeds request i with seed + i: identical prompts still differ.
    same = engine.generate([images[0]] * 2, [prompts[0]] * 2, sp)
    assert same[0].token_ids != same[1].token_ids


def test_samples_do_not_depend_on_the_batch(setup):
    engine, images, prompts = setup
    params = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=100 + i) for i in range(4)]
    batch = engine.generate(images, prompts, params)
    alone = engine.generate(images[2:3], prompts[2:3], params[2:3])
    assert alone[0].token_ids == batch[2].token_ids


def test_tiny_top_p_is_greedy(setup):
    engine, images, prompts = setup
    greedy = engine.generate(images, prompts, SamplingParams(temperature=0, max_new_tokens=12))
    nucleus = engine.generate(images, prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12, seed=1))
    assert [o.token_ids for o in nucleus] == [o.token_ids for o in greedy]


def test_eos_and_stop_strings(setup, tiny):
    engine, images, prompts = setup
    greedy = engine.generate(images[:1], prompts[:1], SamplingParams(temperature=0, max_new_tokens=12))[0]
    # Pretend the 4th generated token is EOS: generation ends there, EOS included.
    eos = greedy.token_ids[3]
    saved = engine.eos_ids
    engine.eos_ids = {eos}
    try:
        out = engine.generate(images[:1], prompts[:1], SamplingParams(temperature=0, max_new_tokens=12))[0]
        first = greedy.token_ids.index(eos)
        assert out.token_ids == greedy.token_ids[: first + 1] and out.finish_reason == "eos"
        ignored = engine.generate(
            images[:1], prompts[:1], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
        )[0]
        assert ignored.token_ids == greedy.token_ids and ignored.finish_reason == "length"
    finally:
        engine.eos_ids = saved
    # Stop on a string taken from the greedy text: cut before it.
    text = greedy.text
    assert len(text) >= 4, "need printable output for the stop-string check"
    stop = text[2:4]
    out = engine.generate(images[:1], prompts[:1], SamplingParams(temperature=0, max_new_tokens=12, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.text == text[: text.find(stop)]
    assert out.token_ids == greedy.token_ids[: len(out.token_ids)]


def test_generate_requests_takes_token_ids(setup, tiny):
    engine, images, prompts = setup
    enc = engine.processor(images=[images[0]], text=[prompts[0]])
    req = Request(enc["input_ids"][0], {"pixel_values": enc["pixel_values"]})
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    a = engine.generate_requests([req], sp)[0]
    b = engine.generate(images[:1], prompts[:1], sp)[0]
    assert a.token_ids == b.token_ids and a.prompt_token_ids == b.prompt_token_ids


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    out = top_p_filter(probs, torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(out[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    torch.testing.assert_close(out[1], probs[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(max_new_tokens=0),
        dict(repetition_penalty=0),
        dict(stop=[""]),
    ],
)
def test_bad_sampling_params_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_stop_string_is_not_split_into_characters():
    assert SamplingParams(stop="}").stop == ("}",)


def test_suppressed_tokens_are_never_emitted_and_logprobs_exclude_them():
    import torch

    from fastvlmrl.engine.sampler import sample
    from fastvlmrl.engine.sampling_params import SamplingParams

    class Seq:
        def __init__(self, sp):
            self.sampling, self.token_ids, self.num_outputs = sp, [1], 0
            self.seed = 0

    logits = torch.zeros(2, 6)
    logits[:, 3] = 10.0  # token 3 would win every time
    seqs = [Seq(SamplingParams(temperature=0.0, suppress_token_ids=(3,))),
            Seq(SamplingParams(temperature=1.0, seed=0, suppress_token_ids=(3, 4)))]
    for _ in range(20):
        out = sample(logits, seqs)
        assert 3 not in out.token_ids and out.token_ids[1] != 4
    expected = torch.log_softmax(logits[1].masked_fill(torch.tensor([0, 0, 0, 1, 1, 0], dtype=torch.bool), float("-inf")), -1)
    assert abs(out.logprobs[1] - float(expected[out.token_ids[1]])) < 1e-6
