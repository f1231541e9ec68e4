"""fused_linear_ppo_loss: the Triton path (interpreted) against the reference (full logits,
autograd), and the reference against the project's separate log-prob and PPO-loss ops."""

import pytest
import torch

from fastvlmrl.kernels import (
    HAS_TRITON,
    fused_linear_logprob,
    fused_linear_ppo_loss,
    logprob,
    ppo_clip_loss,
    ppo_clip_loss_token_level,
    reference,
)

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")


def make(lengths, H, V, dtype=torch.float32, *, bias=True, scale=1.0):
    T, N = sum(lengths), len(lengths)
    hidden = (torch.randn(T, H) * scale).to(dtype).requires_grad_()
    weight = (torch.randn(V, H) / H**0.5 * 2).to(dtype).requires_grad_()
    b = torch.randn(V).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (T,))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    token_weight = torch.where(torch.rand(T) < 0.6, 1.0, 0.5)  # action tokens 1, thought tokens λ
    with torch.no_grad():  # old log-probs near the current ones: ratios around 1, some clipped
        logp = reference.fused_linear_logprob(hidden.double(), weight.double(), targets,
                                              bias=b.double() if bias else None, temperature=0.7)
        seq = torch.zeros(N, dtype=torch.float64).index_add(
            0, torch.repeat_interleave(torch.arange(N), torch.tensor(lengths)), token_weight.double() * logp)
    old_logp = (seq + torch.randn(N, dtype=torch.float64) * 0.15).float()
    old_token_logp = (logp + torch.randn(T, dtype=torch.float64) * 0.15).float()
    ref_logp = (logp + torch.randn(T, dtype=torch.float64) * 0.3).float()
    advantages = torch.randn(N)
    return dict(hidden=hidden, weight=weight, bias=b, targets=targets, cu=cu, token_weight=token_weight,
                old_logp=old_logp, old_token_logp=old_token_logp, ref_logp=ref_logp, advantages=advantages)


def run(inp, **kw):
    leaves = [inp["hidden"], inp["weight"]] + ([inp["bias"]] if inp["bias"] is not None else [])
    for leaf in leaves:
        leaf.grad = None
    kw = dict(kw)
    if kw.get("level") == "token":
        kw["old_token_logp"] = inp["old_token_logp"]
    if kw.get("kl_coef"):
        kw["ref_logp"] = inp["ref_logp"]
    out = fused_linear_ppo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["token_weight"], inp["cu"],
                                inp["old_logp"], inp["advantages"], bias=inp["bias"], temperature=0.7, **kw)
    out.loss.backward()
    return out, [leaf.grad.clone() for leaf in leaves]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def compare(inp, monkeypatch, tol=1e-5, **kw):
    fused, fused_grads = run(inp, **kw)
    monkeypatch.delenv("TRITON_INTERPRET")
    ref, ref_grads = run(inp, **kw)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused.loss.dtype == torch.float32 and fused.loss.shape == ()
    assert abs(fused.loss.item() - ref.loss.item()) <= tol * max(1.0, abs(ref.loss.item()))
    assert abs(fused.policy_loss.item() - ref.policy_loss.item()) <= tol * max(1.0, abs(ref.policy_loss.item()))
    for name in ("clip_fraction", "approx_kl", "ratio_mean", "capped_fraction"):
        assert abs(getattr(fused, name).item() - getattr(ref, name).item()) < 1e-4, name
    torch.testing.assert_close(fused.token_logp, ref.token_logp, atol=tol * 10, rtol=0)
    torch.testing.assert_close(fused.entropy, ref.entropy, atol=tol * 10, rtol=0)
    for got, want in zip(fused_grads, ref_grads):
        assert got.dtype == want.dtype and rel(got, want) < tol * 10
    return fused


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(logprob, "_MAX_BLOCK_V", 16)  # V = 101: 6 full column blocks and a tail


@needs_triton
@pytest.mark.parametrize("lengths,V,chunk", [
    ([5, 1, 9, 3], 101, 1 << 20),  # one tile for everything, V not a power of two
    ([5, 1, 9, 3], 101, 6 * 101),  # tiles of whole sequences (the 9-token one alone, over budget)
    ([1], 37, 37),  # one token
    ([4, 0, 3, 0], 64, 4 * 64),  # sequences without tokens
])
@pytest.mark.parametrize("level", ["sequence", "token"])
def test_matches_the_reference(lengths, V, chunk, level, small_blocks, monkeypatch):
    compare(make(lengths, 24, V), monkeypatch, level=level, chunk_elements=chunk)


@needs_triton
@pytest.mark.parametrize("level", ["sequence", "token"])
def test_entropy_and_kl_terms(level, small_blocks, monkeypatch):
    inp = make([6, 2, 7], 16, 101)
    out = compare(inp, monkeypatch, level=level, entropy_coef=0.01, kl_coef=0.05, chunk_elements=8 * 101)
    plain, _ = run(inp, level=level)
    assert out.loss.item() != pytest.approx(plain.loss.item())


