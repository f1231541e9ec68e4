"""The four RL4VLM card games: C batch, Gymnasium API, reference games, prompts, parser, oracles.

Importing this package (or `fastvlmrl`) registers the Gymnasium ids
`fastvlmrl/NumberLine-v0`, `fastvlmrl/EZPoints-v0`, `fastvlmrl/Points24-v0` and
`fastvlmrl/Blackjack-v0`: `gymnasium.make(id)` gives one env, `gymnasium.make_vec(id, num_envs=N)`
the C batch.
"""

import gymnasium

from fastvlmrl.envs.games import GAMES, describe, get_game
from fastvlmrl.envs.vector import (
    BlackjackVectorEnv,
    CardsVectorEnv,
    EZPointsVectorEnv,
    NumberLineVectorEnv,
    Points24VectorEnv,
)

ENV_IDS = {name: f"fastvlmrl/{name}-v0" for name in GAMES}


def _register() -> None:
    for name, env_id in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            env_id,
            entry_point=f"fastvlmrl.envs.single:{name}Env",
            vector_entry_point=f"fastvlmrl.envs.vector:{name}VectorEnv",
        )


_register()

__all__ = [
    "ENV_IDS",
    "GAMES",
    "get_game",
    "describe",
    "CardsVectorEnv",
    "NumberLineVectorEnv",
    "EZPointsVectorEnv",
    "Points24VectorEnv",
    "BlackjackVectorEnv",
]
