"""Model output text -> env action, never raising whatever the text.

JSON first: the first JSON object in the text with an "action" key whose value names a legal
action exactly (case and surrounding spaces ignored). Otherwise RL4VLM's substring rule: take the
lowercased text after the last `"action":` (only the last character if there is none); a game's
`whole_actions` (the card games' "10") are read whole and removed before the other actions are
looked for (so "10" is not also read as "1"); exactly one distinct legal action string must occur.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import numpy as np

from fastvlmrl.envs.games import Game, get_game

_ACTION_MARKER = '"action":'
# Bounds on the JSON attempts, so huge or adversarial outputs cost little: at most this many
# objects tried, each decoded from a window of this many characters (a real reply is far shorter).
_MAX_JSON_STARTS = 32
_MAX_JSON_CHARS = 16_384
_ACTION_KEY = re.compile(r'"action"\s*:')


class ParsedAction(NamedTuple):
    action: int | None  # the action index, or None when the text names no single legal action
    legal: bool


def _as_text(text) -> str:
    """Any input as a plain str; unreadable input (a released buffer, a failing __str__) is ''."""
    try:
        if isinstance(text, str):
            return str.__str__(text)  # a plain copy: a str subclass's own methods are not trusted
        if isinstance(text, (bytes, bytearray, memoryview)):
            return bytes(text).decode("utf-8", errors="replace")
        return str.__str__(str(text))
    except Exception:
        return ""


def reply_object(text) -> dict | None:
    """The first JSON object in a reply with an "action" key (bounded work, never raises), or None."""
    text = _as_text(text)
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < _MAX_JSON_STARTS:
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text[start : start + _MAX_JSON_CHARS])
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "action" in obj:
            return obj
        start = text.find("{", start + 1)
    return None


def strict_reply(text, keys) -> dict | None:
    """The reply as a JSON object when the whole output (surrounding whitespace aside) is one JSON
    object holding every key in `keys`, else None: GTR's valid-format rule (its format reward and
    the valid-JSON rate), stricter than `reply_object`, which finds an object anywhere."""
    text = _as_text(text).strip()
    if not text.startswith("{") or len(text) > _MAX_JSON_CHARS:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and all(key in obj for key in keys) else None


def _from_json(text: str, lookup: dict[str, int]) -> int | None:
    obj = reply_object(text)
    if obj is None:
        return None
    value = obj["action"]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return lookup.get(str(value).strip().lower())
    return None


def _from_substrings(text: str, game: Game) -> int | None:
    lowered = text.lower()
    at = lowered.rfind(_ACTION_MARKER)
    tail = lowered[at:] if at != -1 else lowered[-1:]
    found: set[str] = set()
    for whole in game.whole_actions:  # the card games' "10" (not also "1")
        if whole in tail:
            found.add(whole)
            tail = tail.replace(whole, "")
    for action in game.actions:
        if action in tail:
            found.add(action)
    if len(found) != 1:
        return None
    return game.actions.index(found.pop())


def parse_action(game: Game | str, text) -> ParsedAction:
    """The action a model's output names, as (action index or None, legal)."""
    game = get_game(game) if isinstance(game, str) else game
    text = _as_text(text)
    lookup = {a.lower(): i for i, a in enumerate(game.actions)}
    action = _from_json(text, lookup)
    if action is None:
        action = _from_substrings(text, game)
    return ParsedAction(action, action is not None)


def action_char_span(text: str) -> tuple[int, int] | None:
    """Character span of the action part of an output: from the last `"action"` key to the end.

    The trainer maps it to token spans through the tokenizer's offset mapping (λ-weighting of
    thought vs action tokens), instead of hard-coded token ids."""
    last = None
    for m in _ACTION_KEY.finditer(text):
        last = m
    return (last.start(), len(text)) if last else None


def choose_action(parsed: ParsedAction, num_actions: int, rng: np.random.Generator, policy: str = "random",
                  penalty: float = -1.0) -> tuple[int, float]:
    """(action to send, extra reward) for a parsed output under the illegal-output policy.

    "random" (RL4VLM's default): an illegal output becomes a uniformly random action, no extra
    reward. "penalty": it also costs `penalty`. "noop" (ALFWorld, as RL4VLM): the env gets -1,
    no command (the text game answers "Nothing happens." and its own penalty)."""
    if policy not in ("random", "penalty", "noop"):
        raise ValueError(f"illegal-action policy must be 'random', 'penalty' or 'noop', got {policy!r}")
    if parsed.legal:
        return int(parsed.action), 0.0
    if policy == "noop":
        return -1, 0.0
    return int(rng.integers(num_actions)), (float(penalty) if policy == "penalty" else 0.0)
