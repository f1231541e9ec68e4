"""The four games, one module each (numberline, ezpoints, points24, blackjack; formula.py for what
the two formula games share), and the registry `GAMES` / `get_game`.

Each game's `Game` row carries its text protocol: `named_state` and `describe` read the state
rows the C batch writes (int32 [N, STATE_DIM], layouts exported by the binding as
`_cards.LAYOUTS`) into named arrays and RL4VLM-style info dicts; `prompt_parts`, `oracle` and
`whole_actions` are what prompts.py, oracles.py and parse.py need from the game.
"""

from __future__ import annotations

import numpy as np

from fastvlmrl.envs.games.alfworld import ALFWORLD
from fastvlmrl.envs.games.base import (
    RANK_NAMES,
    STATE_DIM,
    SUIT_LETTERS,
    Game,
    card_name,
    card_rank,
    card_suit,
    card_value,
)
from fastvlmrl.envs.games.blackjack import BLACKJACK, blackjack_basic_strategy, blackjack_total
from fastvlmrl.envs.games.ezpoints import EZPOINTS
from fastvlmrl.envs.games.formula import BLANK, TOKEN_OF_TEXT, TOKEN_TEXT, formula_string, formula_text, token_text
from fastvlmrl.envs.games.numberline import NUMBERLINE
from fastvlmrl.envs.games.points24 import POINTS24, POINTS24_FULL_RANKS

GAMES = {game.name: game for game in (NUMBERLINE, EZPOINTS, POINTS24, BLACKJACK)}  # the C batch's games
TEXT_GAMES = {ALFWORLD.name: ALFWORLD}  # played through their own envs (fastvlmrl/envs/alfworld)


def get_game(name: str, face_cards_as_10: bool = True) -> Game:
    """The game called `name` (case-insensitive); a clear error lists the known ones."""
    for key, game in {**GAMES, **TEXT_GAMES}.items():
        if key.lower() == str(name).lower():
            return game.with_options(face_cards_as_10=face_cards_as_10)
    raise ValueError(f"unknown game {name!r}: choose one of {', '.join([*GAMES, *TEXT_GAMES])}")


def named_state(game: Game, state: np.ndarray) -> dict[str, np.ndarray]:
    """Named views of a batch of state rows [N, STATE_DIM] (no copies)."""
    return game.named_state(state)


def describe(game: Game, row: np.ndarray) -> dict:
    """One env's state row as RL4VLM's info dict, the text the prompts and oracles read."""
    return game.describe(row)


__all__ = [
    "ALFWORLD",
    "BLANK",
    "GAMES",
    "Game",
    "POINTS24_FULL_RANKS",
    "RANK_NAMES",
    "STATE_DIM",
    "SUIT_LETTERS",
    "TEXT_GAMES",
    "TOKEN_OF_TEXT",
    "TOKEN_TEXT",
    "blackjack_basic_strategy",
    "blackjack_total",
    "card_name",
    "card_rank",
    "card_suit",
    "card_value",
    "describe",
    "formula_string",
    "formula_text",
    "get_game",
    "named_state",
    "token_text",
]
