"""Points24: make 24 from four cards with + - * / ( ) (rules in csrc/games/points24.h; what it
shares with EZPoints in formula.py). With face_cards_as_10=False, J/Q/K keep 11/12/13 and the
actions include those numbers (`POINTS24_FULL_RANKS`)."""

from __future__ import annotations

from fastvlmrl.envs.games.base import game_id
from fastvlmrl.envs.games.formula import NUMBERS_10, NUMBERS_13, FormulaGame

_OPERATORS = ("+", "-", "*", "/", "(", ")", "=")


class Points24Game(FormulaGame):
    target = 24
    solver_ops = "+-*/"

    def with_options(self, *, face_cards_as_10=True):
        return POINTS24 if face_cards_as_10 else POINTS24_FULL_RANKS


POINTS24 = Points24Game("Points24", game_id("Points24"), NUMBERS_10 + _OPERATORS, num_cards=4)
POINTS24_FULL_RANKS = Points24Game("Points24", game_id("Points24"), NUMBERS_13 + _OPERATORS, num_cards=4)
