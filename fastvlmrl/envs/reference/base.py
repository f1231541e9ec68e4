"""What the reference games share: spaces, seeding, action checks and the episode guard."""

from __future__ import annotations

import abc

import gymnasium as gym
import numpy as np

from fastvlmrl.envs.games import STATE_DIM, Game
from fastvlmrl.envs.reference.draw import Canvas
from fastvlmrl.envs.reference.rng import Pcg32


class ReferenceGame(gym.Env, abc.ABC):
    """A game in plain Python/numpy with the rules, RNG and pixels of the C batch.

    Slow on purpose: every frame is drawn from scratch, so it checks the C incremental drawing.
    `reset(seed=s)` gives the same episode as env i of a C batch reset with seed s - i.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    game: Game

    def __init__(self, height: int = 300, width: int = 300, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.height, self.width = int(height), int(width)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(self.game.num_actions)
        self._rng: Pcg32 | None = None
        self._ended = True

    # -- the game-specific part --
    @abc.abstractmethod
    def _deal(self, rng: Pcg32) -> None:
        """See the game classes."""

    @abc.abstractmethod
    def _play(self, action: int, rng: Pcg32) -> tuple[float, bool, bool]:
        """See the game classes."""

    @abc.abstractmethod
    def _draw(self, canvas: Canvas) -> None:
        """See the game classes."""

    @abc.abstractmethod
    def _info(self) -> dict:
        """See the game classes."""

    @abc.abstractmethod
    def _state_row(self, row: np.ndarray) -> None:
        """See the game classes."""

    # -- gymnasium API --
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = Pcg32(int(seed))
        elif self._rng is None:
            self._rng = Pcg32(int(self.np_random.integers(0, 2**63)))
        self._deal(self._rng)
        self._ended = False
        return self._frame(), self._info()

    def step(self, action):
        if self._rng is None or self._ended:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        action = _check_action(action, self.game.num_actions)
        reward, terminated, truncated = self._play(action, self._rng)
        self._ended = terminated or truncated
        return self._frame(), float(reward), terminated, truncated, self._info()

    def render(self):
        return self._frame() if self._rng is not None else None

    def state_row(self) -> np.ndarray:
        """The state row the C batch writes for this env (int32 [STATE_DIM])."""
        row = np.zeros(STATE_DIM, dtype=np.int32)
        self._state_row(row)
        return row

    def _frame(self) -> np.ndarray:
        canvas = Canvas(self.height, self.width)
        self._draw(canvas)
        return canvas.px


def _check_action(action, n: int) -> int:
    arr = np.asarray(action)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"action must be one integer in [0, {n}), got {action!r}")
    value = int(arr)
    if not 0 <= value < n:
        raise ValueError(f"action {value} is out of range: this game has {n} actions (0..{n - 1})")
    return value
