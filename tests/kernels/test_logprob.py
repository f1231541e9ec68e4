"""fused_linear_logprob: Triton kernels (interpreted) and the reference against float64 math."""

import pytest
import torch

from fastvlmrl.kernels import HAS_TRITON, fused_linear_logprob, logprob, reference

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")


def exact(hidden, weight, targets, bias, temperature, rounding=0.0, ignore_index=-100):
    """float64 log-prob and entropy, written independently of the code under test.

    ``rounding`` (a constant) adds the fp32 rounding of large logits. bf16/fp16 inputs give fp32
    logits (the GEMM's output is not rounded to bf16: kernels/linear.py), so they get none: after
    the inputs' own rounding, everything must be exact.
    """
    logits = hidden @ weight.t() + (bias if bias is not None else 0) + rounding
    z = logits / temperature
    lse = torch.logsumexp(z, dim=-1)
    valid = targets != ignore_index
    idx = torch.where(valid, targets, 0)
    logp = torch.where(valid, z.gather(1, idx[:, None])[:, 0] - lse, 0.0)
    p = torch.softmax(z, dim=-1)
    ent = torch.where(valid, lse - (p * z).sum(-1), 0.0)
    return logp, ent


def make_inputs(T, H, V, dtype, *, bias, ignore_every=0, scale=1.0):
    hidden = (torch.randn(T, H) * scale).to(dtype).requires_grad_()
    weight = (torch.randn(V, H) / H**0.5 * 2).to(dtype)
    weight[V // 3 : V // 3 + 2] = 0  # empty (zero) rows: their logits are exactly 0
    weight.requires_grad_()
    b = torch.randn(V).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (T,))
    if ignore_every:
        targets[::ignore_every] = -100
    return hidden, weight, b, targets


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


def check_against_exact(T, H, V, dtype, *, bias, temperature, chunk_elements, ignore_every=0,
                        scale=1.0, with_entropy=True, tol=None, gtol=None):
    hidden, weight, b, targets = make_inputs(T, H, V, dtype, bias=bias, ignore_every=ignore_every,
                                             scale=scale)
    out = fused_linear_logprob(hidden, weight, targets, bias=b, temperature=temperature,
                               return_entropy=with_entropy, chunk_elements=chunk_elements)
    logp, ent = out if with_entropy else (out, None)
    assert logp.dtype == torch.float32 and logp.shape == (T,)
    g_logp, g_ent = torch.randn(T), torch.randn(T)
    loss = (logp * g_logp).sum() + ((ent * g_ent).sum() if with_entropy else 0)
    loss.backward()

    # float64 ground truth on the same (rounded) inputs, differentiated by autograd.
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    b64 = b.detach().double().requires_grad_() if bias else None
    rounding = 0.0
    if dtype == torch.float32 and scale > 1:
        logits = hidden.detach() @ weight.detach().t()
        if bias:
            logits += b.detach()
        rounding = (logits.double() - (leaves[0] @ leaves[1].t() + (b64 if bias else 0))).detach()
    want_logp, want_ent = exact(*leaves, targets, b64, temperature, rounding)
    want = (want_logp * g_logp.double()).sum() + ((want_ent * g_ent.double()).sum() if with_entropy else 0)
    want.backward()

    if tol is None:
        tol = 2e-5 if dtype == torch.float32 else 2e-3
    if gtol is None:
        gtol = 2e-5 if dtype == torch.float32 else 3e-2  # bf16 gradients are rounded to bf16
    assert torch.isfinite(logp).all()
    assert (logp.double() - want_logp).abs().max() < tol * max(1.0, want_logp.abs().max())
    if with_entropy:
        assert torch.isfinite(ent).all()
        assert (ent.double() - want_ent).abs().max() < tol * max(1.0, want_ent.abs().max())
    got_grads = [hidden.grad, weight.grad] + ([b.grad] if bias else [])
    want_grads = leaves + ([b64] if bias else [])
    for got, ref_leaf in zip(got_grads, want_grads):
        assert got.dtype == dtype and torch.isfinite(got).all()
        if ref_leaf.grad.abs().max() > 0:
            assert rel_err(got, ref_leaf.grad) < gtol
        else:
            assert got.abs().max() == 0
    return logp, ent, targets


@pytest.fixture
def small_blocks(monkeypatch):
    # 16 columns per kernel step, so V = 101 takes 6 full steps and a ragged tail.
    monkeypatch.setattr(logprob, "_MAX_BLOCK_V", 16)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "T,H,V,chunk_elements",
    [
        (1, 16, 37, 64),  # one token, V not a power of two, several vocab slices in backward
        (13, 32, 101, 256),  # several token chunks in forward, tiles in both axes in backward
        (6, 8, 5, 1 << 20),  # one tile for everything
    ],
)
def test_matches_float64(dtype, T, H, V, chunk_elements, small_blocks):
    check_against_exact(T, H, V, dtype, bias=True, temperature=0.7, chunk_elements=chunk_elements,
                        ignore_every=4)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logp_only_no_bias(dtype):
    check_against_exact(9, 16, 70, dtype, bias=False, temperature=1.0, chunk_elements=100,
                        with_entropy=False)


