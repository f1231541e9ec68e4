"""Our Blackjack against gymnasium's Blackjack-v1: the same outcome frequencies under a fixed
policy (hit below 17) over 100,000 episodes each, within sampling error."""

import gymnasium as gym
import numpy as np

from fastvlmrl.envs.games import blackjack_total

from .conftest import VECTOR, fresh_seed


def _ours(episodes, seed):
    envs = VECTOR["Blackjack"](2048, height=32, width=32, copy=False, autoreset_mode="SameStep")
    envs.reset(seed=seed)
    outcomes = []
    while len(outcomes) < episodes:
        state = envs.state
        totals = np.array([blackjack_total(row[15 : 15 + row[1]])[0] for row in state])
        _, rewards, terminated, truncated, _ = envs.step((totals < 17).astype(np.int64))
        outcomes.extend(rewards[terminated | truncated].tolist())
    envs.close()
    return np.array(outcomes[:episodes])


def _gymnasium(episodes, seed):
    env = gym.make("Blackjack-v1", natural=False, sab=False).unwrapped
    outcomes = np.empty(episodes)
    obs, _ = env.reset(seed=seed)
    for k in range(episodes):
        while True:
            obs, reward, terminated, truncated, _ = env.step(int(obs[0] < 17))
            if terminated or truncated:
                outcomes[k] = reward
                obs, _ = env.reset()
                break
    return outcomes


def test_outcome_frequencies_match_gymnasium_blackjack_v1():
    n = 100_000
    seed = fresh_seed() % 2**32
    ours, theirs = _ours(n, seed), _gymnasium(n, seed)
    for outcome in (-1.0, 0.0, 1.0):
        p, q = (ours == outcome).mean(), (theirs == outcome).mean()
        pooled = (p + q) / 2
        se = np.sqrt(2 * pooled * (1 - pooled) / n)
        assert abs(p - q) < 4.5 * se, (outcome, p, q, se)
