"""Oracle success rates: NumberLine and EZPoints always win, Points24 wins exactly the solvable
hands (73.1% of deals), Blackjack's basic strategy wins about 42-43%."""

import json

import numpy as np
import pytest

from fastvlmrl.envs import solver
from fastvlmrl.envs.oracles import blackjack_basic_strategy, oracle_step
from fastvlmrl.envs.parse import parse_action

from .conftest import fresh_seed
from .play import play_episodes


def oracle(game, info):
    step = oracle_step(game, info)
    assert parse_action(game, step.text) == (step.action, True)  # its reply parses to its action
    return step.action


@pytest.mark.parametrize("name", ["NumberLine", "EZPoints"])
def test_oracle_always_wins(name):
    returns, _, _ = play_episodes(name, oracle, 600, seed=fresh_seed() % 2**32)
    assert (returns > 0).all()


def test_points24_oracle_wins_exactly_the_solvable_hands():
    returns, _, starts = play_episodes(
        "Points24", oracle, 250, seed=fresh_seed() % 2**32,
        on_start=lambda info: solver.solvable(info["Numbers"], 24),
    )
    wins = returns > 0
    np.testing.assert_array_equal(wins, np.array(starts))
    assert returns[wins].min() == 10 and returns[~wins].max() == -1  # unsolvable: "=" at once


def test_points24_solvable_fraction_of_deals_is_73_1_percent():
    assert solver.solvable_fraction() == pytest.approx(0.7309, abs=5e-4)


def test_blackjack_basic_strategy_wins_about_42_percent():
    returns, _, _ = play_episodes("Blackjack", oracle, 20_000, num_envs=512, seed=7)
    win = (returns > 0).mean()
    assert 0.415 < win < 0.44  # ±3.5 standard errors around 42.7%


def test_oracle_replies_follow_the_prompt_keys():
    keys = {
        "NumberLine": ["current number", "target number", "thoughts", "action"],
        "EZPoints": ["cards", "current formula", "thoughts", "action"],
        "Points24": ["cards", "current formula", "thoughts", "action"],
        "Blackjack": ["thoughts", "action"],
    }
    infos = {
        "NumberLine": {"Target": 4, "Current": 1},
        "EZPoints": {"Cards": ["H3", "S4"], "Numbers": [3, 4], "Formula": ["3"]},
        "Points24": {"Cards": ["H8", "S3", "D8", "C3"], "Numbers": [8, 3, 8, 3], "Formula": ["8", "/"]},
        "Blackjack": {"Dealer Card": [(10, "K", "S")], "Player Card": [(1, "A", "H"), (6, "6", "D")]},
    }
    for name, info in infos.items():
        step = oracle_step(name, info)
        reply = json.loads(step.text)
        assert list(reply) == keys[name]
        assert json.loads(oracle_step(name, info, cot=False).text) == {"action": reply["action"]}
    assert json.loads(oracle_step("Points24", infos["Points24"]).text)["action"] == "("
    assert json.loads(oracle_step("EZPoints", infos["EZPoints"]).text)["action"] == "*"
    bj = json.loads(oracle_step("Blackjack", infos["Blackjack"]).text)
    assert bj["action"] == "hit" and "soft total of 17" in bj["thoughts"]


def test_formula_oracle_ends_off_path_and_complete_formulas():
    assert oracle_step("EZPoints", {"Numbers": [3, 4], "Formula": ["3", "+", "4"]}).action == 12  # 7: lost
    assert oracle_step("EZPoints", {"Numbers": [3, 4], "Formula": ["3", "*", "4"]}).action == 12  # done
    step = oracle_step("Points24", {"Numbers": [1, 1, 1, 1], "Formula": []})
    assert step.action == 16 and "No formula" in step.thoughts


@pytest.mark.parametrize(
    "total, soft, dealer, action",
    [(11, False, 10, "hit"), (12, False, 4, "stand"), (12, False, 3, "hit"), (16, False, 7, "hit"),
     (13, False, 6, "stand"), (17, False, 11, "stand"), (17, True, 6, "hit"), (18, True, 9, "hit"),
     (18, True, 8, "stand"), (19, True, 10, "stand")],
)
def test_basic_strategy_table(total, soft, dealer, action):
    assert blackjack_basic_strategy(total, soft, dealer) == action


def test_every_solution_is_exactly_right_by_the_env_evaluator():
    from fractions import Fraction

    from fastvlmrl.envs.games import TOKEN_OF_TEXT
    from fastvlmrl.envs.reference import evaluate

    rng = np.random.default_rng(fresh_seed())
    for _ in range(40):
        numbers = tuple(int(v) for v in rng.integers(1, 11, 4))
        sols = solver.solutions(numbers, 24)
        assert bool(sols) == solver.solvable(numbers, 24)
        for sol in sols:
            codes = [t if isinstance(t, int) else TOKEN_OF_TEXT[t] for t in sol]
            assert evaluate(codes) == Fraction(24)
            assert sorted(t for t in sol if isinstance(t, int)) == sorted(numbers)