@needs_triton
def test_a_per_token_kl_weight(small_blocks, monkeypatch):
    """kl_weight scales each token's KL term (GTR-Turbo's KL to the teacher on thought tokens only):
    the fused path matches the reference across tiles, ones change nothing, zeros drop the term."""
    inp = make([6, 2, 7], 16, 101)
    T = inp["hidden"].shape[0]
    mask = (torch.arange(T) % 3 != 0).float() * 2.0
    compare(inp, monkeypatch, kl_coef=0.05, kl_weight=mask, chunk_elements=8 * 101)
    ones, _ = run(inp, kl_coef=0.05, kl_weight=torch.ones(T))
    plain_kl, _ = run(inp, kl_coef=0.05)
    zeros, _ = run(inp, kl_coef=0.05, kl_weight=torch.zeros(T))
    no_kl, _ = run(inp)
    assert ones.loss.item() == pytest.approx(plain_kl.loss.item(), rel=1e-6)
    assert zeros.loss.item() == pytest.approx(no_kl.loss.item(), rel=1e-6)


@needs_triton
def test_ratio_cap_and_custom_denominators(small_blocks, monkeypatch):
    inp = make([3, 4, 2], 16, 50)
    inp["old_logp"][0] -= 5.0  # ratio exp(5) > 10: capped, no gradient from that sequence
    out = compare(inp, monkeypatch, ratio_cap=10.0, policy_denominator=7.0, token_denominator=20.0,
                  entropy_coef=0.1, chunk_elements=4 * 50)
    assert out.capped_fraction.item() == pytest.approx(1 / 3)


@needs_triton
def test_bf16_matches_the_reference(monkeypatch):
    compare(make([8, 5, 11], 32, 300, torch.bfloat16), monkeypatch, tol=2e-3, chunk_elements=12 * 300)


@needs_triton
def test_a_frozen_head_gets_no_gradient_and_no_grad_mode_computes_the_loss_only():
    inp = make([3, 2], 8, 20, bias=False)
    inp["weight"].requires_grad_(False)
    out = fused_linear_ppo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["token_weight"], inp["cu"],
                                inp["old_logp"], inp["advantages"])
    out.loss.backward()
    assert inp["weight"].grad is None and inp["hidden"].grad is not None
    with torch.no_grad():
        again = fused_linear_ppo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["token_weight"],
                                      inp["cu"], inp["old_logp"], inp["advantages"])
    assert again.loss.item() == pytest.approx(out.loss.item()) and not again.loss.requires_grad


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_reference_equals_logprob_then_ppo_loss(level, monkeypatch):
    """The reference's loss is the project's two separate ops composed (no entropy, no KL)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    inp = make([4, 6, 1], 12, 40, torch.float64)
    out, grads = run(inp, level=level, clip_eps=0.2)
    h, w, b = (x.detach().clone().requires_grad_() for x in (inp["hidden"], inp["weight"], inp["bias"]))
    logp = fused_linear_logprob(h, w, inp["targets"], bias=b, temperature=0.7)
    tw = inp["token_weight"].double()
    if level == "sequence":
        want = ppo_clip_loss(logp, tw, inp["cu"], inp["old_logp"].double(), inp["advantages"].double(), clip_eps=0.2)
    else:
        lengths = torch.diff(inp["cu"])
        want = ppo_clip_loss_token_level(logp, tw, inp["old_token_logp"].double(),
                                         inp["advantages"].double().repeat_interleave(lengths), clip_eps=0.2)
    want.loss.backward()
    assert out.loss.item() == pytest.approx(want.policy_loss.item(), abs=1e-12)
    assert out.clip_fraction.item() == pytest.approx(want.clip_fraction.item(), abs=1e-7)
    assert out.approx_kl.item() == pytest.approx(want.approx_kl.item(), abs=1e-7)
    for got, ref in zip(grads, (h.grad, w.grad, b.grad)):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cu=[0, 2]), "cu_seqlens"),
    (dict(level="tokens"), "level"),
    (dict(level="token"), "old_token_logp"),
    (dict(kl_coef=0.1), "ref_logp"),
    (dict(old_logp=torch.zeros(3)), "old_logp"),
    (dict(clip_eps=1.5), "clip_eps"),
])
def test_bad_arguments_raise(kwargs, match):
    inp = make([2, 3], 8, 10)
    args = dict(cu=inp["cu"], old_logp=inp["old_logp"])
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=match):
        fused_linear_ppo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["token_weight"], args["cu"],
                              args["old_logp"], inp["advantages"], **kwargs)


@needs_triton
def test_weight_gradient_over_many_tiles_keeps_one_gemms_precision(monkeypatch):
    """bf16 over 48 tiles: grad_weight sums in fp32 (a bf16 running sum is ~3x less precise)."""
    inp = make([4] * 48, 32, 128, torch.bfloat16)
    out, grads = run(inp, chunk_elements=4 * 128)
    monkeypatch.delenv("TRITON_INTERPRET")
    leaves = {k: inp[k].detach().double().requires_grad_() for k in ("hidden", "weight", "bias")}
    exact = fused_linear_ppo_loss(leaves["hidden"], leaves["weight"], inp["targets"], inp["token_weight"], inp["cu"],
                                  inp["old_logp"].double(), inp["advantages"].double(), bias=leaves["bias"],
                                  temperature=0.7)
    exact.loss.backward()
    assert grads[1].dtype == torch.bfloat16 and rel(grads[1], leaves["weight"].grad) < 4e-3
    assert rel(grads[0], leaves["hidden"].grad) < 4e-3


@needs_triton
def test_outputs_other_than_the_loss_carry_no_gradient_and_one_backward_per_forward():
    inp = make([3, 2], 8, 20)
    out = fused_linear_ppo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["token_weight"], inp["cu"],
                                inp["old_logp"], inp["advantages"])
    assert out.loss.requires_grad and not out.policy_loss.requires_grad and not out.token_logp.requires_grad
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.loss.backward()
