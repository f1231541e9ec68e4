"""ALFWorld's text interface: the prompt, reply -> admissible command, the oracle's reply.

The prompt is RL4VLM's (`VLM_PPO_ALF`: expert in the ALFRED environment, the scene's text
description, the task, the admissible commands one per line in quotes, JSON with "thoughts" and
"action"), its typos fixed, with GTR's "previous actions you have taken" (`history`, on by
default). The chat template around it belongs to the model.

Parsing never raises: the reply's JSON "action" if it is an admissible command exactly, else its
unique match after normalising case, spacing, quotes and end punctuation; without JSON, the text
after the last `"action":` (all of it when there is none) must contain exactly one admissible
command as whole words ("go to cabinet 1" is not read inside "go to cabinet 10", unlike RL4VLM's
first-substring rule). Anything else is illegal (RL4VLM sends it to the game: "Nothing happens.",
reward -1).
"""

from __future__ import annotations

import json
import re

from fastvlmrl.envs.parse import ParsedAction, _as_text, reply_object

_ACTION_MARKER = '"action":'
_SPACES = re.compile(r"\s+")


def alfworld_prompt(info: dict, *, cot: bool = True, history: int = 20, observation: bool = True,
                    style: str = "full") -> str:
    """The task prompt for one env's info dict (ALFWorldVectorEnv.describe): the ALFWorld game's
    (fastvlmrl/envs/games/alfworld.py) through the shared prompt structure (prompts.task_prompt)."""
    from fastvlmrl.envs.games.alfworld import ALFWORLD
    from fastvlmrl.envs.prompts import task_prompt

    game = ALFWORLD.with_prompt(history=history, observation=observation)
    return task_prompt(game, info, cot=cot, style=style)


def normalise(text: str) -> str:
    """Lowercase, single spaces, no surrounding quotes, spaces or end punctuation."""
    return _SPACES.sub(" ", text.lower()).strip().strip("'\"`").strip().rstrip(".!;,").strip()


def parse_command(text, admissible) -> ParsedAction:
    """The admissible command a reply names, as (index into `admissible` or None, legal)."""
    text = _as_text(text)
    commands = list(admissible)
    normalised = [normalise(c) for c in commands]
    obj = reply_object(text)
    if obj is not None and isinstance(obj.get("action"), str):
        value = obj["action"]
        if value in commands:
            return ParsedAction(commands.index(value), True)
        hits = [i for i, c in enumerate(normalised) if c == normalise(value)]
        if len(hits) == 1:
            return ParsedAction(hits[0], True)
    lowered = _SPACES.sub(" ", text.lower())
    at = lowered.rfind(_ACTION_MARKER)
    tail = lowered[at + len(_ACTION_MARKER):] if at != -1 else lowered
    spans = {}
    for i, c in enumerate(normalised):
        hits = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(c)}(?!\w)", tail)] if c else []
        if hits:
            spans[i] = hits
    # a match that lies inside a longer command's match ("look" inside "look at ...") is that command
    found = [i for i, hits in spans.items()
             if not all(any(j != i and a <= s and e <= b and (b - a) > (e - s) for j in spans for a, b in spans[j])
                        for s, e in hits)]
    if len(found) == 1:
        return ParsedAction(found[0], True)
    return ParsedAction(None, False)


def oracle_reply(info: dict, *, cot: bool = True) -> str | None:
    """The oracle's reply as the prompt asks for it (JSON), or None when it has no move."""
    action = info.get("expert_action")
    if action is None:
        return None
    reply = {"thoughts": info["expert_thoughts"], "action": action} if cot else {"action": action}
    return json.dumps(reply)
