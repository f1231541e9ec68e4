"""What the four games are, as data: names, action strings, card names, and how to read the
per-env state rows that the C batch writes (int32 [N, STATE_DIM]) into named arrays and into
RL4VLM-style info dicts for prompts.

The state row layouts mirror csrc/*.h:
- NumberLine: target, current, steps.
- EZPoints / Points24: card codes [4] ((rank-1)*4 + suit, -1 pad), values [4], ncards, formula
  length, numbers used, steps, then formula tokens [24] (1..13 numbers, negative operators).
- Blackjack: dealer count, player count, steps, dealer codes [12], player codes [22] (-1 pad).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_DIM = 48
SUIT_LETTERS = "CDHS"  # suit index order used in C and Python
RANK_NAMES = ("?", "A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")

# Formula token codes (csrc/formula.h): 1..13 are numbers.
TOKEN_TEXT = {-1: "+", -2: "-", -3: "*", -4: "/", -5: "(", -6: ")", -7: " ", -8: "="}
TOKEN_OF_TEXT = {text: code for code, text in TOKEN_TEXT.items() if text != " "}
BLANK = -7


@dataclass(frozen=True)
class Game:
    name: str
    game_id: int  # the C binding's id
    actions: tuple[str, ...]  # the text of each action index, as the prompt lists them
    num_cards: int = 0

    @property
    def num_actions(self) -> int:
        return len(self.actions)


_NUMBERS_10 = tuple(str(n) for n in range(1, 11))
_NUMBERS_13 = tuple(str(n) for n in range(1, 14))
_P24_OPS = ("+", "-", "*", "/", "(", ")", "=")

GAMES = {
    "NumberLine": Game("NumberLine", 0, ("-", "+")),
    "EZPoints": Game("EZPoints", 1, _NUMBERS_10 + ("+", "*", "="), num_cards=2),
    "Points24": Game("Points24", 2, _NUMBERS_10 + _P24_OPS, num_cards=4),
    "Blackjack": Game("Blackjack", 3, ("stand", "hit")),
}
# Points24 with face cards keeping 11/12/13 (face_cards_as_10=False).
POINTS24_FULL_RANKS = Game("Points24", 2, _NUMBERS_13 + _P24_OPS, num_cards=4)


def get_game(name: str, face_cards_as_10: bool = True) -> Game:
    """The game called `name` (case-insensitive); a clear error lists the known ones."""
    for key, game in GAMES.items():
        if key.lower() == str(name).lower():
            if key == "Points24" and not face_cards_as_10:
                return POINTS24_FULL_RANKS
            return game
    raise ValueError(f"unknown game {name!r}: choose one of {', '.join(GAMES)}")


def card_rank(code: int) -> int:
    return int(code) // 4 + 1


def card_suit(code: int) -> int:
    return int(code) % 4


def card_name(code: int) -> str:
    """RL4VLM's card names: suit letter then rank, e.g. 'H7', 'S10', 'DA', 'CK'."""
    return SUIT_LETTERS[card_suit(code)] + RANK_NAMES[card_rank(code)]


def card_value(code: int) -> int:
    """Blackjack value of a card: A = 1, J/Q/K = 10."""
    return min(card_rank(code), 10)


def token_text(code: int) -> str:
    code = int(code)
    return str(code) if code >= 1 else TOKEN_TEXT[code]


def formula_text(tokens) -> str:
    """The formula as the frame shows it: tokens joined by single spaces."""
    return " ".join(token_text(t) for t in tokens)


def named_state(game: Game, state: np.ndarray) -> dict[str, np.ndarray]:
    """Named views of a batch of state rows [N, STATE_DIM] (no copies)."""
    if game.name == "NumberLine":
        return {"target": state[:, 0], "current": state[:, 1], "steps": state[:, 2]}
    if game.name == "Blackjack":
        return {
            "dealer_count": state[:, 0],
            "player_count": state[:, 1],
            "steps": state[:, 2],
            "dealer_cards": state[:, 3:15],
            "player_cards": state[:, 15:37],
        }
    k = game.num_cards
    return {
        "cards": state[:, 0:k],
        "numbers": state[:, 4 : 4 + k],
        "formula_len": state[:, 9],
        "numbers_used": state[:, 10],
        "steps": state[:, 11],
        "formula": state[:, 12:36],
    }


def describe(game: Game, row: np.ndarray) -> dict:
    """One env's state row as RL4VLM's info dict, the text the prompts and oracles read.

    Blackjack shows only the dealer's face-up card, as the frame does (RL4VLM's info leaked the
    hidden card; prompts and correctors must not see it).
    """
    row = [int(v) for v in row]
    if game.name == "NumberLine":
        return {"Target": row[0], "Current": row[1]}
    if game.name == "Blackjack":
        player = row[15 : 15 + row[1]]
        return {
            "Dealer Card": [_blackjack_card(row[3])],
            "Player Card": [_blackjack_card(c) for c in player],
        }
    k = game.num_cards
    flen = row[9]
    return {
        "Cards": [card_name(c) for c in row[0:k]],
        "Numbers": row[4 : 4 + k],
        "Formula": [token_text(t) for t in row[12 : 12 + flen]],
    }


def _blackjack_card(code: int) -> tuple[int, str, str]:
    return (card_value(code), RANK_NAMES[card_rank(code)], SUIT_LETTERS[card_suit(code)])


def blackjack_total(cards) -> tuple[int, bool]:
    """(best total, usable ace) of Blackjack card codes: an ace counts 11 when that does not bust."""
    total = sum(card_value(c) for c in cards)
    ace = any(card_rank(c) == 1 for c in cards)
    if ace and total + 10 <= 21:
        return total + 10, True
    return total, False
