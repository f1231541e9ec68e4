"""`fastvlmrl/ALFWorld-v0`: one ALFWorld text game as a `gymnasium.Env`.

    env = gymnasium.make("fastvlmrl/ALFWorld-v0", games=find_games(path, "train"))
    obs, info = env.reset(seed=0)        # a game drawn from `games` by the env's own RNG
    obs, reward, terminated, truncated, info = env.step("go to cabinet 1")   # or an index into
                                                                             # obs["admissible"]

Observation: a dict of the engine's text (`text`: the room and task after a reset, the feedback
after a step), the task line (`task`) and the admissible commands (`admissible`, sorted). There is
no image: ALFWorld here is the text game (the visual one needs AI2-THOR). `info` is the dict the
prompts read (`describe`): the same plus the previous actions, the task type, the goal-condition
rate, whether the game is won, and the oracle's next command and thought.

Reward: RL4VLM's `50 * won + goal-condition rate - 1` for a command that is not admissible.
Episodes end when won (terminated), at `max_steps` (truncated: a time limit, bootstrapped), and
with `gtr_truncation` as GTR ends them: more than 40 actions or the last 5 identical (terminated,
reward -3).
"""

from __future__ import annotations

import random

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from fastvlmrl.envs.alfworld.engine import TextGame
from fastvlmrl.envs.alfworld.oracle import admissible_form, plan_step
from fastvlmrl.envs.alfworld.tasks import TASK_SHORT

GTR_MAX_ACTIONS = 40
GTR_REPEATS = 5
GTR_TRUNCATION_REWARD = -3.0
MAX_TEXT = 16_384
_CHARSET = frozenset(chr(c) for c in range(32, 127)) | {"\n", "\t"}


NO_COMMAND = -1  # an action index that names no admissible command (a reply that named none)


def command_of(action, admissible) -> str:
    """An action as a command: a string as given, an integer as an index into `admissible`;
    NO_COMMAND is the empty command (not admissible: nothing happens, reward -1)."""
    if isinstance(action, (str, np.str_)):
        return str(action)
    arr = np.asarray(action)
    if arr.shape == () and np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        index = int(arr)
        if index == NO_COMMAND:
            return ""
        if not 0 <= index < len(admissible):
            raise ValueError(f"action index {index} is out of range: {len(admissible)} admissible commands")
        return admissible[index]
    raise ValueError(f"an ALFWorld action is a command string or an index into the admissible commands, got {action!r}")


class Episodes:
    """Episodes of ALFWorld games in this process (the gymnasium env, and each vector worker):
    the game drawn at each reset, the step rules, the info dict. Deterministic given its seed."""

    def __init__(self, games: list[str], *, max_steps: int = 50, gtr_truncation: bool = False,
                 memoize: bool = True, seed: int | None = None):
        if not games:
            raise ValueError("ALFWorld needs at least one game file")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.games = list(games)
        self.max_steps = int(max_steps)
        self.gtr_truncation = bool(gtr_truncation)
        self.engine = TextGame(memoize=memoize)
        self.rng = random.Random(seed)
        self.game_index = -1
        self.actions: list[str] = []
        self.obs = None
        self._loaded = -1

    def reset(self, seed: int | None = None, game: int | None = None) -> dict:
        if seed is not None:
            self.rng.seed(seed)
        self.game_index = self.rng.randrange(len(self.games)) if game is None else int(game)
        if self._loaded != self.game_index:
            self.engine.load(self.games[self.game_index])
            self._loaded = self.game_index
        self.obs = self.engine.reset()
        self.actions = []
        return self.describe()

    def step(self, action) -> tuple[dict, float, bool, bool]:
        """(info, reward, terminated, truncated) of one command."""
        if self.obs is None:
            raise RuntimeError("call reset() before step()")
        command = command_of(action, self.obs.admissible)
        self.obs, reward, legal = self.engine.step(command)
        self.actions.append(command)
        terminated, truncated = self.obs.won, False
        if not terminated and self.gtr_truncation and (
                len(self.actions) > GTR_MAX_ACTIONS
                or (len(self.actions) >= GTR_REPEATS and len(set(self.actions[-GTR_REPEATS:])) == 1)):
            terminated, reward = True, GTR_TRUNCATION_REWARD
        if not terminated and len(self.actions) >= self.max_steps:
            truncated = True
        info = self.describe()
        info["legal"] = legal
        return info, float(reward), bool(terminated), bool(truncated)

    def describe(self) -> dict:
        """The info dict the prompts, the parser and the oracle read."""
        obs = self.obs
        step = plan_step(self.engine.goal, self.engine.facts()) if not obs.won else None
        command = None if step is None else admissible_form(step[0], obs.admissible)
        traj_type = self.engine.goal.task_type
        return {"observation": obs.text, "task": obs.task, "admissible_commands": list(obs.admissible),
                "previous_actions": list(self.actions), "task_type": traj_type, "task_short": TASK_SHORT[traj_type],
                "game": self.games[self.game_index], "won": obs.won, "goal_progress": obs.progress,
                "steps": len(self.actions),
                "expert_action": command, "expert_thoughts": step[1] if command is not None else None}

    def get_state(self) -> dict:
        """Where the episodes stand: the RNG, the game, the commands so far (replayed on restore)."""
        return {"rng": self.rng.getstate(), "game": self.game_index, "actions": list(self.actions)}

    def set_state(self, state: dict) -> dict:
        self.reset(game=state["game"])
        for command in state["actions"]:
            self.obs, _, _ = self.engine.step(command)
            self.actions.append(command)
        self.rng.setstate(_rng_state(state["rng"]))
        return self.describe()


def _rng_state(state):
    """random.Random's state after a round trip through pickle/JSON-like containers (lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def observation(info: dict) -> dict:
    return {"text": info["observation"], "task": info["task"], "admissible": tuple(info["admissible_commands"])}


def observation_space() -> spaces.Dict:
    text = spaces.Text(max_length=MAX_TEXT, charset=_CHARSET)
    return spaces.Dict({"text": text, "task": spaces.Text(max_length=1024, charset=_CHARSET),
                        "admissible": spaces.Sequence(spaces.Text(max_length=256, charset=_CHARSET))})


class ALFWorldEnv(gym.Env):
    """One ALFWorld game at a time (see the module docstring). `games`: game file paths."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, games: list[str], *, max_steps: int = 50, gtr_truncation: bool = False,
                 memoize: bool = True, render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.episodes = Episodes(games, max_steps=max_steps, gtr_truncation=gtr_truncation, memoize=memoize)
        self.render_mode = render_mode
        self.observation_space = observation_space()
        self.action_space = spaces.Text(max_length=256, charset=_CHARSET)
        self._info: dict | None = None
        self._ended = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        game = (options or {}).get("game")
        self._info = self.episodes.reset(seed=seed, game=game)
        self._ended = False
        return observation(self._info), dict(self._info)

    def step(self, action):
        if self._info is None:
            raise RuntimeError("call reset() before step()")
        if self._ended:
            raise RuntimeError("the episode has ended: call reset()")
        info, reward, terminated, truncated = self.episodes.step(action)
        self._info, self._ended = info, terminated or truncated
        return observation(info), reward, terminated, truncated, dict(info)

    def render(self):
        if self.render_mode != "ansi" or self._info is None:
            return None
        return f"{self._info['observation']}\n> admissible: {', '.join(self._info['admissible_commands'])}"
