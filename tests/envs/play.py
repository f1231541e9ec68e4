"""Play whole episodes on the C batch with a policy reading each env's info dict."""

import numpy as np

from .conftest import VECTOR


def play_episodes(name, policy, episodes, *, num_envs=64, seed=0, on_start=None, **kwargs):
    """Returns (returns, lengths, starts) of `episodes` finished episodes; `policy(game, info)` -> action
    index; `on_start(info)` is recorded for each episode's first state."""
    envs = VECTOR[name](num_envs, height=32, width=32, copy=False, autoreset_mode="SameStep", **kwargs)
    envs.reset(seed=seed)
    ret = np.zeros(num_envs)
    length = np.zeros(num_envs, int)
    start = [on_start(envs.describe(i)) if on_start else None for i in range(num_envs)]
    returns, lengths, starts = [], [], []
    actions = np.zeros(num_envs, np.int64)
    while len(returns) < episodes:
        for i in range(num_envs):
            actions[i] = policy(envs.game, envs.describe(i))
        _, rewards, terminated, truncated, _ = envs.step(actions)
        ret += rewards
        length += 1
        for i in np.flatnonzero(terminated | truncated):
            returns.append(ret[i])
            lengths.append(length[i])
            starts.append(start[i])
            ret[i], length[i] = 0, 0
            start[i] = on_start(envs.describe(i)) if on_start else None
    envs.close()
    return np.array(returns), np.array(lengths), starts
