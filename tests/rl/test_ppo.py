"""PPO update on a small stand-in policy: the rollout's log-probs are reproduced by the training
forward (ratio 1 at the start), positive advantages raise an output's probability, and a
non-finite mini-batch is skipped, never applied."""

import math

import pytest
import torch
from torch import nn

from fastvlmrl.config import PPOConfig
from fastvlmrl.rl.batch import forward_logp_and_values, pack
from fastvlmrl.rl.ppo import cosine_lr, ppo_update, sequence_logp
from fastvlmrl.rl.storage import RolloutStorage, Transition
from fastvlmrl.rl.token_weights import token_weights

V, H = 23, 16


class TinyPolicy(nn.Module):
    """A causal stand-in with the trainer's policy interface (hidden states, lm head, value)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, H)
        self.mix = nn.GRU(H, H, batch_first=True)
        self.lm_head = nn.Linear(H, V, bias=False)
        self.value_head = nn.Linear(H, 1)

    def hidden_states(self, input_ids, attention_mask, pixel_values=None):
        x = self.embed(input_ids)
        if pixel_values is not None:
            x = x + pixel_values.mean(dim=(1, 2, 3))[:, None, None]
        return self.mix(x)[0]

    def lm_head_weight(self):
        return self.lm_head.weight

    def value(self, h):
        return self.value_head(h).squeeze(-1).float()


LAMBDA = PPOConfig().thought_coef  # the λ ppo_update weights thoughts by in these tests


def _rollout(policy, n=6, temperature=0.7):
    """Transitions whose rollout log-probs are the policy's own; the last output token is the action."""
    g = torch.Generator().manual_seed(1)
    transitions = []
    for i in range(n):
        prompt = torch.randint(1, V, (3 + i % 3,), generator=g)
        out = torch.randint(1, V, (1 + i % 4,), generator=g)
        is_action = torch.zeros(len(out), dtype=torch.bool)
        is_action[-1] = True
        t = Transition(prompt, {"pixel_values": torch.randn(1, 3, 2, 2, generator=g)}, out,
                       logprobs=torch.zeros(len(out)), is_action=is_action, value=0.0)
        batch = pack([t], 0, "cpu")
        with torch.no_grad():
            lp, v = forward_logp_and_values(policy, batch, temperature)
        t.logprobs, t.value = lp, float(v[0])
        t.logp = float(sequence_logp(t, LAMBDA))  # the λ-weighted sequence log-prob, for the assertions
        transitions.append(t)
    return transitions


