"""Greedy decoding through the engine is token-identical to Hugging Face `generate` (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from fastvlmrl.engine import Engine, Request, SamplingParams

NEW_TOKENS = 10
PROMPTS = [
    "USER: <image>\nWhere is the target? ASSISTANT:",
    "<image>go",
    "You are playing NumberLine. Reach the target number with + and -. " * 2 + "<image> Answer in JSON.",
    "Look: <image> then think step by step.",
]
# Different image sizes exercise LLaVA-NeXT's AnyRes tiling and Qwen's M-RoPE grids.
SIZES = {
    "llava": [(28, 28)] * 4,
    "llava_next": [(28, 28), (28, 56), (56, 28), (28, 56)],
    "llava_onevision": [(28, 28), (28, 56), (56, 84), (200, 300)],
    "qwen2_vl": [(56, 56), (28, 56), (56, 84), (28, 28)],
    "qwen2_5_vl": [(56, 56), (28, 56), (56, 84), (28, 28)],
    "qwen3_vl": [(64, 64), (32, 64), (64, 96), (32, 32)],
    "gemma3": [(56, 56), (28, 56), (56, 84), (28, 28)],  # resized to the tower's 56 px
    "internvl": [(56, 56), (56, 112), (112, 112), (56, 56)],  # 1, 2 + 1, 4 + 1 tiles
    "idefics3": [(32, 32), (32, 64), (64, 64), (64, 96)],  # 1, 2 + 1, 4 + 1, 6 + 1 tiles
    "smolvlm": [(32, 32), (32, 64), (64, 64), (64, 96)],
}


def reference(model, processor, image, prompt, n):
    enc = processor(images=[image], text=[prompt])
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3",
                                    "internvl", "idefics3", "smolvlm"])
def test_greedy_matches_generate(family, models, tiny):
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    images = [tiny.frame(i, *hw) for i, hw in enumerate(SIZES[family])]
    expected = [reference(model, processor, im, p, NEW_TOKENS) for im, p in zip(images, PROMPTS)]

    engine = Engine(model, processor, block_size=8, num_blocks=128)
    outs = engine.generate(images, PROMPTS, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))
    for out, want in zip(outs, expected):
        assert out.error is None
        assert out.token_ids == want
        # A random model may emit EOS early (tiny Gemma 3 does once): then both stop there.
        assert out.finish_reason == ("length" if len(want) == NEW_TOKENS else "eos")
        assert len(out.logprobs) == len(want)
    assert len({tuple(w) for w in expected}) > 1, "degenerate model: every prompt gives the same output"

    # A cache too small for the whole batch: admission control queues requests and decode growth
    # preempts, yet every request completes with the same tokens.
    longest = max(len(o.prompt_token_ids) for o in outs) + NEW_TOKENS
    small = Engine(model, processor, block_size=8, num_blocks=-(-longest // 8) + 2)
    outs_small = small.generate(images, PROMPTS, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outs_small] == expected
    assert small.stats.prefill_steps > 1


def test_batch_larger_than_cache_completes(models, tiny):
    """32 requests through a cache that holds about 3 of them at a time, with preemption."""
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    prompts = [f"env {i}: <image> act" + "!" * (i % 5) for i in range(32)]
    images = [tiny.frame(100 + i, 56, 56) for i in range(32)]
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    big = Engine(model, processor, block_size=4, num_blocks=1024, enable_prefix_caching=False)
    small = Engine(model, processor, block_size=4, num_blocks=20, enable_prefix_caching=False)
    want = big.generate(images, prompts, sp)
    got = small.generate(images, prompts, sp)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert small.stats.prefill_steps > 3
    assert small.stats.preemptions > 0
    # Every block is back on the free list once the batch is done.
    assert small.block_manager.num_free == small.block_manager.num_blocks
    for g, w in zip(got, want):
        torch.testing.assert_close(g.hidden_state, w.hidden_state, rtol=1e-5, atol=1e-5)


def test_repetition_penalty_matches_generate(models, tiny):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    images = [tiny.frame(i) for i in range(3)]
    prompts = PROMPTS[:3]
    expected = []
    for image, prompt in zip(images, prompts):
        enc = processor(images=[image], text=[prompt])
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.3)
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    outs = engine.generate(
        images, prompts, SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=NEW_TOKENS)
    )
    assert [o.token_ids for o in outs] == expected


def test_bf16_on_cpu(tiny):
    """The engine runs in the model's dtype (cache included) and returns fp32 log-probs."""
    model = tiny.build_model("qwen2_vl").to(torch.bfloat16)
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    assert engine.kv.k[0].dtype == torch.bfloat16
    outs = engine.generate(
        [tiny.frame(0, 56, 56)] * 2, ["<image> a", "<image> bb"], SamplingParams(max_new_tokens=8, seed=0)
    )
    for o in outs:
        assert o.error is None and len(o.token_ids) > 0
        assert all(lp <= 0 and lp == lp for lp in o.logprobs)
        assert o.hidden_state.dtype == torch.bfloat16 and not o.hidden_state.is_inference()


