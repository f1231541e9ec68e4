"""Game.judge reads a reply against the state: does the thought state what the frame shows
(perception), does the action follow from the thought (decision). The oracle's own replies pass
both; a wrong reading or a contrary action is caught; a reply that does not say gives None."""

import json

import pytest

from fastvlmrl.envs.games import GAMES
from fastvlmrl.envs.oracles import oracle_step
from fastvlmrl.envs.parse import reply_object
from fastvlmrl.envs.vector import make_batch


def _states(name, count=24, steps=3):
    envs = make_batch(name, count, height=32, width=32, autoreset_mode="SameStep")
    envs.reset(seed=11)
    infos = []
    for _ in range(steps):
        infos += [envs.describe(i) for i in range(count)]
        actions = [oracle_step(envs.game, envs.describe(i)).action for i in range(count)]
        envs.step(actions)
    envs.close()
    return envs.game, infos


@pytest.mark.parametrize("name", list(GAMES))
def test_the_oracles_replies_are_seen_and_followed(name):
    game, infos = _states(name)
    for info in infos:
        assert game.judge(info, reply_object(oracle_step(game, info).text)) == (True, True), info


def test_numberline_wrong_reading_and_contrary_action():
    game = GAMES["NumberLine"]
    info = {"Target": 4, "Current": 1}
    assert game.judge(info, {"current number": "1", "target number": "4", "action": "-"}) == (True, False)
    assert game.judge(info, {"current number": "5", "target number": "4", "action": "-"}) == (False, True)
    assert game.judge(info, {"action": "+"}) == (None, None)


def test_formula_wrong_cards_and_contrary_action():
    game, infos = _states("EZPoints", count=4, steps=1)
    info = infos[0]
    reply = json.loads(oracle_step(game, info).text)
    wrong = dict(reply, cards=[c + 1 for c in reply["cards"]])
    assert game.judge(info, wrong)[0] is False
    other = next(a for a in game.actions if a != reply["action"])
    assert game.judge(info, dict(reply, action=other)) == (True, False)
    assert game.judge(info, dict(reply, cards="many")) == (None, None)


def test_blackjack_reads_totals_from_the_thought_and_decides_from_them():
    game, infos = _states("Blackjack", count=4, steps=1)
    info = infos[0]
    reply = json.loads(oracle_step(game, info).text)
    plan = "stand" if "is to stand" in reply["thoughts"] else "hit"
    contrary = "hit" if plan == "stand" else "stand"
    assert game.judge(info, dict(reply, action=contrary)) == (True, False)
    assert game.judge(info, dict(reply, thoughts=reply["thoughts"].replace("total of", "total of 1"))) [0] is False
    assert game.judge(info, {"thoughts": "no idea", "action": "hit"}) == (None, None)
    # the decision is judged from the stated totals, not from the plan the thought writes
    hard = {"Dealer Card": [(6, "6", "S")], "Player Card": [(10, "K", "H"), (3, "3", "D")]}
    wrong_plan = {"thoughts": "My cards are K, 3, a total of 13. The dealer shows 6, worth 6. With 13 against 6, "
                              "basic strategy is to hit.", "action": "hit"}
    assert game.judge(hard, wrong_plan) == (True, False)
    assert game.judge(hard, dict(wrong_plan, action="stand")) == (True, True)
    soft = {"Dealer Card": [(10, "K", "S")], "Player Card": [(1, "A", "H"), (6, "6", "D")]}
    assert game.judge(soft, {"thoughts": "a soft total of 17 ... worth 10", "action": "hit"}) == (True, True)
    assert game.judge(soft, {"thoughts": "a total of 17 ... worth 10", "action": "hit"}) == (True, False)
