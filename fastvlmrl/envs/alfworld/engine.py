"""One ALFWorld game in ALFWorld's own text engine (TextWorld's PDDL env with ALFWorld's name
demangler), with RL4VLM's reward.

Fast Downward, under the engine, holds one game's state per process (`load_sas` sets a global):
a process plays one game at a time, so batches of games run in a process pool (vector.py).

Reward per step, as RL4VLM's ALFWorld runs: `50 * won + goal-condition success rate - 1` for a
command that is not admissible (the engine answers "Nothing happens." and the state stays). The
goal-condition rate is a level, re-added on every step, as in RL4VLM.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from fastvlmrl.envs.alfworld.tasks import Facts, Goal, goal_conditions

WIN_REWARD = 50.0
ILLEGAL_PENALTY = -1.0
NOTHING_HAPPENS = "Nothing happens."


def require_alfworld() -> None:
    """A clear error when the ALFWorld engine is not installed."""
    try:
        import alfworld  # noqa: F401
        import fast_downward  # noqa: F401
        import textworld  # noqa: F401
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"ALFWorld needs its text engine ({e.name} is not installed): pip install 'fastvlmrl[alfworld]'"
        ) from None


@dataclass
class Observation:
    """What the player sees after a reset or a step."""

    text: str  # the engine's feedback ("You arrive at cabinet 1. ..."), or the room and task after a reset
    task: str  # "put a apple in countertop."
    admissible: tuple[str, ...]  # the commands the engine accepts now, sorted
    won: bool
    progress: float  # goal-condition success rate in [0, 1]


class TextGame:
    """One ALFWorld game at a time in this process: load(game file), reset(), step(command).

    `memoize=True` (fast_textworld.py) caches the engine's pure parsing steps (grammar templates,
    the PDDL-to-SAS translation) per game; observations and admissible commands are identical.
    The caches are process-wide: once installed, every engine in the process uses them."""

    def __init__(self, *, memoize: bool = False):
        require_alfworld()
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs import PddlEnv

        if memoize:
            from fastvlmrl.envs.alfworld.fast_textworld import install

            install()
        infos = textworld.EnvInfos(admissible_commands=True, facts=True, won=True, feedback=True)
        self._env = AlfredDemangler(PddlEnv(infos), shuffle=False)
        self.memoize = memoize
        self.goal: Goal | None = None
        self.task = ""
        self.game_file: str | None = None
        self._state = None

    def load(self, game: str | dict, traj: dict | None = None) -> None:
        """Load a game: a `game.tw-pddl` path (its `traj_data.json` beside it) or its data and traj."""
        if isinstance(game, str):
            self.game_file = game
            with open(game, encoding="utf-8") as f:
                data = json.load(f)
            if traj is None:
                import os

                with open(os.path.join(os.path.dirname(game), "traj_data.json"), encoding="utf-8") as f:
                    traj = json.load(f)
        else:
            self.game_file, data = None, game
        if traj is None:
            raise ValueError("a game given as data needs its traj_data")
        argv = list(sys.argv)
        try:
            self._env.load(data)
        finally:
            sys.argv[:] = argv  # fast_downward.pddl2sas overwrites sys.argv on each load
        self.goal = Goal.from_traj(traj)

    def reset(self) -> Observation:
        if self.goal is None:
            raise RuntimeError("load a game before reset()")
        self._state = self._env.reset()
        text = self._state["feedback"]
        at = text.find("Your task is to: ")
        self.task = text[at + len("Your task is to: "):].strip() if at >= 0 else ""
        return self._observation(text)

    def step(self, command: str) -> tuple[Observation, float, bool]:
        """(observation, reward, legal): a command that is not admissible changes nothing."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        command = command.strip()  # (as the engine reads it)
        legal = command in self._state["admissible_commands"]
        if legal:
            self._state, _, _ = self._env.step(command)
        # An inadmissible command changes nothing (the engine would answer the same after
        # re-deriving every admissible command): it is not sent.
        obs = self._observation(self._state["feedback"] if legal else NOTHING_HAPPENS)
        reward = WIN_REWARD * obs.won + obs.progress + (0.0 if legal else ILLEGAL_PENALTY)
        return obs, reward, legal

    def facts(self) -> Facts:
        return Facts(self._state["facts"])

    def _observation(self, text: str) -> Observation:
        met, total = goal_conditions(self.goal, self.facts())
        return Observation(text.strip(), self.task, tuple(self._state["admissible_commands"]),
                           bool(self._state["won"]), met / total)

    def verify(self, game: dict, traj: dict, max_steps: int = 60) -> list[str] | None:
        """The oracle walkthrough when it wins `game` within `max_steps`, else None."""
        from fastvlmrl.envs.alfworld.oracle import next_command

        self.load(game, traj)
        obs = self.reset()
        walkthrough = []
        for _ in range(max_steps):
            command = next_command(self.goal, self.facts(), obs.admissible)
            if command is None:
                return None
            obs, _, legal = self.step(command)
            if not legal:
                return None
            walkthrough.append(command)
            if obs.won:
                return walkthrough
        return None