@needs_triton
def test_all_targets_ignored_gives_zeros_and_zero_grads():
    logp, ent, _ = check_against_exact(5, 8, 23, torch.float32, bias=True, temperature=1.0,
                                       chunk_elements=40, ignore_every=1)
    assert logp.abs().max() == 0 and ent.abs().max() == 0


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_stay_finite(dtype, small_blocks):
    # Logits in the thousands: the online log-sum-exp must not overflow, entropy near 0.
    # Tiled and whole matmuls may round a logit of ~1e3 differently by an ulp (6e-5 in fp32),
    # which moves the softmax by ~1e-4: hence the looser tolerances. Gradients (onehot - softmax)
    # are the most sensitive where two top logits nearly tie: seen up to 1.3e-3 relative.
    check_against_exact(7, 16, 45, dtype, bias=False, temperature=0.5, chunk_elements=64,
                        scale=300.0, tol=1e-3 if dtype == torch.float32 else 2e-2,
                        gtol=5e-3 if dtype == torch.float32 else 5e-2)


@needs_triton
def test_entropy_of_uniform_and_onehot_rows():
    V, H = 29, 4
    weight = torch.zeros(V, H)
    weight[3, 0] = 1.0
    hidden = torch.tensor([[0.0, 0, 0, 0], [1e4, 0, 0, 0]])
    logp, ent = fused_linear_logprob(hidden, weight, torch.tensor([3, 3]), return_entropy=True,
                                     chunk_elements=16)
    torch.testing.assert_close(ent, torch.tensor([torch.log(torch.tensor(29.0)).item(), 0.0]))
    torch.testing.assert_close(logp, torch.tensor([-torch.log(torch.tensor(29.0)).item(), 0.0]))


@needs_triton
def test_out_of_range_target_gives_minus_inf_not_a_wild_read():
    logp = fused_linear_logprob(torch.randn(2, 4), torch.randn(6, 4), torch.tensor([1, 6]))
    assert torch.isfinite(logp[0]) and logp[1] == float("-inf")


@needs_triton
def test_gradient_only_through_entropy():
    hidden, weight, b, targets = make_inputs(4, 8, 19, torch.float32, bias=False)
    _, ent = fused_linear_logprob(hidden, weight, targets, return_entropy=True, chunk_elements=32)
    ent.sum().backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    exact(h64, w64, targets, None, 1.0)[1].sum().backward()
    assert rel_err(hidden.grad, h64.grad) < 2e-5 and rel_err(weight.grad, w64.grad) < 2e-5


def test_reference_matches_float64():
    hidden, weight, b, targets = make_inputs(11, 16, 53, torch.float32, bias=True, ignore_every=3)
    logp, ent = reference.fused_linear_logprob(hidden, weight, targets, bias=b, temperature=0.8,
                                               return_entropy=True)
    want_logp, want_ent = exact(hidden.double(), weight.double(), targets, b.double(), 0.8)
    assert (logp.double() - want_logp).abs().max() < 1e-5
    assert (ent.double() - want_ent).abs().max() < 1e-5


def test_empty_batch():
    hidden = torch.zeros(0, 8, requires_grad=True)
    logp, ent = fused_linear_logprob(hidden, torch.randn(5, 8), torch.zeros(0, dtype=torch.long),
                                     return_entropy=True)
    assert logp.shape == (0,) and ent.shape == (0,)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden=torch.randn(3)), "hidden must be"),
        (dict(weight=torch.randn(5, 7)), "weight must be"),
        (dict(weight=torch.randn(0, 8)), "empty vocabulary"),
        (dict(targets=torch.zeros(4, dtype=torch.long)), "targets must be"),
        (dict(targets=torch.zeros(3)), "integer token ids"),
        (dict(weight=torch.randn(5, 8, dtype=torch.float64)), "share a float dtype"),
        (dict(bias=torch.randn(4)), "bias must be"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(chunk_elements=0), "chunk_elements"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(hidden=torch.randn(3, 8), weight=torch.randn(5, 8), targets=torch.zeros(3, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_logprob(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


@needs_triton
def test_strided_targets():
    hidden, weight = torch.randn(5, 8), torch.randn(13, 8)
    targets = torch.randint(0, 13, (10,))[::2]  # stride 2
    logp = fused_linear_logprob(hidden, weight, targets, chunk_elements=32)
    want, _ = exact(hidden.double(), weight.double(), targets, None, 1.0)
    assert (logp.double() - want).abs().max() < 1e-5
