"""A uniformly random policy gives RL4VLM's statistics (SPEC §1, measured over 300 episodes of the
original games): success, mean return and mean episode length."""

import numpy as np
import pytest

from .play import play_episodes

# success, return, length; and tolerances wide enough for 300-episode reference figures
EXPECTED = {
    "NumberLine": (0.32, -2.3, 6.0),
    "EZPoints": (0.00, -4.1, 5.5),
    "Points24": (0.00, -6.2, 11.9),
    "Blackjack": (0.28, -0.42, 1.3),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_random_policy_statistics(name):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    returns, lengths, _ = play_episodes(name, lambda game, info: rng.integers(game.num_actions), 3000, seed=1)
    success, mean_return, mean_length = EXPECTED[name]
    assert (returns > 0).mean() == pytest.approx(success, abs=0.05)
    assert returns.mean() == pytest.approx(mean_return, abs=max(0.1 * abs(mean_return), 0.1))
    assert lengths.mean() == pytest.approx(mean_length, rel=0.08)
