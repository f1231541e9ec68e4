"""The critic can learn: the value head has a learning rate of its own (ppo.value_lr), the value
clip can be turned off, critic-only updates leave the policy alone, and each rollout reports how
well its values predicted its returns (explained variance)."""

import dataclasses

import pytest
import torch
from torch import nn

from fastvlmrl.config import load_config
from fastvlmrl.configs import preset_path
from fastvlmrl.models.policy import ValueHead
from fastvlmrl.rl.batch import forward_logp_and_values, pack
from fastvlmrl.rl.ppo import cosine_lr, make_optimizer, ppo_update, set_lr
from fastvlmrl.rl.storage import RolloutStorage, Transition

V, H, STATES = 11, 128, 16


class FeaturePolicy(nn.Module):
    """A state's features are an embedding of its id (prompt = [id]); the real ValueHead (its
    output layer zero-initialised) reads them, as it reads the VLM's last prompt token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(STATES, H)
        self.lm_head = nn.Linear(H, V, bias=False)
        self.value_head = ValueHead(H)

    def hidden_states(self, input_ids, attention_mask):
        return self.embed(input_ids)

    def lm_head_weight(self):
        return self.lm_head.weight

    def value(self, h):
        return self.value_head(h)


def fixed_rollout(num_steps: int, num_envs: int):
    """Transitions over STATES states whose returns are a fixed function of the state in [-1, 1]
    (NumberLine's scale), with zero advantages: only the critic has something to learn."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(STATES, generator=g) * 2 - 1
    storage = RolloutStorage(num_steps, num_envs)
    ids = torch.arange(num_steps * num_envs) % STATES
    for t in range(num_steps):
        row = ids[t * num_envs:(t + 1) * num_envs]
        transitions = [Transition(torch.tensor([int(s)]), {}, torch.tensor([1]), logprobs=torch.zeros(1),
                                  is_action=torch.ones(1, dtype=torch.bool), value=0.0) for s in row]
        storage.add(t, transitions, torch.zeros(num_envs), torch.zeros(num_envs, dtype=torch.bool))
    storage.returns = target[ids].reshape(num_steps, num_envs)
    storage.advantages = torch.zeros(num_steps, num_envs)
    return storage


def refresh_rollout_values(policy, storage):
    """The rollout's values and log-probs under the current policy (as a new rollout would record)."""
    transitions = [t for row in storage.transitions for t in row]
    with torch.no_grad():
        logp, values = forward_logp_and_values(policy, pack(transitions, 0, "cpu"), 1.0)
    for t, lp, v in zip(transitions, logp, values):
        t.logprobs, t.value = lp[None], float(v)
    storage.values = values.reshape(storage.num_steps, storage.num_envs)


def explained_variance_after(cfg) -> float:
    """Train the critic on the fixed rollout over the preset's whole budget of updates."""
    policy = FeaturePolicy()
    storage = fixed_rollout(cfg.num_steps, 32)
    optimizer = make_optimizer(policy, cfg)
    for update in range(cfg.updates):
        set_lr(optimizer, cosine_lr(update, cfg.updates, cfg.lr, cfg.lr_end))
        refresh_rollout_values(policy, storage)
        ppo_update(policy, optimizer, storage, cfg, temperature=1.0, pad_id=0, device="cpu",
                   generator=torch.Generator().manual_seed(update))
    refresh_rollout_values(policy, storage)
    return storage.critic_stats()["critic/explained_variance"]


def test_the_critic_learns_within_the_presets_budget_with_its_own_learning_rate():
    preset = load_config(preset_path("tiny/numberline")).ppo  # 30 updates x 8 steps, lr 4e-5 -> 4e-6
    assert explained_variance_after(dataclasses.replace(preset, value_lr=1e-3)) > 0.5
    # the defect, for the record: at the policy's rate the head barely leaves zero
    assert explained_variance_after(dataclasses.replace(preset, value_lr=None, value_clip=0.1)) < 0.5


def test_optimizer_groups_follow_the_schedule_and_only_the_critic_moves_in_warm_up():
    policy = FeaturePolicy()
    cfg = dataclasses.replace(load_config(preset_path("tiny/numberline")).ppo, value_lr=1e-3)
    optimizer = make_optimizer(policy, cfg)
    set_lr(optimizer, cfg.lr / 2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([cfg.lr / 2, 5e-4])
    storage = fixed_rollout(2, 8)
    storage.advantages = torch.randn(2, 8)  # a policy gradient the warm-up must not apply
    refresh_rollout_values(policy, storage)
    trunk = [p.detach().clone() for p in (policy.embed.weight, policy.lm_head.weight)]
    head = [p.detach().clone() for p in policy.value_head.parameters()]
    metrics = ppo_update(policy, optimizer, storage, cfg, temperature=1.0, pad_id=0, device="cpu",
                         generator=torch.Generator().manual_seed(0), critic_only=True)
    assert metrics["actor/optimizer_steps"] > 0
    assert all(torch.equal(a, b) for a, b in zip(trunk, (policy.embed.weight, policy.lm_head.weight)))
    assert not all(torch.equal(a, b) for a, b in zip(head, policy.value_head.parameters()))


def test_value_clip_zero_turns_the_clip_off():
    """With ppo.value_clip=0 a single update may move V past the 0.1 band around the old values."""
    storage = fixed_rollout(1, 16)
    storage.returns = torch.full((1, 16), 5.0)
    moved = {}
    for clip in (0.1, 0.0):
        policy = FeaturePolicy()
        cfg = dataclasses.replace(load_config(preset_path("tiny/numberline")).ppo, value_lr=3e-2, value_clip=clip,
                                  epochs=40, minibatch_size=16)
        refresh_rollout_values(policy, storage)
        ppo_update(policy, make_optimizer(policy, cfg), storage, cfg, temperature=1.0, pad_id=0, device="cpu",
                   generator=torch.Generator().manual_seed(0))
        refresh_rollout_values(policy, storage)
        moved[clip] = float(storage.values.mean())
    assert moved[0.0] > 3.0 > 2 * moved[0.1]  # (past the band only by Adam's momentum)


def test_critic_stats():
    storage = RolloutStorage(1, 4)
    storage.values = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    storage.returns = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert storage.critic_stats()["critic/explained_variance"] == pytest.approx(1.0)
    storage.values = torch.zeros(1, 4)
    stats = storage.critic_stats()
    assert stats["critic/explained_variance"] == pytest.approx(0.0) and stats["critic/return_mean"] == 1.5
    storage.returns = torch.ones(1, 4)
    assert torch.isnan(torch.tensor(storage.critic_stats()["critic/explained_variance"]))


def test_reward_scale_scales_what_the_critic_sees_not_the_statistics():
    from fastvlmrl.build import build_encoder, build_player
    from fastvlmrl.config import Config
    from fastvlmrl.models import load_policy

    cfg = Config()
    cfg.env.num_envs, cfg.env.image_size, cfg.sampling.max_new_tokens, cfg.prompt.style = 4, 64, 8, "short"
    policy, processor = load_policy(None, dtype=torch.float32, device="cpu", seed=0)
    rewards, stats = {}, {}
    for scale in (1.0, 0.25):
        player = build_player(cfg, policy, processor, build_encoder(policy, processor, torch.float32))
        storage = RolloutStorage(3, 4)
        obs = player.reset(0)
        _, stats[scale], _, _ = player.collect(obs, storage, 0.9, reward_scale=scale)
        rewards[scale] = storage.rewards
        player.envs.close()
    assert rewards[1.0].abs().sum() > 0  # NumberLine pays -1/+1 every step
    torch.testing.assert_close(rewards[0.25], rewards[1.0] * 0.25)
    assert stats[0.25].returns == stats[1.0].returns


def test_two_groups_at_one_rate_step_exactly_as_one_adam():
    """ppo.value_lr unset: the second parameter group changes nothing (Adam is per parameter)."""
    cfg = dataclasses.replace(load_config(preset_path("tiny/numberline")).ppo, value_lr=None)
    a, b = FeaturePolicy(), FeaturePolicy()
    storage_a, storage_b = fixed_rollout(2, 16), fixed_rollout(2, 16)
    for policy, storage, optimizer in ((a, storage_a, make_optimizer(a, cfg)),
                                       (b, storage_b, torch.optim.Adam(list(b.parameters()), lr=cfg.lr))):
        refresh_rollout_values(policy, storage)
        storage.advantages = torch.linspace(-1, 1, 32).reshape(2, 16)
        ppo_update(policy, optimizer, storage, cfg, temperature=1.0, pad_id=0, device="cpu",
                   generator=torch.Generator().manual_seed(0))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
