"""The compiled decode step (``Engine(compile_decode=True)``): the same tokens as the eager step,
one graph with no breaks (the paged attention is an opaque custom op), in-place weight changes
seen, a failed compile falls back to eager, and the custom op passes torch's op checks."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import fastvlmrl.engine.model_runner as model_runner
from fastvlmrl.engine import Engine, SamplingParams

PROMPTS = ["<image> a", "a longer prompt <image> b", "<image> then think step by step", "x <image>"]
NEW = [12, 5, 9, 1]  # requests finish at different steps: the batch shrinks to 1 (dynamic shapes)


def _params():
    return [SamplingParams(temperature=0, max_new_tokens=n) for n in NEW]


# 1-D rotary; M-RoPE's [3, B] positions (slow: one more compile)
@pytest.mark.parametrize("family", ["llava", pytest.param("qwen2_vl", marks=pytest.mark.slow)])
def test_compiled_decode_matches_eager(family, models, tiny):
    model = models(family)
    processor = tiny.TinyProcessor(model, family)
    size = (56, 56) if family == "qwen2_vl" else (28, 28)
    images = [tiny.frame(i, *size) for i in range(len(PROMPTS))]
    eager = Engine(model, processor, block_size=8, num_blocks=64)
    compiled = Engine(model, processor, block_size=8, num_blocks=64, compile_decode=True)
    assert "decode body compiled (torch.compile, inductor; attention traced into it)" in compiled.backend
    assert "eager decode body" in eager.backend
    torch._dynamo.utils.counters.clear()
    want = eager.generate(images, PROMPTS, _params())
    got = compiled.generate(images, PROMPTS, _params())
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert compiled.runner.decode_compiled and compiled.runner._compiled_ok
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), rtol=1e-4, atol=1e-4)
    # The graph reads the parameters as inputs: an optimizer-style in-place change of a weight
    # inside the compiled body (not the LM head, which runs outside it) is seen.
    layer = compiled.runner.lm.layers[0].mlp.down_proj
    with torch.no_grad():
        saved = layer.weight.clone()
        layer.weight.mul_(-4.0)
    try:
        want2 = eager.generate(images, PROMPTS, _params())
        got2 = compiled.generate(images, PROMPTS, _params())
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert [g.token_ids for g in got2] == [w.token_ids for w in want2]
    assert [w.token_ids for w in want2] != [w.token_ids for w in want]


@pytest.mark.slow  # (one more compile; tests/engine/test_gpu.py runs the same path captured on CUDA)
def test_compiled_step_with_padded_graph_rows(models, tiny):
    """What CUDA runs: the compiled body inside the decode graphs' padded static buffers (slot -1
    rows), through the custom op (the traced attention is for graph-less CPU steps). The graphs
    are the eager stand-in here (capture=False)."""
    from fastvlmrl.engine.cuda_graphs import DecodeGraphs

    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    images = [tiny.frame(i) for i in range(len(PROMPTS))]
    want = Engine(model, processor, block_size=8, num_blocks=64).generate(images, PROMPTS, _params())
    engine = Engine(model, processor, block_size=8, num_blocks=64, max_num_seqs=8, max_model_len=128,
                    compile_decode=True)
    engine.runner.graphs = DecodeGraphs(engine.runner, 8, capture=False)
    assert not engine.runner._traced_attention
    got = engine.generate(images, PROMPTS, _params())  # 4 rows run in the 4-row buffers, then fewer in 1, 2, 4
    assert engine.runner._compiled_ok
    assert [g.token_ids for g in got] == [w.token_ids for w in want]


def test_failed_compile_falls_back_to_eager_unless_required(models, tiny, monkeypatch):
    model = models("llava")
    processor = tiny.TinyProcessor(model, "llava")
    images = [tiny.frame(i) for i in range(2)]
    sp = SamplingParams(temperature=0, max_new_tokens=4)
    want = Engine(model, processor, block_size=8, num_blocks=64).generate(images, PROMPTS[:2], sp)

    def broken(*_, **__):
        raise RuntimeError("inductor is not available here")

    monkeypatch.setattr(model_runner.torch, "compile", lambda fn, **_: broken)
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    engine.runner.compile_decode()  # (CPU's default is eager: opt in without requiring it)
    got = engine.generate(images, PROMPTS[:2], sp)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert "eager decode body (compile failed: RuntimeError: inductor is not available here)" in engine.backend
    required = Engine(model, processor, block_size=8, num_blocks=64, compile_decode=True)
    with pytest.raises(RuntimeError, match="inductor is not available"):
        required.generate(images, PROMPTS[:2], sp)


def test_kv_cache_tensors_do_not_alias(models):
    """Each layer's K and V are their own tensors: a compiled step mutates views of one base
    tensor only by cloning and copying back the whole cache."""
    engine = Engine(models("llava"), None, block_size=8, num_blocks=16)
    pointers = [t.untyped_storage().data_ptr() for t in engine.kv.k + engine.kv.v]
    assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("batch,q_heads,kv_heads,block_size", [(1, 4, 4, 8), (3, 4, 2, 4), (5, 2, 1, 16)])
def test_paged_decode_op_passes_opcheck(batch, q_heads, kv_heads, block_size):
    import fastvlmrl.engine.attention  # noqa: F401 - registers the op

    g = torch.Generator().manual_seed(batch)
    D, blocks, width = 8, 16, 3
    q = torch.randn(batch, q_heads, D, generator=g)
    k, v = torch.randn(batch, kv_heads, D, generator=g), torch.randn(batch, kv_heads, D, generator=g)
    k_cache = torch.randn(blocks, block_size, kv_heads, D, generator=g)
    v_cache = torch.randn(blocks, block_size, kv_heads, D, generator=g)
    tables = torch.randperm(blocks, generator=g)[: batch * width].view(batch, width).int()
    lens = torch.randint(1, width * block_size + 1, (batch,), generator=g).int()
    last = (lens - 1).long()
    slots = tables.long().gather(1, (last // block_size)[:, None])[:, 0] * block_size + last % block_size
    slots[0] = -1  # a padding row stores nothing
    args = (q, k, v, k_cache, v_cache, slots, tables, lens, D**-0.5, "kernels")
    torch.library.opcheck(torch.ops.fastvlmrl.paged_decode.default, args)
    # and it is the store followed by the reference attention
    from fastvlmrl.kernels import reference

    kc, vc = k_cache.clone(), v_cache.clone()
    out = torch.ops.fastvlmrl.paged_decode(q, k, v, k_cache, v_cache, slots, tables, lens, D**-0.5, "kernels")
    reference.store_kv(k, v, kc, vc, slots)
    torch.testing.assert_close(k_cache, kc)
    torch.testing.assert_close(v_cache, vc)
    torch.testing.assert_close(out, reference.paged_decode_attention(q, kc, vc, tables, lens, scale=D**-0.5))


@pytest.mark.parametrize("batch,q_heads,kv_heads,block_size,dtype", [
    (1, 4, 4, 8, torch.float32), (3, 4, 2, 4, torch.float32), (5, 6, 1, 16, torch.float32), (4, 4, 2, 8, torch.bfloat16)])
def test_traced_decode_matches_the_reference(batch, q_heads, kv_heads, block_size, dtype):
    """decode_traced (what a compiled CPU step runs) against the store + reference attention,
    eager and compiled: lengths from 1 to the table's width, one empty sequence (zeros)."""
    from fastvlmrl.engine.attention import decode_traced
    from fastvlmrl.kernels import reference

    g = torch.Generator().manual_seed(batch + q_heads)
    D, blocks, width = 8, 24, 4
    q = torch.randn(batch, q_heads, D, generator=g).to(dtype)
    k, v = (torch.randn(batch, kv_heads, D, generator=g).to(dtype) for _ in range(2))
    k_cache, v_cache = (torch.randn(blocks, block_size, kv_heads, D, generator=g).to(dtype) for _ in range(2))
    tables = torch.randperm(blocks, generator=g)[: batch * width].view(batch, width).int()
    lens = torch.randint(1, width * block_size + 1, (batch,), generator=g).int()
    lens[0] = 1
    last = (lens - 1).long()
    slots = tables.long().gather(1, (last // block_size)[:, None])[:, 0] * block_size + last % block_size
    kc, vc = k_cache.clone(), v_cache.clone()
    reference.store_kv(k, v, kc, vc, slots)
    want = reference.paged_decode_attention(q, kc, vc, tables, lens, scale=D**-0.5)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    compiled = [torch.compile(decode_traced, dynamic=True)] if kv_heads == 2 and dtype == torch.float32 else []  # (time)
    for fn in [decode_traced, *compiled]:
        k2, v2 = k_cache.clone(), v_cache.clone()
        out = fn(q, k, v, k2, v2, slots, tables, lens, D**-0.5)
        torch.testing.assert_close(k2, kc)
        torch.testing.assert_close(v2, vc)
        torch.testing.assert_close(out, want, **tol)
        assert out.dtype == dtype
    empty = lens.clone()
    empty[-1] = 0  # nothing cached: zeros, as the reference gives
    out = decode_traced(q, k, v, k_cache.clone(), v_cache.clone(), slots, tables, empty, D**-0.5)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
