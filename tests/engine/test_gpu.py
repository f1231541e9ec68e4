"""GPU checks (skipped without CUDA; run by scripts/bench_engine_gpu.sh): CUDA-graph decode and
the flash-attn / Triton backends give the same tokens as eager decoding and as `generate`."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SP = SamplingParams(temperature=0, max_new_tokens=10)


def batch(tiny, family, n=6):
    hw = (56, 56) if family.startswith("qwen") else (28, 28)
    images = [tiny.frame(i, *hw) for i in range(n)]
    prompts = [f"env {i} " * (i + 1) + "<image> act" for i in range(n)]
    return images, prompts


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_cuda_graphs_match_eager_and_generate_fp32(family, tiny):
    model = tiny.build_model(family).cuda()
    processor = tiny.TinyProcessor(model, family)
    images, prompts = batch(tiny, family)
    expected = []
    for image, prompt in zip(images, prompts):
        enc = {k: v.cuda() for k, v in processor(images=[image], text=[prompt]).items()}
        out = model.generate(**enc, max_new_tokens=SP.max_new_tokens, do_sample=False)
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())

    eager = Engine(model, processor, block_size=16, num_blocks=256, max_num_seqs=16, use_cuda_graphs=False)
    graphed = Engine(model, processor, block_size=16, num_blocks=256, max_num_seqs=16, use_cuda_graphs=True)
    assert graphed.runner.graphs is not None and "CUDA graphs" in graphed.backend
    assert [o.token_ids for o in eager.generate(images, prompts, SP)] == expected
    assert [o.token_ids for o in graphed.generate(images, prompts, SP)] == expected
    # 5 sequences replay the 8-wide graph with 3 padded rows.
    assert [o.token_ids for o in graphed.generate(images[:5], prompts[:5], SP)] == expected[:5]


@pytest.mark.parametrize("graphs", [True, False])
def test_compiled_decode_matches_eager_on_cuda(graphs, tiny):
    """The compiled decode body (custom-op attention with the Triton kernel) captured in the graphs
    (padded rows included) or run directly: the eager engine's tokens."""
    model = tiny.build_model("qwen2_vl").cuda()
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images, prompts = batch(tiny, "qwen2_vl")
    eager = Engine(model, processor, block_size=16, num_blocks=256, max_num_seqs=16, use_cuda_graphs=False)
    compiled = Engine(model, processor, block_size=16, num_blocks=256, max_num_seqs=16, use_cuda_graphs=graphs,
                      compile_decode=True)
    assert "decode body compiled (torch.compile, inductor)" in compiled.backend
    want = [o.token_ids for o in eager.generate(images, prompts, SP)]
    assert [o.token_ids for o in compiled.generate(images, prompts, SP)] == want
    assert [o.token_ids for o in compiled.generate(images[:5], prompts[:5], SP)] == want[:5]
    assert compiled.runner._compiled_ok


def test_graphs_see_optimizer_steps(tiny):
    model = tiny.build_model("llava").cuda()
    processor = tiny.TinyProcessor(model, "llava")
    images, prompts = batch(tiny, "llava", 3)
    engine = Engine(model, processor, block_size=16, num_blocks=128, max_num_seqs=8, use_cuda_graphs=True)
    before = [o.token_ids for o in engine.generate(images, prompts, SP)]
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = [o.token_ids for o in engine.generate(images, prompts, SP)]
    eager = Engine(model, processor, block_size=16, num_blocks=128, use_cuda_graphs=False)
    assert after != before
    assert after == [o.token_ids for o in eager.generate(images, prompts, SP)]


@pytest.mark.parametrize("block_size", [16, 256])
def test_bf16_backends_agree_with_fp32_mostly(block_size, tiny):
    """bf16 through the fast backends (flash-attn when installed; Triton paged decode) follows
    the fp32 greedy path for the first tokens and returns finite log-probs."""
    model = tiny.build_model("qwen2_vl").cuda()
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images, prompts = batch(tiny, "qwen2_vl")
    ref = Engine(model, processor, block_size=16, num_blocks=256, use_cuda_graphs=False).generate(images, prompts, SP)
    model16 = tiny.build_model("qwen2_vl").cuda().to(torch.bfloat16)
    engine = Engine(model16, processor, block_size=block_size, num_blocks=64)
    outs = engine.generate(images, prompts, SP)
    assert all(torch.isfinite(torch.tensor(o.logprobs)).all() for o in outs)
    agree = sum(o.token_ids[:3] == r.token_ids[:3] for o, r in zip(outs, ref))
    assert agree >= len(outs) // 2, (engine.backend, agree)


def test_graphs_recaptured_after_lora_injection(tiny):
    """Adapters injected into the model after the engine captured its graphs are new tensors the
    old graphs never read: the engine captures again and the graphed tokens follow the adapters."""
    peft = pytest.importorskip("peft")
    model = tiny.build_model("llava").cuda()
    processor = tiny.TinyProcessor(model, "llava")
    images, prompts = batch(tiny, "llava", 3)
    engine = Engine(model, processor, block_size=16, num_blocks=128, max_num_seqs=8, use_cuda_graphs=True)
    before = [o.token_ids for o in engine.generate(images, prompts, SP)]
    targets = r".*language_model.*\.(q_proj|v_proj|down_proj)"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft.inject_adapter_in_model(config, model)
    after = [o.token_ids for o in engine.generate(images, prompts, SP)]
    assert engine.runner.graphs is not None and engine.runner.graphs.graphs
    eager = Engine(model, processor, block_size=16, num_blocks=128, use_cuda_graphs=False)
    assert after == [o.token_ids for o in eager.generate(images, prompts, SP)]
    assert after != before
