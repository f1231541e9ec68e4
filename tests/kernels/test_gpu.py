"""Compiled Triton kernels on CUDA against the references (``pytest -m gpu tests/kernels``)."""

import math

import pytest
import torch

from fastvlmrl.kernels import (
    HAS_TRITON,
    fused_linear_logprob,
    paged_attention,
    paged_decode_attention,
    ppo_clip_loss,
    ppo_clip_loss_token_level,
    reference,
    store_kv,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton"),
]


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch):
    from fastvlmrl.kernels._dispatch import triton_language_interpreted

    if triton_language_interpreted():
        pytest.skip("triton was imported with TRITON_INTERPRET=1 (run pytest without it set)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H,V", [(1, 256, 5003), (777, 512, 32007)])
def test_logprob_matches_reference(dtype, T, H, V):
    dev = "cuda"
    hidden = torch.randn(T, H, device=dev).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=dev) / H**0.5).to(dtype).requires_grad_()
    bias = torch.randn(V, device=dev).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (T,), device=dev)
    targets[::5] = -100
    g1, g2 = torch.randn(T, device=dev), torch.randn(T, device=dev)
    logp, ent = fused_linear_logprob(hidden, weight, targets, bias=bias, temperature=0.7,
                                     return_entropy=True, chunk_elements=1 << 22)
    ((logp * g1).sum() + (ent * g2).sum()).backward()
    got = [logp, ent, hidden.grad, weight.grad, bias.grad]
    h, w, b = (x.detach().clone().requires_grad_() for x in (hidden, weight, bias))
    want_logp, want_ent = reference.fused_linear_logprob(h, w, targets, bias=b, temperature=0.7,
                                                         return_entropy=True)
    ((want_logp * g1).sum() + (want_ent * g2).sum()).backward()
    want = [want_logp, want_ent, h.grad, w.grad, b.grad]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for g, r in zip(got, want):
        assert torch.isfinite(g).all()
        assert rel_err(g, r) < tol


def test_logprob_memory_is_bounded_by_a_tile():
    T, H, V = 4096, 1024, 65536
    dev = "cuda"
    hidden = torch.randn(T, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(V, H, device=dev) / 32).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, V, (T,), device=dev)
    chunk = 1 << 24
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fused_linear_logprob(hidden, weight, targets, chunk_elements=chunk).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # Outputs/grads (hidden.grad, weight.grad) + fp32 grad_hidden accumulator + ~2 tiles.
    grads = (T * H + V * H) * 2
    bound = grads + T * H * 4 + 3 * chunk * 2 + (64 << 20)
    assert extra < bound, (extra, bound)
    assert extra < T * V * 2  # less than the bf16 logits alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ppo_losses_match_reference(dtype):
    dev = "cuda"
    B = 333
    lengths = torch.randint(0, 400, (B,))
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    cu = cu.to(dev)
    T = int(cu[-1]) + 5
    token_logp = (-torch.rand(T, device=dev) * 0.01).to(dtype).requires_grad_()
    weight = torch.where(torch.rand(T, device=dev) < 0.5, 0.5, 1.0)
    old = -torch.rand(B, device=dev) * 2
    adv = torch.randn(B, device=dev)
    values = torch.randn(B, device=dev, requires_grad=True)
    old_values, returns = values.detach() + 0.1 * torch.randn(B, device=dev), torch.randn(B, device=dev)
    out = ppo_clip_loss(token_logp, weight, cu, old, adv, values=values, old_values=old_values, returns=returns)
    out.loss.backward()
    lp, v = token_logp.detach().clone().requires_grad_(), values.detach().clone().requires_grad_()
    ref = reference.ppo_clip_loss(lp, weight, cu, old, adv, values=v, old_values=old_values, returns=returns)
    ref.loss.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(out, ref):
        assert abs(a.item() - b.item()) < tol * max(1.0, abs(b.item()))
    assert rel_err(token_logp.grad, lp.grad) < tol and rel_err(values.grad, v.grad) < 1e-5

    old_tok = token_logp.detach().float() + 0.2 * torch.randn(T, device=dev)
    adv_tok = torch.randn(T, device=dev)
    token_logp.grad = None
    out = ppo_clip_loss_token_level(token_logp, weight, old_tok, adv_tok, clip_eps_high=0.28)
    out.loss.backward()
    lp.grad = None
    ref = reference.ppo_clip_loss_token_level(lp, weight, old_tok, adv_tok, clip_eps_high=0.28)
    ref.loss.backward()
    assert abs(out.loss.item() - ref.loss.item()) < tol
    assert rel_err(token_logp.grad, lp.grad) < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 80, 96, 128])
@pytest.mark.parametrize("Hq,Hkv", [(8, 8), (32, 8), (32, 4)])
@pytest.mark.parametrize("block_size", [16, 256])
def test_paged_decode_matches_reference(dtype, D, Hq, Hkv, block_size):
    dev = "cuda"
    B = 9
    lens = torch.tensor([1, 700, 33, 1024, 0, 256, 257, 5, 999], dtype=torch.int32, device=dev)
    max_blocks = math.ceil(1024 / block_size)
    num_blocks = B * max_blocks + 4
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    block_table = torch.randperm(num_blocks, device=dev)[: B * max_blocks].view(B, max_blocks).int()
    q = torch.randn(B, Hq, D, device=dev).to(dtype)
    want = reference.paged_decode_attention(q, k_cache, v_cache, block_table, lens)
    tol = 2e-3 if dtype == torch.float32 else 2e-2
    out = paged_decode_attention(q, k_cache, v_cache, block_table, lens)
    assert (out.float() - want.float()).abs().max() < tol
    split = paged_attention._decode_triton(q, k_cache, v_cache, block_table, lens, D**-0.5, num_splits=4)
    assert (split.float() - want.float()).abs().max() < tol


def test_store_kv_matches_reference():
    dev = "cuda"
    k_cache = torch.zeros(64, 16, 8, 128, device=dev, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(64 * 16, device=dev)[:300]
    slots[::7] = -1
    k = torch.randn(300, 8, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    store_kv(k, v, k_cache, v_cache, slots)
    kr, vr = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    reference.store_kv(k, v, kr, vr, slots)
    assert torch.equal(k_cache, kr) and torch.equal(v_cache, vr)
