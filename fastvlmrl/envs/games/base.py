"""What every game is, as data plus its text protocol: the `Game` row (name, C id, actions), the
state row layout it reads from the C binding (`_cards.LAYOUTS`), and the methods each game module
fills in: named state and info dict, the game-specific part of the prompt, the oracle, and its
parsing quirks. Card names are shared by the card games.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fastvlmrl.envs import _cards

STATE_DIM = _cards.STATE_DIM
SUIT_LETTERS = "CDHS"  # suit index order used in C and Python
RANK_NAMES = ("?", "A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")


def state_fields(name: str) -> dict[str, int | slice]:
    """The C state row layout of game `name` as indices: a field of length 1 is a column index,
    a longer one a slice (so `state[:, f]` is [N] or [N, length], `row[f]` a value or a list)."""
    return {
        key: start if length == 1 else slice(start, start + length)
        for key, (start, length) in _cards.LAYOUTS[name].items()
    }


def game_id(name: str) -> int:
    """The C binding's id of game `name`."""
    return _cards.GAME_IDS[name]


@dataclass(frozen=True)
class Game(abc.ABC):
    """One game. Each game module subclasses it; `GAMES` holds one row per game."""

    name: str
    game_id: int  # the C binding's id
    actions: tuple[str, ...]  # the text of each action index, as the prompt lists them
    num_cards: int = 0

    # Parsing quirk of the substring rule (parse.py): action strings read whole, and removed from
    # the text, before the other actions are looked for (the card games' "10", not also "1").
    whole_actions: ClassVar[tuple[str, ...]] = ()
    # The JSON keys before "thoughts" in the short prompt (prompts.short_prompt).
    short_keys: ClassVar[tuple[str, ...]] = ()
    # False for a text game (ALFWorld): prompts carry no image.
    has_frames: ClassVar[bool] = True

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def legal_actions(self, info: dict) -> tuple[str, ...]:
        """The actions legal in this state, whose indices the env takes (the card games: all of
        them, always; ALFWorld: the admissible commands)."""
        return self.actions

    def parse_reply(self, text, info: dict):
        """A reply as (index into legal_actions(info) or None, legal): parse.parse_action's rules."""
        from fastvlmrl.envs.parse import parse_action

        return parse_action(self, text)

    def episode_success(self, episode_return: float, final_info: dict | None) -> bool:
        """Whether an ended episode succeeded: RL4VLM's rule, its summed env reward is > 0."""
        return episode_return > 0

    def anchor(self, info: dict, row) -> bytes:
        """GiGPO's anchor-state key: equal for the same state reached at any step. The card games'
        state row with its step counter zeroed."""
        anchor = row.copy()
        anchor[state_fields(self.name)["steps"]] = 0
        return anchor.tobytes()

    def actions_text(self) -> str:
        """The legal actions as the prompts list them: ['-', '+']."""
        return "[" + ", ".join(f"'{a}'" for a in self.actions) + "]"

    def with_options(self, *, face_cards_as_10: bool = True) -> Game:
        """This game under the game options (only Points24 has one)."""
        return self

    @abc.abstractmethod
    def named_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of a batch of state rows [N, STATE_DIM] (no copies)."""

    @abc.abstractmethod
    def describe(self, row: np.ndarray) -> dict:
        """One env's state row as RL4VLM's info dict, the text the prompts and oracles read."""

    @abc.abstractmethod
    def prompt_parts(self, info: dict) -> tuple[str, list[tuple[str, str]], str]:
        """The game's part of the full prompt: (head, JSON fields before "action", action value)."""

    def longest_info(self, info: dict) -> dict:
        """`info` with its text state at its longest (what the prompt can grow to within an episode,
        e.g. a formula at the length limit): the rollout's KV cache is sized from it."""
        return info

    def short_state(self, info: dict) -> str:
        """The text state the short prompt carries (" Formula: '...'." for the formula games)."""
        return ""

    @abc.abstractmethod
    def oracle(self, info: dict) -> tuple[dict, str, str]:
        """The expert's move: (JSON fields before "thoughts", action text, thoughts)."""

    @abc.abstractmethod
    def reasoned(self, info: dict, action: str) -> tuple[dict, str, str]:
        """The reply that decides `action`, as `oracle` returns it: the fields and the thought's
        reading of the frame stay truthful, and the thought's reasoning reaches `action` (wrongly
        when it is not the expert's). Noisy SFT demonstrations: the decision is in the thought and
        the action together, never a correct thought followed by a contradicting action."""

    def thought_decision(self, thoughts: str) -> str | None:
        """The action a thought decides on, in the words the oracle's thoughts use (SFT teaches
        them), or None when it names none."""
        return None

    def assess(self, info: dict, reply: dict) -> dict[str, bool | None]:
        """GTR's evaluation questions answered exactly from the state, for a reply's JSON object:
        each named check True (right), False (wrong) or None (the reply does not say). Always
        "decision": the thought's decided action (the reply's action where the thought names none)
        is one the expert would take; "action_follows": the reply's action is the one its thought
        decides (None when the thought names none). What each game adds: the fields it reads from
        the frame."""
        named = self.thought_decision(str(reply.get("thoughts", "")))
        action = reply.get("action")
        action = str(action).strip().lower() if isinstance(action, (str, int)) and not isinstance(action, bool) else None
        return {"decision": self.right_decision(info, self._decided(reply)),
                "action_follows": None if named is None else action == named.lower()}

    def right_decision(self, info: dict, action: str | None) -> bool | None:
        """Whether `action` is an expert move in this state (None when there is no action)."""
        return None if action is None else action == self.oracle(info)[1]

    def solvable(self, info: dict) -> bool | None:
        """Whether the episode can still be won from this state (None: the game cannot say)."""
        return None

    def on_path(self, info: dict) -> bool:
        """Whether some expert line of play still wins from this state (GTR's early truncation ends
        an episode that left every one); True for games with no such notion."""
        return True

    def _decided(self, reply: dict) -> str | None:
        decided = self.thought_decision(str(reply.get("thoughts", "")))
        if decided is None and isinstance(reply.get("action"), (str, int)) and not isinstance(reply.get("action"), bool):
            decided = str(reply["action"]).strip().lower()
        return decided

    def judge(self, info: dict, reply: dict) -> tuple[bool | None, bool | None]:
        """Reading a reply (its JSON object) against the state: (does what it says it sees match
        the frame, does its action follow from what it says), each None where the reply does not
        say. The checks read the fields and phrases the oracle's replies use (SFT teaches them)."""
        return None, None


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
