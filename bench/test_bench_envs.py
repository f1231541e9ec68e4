"""Env suite: steps/s (rendering 300x300 frames included) of the C batch with 1 and 2 threads and
of the Python reference games under gymnasium's SyncVectorEnv, per game, in the same run.

    pytest bench/test_bench_envs.py

Random actions (episodes end and autoreset as they come); steps/s counts env steps, autoreset
steps included, as both sides do the same work for them. The C batch runs zero-copy (copy=False,
as the trainer uses it); SyncVectorEnv runs with copy=False too, so neither side pays a copy.
"""

import gymnasium as gym
import numpy as np
import pytest

import fastvlmrl  # noqa: F401
from fastvlmrl.envs import reference
from fastvlmrl.envs.vector import BlackjackVectorEnv, EZPointsVectorEnv, NumberLineVectorEnv, Points24VectorEnv

GAMES = {
    "NumberLine": (NumberLineVectorEnv, reference.NumberLine),
    "EZPoints": (EZPointsVectorEnv, reference.EZPoints),
    "Points24": (Points24VectorEnv, reference.Points24),
    "Blackjack": (BlackjackVectorEnv, reference.Blackjack),
}
C_ENVS = 256  # per call; split over the threads
C_STEPS = 40
REF_ENVS = 8
REF_STEPS = 20
RESULTS: dict[tuple[str, str], float] = {}


def _actions(n_actions, num_envs, count, seed=0):
    return np.random.default_rng(seed).integers(0, n_actions, (count, num_envs))


def _steps_per_second(benchmark, step, actions, num_envs):
    def run():
        for a in actions:
            step(a)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    return len(actions) * num_envs / benchmark.stats.stats.median


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("game", list(GAMES))
def test_c_batch(benchmark, game, threads):
    envs = GAMES[game][0](C_ENVS, num_threads=threads, copy=False)
    envs.reset(seed=0)
    benchmark.group = f"envs-{game}"
    rate = _steps_per_second(benchmark, envs.step, _actions(envs.single_action_space.n, C_ENVS, C_STEPS), C_ENVS)
    RESULTS[(game, f"c{threads}")] = rate
    envs.close()


@pytest.mark.parametrize("game", list(GAMES))
def test_reference_sync_vector_env(benchmark, game):
    ref_class = GAMES[game][1]
    envs = gym.vector.SyncVectorEnv([ref_class for _ in range(REF_ENVS)], copy=False)
    envs.reset(seed=0)
    benchmark.group = f"envs-{game}"
    rate = _steps_per_second(benchmark, envs.step, _actions(envs.single_action_space.n, REF_ENVS, REF_STEPS), REF_ENVS)
    RESULTS[(game, "ref")] = rate
    envs.close()


def test_report(report):
    """Print the table (at the end of the session, whatever the flags: bench/conftest.py): steps/s,
    the C/reference ratio, and the 2-thread scaling."""
    lines = [
        "env steps/s, 300x300 frames rendered (C batch of 256 envs; reference: SyncVectorEnv of 8)",
        f"{'game':<11} {'C 1 thread':>12} {'C 2 threads':>12} {'reference':>11} {'C1/ref':>8} {'2t/1t':>6}",
    ]
    for game in GAMES:
        c1, c2, ref = (RESULTS.get((game, k), float("nan")) for k in ("c1", "c2", "ref"))  # nan: not run
        lines.append(f"{game:<11} {c1:>12,.0f} {c2:>12,.0f} {ref:>11,.0f} {c1 / ref:>7.0f}x {c2 / c1:>5.2f}x")
    report(*lines)
