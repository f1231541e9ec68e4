"""The exact corrector on hand-written right and wrong thoughts for every game: what it reads
(each field the reply states), the formula a thought proposes, whether the decision is an expert
move, the verdict, and the corrected thought (the oracle's, truthful)."""

import json

import numpy as np
import pytest

from fastvlmrl.envs.games import get_game
from fastvlmrl.envs.oracles import oracle_step
from fastvlmrl.envs.parse import strict_reply
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.correction import CORRECT, UNPARSABLE, WRONG, CorrectionItem, corrected_reply
from fastvlmrl.gtr.oracle_corrector import OracleCorrector

FRAME = np.zeros((8, 8, 3), np.uint8)


def judge(game_name, info, reply):
    game = get_game(game_name)
    text = reply if isinstance(reply, str) else json.dumps(reply)
    return OracleCorrector(game).correct(CorrectionItem(FRAME, "", text, info, strict_reply(text, reply_keys(game))))


NL = {"Target": 4, "Current": 1}


def nl(current="1", target="4", thoughts="The current number is 1 and the target number is 4. 1 is less than 4, "
       "so I should add one.", action="+"):
    return {"current number": current, "target number": target, "thoughts": thoughts, "action": action}


def test_numberline():
    assert judge("NumberLine", NL, nl()).verdict == CORRECT
    misread = judge("NumberLine", NL, nl(current="2"))
    assert misread.verdict == WRONG and misread.answers == {"numbers": False, "decision": True, "action_follows": True}
    assert misread.corrected_thought == {k: v for k, v in json.loads(oracle_step("NumberLine", NL).text).items()
                                         if k != "action"}
    wrong_way = judge("NumberLine", NL, nl(thoughts="1 is greater than 4, so I should subtract one.", action="-"))
    assert wrong_way.verdict == WRONG and wrong_way.answers == {"numbers": True, "decision": False, "action_follows": True}
    # a right thought followed by another action: the action does not follow from it
    contradicts = judge("NumberLine", NL, nl(action="-"))
    assert contradicts.verdict == WRONG and contradicts.answers == {"numbers": True, "decision": True,
                                                                    "action_follows": False}
    # a thought that names no decision is judged by its action
    assert judge("NumberLine", NL, nl(thoughts="hmm", action="+")).verdict == CORRECT
    assert judge("NumberLine", NL, nl(thoughts="hmm", action="-")).verdict == WRONG
    assert judge("NumberLine", NL, nl(current="one")).answers["numbers"] is False


P24 = {"Cards": ["C7", "SA", "S3", "S4"], "Numbers": [7, 1, 3, 4], "Formula": ["3", "*"]}


def p24(cards=(7, 1, 3, 4), formula="3 *", thoughts="The cards are [7, 1, 3, 4]. The current formula is 3 * and not "
        "complete. 3 * 7 + 4 - 1 = 24 uses every card, so I append '7'.", action="7"):
    return {"cards": list(cards), "current formula": formula, "thoughts": thoughts, "action": action}


def test_points24_checks_each_field_the_reply_states():
    right = judge("Points24", P24, p24())
    assert right.verdict == CORRECT and right.solvable is True and right.target.startswith("3 *")
    assert right.answers == {"cards": True, "current_formula": True, "proposed_formula": True, "decision": True,
                             "action_follows": True}
    assert judge("Points24", P24, p24(cards=(7, 1, 3, 5))).answers["cards"] is False
    assert judge("Points24", P24, p24(cards=(1, 3, 4, 7))).answers["cards"] is True  # any order
    assert judge("Points24", P24, p24(formula="3 +")).answers["current_formula"] is False
    # a proposed formula that is not 24, or does not extend the current formula, or misses a card
    for wrong in ("3 * 7 + 4 + 1 = 24", "7 * 3 + 4 - 1 = 24", "3 * 7 + 4 = 24"):
        c = judge("Points24", P24, p24(thoughts=f"{wrong} uses every card, so I append '7'."))
        assert c.verdict == WRONG and c.answers["proposed_formula"] is False, wrong
    # another solution that extends the formula is right too, with extra parentheses
    c = judge("Points24", P24, p24(thoughts="3 * 7 + ( 4 - 1 ) = 24 uses every card, so I append '7'."))
    assert c.verdict == CORRECT and c.answers["proposed_formula"] is True
    # a decision no solution takes
    c = judge("Points24", P24, p24(thoughts="so I append '2'.", action="2"))
    assert c.verdict == WRONG and c.answers["decision"] is False
    assert c.corrected_thought["cards"] == [7, 1, 3, 4] and "append" in c.corrected_thought["thoughts"]


