"""Evaluation counts the first N episodes *started*, not the first N to end (which drops long
episodes, mostly failures, and reads high), and gives a 95% interval with the success rate."""

import numpy as np
import pytest

from fastvlmrl.rl.rollout import EpisodeStats, Player, wilson_interval


class ScriptedPlayer(Player):
    """A Player over scripted episodes: env 0 always loses in 6 steps, every other env wins in 1.
    No engine, no model."""

    def __init__(self, num_envs):
        class Envs:
            pass

        self.envs = Envs()
        self.envs.num_envs = num_envs
        self.eval_envs = None
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, int)
        self.length = np.array([6] + [1] * (num_envs - 1))
        self.left = self.length.copy()

    def reset(self, seed):
        return None

    def step(self, obs, temperature, stats: EpisodeStats, record=True):
        self.left -= 1
        ended = self.left == 0
        stats.outputs += len(ended)
        stats.legal += len(ended)
        for i in np.flatnonzero(ended):
            stats.end(-1.0 if i == 0 else 1.0, self.length[i], i != 0)
        self.left[ended] = self.length[ended]
        return [], None, ended, np.zeros_like(ended), None, None


def test_the_first_episodes_started_are_counted_long_ones_included():
    result = ScriptedPlayer(3).evaluate(4, 0.0, seed=0)
    # started first: env 0's loss (#0), env 1's and env 2's wins (#1, #2), env 1's next win (#3).
    # The first four to end are all wins (steps 1 and 2): that count read 1.0.
    assert result["episodes"] == 4 and result["success_rate"] == 0.75
    assert result["episode_return"] == 0.5
    assert result["success_ci95_low"] < 0.75 < result["success_ci95_high"]


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 30)[0] == 0.0 and wilson_interval(0, 30)[1] == pytest.approx(0.1135, abs=1e-4)
    assert wilson_interval(30, 30)[1] == 1.0


def test_episode_stats_judge_the_replies():
    from fastvlmrl.envs.games import GAMES

    stats = EpisodeStats()
    info = {"Target": 4, "Current": 1}
    for text in ('{"current number": "1", "target number": "4", "thoughts": "x", "action": "+"}',
                 '{"current number": "2", "target number": "4", "thoughts": "x", "action": "-"}',
                 'not json at all'):
        stats.judge(GAMES["NumberLine"], info, text, ("action",))
    summary = stats.summary()
    assert summary["thought/perception_correct"] == 0.5 and summary["thought/action_follows_thought"] == 0.5
    assert np.isnan(EpisodeStats().summary()["thought/perception_correct"])
