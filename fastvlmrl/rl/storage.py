"""Rollout storage: one transition per env step per env, then GAE and mini-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvlmrl.distributed import current as current_world
from fastvlmrl.rl.gae import compute_gae


@dataclass
class Transition:
    """What PPO needs of one env step: the prompt it saw, its output, and the sampling-time numbers."""

    prompt_ids: torch.Tensor  # [P] int64, image placeholder tokens included
    mm: dict  # the sample's image inputs (e.g. pixel_values [1, 3, S, S]), batched by concatenation
    output_ids: torch.Tensor  # [O] int64
    logprobs: torch.Tensor  # [O] float32: each output token's log-prob at rollout time (sampling temperature)
    is_action: torch.Tensor  # [O] bool: the token belongs to the action part of the reply (the rest is thought)
    value: float  # V(state) at rollout time
    ref_logprobs: torch.Tensor | None = None  # [O] under the KL reference policy (ppo.kl_coef > 0)
    bonus: float = 0.0  # added to this step's return and advantage after GAE (GTR's format reward), env units


class RolloutStorage:
    def __init__(self, num_steps: int, num_envs: int, env_offset: int = 0, global_envs: int | None = None):
        """env_offset / global_envs: under torchrun this rank's envs are global envs env_offset ...
        of global_envs (mini-batches are drawn over the global rollout: `minibatches`)."""
        self.num_steps, self.num_envs = num_steps, num_envs
        self.env_offset, self.global_envs = env_offset, num_envs if global_envs is None else global_envs
        self.transitions: list[list[Transition | None]] = [[None] * num_envs for _ in range(num_steps)]
        self.rewards = torch.zeros(num_steps, num_envs)
        self.dones = torch.zeros(num_steps, num_envs, dtype=torch.bool)
        self.values = torch.zeros(num_steps, num_envs)
        self.advantages = torch.zeros(num_steps, num_envs)
        self.returns = torch.zeros(num_steps, num_envs)
        self.bonus = torch.zeros(num_steps, num_envs)

    def add(self, step: int, transitions: list[Transition], rewards, dones) -> None:
        self.transitions[step] = list(transitions)
        self.rewards[step] = torch.as_tensor(rewards, dtype=torch.float32)
        self.dones[step] = torch.as_tensor(dones, dtype=torch.bool)
        self.values[step] = torch.tensor([t.value for t in transitions], dtype=torch.float32)
        self.bonus[step] = torch.tensor([t.bonus for t in transitions], dtype=torch.float32)

    def finish(self, last_values, gamma: float, lam: float, normalize: bool, bonus_scale: float = 1.0) -> None:
        """Advantages and returns; advantages normalised over the whole rollout if asked. Each
        step's bonus (times `bonus_scale`: the rewards' scale) is added to its return and its
        advantage after GAE, not discounted back to earlier steps (GTR's format reward)."""
        adv, ret = compute_gae(self.rewards, self.values, self.dones, torch.as_tensor(last_values).float(), gamma, lam)
        adv, ret = adv + bonus_scale * self.bonus, ret + bonus_scale * self.bonus
        self.returns = ret
        if normalize:  # over the global rollout under torchrun: every rank's envs
            total, squares, count = current_world().sum([float(adv.double().sum()), float((adv.double() ** 2).sum()),
                                                         float(adv.numel())])
            if count > 1:
                mean = total / count
                std = max((squares - count * mean**2) / (count - 1), 0.0) ** 0.5
                adv = (adv - mean) / (std + 1e-8)
        self.advantages = adv

    def critic_stats(self) -> dict[str, float]:
        """How well the rollout's values predicted its returns (call after `finish`):
        explained variance 1 - Var(R - V) / Var(R) (1 = perfect, 0 = no better than the mean,
        NaN when the returns do not vary), and the mean value and return."""
        values, returns = self.values.flatten().double(), self.returns.flatten().double()
        errors = returns - values
        n, r, r2, e, e2, v = current_world().sum([returns.numel(), returns.sum(), (returns**2).sum(), errors.sum(),
                                                 (errors**2).sum(), values.sum()])  # over every rank's envs
        variance = lambda total, squares: (squares - total**2 / n) / (n - 1) if n > 1 else 0.0  # noqa: E731
        spread = variance(r, r2)
        explained = 1 - variance(e, e2) / spread if spread > 1e-12 * max(r2 / max(n, 1), 1.0) else float("nan")
        return {"critic/explained_variance": float(explained), "critic/value_mean": v / max(n, 1),
                "critic/return_mean": r / max(n, 1)}

    def samples(self) -> list[tuple[Transition, float, float]]:
        """(transition, advantage, return) for every step of every env."""
        out = []
        for t in range(self.num_steps):
            for n in range(self.num_envs):
                out.append((self.transitions[t][n], float(self.advantages[t, n]), float(self.returns[t, n])))
        return out

    def minibatches(self, size: int, generator: torch.Generator):
        """Shuffled mini-batches of `size` samples of the global rollout (the last one may be
        smaller), each as this rank's part of it: every rank draws the same order over every
        rank's samples (the single process's) and keeps its own envs' (possibly none)."""
        samples = self.samples()
        order = torch.randperm(self.num_steps * self.global_envs, generator=generator).tolist()
        for i in range(0, len(order), size):
            part = []
            for j in order[i : i + size]:
                step, env = divmod(j, self.global_envs)
                if self.env_offset <= env < self.env_offset + self.num_envs:
                    part.append(samples[step * self.num_envs + env - self.env_offset])
            yield part


class SampleStorage:
    """Samples with their advantages given (the group algorithms compute them per episode and step):
    the part of RolloutStorage's interface the PPO update reads.

    offset / total: under torchrun this rank's samples are samples offset ... of the global
    rollout's `total` (every rank's, in rank order: `for_world`); mini-batches are drawn over the
    global rollout as in RolloutStorage."""

    def __init__(self, samples: list[tuple[Transition, float, float]], offset: int = 0, total: int | None = None):
        self._samples = list(samples)
        self.offset, self.total = offset, len(self._samples) if total is None else total
        if not 0 <= self.offset <= self.total - len(self._samples):
            raise ValueError(f"samples {offset}..{offset + len(self._samples)} do not fit a rollout of {self.total}")
        self.transitions = [[t for t, _, _ in self._samples]]

    @classmethod
    def for_world(cls, samples: list[tuple[Transition, float, float]]) -> SampleStorage:
        """This rank's samples placed in the global rollout (every rank's counts gathered)."""
        counts = current_world().gather(len(samples))
        rank = current_world().rank
        return cls(samples, offset=sum(counts[:rank]), total=sum(counts))

    def samples(self) -> list[tuple[Transition, float, float]]:
        return list(self._samples)

    def minibatches(self, size: int, generator: torch.Generator):
        """Shuffled mini-batches of `size` samples of the global rollout, each as this rank's part
        of it (possibly none): every rank draws the same order over every rank's samples."""
        order = torch.randperm(self.total, generator=generator).tolist()
        end = self.offset + len(self._samples)
        for i in range(0, len(order), size):
            yield [self._samples[j - self.offset] for j in order[i : i + size] if self.offset <= j < end]
