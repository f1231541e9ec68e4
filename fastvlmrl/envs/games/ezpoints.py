"""EZPoints: make 12 from two cards with "+" and "*" (rules in csrc/games/ezpoints.h; what it
shares with Points24 in formula.py)."""

from __future__ import annotations

from fastvlmrl.envs.games.base import game_id
from fastvlmrl.envs.games.formula import NUMBERS_10, FormulaGame


class EZPointsGame(FormulaGame):
    target = 12
    solver_ops = "+*"


EZPOINTS = EZPointsGame("EZPoints", game_id("EZPoints"), NUMBERS_10 + ("+", "*", "="), num_cards=2)
