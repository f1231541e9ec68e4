"""The four RL4VLM card games: C batch, Gymnasium API, reference games, prompts, parser, oracles.

Importing this package (or `fastvlmrl`) registers the Gymnasium ids
`fastvlmrl/NumberLine-v0`, `fastvlmrl/EZPoints-v0`, `fastvlmrl/Points24-v0` and
`fastvlmrl/Blackjack-v0` when gymnasium is installed: `gymnasium.make(id)` gives one env,
`gymnasium.make_vec(id, num_envs=N)` the C batch. The games, the C extension and the vector envs
load on first use of a name below (`GAMES`, `get_game`, `NumberLineVectorEnv`, ...), so the
import itself stays light.
"""

from __future__ import annotations

import importlib

GAME_NAMES = ("NumberLine", "EZPoints", "Points24", "Blackjack")
ENV_IDS = {name: f"fastvlmrl/{name}-v0" for name in GAME_NAMES}
ALFWORLD_ENV_ID = "fastvlmrl/ALFWorld-v0"  # the text game: fastvlmrl/envs/alfworld

# Loaded on first use (PEP 562): name -> the module that defines it.
_LAZY = {
    "GAMES": "fastvlmrl.envs.games",
    "get_game": "fastvlmrl.envs.games",
    "describe": "fastvlmrl.envs.games",
    "CardsVectorEnv": "fastvlmrl.envs.vector",
    "NumberLineVectorEnv": "fastvlmrl.envs.vector",
    "EZPointsVectorEnv": "fastvlmrl.envs.vector",
    "Points24VectorEnv": "fastvlmrl.envs.vector",
    "BlackjackVectorEnv": "fastvlmrl.envs.vector",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def register() -> bool:
    """Register the Gymnasium ids (string entry points: nothing is imported until an env is made).
    False when gymnasium is not installed."""
    try:
        import gymnasium
    except ModuleNotFoundError:
        return False
    for name, env_id in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point=f"fastvlmrl.envs.single:{name}Env",
                vector_entry_point=f"fastvlmrl.envs.vector:{name}VectorEnv",
            )
    if ALFWORLD_ENV_ID not in gymnasium.registry:  # the text game (needs the alfworld extra to be made)
        gymnasium.register(ALFWORLD_ENV_ID, entry_point="fastvlmrl.envs.alfworld.env:ALFWorldEnv",
                           vector_entry_point="fastvlmrl.envs.alfworld.vector:ALFWorldVectorEnv")
    return True


register()

__all__ = ["ALFWORLD_ENV_ID", "ENV_IDS", "GAME_NAMES", "register", *_LAZY]
