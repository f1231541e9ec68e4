"""Rules' edge cases, played on the C batch (the reference agrees by test_parity)."""

from fractions import Fraction

import numpy as np
import pytest

from fastvlmrl.envs.games import blackjack_total
from fastvlmrl.envs.reference import evaluate
from fastvlmrl.envs.reference.formula import DIVIDE, LPAREN, MINUS, PLUS, RPAREN, TIMES

from .conftest import VECTOR, find_seed

P24 = {"+": 10, "-": 11, "*": 12, "/": 13, "(": 14, ")": 15, "=": 16}
EZP = {"+": 10, "*": 11, "=": 12}


def play(name, seed, actions, **kwargs):
    """Play one env from `seed`; returns (rewards, terminated, truncated, final describe())."""
    envs = VECTOR[name](1, height=64, width=64, autoreset_mode="Disabled", **kwargs)
    envs.reset(seed=seed)
    out = []
    for a in actions:
        _, r, te, tr, _ = envs.step(np.array([a]))
        out.append((float(r[0]), bool(te[0]), bool(tr[0])))
    info = envs.describe(0)
    envs.close()
    return out, info


def num(n):  # the action index of number n
    return n - 1


# ---------------- NumberLine ----------------

def test_numberline_boundary_noop_costs_and_target_ends():
    seed = find_seed("NumberLine", lambda row: row[1] == 0 and row[0] == 2)  # current 0, target 2
    steps, info = play("NumberLine", seed, [0, 1, 1])
    assert steps == [(-1.0, False, False), (0.0, False, False), (1.0, True, False)]
    assert info == {"Target": 2, "Current": 2}


def test_numberline_wrong_way_costs_and_truncates_after_ten_steps():
    seed = find_seed("NumberLine", lambda row: row[1] == 5 and row[0] == 0)
    steps, _ = play("NumberLine", seed, [1] * 10)  # pushing against the top boundary
    assert [s[0] for s in steps] == [-1.0] * 10
    assert [s[2] for s in steps] == [False] * 9 + [True]
    assert not any(s[1] for s in steps)


def test_numberline_start_never_equals_target():
    envs = VECTOR["NumberLine"](2000, height=32, width=32, copy=False)
    envs.reset(seed=1)
    state = envs.state
    assert (state[:, 0] != state[:, 1]).all()
    assert set(state[:, 0]) <= set(range(6)) and set(state[:, 1]) == set(range(6))


# ---------------- EZPoints ----------------

def _values(row, k):
    return sorted(int(v) for v in row[4 : 4 + k])


def test_ezpoints_hands_are_always_solvable():
    envs = VECTOR["EZPoints"](3000, height=32, width=32, copy=False)
    envs.reset(seed=2)
    for row in envs.state:
        a, b = _values(row, 2)
        assert a + b == 12 or a * b == 12


def test_ezpoints_solution_invalid_number_and_unused_card():
    seed = find_seed("EZPoints", lambda row: _values(row, 2) == [2, 10])
    steps, info = play("EZPoints", seed, [num(2), EZP["+"], num(10), EZP["="]])
    assert steps[-1] == (10.0, True, False)
    assert info["Formula"] == ["2", "+", "10"]
    # a number not in the hand: -1 and a blank, the episode goes on
    steps, info = play("EZPoints", seed, [num(5)])
    assert steps == [(-1.0, False, False)] and info["Formula"] == [" "]
    # a number used twice is invalid too
    steps, info = play("EZPoints", seed, [num(2), EZP["*"], num(2)])
    assert steps[-1] == (-1.0, False, False) and info["Formula"] == ["2", "*", " "]
    # "=" before the formula uses both cards: -1 and the episode ends
    steps, _ = play("EZPoints", seed, [num(10), EZP["="]])
    assert steps[-1] == (-1.0, True, False)


def test_ezpoints_formula_length_limit_terminates():
    """The limit is a rule of the game the prompt shows (terminated), not a time limit: the
    trainer bootstraps only time limits (SPEC §1)."""
    seed = find_seed("EZPoints", lambda row: _values(row, 2) == [3, 4])
    steps, info = play("EZPoints", seed, [EZP["+"]] * 7)
    assert [s for s in steps[:6]] == [(0.0, False, False)] * 6
    assert steps[6] == (-1.0, True, False)
    assert len(info["Formula"]) == 6


def test_ezpoints_equals_uses_both_cards_with_blank_in_between():
    seed = find_seed("EZPoints", lambda row: _values(row, 2) == [3, 4])
    steps, _ = play("EZPoints", seed, [num(3), num(9), EZP["*"], num(4), EZP["="]])
    assert steps[1] == (-1.0, False, False)  # 9 is not in the hand: a blank, skipped by evaluation
    assert steps[-1] == (10.0, True, False)


# ---------------- Points24 ----------------

def _p24_seed(values):
    return find_seed("Points24", lambda row: _values(row, 4) == sorted(values))


def test_points24_exact_division_counts():
    """8 / (3 - 8 / 3) = 24 exactly; RL4VLM's float == rejected it."""
    seed = _p24_seed([3, 3, 8, 8])
    actions = [num(8), P24["/"], P24["("], num(3), P24["-"], num(8), P24["/"], num(3), P24[")"], P24["="]]
    steps, _ = play("Points24", seed, actions)
    assert steps[-1] == (10.0, True, False)
    assert all(s == (0.0, False, False) for s in steps[:-1])