def test_points24_complete_unsolvable_and_unparsable():
    done = {**P24, "Formula": ["3", "*", "7", "+", "4", "-", "1"]}
    complete = p24(formula="3 * 7 + 4 - 1", thoughts="The current formula '3 * 7 + 4 - 1' equals 24 and uses every "
                   "card, so it is complete.", action="=")
    assert judge("Points24", done, complete).verdict == CORRECT
    assert judge("Points24", done, {**complete, "thoughts": "so I append '+'.", "action": "+"}).verdict == WRONG
    hopeless = {"Cards": ["CA", "DA", "HA", "SA"], "Numbers": [1, 1, 1, 1], "Formula": []}
    reply = {"cards": [1, 1, 1, 1], "current formula": "", "thoughts": "No formula with these cards makes 24, "
             "so I end the game.", "action": "="}
    c = judge("Points24", hopeless, reply)
    assert c.verdict == CORRECT and c.solvable is False and c.target is None
    assert judge("Points24", hopeless, {**reply, "thoughts": "so I append '1'.", "action": "1"}).verdict == WRONG
    for text in ("not json", '{"action": "="}', json.dumps(p24())[:-2]):  # no JSON, missing keys, cut off
        assert judge("Points24", P24, text).verdict == UNPARSABLE


def test_ezpoints():
    info = {"Cards": ["C10", "D2"], "Numbers": [10, 2], "Formula": ["10"]}
    reply = {"cards": [10, 2], "current formula": "10", "thoughts": "10 + 2 = 12 uses every card, so I append '+'.",
             "action": "+"}
    assert judge("EZPoints", info, reply).verdict == CORRECT
    assert judge("EZPoints", info, {**reply, "thoughts": "10 * 2 = 12 uses every card, so I append '*'.",
                                    "action": "*"}).answers["proposed_formula"] is False


def test_blackjack():
    info = {"Dealer Card": [(10, "K", "S")], "Player Card": [(10, "10", "H"), (6, "6", "C")]}
    thought = "My cards are 10, 6, a total of 16. The dealer shows K, worth 10. With 16 against 10, basic strategy is to hit."
    assert judge("Blackjack", info, {"thoughts": thought, "action": "hit"}).verdict == CORRECT
    stand = judge("Blackjack", info, {"thoughts": thought.replace("to hit", "to stand"), "action": "stand"})
    assert stand.verdict == WRONG and stand.answers == {"totals": True, "decision": False, "action_follows": True}
    misread = judge("Blackjack", info, {"thoughts": thought.replace("total of 16", "total of 15"), "action": "hit"})
    assert misread.answers["totals"] is False
    assert "total of 16" in misread.corrected_thought["thoughts"]


@pytest.mark.parametrize("game_name", ["NumberLine", "EZPoints", "Points24", "Blackjack"])
def test_the_oracles_own_replies_are_correct_and_its_noisy_ones_are_caught(game_name):
    from fastvlmrl.envs.vector import make_batch

    envs = make_batch(game_name, 16, height=32, width=32)
    envs.reset(seed=3)
    game = envs.game
    rng = np.random.default_rng(0)
    for _ in range(4):
        for i in range(16):
            info = envs.describe(i)
            assert judge(game_name, info, oracle_step(game, info).text).verdict == CORRECT, info
            action = int(rng.integers(game.num_actions))
            noisy = judge(game_name, info, oracle_step(game, info, action=action).text)
            assert noisy.verdict == (CORRECT if game.right_decision(info, game.actions[action]) else WRONG), info
        envs.step(rng.integers(game.num_actions, size=16))
    envs.close()


def test_corrected_reply_puts_the_agents_action_back():
    assert json.loads(corrected_reply({"cards": [1], "thoughts": "t", "action": "x"}, "7")) == \
        {"cards": [1], "thoughts": "t", "action": "7"}
    assert list(json.loads(corrected_reply({"thoughts": "t"}, "hit"))) == ["thoughts", "action"]


def test_odd_values_in_a_reply_are_wrong_not_a_crash():
    assert judge("Points24", P24, p24(thoughts="so I append '\u00b2'.", action="3")).verdict == WRONG
    infinite = json.dumps(p24()).replace("[7, 1, 3, 4]", "[Infinity, 1e400, 3, 4]", 1)
    assert judge("Points24", P24, infinite).answers["cards"] is False
    assert judge("NumberLine", NL, '{"current number": 1e400, "target number": "4", "thoughts": "x", '
                                   '"action": "+"}').answers["numbers"] is False
    assert judge("EZPoints", {"Cards": ["C10", "D2"], "Numbers": [10, 2], "Formula": []},
                 '{"cards": [NaN, 2], "current formula": "", "thoughts": "x", "action": "+"}').verdict == WRONG
