"""Returned log-probs and hidden states equal a plain forward of the model over prompt + output."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams


def forward_over(model, processor, image, prompt, output_ids):
    """Plain HF forward (SDPA, no cache) over prompt + output: (logits, final hidden states)."""
    enc = processor(images=[image], text=[prompt])
    ids = torch.cat([enc["input_ids"], torch.tensor([output_ids])], dim=1)
    extra = {k: v for k, v in enc.items() if k != "input_ids"}
    for key in ("mm_token_type_ids", "token_type_ids"):  # output tokens are text
        if key in extra:
            extra[key] = torch.nn.functional.pad(extra[key], (0, len(output_ids)))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, **extra)
    return out.logits[0].float(), out.hidden_states[-1][0], enc["input_ids"].shape[1]


@pytest.mark.parametrize(
    "family,sp",
    [
        ("qwen2_vl", SamplingParams(temperature=0.7, max_new_tokens=12, seed=3)),
        ("qwen3_vl", SamplingParams(temperature=0.7, max_new_tokens=12, seed=3)),
        ("gemma3", SamplingParams(temperature=1.0, max_new_tokens=12, seed=4)),
        ("llava_onevision", SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=6)),
        ("internvl", SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)),
        ("idefics3", SamplingParams(temperature=1.0, max_new_tokens=12, seed=8)),
        # This tiny model favours its image token: suppressed (a reply with one breaks the forward).
        ("smolvlm", SamplingParams(temperature=0.8, max_new_tokens=12, seed=9, suppress_token_ids=(120,))),
        ("llava", SamplingParams(temperature=1.3, top_p=0.9, repetition_penalty=1.2, max_new_tokens=12, seed=5)),
        ("llava", SamplingParams(temperature=0, max_new_tokens=8)),
    ],
)
def test_logprobs_match_forward(family, sp, models, tiny):
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    hw = {"qwen3_vl": (64, 64), "gemma3": (56, 56), "llava_onevision": (56, 84), "internvl": (56, 112), "idefics3": (32, 64),
          "smolvlm": (64, 64)}.get(family, (56, 56) if family.startswith("qwen") else (28, 28))
    images = [tiny.frame(i, *hw) for i in range(3)]
    prompts = ["<image> first prompt", "a longer second prompt, with more words <image>", "<image>3"]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    outs = engine.generate(images, prompts, sp)
    temperature = sp.temperature or 1.0
    for image, prompt, out in zip(images, prompts, outs):
        assert out.error is None and len(out.token_ids) == len(out.logprobs) > 0
        assert len(out.token_ids) == sp.max_new_tokens or out.finish_reason == "eos"
        logits, hidden, n_prompt = forward_over(model, processor, image, prompt, out.token_ids)
        # Logits at position t predict token t + 1.
        steps = logits[n_prompt - 1 : n_prompt - 1 + len(out.token_ids)]
        steps[:, list(sp.suppress_token_ids)] = float("-inf")  # the distribution without them
        want = torch.log_softmax(steps / temperature, dim=-1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(out.logprobs), want, rtol=0, atol=1e-5)
        # The value-head input: final hidden state of the last prompt token.
        torch.testing.assert_close(out.hidden_state, hidden[n_prompt - 1], rtol=1e-5, atol=1e-5)
        assert all(lp <= 0 for lp in out.sampling_logprobs)
        if sp.greedy:
            assert out.sampling_logprobs == [0.0] * len(out.token_ids)


def test_sampling_logprobs_follow_top_p(models, tiny):
    """With top-p the sampled distribution is renormalised: its log-prob is >= the raw one."""
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    sp = SamplingParams(temperature=1.0, top_p=0.5, max_new_tokens=16, seed=0)
    out = Engine(model, processor, block_size=8, num_blocks=32).generate([tiny.frame(0)], ["<image> hi"], sp)[0]
    raw, kept = torch.tensor(out.logprobs), torch.tensor(out.sampling_logprobs)
    assert bool((kept >= raw - 1e-6).all()) and bool((kept > raw + 1e-3).any())
