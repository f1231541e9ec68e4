"""Micro-batching: a mini-batch split into micro-batches of 1, 3 or all its samples gives the same
gradients (fp32, to 1e-6) for every term of the PPO loss (sequence and token level, value,
entropy, KL) and for SFT's cross-entropy; the metrics are the unsplit mini-batch's too."""

import pytest
import torch

from fastvlmrl.config import PPOConfig
from fastvlmrl.rl.batch import micro_batches, pack
from fastvlmrl.rl.ppo import ppo_update
from fastvlmrl.rl.reference_policy import ReferencePolicy
from fastvlmrl.rl.sft import sft_backward

from .test_ppo import TinyPolicy, _rollout, _storage


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer that moves nothing and keeps each step's gradients."""

    def __init__(self, params):
        super().__init__(list(params), {"lr": 0.0})
        self.grads = []

    def step(self, closure=None):
        self.grads.append([None if p.grad is None else p.grad.detach().clone()
                           for group in self.param_groups for p in group["params"]])


def _grads_and_metrics(cfg, micro: int, seed: int = 0):
    policy = TinyPolicy()
    transitions = _rollout(policy, n=7)
    with torch.no_grad():  # a critic that is not at zero, so the value loss has a gradient everywhere
        policy.value_head.bias.fill_(0.3)
    reference = None
    if cfg.kl_coef > 0:
        other = TinyPolicy()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        reference = ReferencePolicy(policy, frozen=other.requires_grad_(False))
    advantages = [1.0, -0.5, 2.0, -1.0, 0.25, -2.0, 0.7]
    optimizer = GradientRecorder(policy.parameters())
    cfg.micro_batch_size = micro
    metrics = ppo_update(policy, optimizer, _storage(transitions, advantages), cfg, temperature=0.7, pad_id=0,
                         device="cpu", generator=torch.Generator().manual_seed(seed), reference=reference)
    return optimizer.grads, metrics


@pytest.mark.parametrize("settings", [
    dict(),
    dict(loss_level="token", clip_high=0.3),
    dict(entropy_coef=0.1, kl_coef=0.5),
    dict(loss_level="token", entropy_coef=0.1, kl_coef=0.5, value_clip=0.0),
])
def test_micro_batches_give_the_unsplit_gradients(settings):
    base = dict(epochs=2, minibatch_size=7, clip=0.2, max_grad_norm=1e6, thought_coef=0.3)
    whole, whole_metrics = _grads_and_metrics(PPOConfig(**base, **settings), micro=0)
    assert len(whole) == 2 and all(g is not None and g.abs().sum() > 0 for g in whole[0])
    for micro in (1, 3, 7):
        grads, metrics = _grads_and_metrics(PPOConfig(**base, **settings), micro=micro)
        assert len(grads) == len(whole)
        for step, step_whole in zip(grads, whole):
            for g, w in zip(step, step_whole):
                torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
        for key, value in whole_metrics.items():
            if not key.startswith("timing/"):
                assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (micro, key)


def test_a_mini_batch_smaller_than_a_micro_batch_is_one_piece():
    assert micro_batches(list(range(5)), 0) == [[0, 1, 2, 3, 4]]
    assert micro_batches(list(range(5)), 8) == [[0, 1, 2, 3, 4]]
    assert micro_batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_a_non_finite_micro_batch_skips_the_whole_mini_batch():
    policy = TinyPolicy()
    transitions = _rollout(policy, n=6)
    transitions[4].logprobs[0] = float("nan")  # in the second micro-batch of 3: the first already did backward
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = PPOConfig(epochs=1, minibatch_size=6, micro_batch_size=3)
    metrics = ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=1.0), _storage(transitions, [1.0] * 6), cfg,
                         temperature=1.0, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
    assert metrics["actor/skipped_nonfinite"] == 1 and metrics["actor/optimizer_steps"] == 0
    assert all(torch.equal(p, q) for p, q in zip(before, policy.parameters()))