def test_points24_division_by_zero_scores_minus_one():
    seed = _p24_seed([3, 3, 8, 8])
    actions = [num(8), P24["/"], P24["("], num(3), P24["-"], num(3), P24[")"], P24["*"], num(8), P24["="]]
    steps, _ = play("Points24", seed, actions)
    assert steps[-1] == (-1.0, True, False)


def test_points24_equals_with_unused_cards_scores_minus_one():
    seed = _p24_seed([3, 3, 8, 8])
    steps, _ = play("Points24", seed, [num(8), P24["*"], num(3), P24["="]])  # 24, but two cards unused
    assert steps[-1] == (-1.0, True, False)


def test_points24_adjacent_numbers_do_not_concatenate():
    seed = _p24_seed([1, 1, 2, 4])
    # Python's eval of "24*1*1" is 24; as tokens 2 and 4 are two numbers: malformed.
    steps, _ = play("Points24", seed, [num(2), num(4), P24["*"], num(1), P24["*"], num(1), P24["="]])
    assert steps[-1] == (-1.0, True, False)


def test_points24_formula_length_limit_terminates():
    seed = _p24_seed([3, 3, 8, 8])
    steps, info = play("Points24", seed, [P24["("]] * 22)
    assert steps[:21] == [(0.0, False, False)] * 21
    assert steps[21] == (-1.0, True, False)
    assert len(info["Formula"]) == 21


def test_points24_face_cards_count_ten_or_keep_rank():
    envs = VECTOR["Points24"](500, height=32, width=32, copy=False)
    envs.reset(seed=3)
    ranks = envs.state[:, 0:4] // 4 + 1
    np.testing.assert_array_equal(envs.state[:, 4:8], np.minimum(ranks, 10))
    assert envs.single_action_space.n == 17
    full = VECTOR["Points24"](500, height=32, width=32, copy=False, face_cards_as_10=False)
    full.reset(seed=3)
    np.testing.assert_array_equal(full.state[:, 4:8], full.state[:, 0:4] // 4 + 1)
    assert full.single_action_space.n == 20
    steps, _ = play("Points24", find_seed("Points24", lambda r: 13 in r[4:8], face_cards_as_10=False), [num(13)],
                    face_cards_as_10=False)
    assert steps == [(0.0, False, False)]


@pytest.mark.parametrize(
    "tokens, value",
    [
        ([8, DIVIDE, LPAREN, 3, MINUS, 8, DIVIDE, 3, RPAREN], Fraction(24)),
        ([MINUS, 3, PLUS, 5], Fraction(2)),
        ([2, TIMES, MINUS, 3], Fraction(-6)),
        ([1, DIVIDE, 3, PLUS, 1, DIVIDE, 3], Fraction(2, 3)),
        ([2, TIMES, TIMES, 3], None),  # not a power
        ([2, DIVIDE, DIVIDE, 3], None),  # not floor division
        ([LPAREN, 2, RPAREN, LPAREN, 3, RPAREN], None),
        ([2, 4], None),
        ([LPAREN, 2, PLUS, 3], None),
        ([], None),
        ([5, DIVIDE, LPAREN, 2, MINUS, 2, RPAREN], None),
    ],
)
def test_exact_evaluation(tokens, value):
    assert evaluate(tokens) == value


# ---------------- Blackjack ----------------

def test_blackjack_dealer_draws_to_seventeen_and_scores():
    envs = VECTOR["Blackjack"](3000, height=32, width=32, copy=False, autoreset_mode="Disabled")
    envs.reset(seed=4)
    before = envs.state
    _, rewards, terminated, _, _ = envs.step(np.zeros(3000, np.int64))  # everyone stands
    assert terminated.all()
    after = envs.state
    np.testing.assert_array_equal(after[:, 15:37], before[:, 15:37])  # the player's hand is unchanged
    for row, reward in zip(after, rewards):
        dealer = [c for c in row[3 : 3 + row[0]]]
        player = [c for c in row[15 : 15 + row[1]]]
        d, _ = blackjack_total(dealer)
        assert d >= 17
        assert blackjack_total(dealer[:-1])[0] < 17 or len(dealer) == 2  # stopped at the first 17+
        p = blackjack_total(player)[0]
        d_score = 0 if d > 21 else d
        assert reward == (p > d_score) - (p < d_score)
    envs.close()


def test_blackjack_hit_busts_exactly_over_21():
    envs = VECTOR["Blackjack"](3000, height=32, width=32, copy=False, autoreset_mode="Disabled")
    envs.reset(seed=5)
    _, rewards, terminated, truncated, _ = envs.step(np.ones(3000, np.int64))  # everyone hits
    busts = 0
    for row, reward, term in zip(envs.state, rewards, terminated):
        assert row[1] == 3 and row[0] == 2  # one card more for the player, none for the dealer
        bust = blackjack_total(row[15:18])[0] > 21
        busts += bust
        assert (reward, term) == ((-1.0, True) if bust else (0.0, False))
    assert 0 < busts < 3000 and not truncated.any()
    envs.close()


def test_blackjack_describe_shows_only_the_face_up_dealer_card():
    envs = VECTOR["Blackjack"](1, height=32, width=32)
    envs.reset(seed=6)
    info = envs.describe(0)
    row = envs.state[0]
    assert len(info["Dealer Card"]) == 1 and len(info["Player Card"]) == 2
    assert info["Dealer Card"][0][0] == min(row[3] // 4 + 1, 10)
