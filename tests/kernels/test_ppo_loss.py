"""ppo_clip_loss / ppo_clip_loss_token_level: Triton kernels (interpreted) and the references."""

import math

import pytest
import torch

from fastvlmrl.kernels import HAS_TRITON, ppo_clip_loss, ppo_clip_loss_token_level, reference

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")


def rl4vlm_sample_loss(seq_logp, old, adv, v, v_old, ret, clip=0.1, cap=10.0):
    """RL4VLM's update for one sample (VLM_PPO/a2c_ppo_acktr/algo/ppo.py, mini-batch of 1),
    re-derived with plain float64 scalars: the per-sequence semantics our loss must match."""
    ratio = math.exp(seq_logp - old)
    surr1 = ratio * adv
    surr2 = min(max(ratio, 1 - clip), 1 + clip) * adv
    action_loss = -surr2 if ratio > cap else -min(surr1, surr2)
    v_clipped = v_old + min(max(v - v_old, -clip), clip)
    value_loss = 0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2)
    return action_loss, value_loss


def packed_batch(lengths, T_extra=2, dtype=torch.float32):
    B = len(lengths)
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    T = int(cu[-1]) + T_extra  # trailing tokens belong to no sequence
    token_logp = (-torch.rand(T) * 0.3).to(dtype)
    lam = 0.5
    weight = torch.where(torch.rand(T) < 0.6, lam, 1.0)
    weight[torch.rand(T) < 0.2] = 0.0  # prompt / padding
    return cu, token_logp, weight


def float64_seq_loss(token_logp, weight, cu, old, adv, values, old_values, returns, value_coef,
                     clip=0.1, cap=10.0):
    """Differentiable float64 loss built from rl4vlm_sample_loss's rule, sequence by sequence."""
    lp = token_logp.detach().double().requires_grad_()
    v = values.detach().double().requires_grad_() if values is not None else None
    pg, vl = [], []
    for b in range(len(cu) - 1):
        s, e = int(cu[b]), int(cu[b + 1])
        seq = (lp[s:e] * weight[s:e].double()).sum()
        log_ratio = seq - old[b].double()
        capped = log_ratio.item() > math.log(cap)
        ratio = torch.exp(torch.clamp(log_ratio, max=math.log(cap)))
        surr1, surr2 = ratio * adv[b].double(), ratio.clamp(1 - clip, 1 + clip) * adv[b].double()
        pg.append(-surr2 if capped else -torch.minimum(surr1, surr2))
        if v is not None:
            want_a, want_v = rl4vlm_sample_loss(seq.item(), old[b].item(), adv[b].item(), v[b].item(),
                                                old_values[b].item(), returns[b].item(), clip, cap)
            assert abs(pg[-1].item() - want_a) < 1e-9
            vc = old_values[b].double() + (v[b] - old_values[b].double()).clamp(-clip, clip)
            vl.append(0.5 * torch.maximum((v[b] - returns[b].double()) ** 2, (vc - returns[b].double()) ** 2))
            assert abs(vl[-1].item() - want_v) < 1e-9
    policy = torch.stack(pg).mean()
    value = torch.stack(vl).mean() if vl else torch.zeros((), dtype=torch.float64)
    return policy + value_coef * value, policy, value, lp, v


