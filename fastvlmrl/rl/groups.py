"""Critic-free advantages from groups of episodes that start in the same state (algo.name).

- GRPO: K episodes from each start state; every step of episode i gets the episode-level
  advantage A_i = (R_i - mean_group R) / (std_group R + eps).
- GiGPO: GRPO's episode advantage plus a step-level one. Within an episode group, steps taken in
  the same env state (the exact C state row: the anchor state) form a step group, and each step's
  discounted return G_t = sum_k gamma^k r_(t+k) is normalised within it:
  A_t = A_i + step_weight * (G_t - mean_stepgroup G) / (std_stepgroup G + eps). A step group of one
  step adds nothing. (GiGPO matches states by observation; the integer state rows make it exact.)

std is the population standard deviation; a group whose returns are all equal gives 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-6


@dataclass
class Episode:
    """One episode of a group rollout: its steps' transitions, rewards and anchor-state keys."""

    group: int  # the start state it shares with the other episodes of its group
    transitions: list = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)  # the state row each step acted in

    @property
    def total_return(self) -> float:
        return float(sum(self.rewards))


def _normalised(values: np.ndarray) -> np.ndarray:
    if len(values) < 2:
        return np.zeros_like(values)
    return (values - values.mean()) / (values.std() + EPS)


def episode_advantages(episodes: list[Episode]) -> list[float]:
    """GRPO's advantage of each episode: its return normalised within its group."""
    out = np.zeros(len(episodes))
    by_group = defaultdict(list)
    for i, e in enumerate(episodes):
        by_group[e.group].append(i)
    for members in by_group.values():
        out[members] = _normalised(np.array([episodes[i].total_return for i in members]))
    return out.tolist()


def discounted_returns(rewards: list[float], gamma: float) -> list[float]:
    out, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def step_advantages(episodes: list[Episode], gamma: float) -> list[list[float]]:
    """GiGPO's step-level advantage of every step: its discounted return normalised among the steps
    of the same episode group taken in the same state."""
    returns = [discounted_returns(e.rewards, gamma) for e in episodes]
    out = [[0.0] * len(e.rewards) for e in episodes]
    by_anchor = defaultdict(list)
    for i, e in enumerate(episodes):
        for t, key in enumerate(e.states):
            by_anchor[(e.group, key)].append((i, t))
    for steps in by_anchor.values():
        values = _normalised(np.array([returns[i][t] for i, t in steps]))
        for (i, t), value in zip(steps, values):
            out[i][t] = float(value)
    return out


def group_advantages(episodes: list[Episode], algo: str, *, gamma: float, step_weight: float = 1.0) -> list[list[float]]:
    """The advantage of every step of every episode under `algo` ("grpo" or "gigpo")."""
    if algo not in ("grpo", "gigpo"):
        raise ValueError(f"group advantages are for grpo or gigpo, not {algo!r}")
    per_episode = episode_advantages(episodes)
    advantages = [[a] * len(e.rewards) for a, e in zip(per_episode, episodes)]
    if algo == "gigpo":
        for row, steps in zip(advantages, step_advantages(episodes, gamma)):
            for t, value in enumerate(steps):
                row[t] += step_weight * value
    return advantages