def test_sft_micro_batches_give_the_unsplit_gradients():
    policy = TinyPolicy()
    demos = _rollout(policy, n=7)
    grads = {}
    for micro in (0, 1, 3):
        policy.zero_grad(set_to_none=True)
        loss = sft_backward(policy, demos, micro, pad_id=0, device="cpu")
        grads[micro] = (float(loss), [p.grad.clone() for p in policy.parameters() if p.grad is not None])
    for micro in (1, 3):
        assert grads[micro][0] == pytest.approx(grads[0][0], rel=1e-6)
        for g, w in zip(grads[micro][1], grads[0][1]):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    batch = pack(demos, 0, "cpu")  # the loss is the batch's mean reply-token cross-entropy
    from fastvlmrl.rl.batch import forward_logp_and_values

    with torch.no_grad():
        assert grads[0][0] == pytest.approx(-float(forward_logp_and_values(policy, batch, 1.0)[0].mean()), rel=1e-6)


def test_micro_batches_give_the_gradients_of_the_loss_written_out():
    """Against the loss computed directly on the whole mini-batch (the kernels' reference), not
    only against the update's own unsplit path."""
    from fastvlmrl.kernels import ppo_clip_loss
    from fastvlmrl.rl.batch import forward_logp_and_values
    from fastvlmrl.rl.ppo import sequence_logp, train_without_dropout
    from fastvlmrl.rl.token_weights import token_weights

    cfg = PPOConfig(epochs=1, minibatch_size=7, clip=0.2, max_grad_norm=1e6, thought_coef=0.3, entropy_coef=0.1)
    grads, _ = _grads_and_metrics(cfg, micro=3)
    policy = TinyPolicy()
    transitions = _rollout(policy, n=7)
    with torch.no_grad():
        policy.value_head.bias.fill_(0.3)
    storage = _storage(transitions, [1.0, -0.5, 2.0, -1.0, 0.25, -2.0, 0.7])
    samples = storage.samples()
    train_without_dropout(policy)
    batch = pack([s[0] for s in samples], 0, "cpu")
    token_logp, values, entropy = forward_logp_and_values(policy, batch, 0.7, return_entropy=True)
    out = ppo_clip_loss(token_logp, token_weights(batch.is_action, 0.3), batch.cu_seqlens,
                        torch.stack([sequence_logp(s[0], 0.3) for s in samples]),
                        torch.tensor([s[1] for s in samples]), clip_eps=0.2, ratio_cap=cfg.ratio_cap, values=values,
                        old_values=torch.tensor([s[0].value for s in samples]),
                        returns=torch.tensor([s[2] for s in samples]), value_clip=cfg.value_clip,
                        value_coef=cfg.value_coef)
    (out.loss - 0.1 * entropy.mean()).backward()
    for g, p in zip(grads[0], policy.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("settings", [dict(), dict(loss_level="token", entropy_coef=0.1, kl_coef=0.5)])
def test_the_trainers_fused_kernel_path_gives_the_reference_gradients(settings, monkeypatch):
    """The update through fused_linear_ppo_loss's Triton path (interpreted here, what CUDA runs)
    equals the CPU reference path, micro-batched."""
    pytest.importorskip("triton")
    base = dict(epochs=1, minibatch_size=7, clip=0.2, max_grad_norm=1e6, thought_coef=0.3)
    want, want_metrics = _grads_and_metrics(PPOConfig(**base, **settings), micro=3)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    got, metrics = _grads_and_metrics(PPOConfig(**base, **settings), micro=3)
    for step_got, step_want in zip(got, want):
        for g, w in zip(step_got, step_want):
            if w is None:
                assert g is None
            else:
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    for key in ("actor/pg_loss", "critic/value_loss", "actor/clip_frac", "actor/entropy"):
        assert metrics[key] == pytest.approx(want_metrics[key], abs=1e-5)
