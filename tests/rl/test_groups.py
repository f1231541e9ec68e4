"""Group advantages (GRPO, GiGPO) on hand-made groups, checked against numbers worked by hand."""

import numpy as np
import pytest

from fastvlmrl.rl.groups import Episode, discounted_returns, episode_advantages, group_advantages, step_advantages


def ep(group, rewards, states):
    return Episode(group, [None] * len(rewards), list(rewards), [bytes([s]) for s in states])


def test_grpo_normalises_returns_within_each_group():
    episodes = [ep(0, [1.0], [0]), ep(0, [0.0, -1.0], [0, 1]), ep(1, [2.0], [5]), ep(1, [2.0], [5])]
    adv = episode_advantages(episodes)
    # group 0: returns 1 and -1, mean 0, population std 1 -> +1, -1; group 1: equal returns -> 0
    assert adv == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-5)
    steps = group_advantages(episodes, "grpo", gamma=0.9)
    assert steps[1] == pytest.approx([-1.0, -1.0], abs=1e-5)  # every step of the episode


def test_a_group_of_one_episode_has_no_advantage():
    assert episode_advantages([ep(3, [5.0], [0])]) == [0.0]


def test_gigpo_adds_step_groups_of_identical_states():
    # Two episodes from the same start; both act in state 7 first, then diverge.
    a = ep(0, [0.0, 1.0], [7, 8])   # discounted returns: 0.9, 1.0
    b = ep(0, [-1.0], [7])          # -1.0
    steps = step_advantages([a, b], gamma=0.9)
    # state 7 step group: returns 0.9 and -1.0 -> +1, -1; state 8 is alone -> 0
    assert steps == [pytest.approx([1.0, 0.0], abs=1e-5), pytest.approx([-1.0], abs=1e-5)]
    total = group_advantages([a, b], "gigpo", gamma=0.9, step_weight=0.5)
    # episode returns 1 and -1 -> +1, -1
    assert total[0] == pytest.approx([1.5, 1.0], abs=1e-5) and total[1] == pytest.approx([-1.5], abs=1e-5)


def test_step_groups_never_cross_episode_groups():
    a, b = ep(0, [1.0], [7]), ep(1, [-1.0], [7])  # the same state in different groups
    assert step_advantages([a, b], gamma=0.9) == [[0.0], [0.0]]


def test_discounted_returns_and_bad_algo():
    assert discounted_returns([1.0, 0.0, 2.0], 0.5) == pytest.approx([1.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="grpo or gigpo"):
        group_advantages([], "ppo", gamma=0.9)
    np.testing.assert_allclose(episode_advantages([ep(0, [1.0], [0]), ep(0, [3.0], [0])]), [-1, 1], atol=1e-5)


def test_group_rollout_plays_whole_episodes_from_identical_starts():
    import torch

    from fastvlmrl.build import build_encoder, build_player
    from fastvlmrl.config import Config
    from fastvlmrl.models import load_policy

    from fastvlmrl.envs.games.base import state_fields

    cfg = Config()
    cfg.env.name, cfg.env.num_envs, cfg.env.image_size, cfg.prompt.style = "NumberLine", 6, 64, "short"
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 1.0, 8
    policy, processor = load_policy(None, dtype=torch.float32, device="cpu", seed=0)
    player = build_player(cfg, policy, processor, build_encoder(policy, processor, torch.float32))
    seeds = []
    generate = player.engine.generate_requests
    player.engine.generate_requests = lambda reqs, params: seeds.append((params.seed, len(reqs))) or generate(reqs, params)
    episodes, stats, _ = player.collect_groups(seed=5, group_size=3, max_steps=4)  # NumberLine runs up to 10
    player.envs.close()
    assert [e.group for e in episodes] == [0, 0, 0, 1, 1, 1]
    assert episodes[0].states[0] == episodes[1].states[0] == episodes[2].states[0] != episodes[3].states[0]
    for e in episodes:
        assert len(e.transitions) == len(e.rewards) == len(e.states) >= 1
        assert all(np.frombuffer(key, np.int32)[state_fields("NumberLine")["steps"]] == 0 for key in e.states)
    cut = sum(len(e.rewards) == 4 and e.rewards[-1] != 1.0 for e in episodes)
    assert stats.cut == cut and len(stats.returns) == 6  # every episode counted, the cut ones too
    ranges = [set(range(seed, seed + n)) for seed, n in seeds]  # request i of a call samples with seed + i
    assert all(not (a & b) for k, a in enumerate(ranges) for b in ranges[k + 1:])  # fewer live envs reuse none
