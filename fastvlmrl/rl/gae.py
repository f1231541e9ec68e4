"""Generalised advantage estimation over a rollout of num_steps x num_envs transitions."""

from __future__ import annotations

import torch


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each [T, N].

    rewards, values, dones: [T, N]; dones[t] marks that the episode ended with step t (terminated
    or truncated), so nothing flows back across it. last_values [N]: V of the state after the last
    step. Time-limit truncation is bootstrapped by the caller, who adds gamma * V(final state) to
    the reward of a truncated step (its state is not the next step's: that one is a new episode).
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    next_adv = torch.zeros_like(last_values, dtype=torch.float32)
    next_value = last_values.float()
    for t in reversed(range(T)):
        live = 1.0 - dones[t].float()
        delta = rewards[t].float() + gamma * next_value * live - values[t].float()
        next_adv = delta + gamma * lam * live * next_adv
        advantages[t] = next_adv
        next_value = values[t].float()
    return advantages, advantages + values.float()
