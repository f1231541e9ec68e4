"""The exact corrector: GTR's evaluation questions answered from the env's state and the games'
solvers (`Game.assess`: what the thought read from the frame, the formula it proposes, whether its
decision is an expert move), and the oracle's truthful thought as the correction. Offline,
deterministic, and fast (no model: thousands of corrections a second)."""

from __future__ import annotations

from fastvlmrl.envs import solver
from fastvlmrl.envs.games import Game
from fastvlmrl.envs.games.formula import FormulaGame
from fastvlmrl.gtr.correction import CORRECT, UNPARSABLE, WRONG, Correction, CorrectionItem


class OracleCorrector:
    def __init__(self, game: Game):
        self.game = game

    def evaluate(self, items: list[CorrectionItem]) -> list[Correction]:
        return [self.correct(item) for item in items]

    def correct(self, item: CorrectionItem) -> Correction:
        solvable, target = self._goal(item.info)
        if item.reply is None:
            return Correction(UNPARSABLE, solvable=solvable, target=target)
        answers = self.game.assess(item.info, item.reply)
        if all(answer is not False for answer in answers.values()):
            return Correction(CORRECT, solvable=solvable, target=target, answers=answers)
        fields, _, thoughts = self.game.oracle(item.info)
        return Correction(WRONG, {**fields, "thoughts": thoughts}, solvable=solvable, target=target, answers=answers)

    def _goal(self, info: dict) -> tuple[bool | None, str | None]:
        """(can the hand still win, the solution the oracle heads for) for the formula games."""
        if not isinstance(self.game, FormulaGame):
            return None, None
        numbers = [int(n) for n in info["Numbers"]]
        _, solution = solver.next_token(numbers, self.game.target, self.game._prefix(info), self.game.solver_ops)
        return self.game.solvable(info), None if solution is None else solver.format_tokens(solution)

    def close(self) -> None:
        pass
