"""What a corrector is given (one CorrectionItem per env of a step: the frame, the prompt, the
agent's reply and the env's state) and what it returns (one Correction each), and how a
correction becomes the reply to clone: the corrected thought (the reply's JSON without "action")
with the agent's own action put back, in the prompt's JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# verdicts: the thought is right / wrong (corrected_thought holds the fix) / the reply is not
# valid JSON with the prompt's keys (nothing to judge) / the corrector gave no usable answer
CORRECT, WRONG, UNPARSABLE, NO_VERDICT = "correct", "wrong", "unparsable", "no_verdict"


@dataclass(frozen=True)
class CorrectionItem:
    frame: np.ndarray | None  # uint8 [H, W, 3]: what the agent saw (None: a text game, ALFWorld)
    prompt: str  # the task prompt it answered
    output: str  # its reply
    info: dict  # the env's state as its info dict (what an exact corrector reads; an HTTP one sees only the frame)
    reply: dict | None = None  # the reply's JSON object when it is valid (`parse.strict_reply`), else None
    target: str | None = None  # the formula a corrector fixed earlier in this episode (GTR's [Target Formula])


@dataclass
class Correction:
    verdict: str  # CORRECT, WRONG, UNPARSABLE or NO_VERDICT
    corrected_thought: dict | None = None  # WRONG: the reply's fields without "action", rewritten
    solvable: bool | None = None  # Points24/EZPoints: can the hand still make the target (None: not said)
    target: str | None = None  # the formula the thought should be heading for (formula games)
    answers: dict = field(default_factory=dict)  # each evaluation question's answer (True/False/None or text)


class Corrector(Protocol):
    def evaluate(self, items: list[CorrectionItem]) -> list[Correction]:
        """One Correction per item, in order; called once per env step for the whole batch. Never
        raises for a bad reply or a failing backend: that item's verdict is NO_VERDICT."""

    def close(self) -> None:
        """Release what the corrector holds (connections, threads)."""


def corrected_reply(thought: dict, action) -> str:
    """The reply to clone: the corrected thought's fields in order, then the agent's own action
    (as it wrote it), serialised as the prompt's JSON (one line, as the SFT demonstrations are)."""
    reply = {key: value for key, value in thought.items() if key != "action"}
    reply["action"] = action
    return json.dumps(reply)
