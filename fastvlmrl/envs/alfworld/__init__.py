"""ALFWorld as a text environment: ALFWorld's own text engine (TextWorld over the ALFRED PDDL
domain), real games when the user has downloaded them, generated games otherwise.

- `engine.py`: one game in the text engine, RL4VLM's reward; `fast_textworld.py`: the memoized engine.
- `env.py`: `fastvlmrl/ALFWorld-v0` (gymnasium), the episode rules; `vector.py`: a process per env.
- `data.py`: the dataset's splits on disk; `generate.py`: games generated from the wheel's rooms.
- `tasks.py`: the six task types and their goal conditions; `oracle.py`: the next command and a thought.
- `text.py`: the prompt, reply -> admissible command, the oracle's reply.

Needs the optional extra: pip install 'fastvlmrl[alfworld]'.
"""

from __future__ import annotations

import importlib
import importlib.util

ENV_ID = "fastvlmrl/ALFWorld-v0"

_LAZY = {
    "ALFWorldEnv": "fastvlmrl.envs.alfworld.env",
    "ALFWorldVectorEnv": "fastvlmrl.envs.alfworld.vector",
    "TextGame": "fastvlmrl.envs.alfworld.engine",
    "require_alfworld": "fastvlmrl.envs.alfworld.engine",
    "find_games": "fastvlmrl.envs.alfworld.data",
    "generate": "fastvlmrl.envs.alfworld.generate",
    "alfworld_prompt": "fastvlmrl.envs.alfworld.text",
    "parse_command": "fastvlmrl.envs.alfworld.text",
    "oracle_reply": "fastvlmrl.envs.alfworld.text",
    "TASK_NAMES": "fastvlmrl.envs.alfworld.tasks",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def available() -> bool:
    """Whether the ALFWorld text engine is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("alfworld", "textworld", "fast_downward"))


__all__ = ["ENV_ID", "available", *_LAZY]
