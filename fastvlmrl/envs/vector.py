"""`gymnasium.vector.VectorEnv` over the C batch: N envs of one game stepped in one call.

    envs = gymnasium.make_vec("fastvlmrl/Points24-v0", num_envs=32)
    obs, infos = envs.reset(seed=0)           # env i is seeded with 0 + i
    obs, rewards, terminated, truncated, infos = envs.step(actions)

Observations are uint8 [N, H, W, 3]. With `copy=False` the returned array is a read-only view of
the batch's own buffer, redrawn in place by the next step (the fast path the trainer uses; it is
read-only because later steps redraw only what changed); with `copy=True`
(the default, as gymnasium's SyncVectorEnv) each call returns a fresh array. `infos` holds the
state that prompts need as named integer arrays (see `games.named_state`), each with its `_key`
mask; `describe(i)` gives env i's RL4VLM-style info dict.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fastvlmrl.envs import _cards
from fastvlmrl.envs.games import STATE_DIM, describe, get_game, named_state

_AUTORESET_CODES = {AutoresetMode.NEXT_STEP: 0, AutoresetMode.SAME_STEP: 1, AutoresetMode.DISABLED: 2}


def seeds_for(seed, num_envs: int) -> np.ndarray:
    """Per-env seeds as uint64 [num_envs]: an int s gives s, s+1, ...; a sequence gives one each."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        values = [int(seed) + i for i in range(num_envs)]
    else:
        try:
            values = [int(s) for s in seed]
        except TypeError:
            raise ValueError(f"seed must be an int or a sequence of {num_envs} ints, got {seed!r}") from None
        if len(values) != num_envs:
            raise ValueError(f"seed has {len(values)} values for {num_envs} envs")
    if any(not 0 <= v < 2**64 for v in values):
        raise ValueError(f"seeds must be in [0, 2**64), got {seed!r}")
    return np.array(values, dtype=np.uint64)


def check_actions(actions, num_envs: int, num_actions: int) -> np.ndarray:
    """Actions as a fresh int64 [num_envs] array, or a ValueError that says what is wrong."""
    arr = np.asarray(actions)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"actions must be integers in [0, {num_actions}), got dtype {arr.dtype}")
    if arr.shape != (num_envs,):
        raise ValueError(f"actions must have shape ({num_envs},), got {arr.shape}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_actions))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"action {arr[i]} for env {i} is out of range: this game has {num_actions} actions (0..{num_actions - 1})"
        )
    return arr.astype(np.int64)