def test_text_only_requests_mix_with_image_requests(models, tiny):
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images = [None, tiny.frame(0, 56, 56)]
    prompts = ["no image here, just text", "<image> with an image"]
    expected = []
    for image, prompt in zip(images, prompts):
        enc = processor(images=None if image is None else [image], text=[prompt])
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    outs = engine.generate(images, prompts, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outs] == expected


def test_triton_decode_kernel_under_interpreter(models, tiny, monkeypatch):
    """The decode step through the project's Triton paged-decode kernel (run by Triton's CPU
    interpreter) gives the same tokens as the PyTorch reference path."""
    pytest.importorskip("triton")
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images, prompts = [tiny.frame(0, 56, 56), tiny.frame(1, 28, 56)], ["<image> a", "longer prompt <image> b"]
    sp = SamplingParams(temperature=0, max_new_tokens=4)
    want = Engine(model, processor, block_size=8, num_blocks=64).generate(images, prompts, sp)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    assert "triton interpreter" in engine.backend
    assert [o.token_ids for o in engine.generate(images, prompts, sp)] == [w.token_ids for w in want]


def test_backend_is_reported_and_logged(models, caplog):
    with caplog.at_level("INFO", logger="fastvlmrl.engine.engine"):
        engine = Engine(models("llava"), None, num_blocks=8)
    assert engine.backend.startswith("prefill: torch sdpa; decode: fastvlmrl.kernels paged_decode_attention")
    assert "; no CUDA graphs; " in engine.backend  # CPU: graphs are off
    assert engine.backend.endswith("LM head: float32 logits")
    model16 = copy.deepcopy(models("llava")).to(torch.bfloat16)  # the fixture's model is shared
    assert Engine(model16, None, num_blocks=8).backend.endswith("LM head: fp32 logits (inputs upcast)")
    assert engine.kv.shape.block_size == 16  # default without flash-attn
    assert sum("fastvlmrl engine (llava)" in r.getMessage() for r in caplog.records) == 1


def test_graph_static_buffers_with_padding(models, tiny):
    """The CUDA-graph decode path on CPU without capture: inputs copied into static buffers, the
    batch padded to a captured size with empty rows (slot -1, length 1 over block 0), the block
    table as wide as the longest possible sequence. Same tokens as plain eager decoding."""
    from fastvlmrl.engine.cuda_graphs import DecodeGraphs

    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images = [tiny.frame(i, 56, 56) for i in range(5)]
    prompts = [f"env {i} " * (i + 1) + "<image> act" for i in range(5)]
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    want = Engine(model, processor, block_size=8, num_blocks=128).generate(images, prompts, sp)
    engine = Engine(model, processor, block_size=8, num_blocks=128, max_num_seqs=16, max_model_len=128)
    engine.runner.graphs = DecodeGraphs(engine.runner, 16, capture=False)
    assert engine.runner.graphs.batch_sizes == [1, 2, 4, 8, 16]
    got = engine.generate(images, prompts, sp)  # 5 rows run in the 8-row buffers
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert engine.block_manager.num_free == engine.block_manager.num_blocks


