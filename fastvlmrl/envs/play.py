"""Play whole episodes on the C batch with a policy that reads each env's info dict, and the
statistics of what was played (`fastvlmrl envs`, the tests of the oracles and random policies).

    envs = make_batch("EZPoints", 64, copy=False, autoreset_mode="SameStep")
    result = play(envs, lambda game, info: oracle_step(game, info).action, 500, seed=0)
    result.success_rate(500), result.steps_per_second
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from gymnasium.vector import AutoresetMode

from fastvlmrl.envs.games import Game
from fastvlmrl.envs.oracles import OracleStep, oracle_step
from fastvlmrl.envs.vector import CardsVectorEnv, make_batch

Policy = Callable[[Game, dict], int]  # (game, info dict) -> action index


@dataclass
class PlayResult:
    """Every episode that finished, in the order they ended (at least the number asked for)."""

    returns: np.ndarray  # float [episodes]
    lengths: np.ndarray  # int [episodes]
    starts: list = field(default_factory=list)  # on_start(info) of each episode's first state
    steps: int = 0  # env steps taken (every env of every batch step)
    env_seconds: float = 0.0  # time spent inside envs.step

    def success_rate(self, n: int | None = None) -> float:
        """The fraction of the first n episodes (all by default) with a positive return."""
        return float(np.mean(self.returns[:n] > 0))

    def mean_return(self, n: int | None = None) -> float:
        return float(np.mean(self.returns[:n]))

    def mean_length(self, n: int | None = None) -> float:
        return float(np.mean(self.lengths[:n]))

    @property
    def steps_per_second(self) -> float:
        """Env steps per second of envs.step alone (SameStep, so final frames are copied out)."""
        return self.steps / self.env_seconds if self.env_seconds > 0 else float("nan")


def play(envs: CardsVectorEnv, policy: Policy, episodes: int, *, seed: int = 0,
         on_start: Callable[[dict], object] | None = None,
         on_episode: Callable[[float, int], None] | None = None) -> PlayResult:
    """Reset `envs` with `seed` and step it until `episodes` episodes have finished.

    `envs` must autoreset in the same step (autoreset_mode="SameStep"), so that every step of every
    env belongs to an episode. `policy(game, info)` gives env i's action from `envs.describe(i)`;
    `on_start(info)` is recorded for each episode's first state; `on_episode(return, length)` is
    called as each episode ends."""
    if envs.metadata["autoreset_mode"] != AutoresetMode.SAME_STEP:
        raise ValueError("play needs a batch made with autoreset_mode='SameStep'")
    n = envs.num_envs
    envs.reset(seed=seed)
    ret = np.zeros(n)
    length = np.zeros(n, int)
    start = [on_start(envs.describe(i)) if on_start else None for i in range(n)]
    returns, lengths, starts = [], [], []
    actions = np.zeros(n, np.int64)
    steps, env_seconds = 0, 0.0
    while len(returns) < episodes:
        for i in range(n):
            actions[i] = policy(envs.game, envs.describe(i))
        begin = time.perf_counter()
        _, rewards, terminated, truncated, _ = envs.step(actions)
        env_seconds += time.perf_counter() - begin
        steps += n
        ret += rewards
        length += 1
        for i in np.flatnonzero(terminated | truncated):
            returns.append(ret[i])
            lengths.append(length[i])
            starts.append(start[i])
            if on_episode:
                on_episode(float(ret[i]), int(length[i]))
            ret[i], length[i] = 0, 0
            start[i] = on_start(envs.describe(i)) if on_start else None
    return PlayResult(np.array(returns), np.array(lengths), starts, steps, env_seconds)


def reply_policy(name: str, seed: int = 0) -> Callable[[Game, dict], OracleStep]:
    """policy(game, info) -> OracleStep (action and reply text): "oracle", or "random" (uniform
    actions from a generator seeded with `seed`, the reply names the action)."""
    if name == "oracle":
        return oracle_step
    if name != "random":
        raise ValueError(f"policy must be 'oracle' or 'random', got {name!r}")
    rng = np.random.default_rng(seed)

    def random_step(game, info):
        action = int(rng.integers(game.num_actions))
        return OracleStep(action, "", json.dumps({"action": game.actions[action]}))

    return random_step


def zero_copy_steps_per_second(game: str, num_envs: int, *, num_threads: int = 1, calls: int = 500,
                               seed: int = 0) -> float:
    """Env steps per second of the batch as bench/test_bench_envs.py runs it (the zero-copy path):
    autoreset NextStep, copy=False (no copies), 300x300 frames, random actions."""
    envs = make_batch(game, num_envs, copy=False, num_threads=num_threads)
    envs.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, envs.game.num_actions, (calls, num_envs))
    for a in actions[:10]:  # warm-up
        envs.step(a)
    begin = time.perf_counter()
    for a in actions:
        envs.step(a)
    seconds = time.perf_counter() - begin
    envs.close()
    return calls * num_envs / seconds


def start_state_seeds(game: str, *, max_states: int = 64, scan: int = 4096, **options) -> list[int] | None:
    """One seed per distinct start state, when a game has at most `max_states` of them among the
    first `scan` seeds (NumberLine: its 30 (target, current) pairs), so that an evaluation can
    cover them exactly; None for games with more (the card games' hands)."""
    from fastvlmrl.envs.games.base import state_fields

    envs = make_batch(game, scan, height=32, width=32, **options)
    envs.reset(seed=0)
    rows = envs.state
    envs.close()
    rows[:, state_fields(envs.game.name)["steps"]] = 0
    first: dict[bytes, int] = {}
    for seed, row in enumerate(rows):
        first.setdefault(row.tobytes(), seed)
        if len(first) > max_states:
            return None
    return sorted(first.values())
