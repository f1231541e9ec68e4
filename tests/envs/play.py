"""Play whole episodes on the C batch with a policy reading each env's info dict (fastvlmrl.envs.play)."""

from fastvlmrl.envs.play import play

from .conftest import VECTOR


def play_episodes(name, policy, episodes, *, num_envs=64, seed=0, on_start=None, **kwargs):
    """Returns (returns, lengths, starts) of `episodes` finished episodes; `policy(game, info)` -> action
    index; `on_start(info)` is recorded for each episode's first state."""
    envs = VECTOR[name](num_envs, height=32, width=32, copy=False, autoreset_mode="SameStep", **kwargs)
    result = play(envs, policy, episodes, seed=seed, on_start=on_start)
    envs.close()
    return result.returns, result.lengths, result.starts
