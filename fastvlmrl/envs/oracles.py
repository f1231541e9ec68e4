"""Oracles: the expert action for an env's state plus a truthful thought, written as the JSON the
prompt asks for. They make SFT demonstrations and drive the rule-based GTR corrector.

Each game's oracle is its `Game.oracle` (fastvlmrl/envs/games/<game>.py):
- NumberLine: move toward the target.
- EZPoints / Points24: follow an exact solution that extends the current formula (solver.py);
  "=" when the formula is complete, or when no solution extends it (ending at once costs least).
- Blackjack: hit/stand basic strategy for an infinite deck, dealer standing on all 17s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastvlmrl.envs.games import Game, blackjack_basic_strategy, get_game

__all__ = ["OracleStep", "blackjack_basic_strategy", "oracle_step"]


@dataclass(frozen=True)
class OracleStep:
    action: int  # action index
    thoughts: str
    text: str  # the full reply, JSON in the prompt's format (action only when cot=False)


def oracle_step(game: Game | str, info: dict, *, cot: bool = True, action: int | None = None) -> OracleStep:
    """The expert's move for an env whose RL4VLM-style info dict is `info`; with `action` (an
    index), the reply that decides that action instead (`Game.reasoned`: the thought's reasoning
    reaches it, rightly or wrongly)."""
    game = get_game(game) if isinstance(game, str) else game
    if action is None:
        fields, action, thoughts = game.oracle(info)
    else:
        fields, action, thoughts = game.reasoned(info, game.actions[action])
    reply = {**fields, "thoughts": thoughts, "action": action} if cot else {"action": action}
    return OracleStep(game.actions.index(action), thoughts, json.dumps(reply))