def run_seq_case(lengths, dtype, with_values, *, old_shift=0.0):
    cu, token_logp, weight = packed_batch(lengths, dtype=dtype)
    B = len(lengths)
    token_logp.requires_grad_()
    seq = torch.zeros(B)
    for b in range(B):
        s, e = int(cu[b]), int(cu[b + 1])
        seq[b] = (token_logp.detach()[s:e].float() * weight[s:e]).sum()
    # Ratios spread over [~0.5, ~2] and a few far beyond the cap of 10, with both advantage signs.
    old = seq - torch.randn(B) * 0.4 - old_shift
    old[::4] -= 5.0  # ratio ~ e^5 > 10: capped
    adv = torch.randn(B)
    values = old_values = returns = None
    if with_values:
        values = torch.randn(B, requires_grad=True)
        old_values = values.detach() + torch.randn(B) * 0.2
        returns = torch.randn(B)
    out = ppo_clip_loss(token_logp, weight, cu, old, adv, values=values, old_values=old_values,
                        returns=returns, value_coef=0.5)
    (out.loss + 0.3 * out.policy_loss + 0.7 * out.value_loss).backward()
    want_loss, want_pg, want_v, lp64, v64 = float64_seq_loss(
        token_logp, weight, cu, old, adv, values, old_values, returns, 0.5)
    (want_loss + 0.3 * want_pg + 0.7 * want_v).backward()

    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in ((out.loss, want_loss), (out.policy_loss, want_pg), (out.value_loss, want_v)):
        assert got.dtype == torch.float32 and got.shape == ()
        assert abs(got.item() - want.item()) < tol * max(1.0, abs(want.item()))
    assert token_logp.grad.dtype == dtype
    assert (token_logp.grad.double() - lp64.grad).abs().max() < tol * max(1.0, lp64.grad.abs().max())
    assert token_logp.grad[int(cu[-1]):].abs().max() == 0  # tokens of no sequence
    if with_values:
        assert (values.grad.double() - v64.grad).abs().max() < 1e-6
    with torch.no_grad():
        ratio = torch.exp(seq.double() - old.double())
        assert abs(out.ratio_mean.item() - ratio.mean().item()) < 1e-4 * ratio.mean().item()
        assert out.clip_fraction.item() == pytest.approx(((ratio - 1).abs() > 0.1).double().mean().item())
        assert out.capped_fraction.item() == pytest.approx((ratio > 10).double().mean().item())
        kl = ((ratio - 1) - ratio.log()).mean().item()
        assert abs(out.approx_kl.item() - kl) < 1e-4 * max(1.0, kl)
    return out


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_values", [True, False])
def test_sequence_level_matches_rl4vlm_rule(dtype, with_values):
    run_seq_case([1, 7, 0, 300, 4, 1, 12, 9], dtype, with_values)  # 300 > one block of 256


@needs_triton
def test_single_sequence_of_one_token():
    run_seq_case([1], torch.float32, True)


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the ratio statistic is inf
def test_runaway_ratio_gives_finite_loss_and_zero_gradient():
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    token_logp = torch.tensor([-1.0, -2.0, -0.5, -1.0, -1.0], requires_grad=True)
    weight = torch.ones(5)
    old = torch.tensor([-1000.0, -2.0])  # sequence 0: log ratio 996.5, exp() overflows
    adv = torch.tensor([-1.0, 0.0])
    out = ppo_clip_loss(token_logp, weight, cu, old, adv)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(token_logp.grad).all()
    assert token_logp.grad[:3].abs().max() == 0
    assert out.loss.item() == pytest.approx(-(1.1 * -1.0) / 2)
    assert out.capped_fraction.item() == 0.5
    assert not torch.isnan(out.approx_kl) and not torch.isnan(out.ratio_mean)


@needs_triton
def test_no_ratio_cap_is_plain_ppo():
    cu = torch.tensor([0, 2], dtype=torch.int32)
    token_logp = torch.tensor([-0.1, -0.1], requires_grad=True)
    old = torch.tensor([-5.0])  # ratio e^4.8 ~ 121
    adv = torch.tensor([-1.0])  # negative advantage: plain PPO keeps the unclipped term
    out = ppo_clip_loss(token_logp, torch.ones(2), cu, old, adv, ratio_cap=None)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.exp(4.8), rel=1e-5)
    assert token_logp.grad[0].item() == pytest.approx(math.exp(4.8), rel=1e-5)


def test_reference_matches_float64_rule():
    cu, token_logp, weight = packed_batch([3, 1, 8, 5])
    B = 4
    old = -torch.rand(B) * 2
    old[0] -= 6.0
    adv, values, returns = torch.randn(B), torch.randn(B), torch.randn(B)
    old_values = values + torch.randn(B) * 0.2
    out = reference.ppo_clip_loss(token_logp, weight, cu, old, adv, values=values,
                                  old_values=old_values, returns=returns)
    want = float64_seq_loss(token_logp, weight, cu, old, adv, values, old_values, returns, 0.5)
    assert abs(out.loss.item() - want[0].item()) < 1e-5


