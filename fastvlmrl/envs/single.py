"""One game as a standard `gymnasium.Env`, backed by a C batch of one env.

`gymnasium.make("fastvlmrl/NumberLine-v0")` gives one of these. Its info is RL4VLM's dict
(`{"Target": g, "Current": p}`, `{"Cards": [...], "Numbers": [...], "Formula": [...]}`, or
`{"Dealer Card": [...], "Player Card": [...]}`). Stepping after the episode ended raises: call
reset() (gymnasium's make_vec and vector wrappers do it for you).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from fastvlmrl.envs.games import describe
from fastvlmrl.envs.vector import check_actions, make_batch, seeds_for


class CardsEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    game_name = ""

    def __init__(self, *, height: int = 300, width: int = 300, render_mode: str | None = None,
                 face_cards_as_10: bool = True):
        self._envs = make_batch(self.game_name, 1, height=height, width=width, autoreset_mode="Disabled",
                                copy=True, render_mode=render_mode, face_cards_as_10=face_cards_as_10)
        self.game = self._envs.game
        self.render_mode = render_mode
        self.observation_space = self._envs.single_observation_space
        self.action_space = self._envs.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            seeds_for(seed, 1)  # a clear error for a bad seed before anything changes
        super().reset(seed=seed)
        obs, _ = self._envs.reset(seed=seed)
        return obs[0], describe(self.game, self._envs._state[0])

    def step(self, action):
        arr = np.asarray(action)
        if arr.shape != ():
            raise ValueError(f"action must be one integer, got shape {arr.shape}")
        acts = check_actions(arr.reshape(1), 1, self.game.num_actions)
        obs, rewards, terminated, truncated, _ = self._envs.step(acts)
        info = describe(self.game, self._envs._state[0])
        return obs[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def render(self):
        frames = self._envs.render()
        return None if frames is None else frames[0]

    def close(self):
        if not self._envs.closed:
            self._envs.close()
        super().close()


class NumberLineEnv(CardsEnv):
    game_name = "NumberLine"


class EZPointsEnv(CardsEnv):
    game_name = "EZPoints"


class Points24Env(CardsEnv):
    game_name = "Points24"


class BlackjackEnv(CardsEnv):
    game_name = "Blackjack"