def test_training_forward_reproduces_rollout_logprobs_in_a_padded_batch():
    policy = TinyPolicy()
    transitions = _rollout(policy)
    batch = pack(transitions, 0, "cpu")
    with torch.no_grad():
        lp, values = forward_logp_and_values(policy, batch, 0.7)
    seq = torch.zeros(len(transitions)).index_add_(
        0, torch.repeat_interleave(torch.arange(len(transitions)), torch.diff(batch.cu_seqlens).long()),
        lp * token_weights(batch.is_action, LAMBDA))
    torch.testing.assert_close(seq, torch.tensor([t.logp for t in transitions]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, torch.tensor([t.value for t in transitions]), atol=1e-5, rtol=1e-5)


def _storage(transitions, advantages):
    storage = RolloutStorage(1, len(transitions))
    storage.add(0, transitions, torch.zeros(len(transitions)), torch.ones(len(transitions), dtype=torch.bool))
    storage.finish(torch.zeros(len(transitions)), 0.9, 0.95, normalize=False)
    storage.advantages = torch.tensor([advantages], dtype=torch.float32)
    return storage


def test_positive_advantage_raises_the_output_probability():
    policy = TinyPolicy()
    transitions = _rollout(policy)
    advantages = [1.0 if i % 2 == 0 else -1.0 for i in range(len(transitions))]
    cfg = PPOConfig(epochs=3, minibatch_size=3, clip=0.2, max_grad_norm=10.0)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    metrics = ppo_update(policy, opt, _storage(transitions, advantages), cfg, temperature=0.7, pad_id=0,
                         device="cpu", generator=torch.Generator().manual_seed(0))
    assert metrics["actor/optimizer_steps"] == 6 and metrics["actor/skipped_nonfinite"] == 0
    after = _rollout(policy)
    for t0, t1, a in zip(transitions, after, advantages):
        assert (t1.logp - t0.logp) * a > 0


def test_non_finite_minibatch_is_skipped_and_counted():
    policy = TinyPolicy()
    transitions = _rollout(policy, n=4)
    transitions[0].logprobs[0] = float("nan")  # a NaN rollout log-prob: the old sequence log-prob is NaN
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = PPOConfig(epochs=1, minibatch_size=4)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    metrics = ppo_update(policy, opt, _storage(transitions, [1.0, -1.0, 1.0, -1.0]), cfg, temperature=1.0,
                         pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
    assert metrics["actor/skipped_nonfinite"] == 1 and metrics["actor/optimizer_steps"] == 0
    for p, q in zip(before, policy.parameters()):
        assert torch.equal(p, q)


def test_cosine_schedule_decays_without_restart():
    assert cosine_lr(0, 10, 1e-3, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(5, 10, 1e-3, 0.0) == pytest.approx(5e-4)
    assert cosine_lr(10, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert cosine_lr(15, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert math.isclose(cosine_lr(2, 10, 1.0, 0.0), 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_warmup_ramps_into_the_cosine_schedule():
    assert cosine_lr(0, 10, 1.0, 0.0, warmup=4) == pytest.approx(0.25 * cosine_lr(0, 10, 1.0, 0.0))
    assert cosine_lr(2, 10, 1.0, 0.0, warmup=4) == pytest.approx(0.75 * cosine_lr(2, 10, 1.0, 0.0))
    assert cosine_lr(3, 10, 1.0, 0.0, warmup=4) == pytest.approx(cosine_lr(3, 10, 1.0, 0.0))
    assert cosine_lr(7, 10, 1.0, 0.0, warmup=4) == pytest.approx(cosine_lr(7, 10, 1.0, 0.0))


class DropoutPolicy(TinyPolicy):
    """TinyPolicy with dropout in the trunk, as LoRA (lora_dropout 0.05) and many VLMs have."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def hidden_states(self, input_ids, attention_mask, pixel_values=None):
        return self.drop(super().hidden_states(input_ids, attention_mask, pixel_values))


def test_the_first_ratio_is_one_for_a_model_with_dropout():
    """The rollout samples with dropout off (the engine runs in eval mode); the PPO forward must
    too, or every ratio is off before any update."""
    policy = DropoutPolicy()
    policy.eval()
    transitions = _rollout(policy)
    cfg = PPOConfig(epochs=1, minibatch_size=len(transitions))
    metrics = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), _storage(transitions, [1.0] * 6),
                         cfg, temperature=0.7, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
    assert metrics["actor/log_ratio_first_minibatch_max"] < 1e-5
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_recompute_logprobs_scores_the_old_policy_with_the_trainers_forward():
    """Where the engine's log-probs differ from the trainer's (bf16 kernels on GPU), recomputing
    them makes the first ratio 1 again."""
    policy = TinyPolicy()
    transitions = _rollout(policy)
    for t in transitions:
        t.logprobs = t.logprobs + 0.05  # the engine's numbers, slightly off
    for recompute, close in ((False, False), (True, True)):
        cfg = PPOConfig(epochs=1, minibatch_size=len(transitions), recompute_logprobs=recompute)
        metrics = ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), _storage(transitions, [1.0] * 6),
                             cfg, temperature=0.7, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
        assert (metrics["actor/log_ratio_first_minibatch_max"] < 1e-5) == close
        if recompute:  # the gap it replaced is reported
            assert metrics["actor/engine_trainer_logprob_max_diff"] == pytest.approx(0.05, abs=1e-5)


def _mean_entropy(policy, transitions):
    with torch.no_grad():
        return float(forward_logp_and_values(policy, pack(transitions, 0, "cpu"), 0.7, return_entropy=True)[2].mean())


def test_entropy_bonus_raises_the_entropy():
    results = {}
    for coef in (0.0, 0.5):
        policy = TinyPolicy()
        transitions = _rollout(policy)
        before = _mean_entropy(policy, transitions)
        cfg = PPOConfig(epochs=10, minibatch_size=6, entropy_coef=coef, max_grad_norm=10.0)
        metrics = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), _storage(transitions, [0.0] * 6),
                             cfg, temperature=0.7, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
        assert metrics["actor/entropy"] > 0
        results[coef] = _mean_entropy(policy, transitions) - before
    assert results[0.5] > 0.02 and results[0.5] > results[0.0] + 0.02  # (near log V already at start)


def _kl_to(reference, policy, transitions):
    from fastvlmrl.rl.reference_policy import k3_kl

    batch = pack(transitions, 0, "cpu")
    with torch.no_grad():
        logp = forward_logp_and_values(policy, batch, 0.7)[0]
    return float(k3_kl(logp, reference.logprobs(batch, 0.7)).mean())


def test_kl_penalty_holds_the_policy_near_the_reference():
    import copy

    from fastvlmrl.rl.reference_policy import ReferencePolicy

    drift = {}
    for coef in (0.0, 2.0):
        policy = TinyPolicy()
        reference = ReferencePolicy(policy, frozen=copy.deepcopy(policy).requires_grad_(False))
        transitions = _rollout(policy)
        assert _kl_to(reference, policy, transitions) == pytest.approx(0.0, abs=1e-7)
        cfg = PPOConfig(epochs=20, minibatch_size=6, kl_coef=coef, clip=0.9, max_grad_norm=10.0)
        metrics = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2),
                             _storage(transitions, [1.0, -1.0] * 3), cfg, temperature=0.7, pad_id=0, device="cpu",
                             generator=torch.Generator().manual_seed(0), reference=reference)
        assert ("actor/kl_ref" in metrics) == (coef > 0)
        drift[coef] = _kl_to(reference, policy, transitions)
    assert drift[2.0] < 0.5 * drift[0.0]
    with pytest.raises(ValueError, match="reference"):
        ppo_update(policy, torch.optim.Adam(policy.parameters()), _storage(transitions, [1.0] * 6), cfg,
                   temperature=0.7, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))


def test_target_kl_stops_the_epochs_early():
    policy = TinyPolicy()
    transitions = _rollout(policy)
    cfg = PPOConfig(epochs=8, minibatch_size=3, target_kl=1e-9, clip=0.9)
    metrics = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), _storage(transitions, [1.0] * 6),
                         cfg, temperature=0.7, pad_id=0, device="cpu", generator=torch.Generator().manual_seed(0))
    assert metrics["actor/epochs"] == 1 and metrics["actor/optimizer_steps"] == 2


def test_full_fine_tuning_reference_is_saved_and_restored(tmp_path):
    from fastvlmrl.rl.reference_policy import ReferencePolicy

    policy = TinyPolicy()
    transitions = _rollout(policy)
    batch = pack(transitions, 0, "cpu")
    first = ReferencePolicy.build(policy, tmp_path, lora=False, resume=False).logprobs(batch, 0.7)
    with torch.no_grad():
        policy.lm_head.weight.add_(1.0)  # training moved the policy; the run stopped and resumes
    again = ReferencePolicy.build(policy, tmp_path, lora=False, resume=True).logprobs(batch, 0.7)
    torch.testing.assert_close(again, first)
    with pytest.raises(ValueError, match="reference"):
        ReferencePolicy.build(policy, tmp_path / "elsewhere", lora=False, resume=True)


def test_full_fine_tuning_reference_shares_the_frozen_parameters(tmp_path):
    """Parameters the run never trains (here the recurrent trunk, as a frozen vision tower) are
    the same tensors in the reference; only the trainable ones are copied and saved."""
    from fastvlmrl.rl.reference_policy import ReferencePolicy

    policy = TinyPolicy()
    policy.mix.requires_grad_(False)
    reference = ReferencePolicy.build(policy, tmp_path, lora=False, resume=False)
    assert all(a is b for a, b in zip(reference.frozen.mix.parameters(), policy.mix.parameters()))
    assert reference.frozen.lm_head.weight is not policy.lm_head.weight
    saved = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    assert set(saved) == {"embed.weight", "lm_head.weight", "value_head.weight", "value_head.bias"}
    batch = pack(_rollout(policy), 0, "cpu")
    first = reference.logprobs(batch, 0.7)
    with torch.no_grad():
        policy.embed.weight.add_(1.0)
    torch.testing.assert_close(ReferencePolicy.build(policy, tmp_path, lora=False, resume=True).logprobs(batch, 0.7),
                               first)
    policy.mix.requires_grad_(True)  # another run's reference
    with pytest.raises(ValueError, match="other parameters"):
        ReferencePolicy.build(policy, tmp_path, lora=False, resume=True)


def test_lora_reference_is_the_base_model():
    from fastvlmrl.models import load_policy
    from fastvlmrl.rl.reference_policy import ReferencePolicy

    policy, processor = load_policy(None, lora=True, lora_r=4, lora_alpha=8, dtype=torch.float32, device="cpu", seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    t = Transition(ids[0, :3], {}, ids[0, 3:], logprobs=torch.zeros(3), is_action=torch.ones(3, dtype=torch.bool),
                   value=0.0)
    policy.hidden_states = lambda input_ids, attention_mask: policy.model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]
    batch = pack([t], 0, "cpu")
    with torch.no_grad():
        base = forward_logp_and_values(policy, batch, 1.0)[0]  # lora_B is zero at init: the base model
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        live = forward_logp_and_values(policy, batch, 1.0)[0]
    reference = ReferencePolicy.build(policy, None, lora=True, resume=False)
    assert not torch.allclose(live, base)
    torch.testing.assert_close(reference.logprobs(batch, 1.0), base)


def test_train_without_dropout_turns_off_hugging_face_attention_dropout():
    """HF attention drops attention weights inside the attention call in train mode
    (`attention_dropout`, CLIP's `dropout`); no nn.Dropout layer shows it."""
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy
    from fastvlmrl.rl.ppo import train_without_dropout
    from fastvlmrl.rl.sft import encode_demos, make_demos

    policy, processor = load_policy(None, lora=False, dtype=torch.float32, device="cpu", seed=0)
    dropping = 0
    for module in policy.modules():
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.5)
                dropping += 1
    assert dropping >= 4  # the decoder's and the vision tower's attention layers
    encoder = build_encoder(policy, processor, torch.float32)
    batch = pack(encode_demos(encoder, make_demos("NumberLine", 4, image_size=64, num_envs=4)), encoder.pad_id, "cpu")
    policy.eval()
    with torch.no_grad():
        reference = forward_logp_and_values(policy, batch, 1.0)[0]
        train_without_dropout(policy)
        torch.testing.assert_close(forward_logp_and_values(policy, batch, 1.0)[0], reference)
        policy.train()  # with the dropout on, the same forward differs
        assert not torch.allclose(forward_logp_and_values(policy, batch, 1.0)[0], reference)