def float64_token_loss(token_logp, weight, old, adv, clip_low, clip_high, cap):
    lp = token_logp.detach().double().requires_grad_()
    log_ratio = lp - old.double()
    if cap is not None:
        capped = log_ratio > math.log(cap)
        ratio = torch.exp(log_ratio.clamp(max=math.log(cap)))
    else:
        capped = torch.zeros_like(log_ratio, dtype=torch.bool)
        ratio = torch.exp(log_ratio)
    a = adv.double()
    surr = torch.where(capped, ratio.clamp(1 - clip_low, 1 + clip_high) * a,
                       torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a))
    w = weight.double()
    loss = -(surr * w).sum() / w.sum() if w.sum() > 0 else (surr * w).sum() * 0
    return loss, lp


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_token_level_matches_float64(dtype, cap):
    T = 1500  # two blocks of 1024, the second ragged
    token_logp = (-torch.rand(T) * 3).to(dtype).requires_grad_()
    old = token_logp.detach().float() + torch.randn(T) * 0.3
    old[::50] -= 3.0
    weight = (torch.rand(T) < 0.7).float()
    adv = torch.randn(T)
    out = ppo_clip_loss_token_level(token_logp, weight, old, adv, clip_eps=0.2, clip_eps_high=0.28,
                                    ratio_cap=cap)
    out.loss.backward()
    want, lp64 = float64_token_loss(token_logp, weight, old, adv, 0.2, 0.28, cap)
    want.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert abs(out.loss.item() - want.item()) < tol
    assert out.value_loss.item() == 0.0
    assert (token_logp.grad.double() - lp64.grad).abs().max() < tol * lp64.grad.abs().max()
    ratio = torch.exp(token_logp.detach().double() - old.double())
    m = weight.bool()
    assert out.clip_fraction.item() == pytest.approx(
        ((ratio[m] < 0.8) | (ratio[m] > 1.28)).double().mean().item(), abs=1e-6)
    assert out.ratio_mean.item() == pytest.approx(ratio[m].mean().item(), rel=1e-4)


@needs_triton
def test_token_level_ignores_masked_garbage_and_empty_mask():
    token_logp = torch.tensor([-1.0, float("-inf"), -0.5], requires_grad=True)
    old = torch.tensor([-1.1, 0.0, float("-inf")])
    weight = torch.tensor([1.0, 0.0, 0.0])
    out = ppo_clip_loss_token_level(token_logp, weight, old, torch.tensor([1.0, 5.0, 5.0]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(token_logp.grad).all()
    assert out.loss.item() == pytest.approx(-math.exp(0.1))
    empty = ppo_clip_loss_token_level(token_logp.detach(), torch.zeros(3), old, torch.ones(3))
    assert empty.loss.item() == 0.0 and not any(torch.isnan(x) for x in empty)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(token_logp=torch.randn(2, 3)), "token_logp must be"),
        (dict(token_weight=torch.ones(4)), "token_weight must have shape"),
        (dict(cu_seqlens=torch.tensor([0.0, 5.0])), "cu_seqlens must be"),
        (dict(cu_seqlens=torch.tensor([0])), "cu_seqlens must be"),
        (dict(old_logp=torch.zeros(3)), "old_logp must have shape"),
        (dict(advantages=torch.zeros(2, dtype=torch.long)), "advantages must be a float"),
        (dict(values=torch.zeros(2)), "given together"),
        (dict(clip_eps=1.5), "clip_eps"),
        (dict(ratio_cap=1.05), "ratio_cap"),
        (dict(value_clip=-1.0), "value_clip"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(token_logp=torch.randn(5), token_weight=torch.ones(5),
                cu_seqlens=torch.tensor([0, 2, 5]), old_logp=torch.zeros(2), advantages=torch.zeros(2))
    args.update(kwargs)
    positional = [args.pop(k) for k in ("token_logp", "token_weight", "cu_seqlens", "old_logp", "advantages")]
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(*positional, **args)


def test_token_level_bad_arguments():
    with pytest.raises(ValueError, match="advantages must have shape"):
        ppo_clip_loss_token_level(torch.randn(4), torch.ones(4), torch.randn(4), torch.randn(3))
    with pytest.raises(ValueError, match="clip_eps_high"):
        ppo_clip_loss_token_level(torch.randn(4), torch.ones(4), torch.randn(4), torch.randn(4),
                                  clip_eps_high=-0.1)


@needs_triton
@pytest.mark.parametrize("output", ["policy_loss", "value_loss", "loss"])
def test_one_output_alone_gets_its_own_gradient(output):
    """Backward through one output only (the others arrive as None, not as materialised zeros):
    the same gradients as the reference's."""
    cu, token_logp, weight = packed_batch([3, 5, 2])
    old, adv = torch.randn(3) - 1.0, torch.randn(3)
    v_old, ret = torch.randn(3), torch.randn(3)
    grads = []
    for fn in (ppo_clip_loss, reference.ppo_clip_loss):
        lp = token_logp.clone().requires_grad_()
        v = (v_old + 0.05).requires_grad_()
        out = fn(lp, weight, cu, old, adv, values=v, old_values=v_old, returns=ret)
        getattr(out, output).backward()
        grads.append((lp.grad if lp.grad is not None else torch.zeros_like(lp),
                      v.grad if v.grad is not None else torch.zeros_like(v)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    token = token_logp.clone().requires_grad_()
    out = ppo_clip_loss_token_level(token, weight, token_logp.detach() - 0.1, torch.randn(len(token_logp)))
    out.policy_loss.backward()
    assert torch.isfinite(token.grad).all() and token.grad.abs().sum() > 0
