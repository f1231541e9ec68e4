import re

import numpy as np
import pytest

from fastvlmrl.envs.games import get_game
from fastvlmrl.envs.prompts import task_prompt

from .conftest import VECTOR

KEYS = {
    "NumberLine": ["current number", "target number", "thoughts", "action"],
    "EZPoints": ["cards", "current formula", "thoughts", "action"],
    "Points24": ["cards", "current formula", "thoughts", "action"],
    "Blackjack": ["thoughts", "action"],
}


def _keys(prompt):
    block = prompt[prompt.index("{\n") :]
    return re.findall(r'^  "([^"]+)":', block, flags=re.M)


@pytest.mark.parametrize("name", list(KEYS))
def test_prompt_structure_and_keys(name):
    envs = VECTOR[name](2, height=32, width=32)
    envs.reset(seed=0)
    prompt = task_prompt(envs.game, envs.describe(0))
    game = get_game(name)
    assert "Your response should be a valid json file in the following format:" in prompt
    assert _keys(prompt) == KEYS[name]
    for action in game.actions:
        assert f"'{action}'" in prompt  # the legal actions are listed
    assert _keys(task_prompt(envs.game, envs.describe(0), cot=False)) == ["action"]
    envs.close()


def test_formula_in_the_prompt_follows_the_frame_also_after_autoreset():
    envs = VECTOR["Points24"](1, height=32, width=32)
    envs.reset(seed=0)
    envs.step(np.array([14]))
    envs.step(np.array([14]))
    assert "current formula: '( ('" in task_prompt("Points24", envs.describe(0))
    envs.step(np.array([16]))  # "=": the episode ends
    envs.step(np.array([0]))  # autoreset
    assert "current formula: ''" in task_prompt("Points24", envs.describe(0))


def test_face_cards_rule_follows_the_option():
    assert "count as '10'" in task_prompt(get_game("Points24"), {"Formula": []})
    assert "count as '11', '12' and '13'" in task_prompt(get_game("Points24", False), {"Formula": []})
