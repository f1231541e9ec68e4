"""Oracles: the expert action for an env's state plus a truthful thought, written as the JSON the
prompt asks for. They make SFT demonstrations and drive the rule-based GTR corrector.

- NumberLine: move toward the target.
- EZPoints / Points24: follow an exact solution that extends the current formula (solver.py);
  "=" when the formula is complete, or when no solution extends it (ending at once costs least).
- Blackjack: hit/stand basic strategy for an infinite deck, dealer standing on all 17s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastvlmrl.envs import solver
from fastvlmrl.envs.games import Game, get_game
from fastvlmrl.envs.prompts import formula_string


@dataclass(frozen=True)
class OracleStep:
    action: int  # action index
    thoughts: str
    text: str  # the full reply, JSON in the prompt's format (action only when cot=False)


def oracle_step(game: Game | str, info: dict, *, cot: bool = True) -> OracleStep:
    """The expert's move for an env whose RL4VLM-style info dict is `info`."""
    game = get_game(game) if isinstance(game, str) else game
    if game.name == "NumberLine":
        fields, action, thoughts = _numberline(info)
    elif game.name == "Blackjack":
        fields, action, thoughts = _blackjack(info)
    else:
        fields, action, thoughts = _formula(game, info)
    reply = {**fields, "thoughts": thoughts, "action": action} if cot else {"action": action}
    return OracleStep(game.actions.index(action), thoughts, json.dumps(reply))


def _numberline(info):
    g, p = int(info["Target"]), int(info["Current"])
    if p < g:
        action, why = "+", f"{p} is less than {g}, so I should add one"
    else:
        action, why = "-", f"{p} is greater than {g}, so I should subtract one"
    thoughts = f"The current number is {p} and the target number is {g}. {why}."
    return {"current number": str(p), "target number": str(g)}, action, thoughts


def _formula(game: Game, info):
    numbers = [int(n) for n in info["Numbers"]]
    target, ops = (12, "+*") if game.name == "EZPoints" else (24, "+-*/")
    formula = formula_string(info)
    prefix = [int(t) if t.isdigit() else t for t in info["Formula"] if t != " "]
    token, solution = solver.next_token(numbers, target, prefix, ops)
    shown = formula if formula.strip() else "empty"
    if token == "=":
        thoughts = f"The current formula '{formula}' equals {target} and uses every card, so it is complete."
    elif token is not None:
        thoughts = (
            f"The cards are {numbers}. The current formula is {shown} and not complete. "
            f"{solver.format_tokens(solution)} = {target} uses every card, so I append '{token}'."
        )
    elif not solver.solvable(numbers, target, ops):
        token = "="
        thoughts = f"The cards are {numbers}. No formula with these cards makes {target}, so I end the game."
    else:
        token = "="
        thoughts = f"The current formula '{formula}' cannot be completed to make {target}, so I end it."
    return {"cards": numbers, "current formula": formula}, str(token), thoughts


def blackjack_basic_strategy(total: int, soft: bool, dealer_value: int) -> str:
    """'hit' or 'stand'. dealer_value: 2..10, or 11 for an ace."""
    if soft:
        if total <= 17:
            return "hit"
        if total == 18:
            return "hit" if dealer_value >= 9 else "stand"
        return "stand"
    if total <= 11:
        return "hit"
    if total == 12:
        return "stand" if 4 <= dealer_value <= 6 else "hit"
    if total <= 16:
        return "stand" if dealer_value <= 6 else "hit"
    return "stand"


def _blackjack(info):
    player = info["Player Card"]
    values = [int(v) for v, _, _ in player]
    total = sum(values)
    soft = 1 in values and total + 10 <= 21
    if soft:
        total += 10
    up_value, up_face, _ = info["Dealer Card"][0]
    dealer = 11 if int(up_value) == 1 else int(up_value)
    action = blackjack_basic_strategy(total, soft, dealer)
    faces = ", ".join(face for _, face, _ in player)
    kind = "soft " if soft else ""
    thoughts = (
        f"My cards are {faces}, a {kind}total of {total}. The dealer shows {up_face}, worth {dealer}. "
        f"With {kind}{total} against {dealer}, basic strategy is to {action}."
    )
    return {}, action, thoughts