class CardsVectorEnv(VectorEnv):
    """N envs of one game in C. Subclasses name the game; see the module docstring."""

    game_name = ""
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        height: int = 300,
        width: int = 300,
        num_threads: int = 1,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        render_mode: str | None = None,
        face_cards_as_10: bool = True,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in AutoresetMode]}") from None
        self.game = get_game(self.game_name, face_cards_as_10)
        self.num_envs = int(num_envs)
        self._batch = _cards.Batch(self.game.game_id, self.num_envs, int(height), int(width), int(num_threads),
                                   bool(face_cards_as_10))
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = render_mode
        self.copy = copy
        self.num_threads = self._batch.num_threads

        n, h, w = self.num_envs, int(height), int(width)
        self.single_observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.single_action_space = spaces.Discrete(self.game.num_actions)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)

        self._obs = np.zeros((n, h, w, 3), np.uint8)
        self._obs_view = self._obs.view()
        self._obs_view.flags.writeable = False
        self._rewards = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, np.bool_)
        self._truncated = np.zeros(n, np.bool_)
        self._state = np.zeros((n, STATE_DIM), np.int32)
        same_step = mode == AutoresetMode.SAME_STEP
        self._final_obs = np.zeros_like(self._obs) if same_step else None
        self._final_state = np.zeros_like(self._state) if same_step else None
        self._autoreset_code = _AUTORESET_CODES[mode]
        self._all = np.ones(n, np.bool_)
        self._all.flags.writeable = False
        self._started = False

    # -- gymnasium API --
    def reset(self, *, seed=None, options: dict | None = None):
        self._check_open()
        seeds = None if seed is None else seeds_for(seed, self.num_envs)
        mask = self._reset_mask(options)
        if not self._started and mask is not None and not mask.all():
            raise ValueError("the first reset must reset every env: call reset() without a reset_mask first")
        super().reset(seed=int(seeds[0]) if seeds is not None else None)
        if seeds is not None:
            self._batch.seed(seeds, mask)
        elif not self._started:
            entropy = np.random.SeedSequence().generate_state(self.num_envs, np.uint64)
            self._batch.seed(entropy, None)
        self._batch.reset(mask, self._obs, self._state)
        self._started = True
        return self._observations(), self._infos(self._state)

    def step(self, actions):
        self._check_open()
        if not self._started:
            raise RuntimeError("call reset() before step()")
        acts = check_actions(actions, self.num_envs, self.game.num_actions)
        self._batch.step(acts, self._obs, self._rewards, self._terminated, self._truncated, self._state,
                         self._autoreset_code, self._final_obs, self._final_state)
        infos = self._infos(self._state)
        if self._final_obs is not None:
            ended = self._terminated | self._truncated
            if ended.any():
                final_obs = np.full(self.num_envs, None, dtype=object)
                for i in np.flatnonzero(ended):
                    final_obs[i] = self._final_obs[i].copy()
                infos["final_obs"], infos["_final_obs"] = final_obs, ended.copy()
                infos["final_info"], infos["_final_info"] = self._infos(self._final_state, ended), ended.copy()
        return (self._observations(), self._rewards.copy(), self._terminated.copy(), self._truncated.copy(), infos)

    def render(self):
        self._check_open()
        if self.render_mode is None or not self._started:
            return None
        frames = np.empty_like(self._obs)
        self._batch.render(frames)
        return tuple(frames)

    def close_extras(self, **kwargs):
        self._batch.close()

    # -- fastvlmrl additions --
    @property
    def state(self) -> np.ndarray:
        """A copy of the state rows int32 [N, STATE_DIM] (layouts in `games`)."""
        return self._state.copy()

    def describe(self, i: int) -> dict:
        """Env i's RL4VLM-style info dict: the text a prompt needs for the frame it shows."""
        return describe(self.game, self._state[i])

    def describe_final(self, i: int) -> dict:
        """With autoreset_mode SameStep, right after a step that ended env i: the info dict of the
        state the episode ended in (describe(i) is already the new episode's)."""
        if self._final_state is None:
            raise RuntimeError("describe_final needs autoreset_mode='SameStep'")
        return describe(self.game, self._final_state[i])

    def get_state(self) -> dict:
        """A snapshot of every env (its episode and its random stream), for `set_state`: a
        resumed training run continues the very episodes it stopped in."""
        self._check_open()
        if not self._started:
            raise RuntimeError("call reset() before get_state()")
        return {"game": self.game.name, "height": self.single_observation_space.shape[0],
                "width": self.single_observation_space.shape[1], "batch": self._batch.get_state()}

    def set_state(self, snapshot: dict):
        """Restore a `get_state` snapshot taken from a batch of the same game, size and options;
        returns (observations, infos) as reset does."""
        self._check_open()
        h, w = self.single_observation_space.shape[:2]
        if snapshot.get("game") != self.game.name or (snapshot.get("height"), snapshot.get("width")) != (h, w):
            raise ValueError(f"cannot restore the envs: the snapshot is of {snapshot.get('game')} at "
                             f"{snapshot.get('height')}x{snapshot.get('width')}, this batch is {self.game.name} at {h}x{w}")
        self._batch.set_state(snapshot["batch"], self._obs, self._state)
        self._started = True
        return self._observations(), self._infos(self._state)

    # -- internals --
    def _check_open(self):
        if self.closed or self._batch.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")

    def _observations(self) -> np.ndarray:
        return self._obs.copy() if self.copy else self._obs_view

    def _infos(self, state: np.ndarray, mask: np.ndarray | None = None) -> dict:
        snapshot = state.copy()
        mask = self._all if mask is None else mask.copy()
        infos = {}
        for key, value in named_state(self.game, snapshot).items():
            infos[key] = value
            infos["_" + key] = mask
        return infos

    def _reset_mask(self, options: dict | None) -> np.ndarray | None:
        if not options or options.get("reset_mask") is None:
            return None
        mask = options["reset_mask"]
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},)")
        if not mask.any():
            raise ValueError("options['reset_mask'] must select at least one env")
        return np.ascontiguousarray(mask)


class NumberLineVectorEnv(CardsVectorEnv):
    game_name = "NumberLine"


class EZPointsVectorEnv(CardsVectorEnv):
    game_name = "EZPoints"


class Points24VectorEnv(CardsVectorEnv):
    game_name = "Points24"


class BlackjackVectorEnv(CardsVectorEnv):
    game_name = "Blackjack"


VECTOR_ENVS = {cls.game_name: cls for cls in (NumberLineVectorEnv, EZPointsVectorEnv, Points24VectorEnv, BlackjackVectorEnv)}


def make_batch(game: str, num_envs: int, **kwargs) -> CardsVectorEnv:
    """The C batch of `num_envs` envs of a game by name (keyword arguments as CardsVectorEnv)."""
    name = get_game(game).name
    if name not in VECTOR_ENVS:
        raise ValueError(f"{name} is a text game, not one of the C batch's: its envs are "
                         "fastvlmrl.envs.alfworld.ALFWorldVectorEnv (train with env.name=ALFWorld)")
    return VECTOR_ENVS[name](num_envs, **kwargs)
