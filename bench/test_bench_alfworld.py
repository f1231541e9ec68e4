"""ALFWorld suite: env steps/s and resets/s of ALFWorld's text engine, stock vs memoized TextWorld
(fastvlmrl/envs/alfworld/fast_textworld.py) in one process, and the memoized engine in one
process vs the process pool (ALFWorldVectorEnv), in the same run.

    pytest bench/test_bench_alfworld.py

Generated games (one per task type, seed 0); random admissible commands. A step is one command
and its observation and admissible commands; a reset re-creates the game's start state (the game
already loaded); a load reads and translates a game file. The pool's steps/s count every env's
step, game loads at autoreset included (each episode draws a new game), as the trainer sees them.
"""

import random
import time

import pytest

pytest.importorskip("alfworld")

from fastvlmrl.envs.alfworld import fast_textworld  # noqa: E402
from fastvlmrl.envs.alfworld.engine import TextGame  # noqa: E402
from fastvlmrl.envs.alfworld.generate import generate  # noqa: E402
from fastvlmrl.envs.alfworld.vector import ALFWorldVectorEnv  # noqa: E402

STEPS = 60
RESETS = 6
POOL_ENVS = (1, 2, 4, 8)
POOL_STEPS = 40
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    return generate(str(tmp_path_factory.mktemp("alfworld-bench")), 6, seed=0)


def _engine_rates(games, memoize: bool) -> tuple[float, float, float]:
    """(steps/s, resets/s, loads/s) of one engine over every game."""
    if not memoize:
        fast_textworld.uninstall()
    engine = TextGame(memoize=memoize)
    rng = random.Random(0)
    step_s = reset_s = load_s = 0.0
    steps = resets = loads = 0
    for path in games * (2 if memoize else 1):  # the memoized engine's second pass: its caches warm
        tick = time.perf_counter()
        engine.load(path)
        load_s += time.perf_counter() - tick
        loads += 1
        for _ in range(RESETS):
            tick = time.perf_counter()
            obs = engine.reset()
            reset_s += time.perf_counter() - tick
            resets += 1
        for _ in range(STEPS // len(games)):
            command = rng.choice(obs.admissible)
            tick = time.perf_counter()
            obs, _, _ = engine.step(command)
            step_s += time.perf_counter() - tick
            steps += 1
    return steps / step_s, resets / reset_s, loads / load_s


@pytest.mark.parametrize("memoize", [False, True])
def test_engine(benchmark, games, memoize):
    benchmark.group = "alfworld-engine"
    rates = benchmark.pedantic(lambda: _engine_rates(games, memoize), rounds=1, iterations=1)
    name = "memoized" if memoize else "stock"
    RESULTS[f"{name}_step"], RESULTS[f"{name}_reset"], RESULTS[f"{name}_load"] = rates


@pytest.mark.parametrize("num_envs", POOL_ENVS)
def test_pool(benchmark, games, num_envs):
    benchmark.group = "alfworld-pool"
    envs = ALFWorldVectorEnv(games, num_envs, seed=0)
    rng = random.Random(0)
    envs.reset(seed=0)

    def run():
        for _ in range(POOL_STEPS):
            envs.step([rng.choice(envs.describe(i)["admissible_commands"]) for i in range(num_envs)])

    benchmark.pedantic(run, rounds=1, warmup_rounds=1, iterations=1)
    RESULTS[f"pool{num_envs}"] = POOL_STEPS * num_envs / benchmark.stats.stats.median
    envs.close()


def test_report(report):
    if "stock_step" not in RESULTS or "memoized_step" not in RESULTS:
        pytest.skip("run the whole suite")
    lines = ["ALFWorld text engine, one process:",
             f"{'':<10} {'steps/s':>9} {'resets/s':>9} {'loads/s':>8}"]
    for name in ("stock", "memoized"):
        lines.append(f"{name:<10} {RESULTS[name + '_step']:>9.1f} {RESULTS[name + '_reset']:>9.1f} "
                     f"{RESULTS[name + '_load']:>8.2f}")
    lines.append(f"memoized/stock: steps {RESULTS['memoized_step'] / RESULTS['stock_step']:.1f}x, resets "
                 f"{RESULTS['memoized_reset'] / RESULTS['stock_reset']:.1f}x, loads "
                 f"{RESULTS['memoized_load'] / RESULTS['stock_load']:.1f}x")
    pools = [n for n in POOL_ENVS if f"pool{n}" in RESULTS]
    if pools:
        lines.append("process pool (memoized, autoreset loads included): " + ", ".join(
            f"{n} envs {RESULTS[f'pool{n}']:.1f} steps/s" for n in pools))
    report(*lines)
