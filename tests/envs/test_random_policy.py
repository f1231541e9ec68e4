"""A uniformly random policy gives RL4VLM's statistics (SPEC §1: success, mean return and mean
episode length of the original games over 300 episodes), within the sampling error of both
estimates (3.5 standard errors)."""

import numpy as np
import pytest

from .conftest import fresh_seed
from .play import play_episodes

SPEC_EPISODES = 300
EPISODES = 3000
EXPECTED = {  # success, mean return, mean length
    "NumberLine": (0.32, -2.3, 6.0),
    "EZPoints": (0.00, -4.1, 5.5),
    "Points24": (0.00, -6.2, 11.9),
    "Blackjack": (0.28, -0.42, 1.3),
}


def _close(ours: np.ndarray, expected: float, what: str):
    spread = ours.std() * np.sqrt(1 / SPEC_EPISODES + 1 / len(ours))
    assert abs(ours.mean() - expected) <= 3.5 * spread + 0.01, (what, ours.mean(), expected, spread)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_random_policy_statistics(name):
    rng = np.random.default_rng(fresh_seed())
    returns, lengths, _ = play_episodes(name, lambda game, info: rng.integers(game.num_actions), EPISODES,
                                        seed=int(rng.integers(2**32)))
    success, mean_return, mean_length = EXPECTED[name]
    _close((returns > 0).astype(float), success, "success")
    _close(returns, mean_return, "return")
    _close(lengths.astype(float), mean_length, "length")