def test_mrope_positions_with_the_older_get_rope_index_signature(models, tiny, monkeypatch):
    """transformers versions before ``mm_token_type_ids`` (the GPU image may run one) have
    ``get_rope_index(input_ids, image_grid_thw, video_grid_thw, attention_mask)``: the engine
    must not pass the token types into ``image_grid_thw``'s slot."""
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images = [tiny.frame(i, *hw) for i, hw in enumerate(SIZES["qwen2_vl"][:2])]
    prompts = PROMPTS[:2]
    sp = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    want = Engine(model, processor, block_size=8, num_blocks=64).generate(images, prompts, sp)
    new_style = model.model.get_rope_index

    def old_style(input_ids=None, image_grid_thw=None, video_grid_thw=None, attention_mask=None):
        types = (input_ids == tiny.IMAGE).int()
        return new_style(input_ids, types, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw)

    monkeypatch.setattr(model.model, "get_rope_index", old_style)
    got = Engine(model, processor, block_size=8, num_blocks=64).generate(images, prompts, sp)
    assert [g.error for g in got] == [None, None]
    assert [g.token_ids for g in got] == [w.token_ids for w in want]


def test_llava_next_with_unpacked_image_features(models, tiny, monkeypatch):
    """Older transformers: LLaVA-NeXT's get_image_features returns the unpacked tiles per image
    ([tiles, tokens, hidden]) and forward packs them; the family packs them itself then."""
    model = models("llava_next")
    processor = tiny.TinyProcessor(model, "llava_next")
    images = [tiny.frame(i, *hw) for i, hw in enumerate(SIZES["llava_next"])]
    sp = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    want = Engine(model, processor, block_size=8, num_blocks=128).generate(images, PROMPTS, sp)
    encs = [processor(images=[im], text=[p]) for im, p in zip(images, PROMPTS)]  # (it counts features)
    requests = [Request(e["input_ids"][0], {k: e[k] for k in ("pixel_values", "image_sizes")}) for e in encs]
    inner = model.model

    def unpacked(pixel_values, image_sizes, **kwargs):  # what transformers < #46405 returned
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        n = [image_size_to_num_patches(s, model.config.image_grid_pinpoints, 28) for s in image_sizes]
        pv = torch.cat([p[:k] for p, k in zip(pixel_values, n)])
        hidden = inner.vision_tower(pv, output_hidden_states=True).hidden_states[-1][:, 1:]
        return torch.split(inner.multi_modal_projector(hidden), n)

    monkeypatch.setattr(inner, "get_image_features", unpacked)
    got = Engine(model, processor, block_size=8, num_blocks=128).generate_requests(requests, sp)
    assert [g.error for g in got] == [None] * len(PROMPTS)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]


def test_sliding_window_caps_the_context(tiny, caplog):
    """Mistral-based LLaVA-NeXT applies a sliding window that the paged attention does not: the
    engine caps its context at the window (where both agree) instead of diverging past it."""
    model = tiny.build_model("llava_next")
    model.config.get_text_config().sliding_window = 64
    processor = tiny.TinyProcessor(model, "llava_next")
    with caplog.at_level("WARNING", logger="fastvlmrl.engine.engine"):
        engine = Engine(model, processor, block_size=8, num_blocks=64)
    assert engine.max_model_len == 64 and "sliding-window" in caplog.text
    out = engine.generate([None, None], ["x" * 80, "short"], SamplingParams(temperature=0, max_new_tokens=80))
    assert "context" in out[0].error
    assert out[1].error is None and out[1].finish_reason == "length" and len(out[1].token_ids) == 64 - 6
    assert Engine(tiny.build_model("llava"), None, num_blocks=8).max_model_len == 512  # no window: unchanged


def test_an_image_token_id_past_the_vocabulary(tiny):
    """Gemma 3 lets the image token lie outside the embedding (its forward embeds pad there, then
    puts the image features in): the engine accepts such prompts and matches `generate`."""
    model = tiny.build_model("gemma3", seed=1)
    model.config.image_token_id = 130  # vocabulary 128

    class Processor(tiny.TinyProcessor):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out["input_ids"] = out["input_ids"].masked_fill(out["input_ids"] == tiny.IMAGE, 130)
            return out

    processor = Processor(model, "gemma3")
    images = [tiny.frame(i, 56, 56) for i in range(2)]
    prompts = PROMPTS[:2]
    expected = [reference(model, processor, im, p, NEW_TOKENS) for im, p in zip(images, prompts)]
    outs = Engine(model, processor, block_size=8, num_blocks=64).generate(
        images, prompts, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))
    assert [o.error for o in outs] == [None, None]
    assert [o.token_ids for o in outs] == expected
