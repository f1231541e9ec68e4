"""N ALFWorld games stepped in parallel, one worker process each (`gymnasium.vector.VectorEnv`).

    envs = ALFWorldVectorEnv(games, num_envs=16)
    obs, infos = envs.reset(seed=0)           # env i draws its games from seed 0 + i
    obs, rewards, terminated, truncated, infos = envs.step(commands)   # strings or admissible indices

Fast Downward holds one game's state per process, and TextWorld steps at tens of steps per second
per core, so each env lives in its own process and a step sends every command before it waits for
any reply: the slowest env sets the step's time, not their sum. Observations are a dict of tuples
(`text`, `task`, `admissible`); `describe(i)` gives env i's info dict (what the prompts read);
after a step that ended env i, `describe_final(i)` gives the state it ended in (autoreset is
SameStep: the returned observation is already the next episode's).

A worker that does not answer within `timeout_s` (a stuck engine) or fails is an error naming
the env and its game; `close()` stops every worker.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fastvlmrl.envs.alfworld.env import _CHARSET, Episodes, observation, observation_space


def _worker(conn, parent_ends, games, options, seed):
    """One env's process: an Episodes object driven by (command, argument) messages."""
    import signal

    # The trainer's stop handlers were inherited with the fork: a worker stops when told (or
    # terminated), and leaves Ctrl-C to the trainer, which closes the envs at a safe point.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for end in parent_ends:  # the trainer's ends of the pipes: once it is gone, recv() sees EOF
        end.close()
    try:
        episodes = Episodes(games, seed=seed, **options)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        try:
            command, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            if command == "reset":
                result = episodes.reset(seed=arg)
            elif command == "step":
                info, reward, terminated, truncated = episodes.step(arg)
                final = None
                if terminated or truncated:
                    final, info = info, episodes.reset()
                result = (info, reward, terminated, truncated, final)
            elif command == "get_state":
                result = episodes.get_state()
            elif command == "set_state":
                result = episodes.set_state(arg)
            elif command == "close":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown worker command {command!r}")
            conn.send(("ok", result))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class ALFWorldVectorEnv(VectorEnv):
    """`num_envs` ALFWorld envs in worker processes; see the module docstring."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, games: list[str], num_envs: int = 1, *, max_steps: int = 50, gtr_truncation: bool = False,
                 memoize: bool = True, seed: int | None = None, timeout_s: float = 300.0, context: str | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not games:
            raise ValueError("ALFWorld needs at least one game file")
        from fastvlmrl.envs.games.alfworld import ALFWORLD

        self.game = ALFWORLD  # its text protocol (prompts, parsing, the oracle's reply)
        self.num_envs = int(num_envs)
        self.games = list(games)
        self.timeout_s = float(timeout_s)
        self.single_observation_space = observation_space()
        self.single_action_space = spaces.Text(max_length=256, charset=_CHARSET)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        options = {"max_steps": max_steps, "gtr_truncation": gtr_truncation, "memoize": memoize}
        # fork where there is one (as torch's DataLoader workers): spawn would re-import the user's
        # script, which then needs an `if __name__ == "__main__"` guard. The workers never use torch.
        if context is None:
            context = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(context)
        self._conns, self._procs = [], []
        self._infos: list[dict | None] = [None] * self.num_envs
        self._finals: list[dict | None] = [None] * self.num_envs
        self.closed = False
        try:
            for i in range(self.num_envs):
                parent, child = ctx.Pipe()
                self._conns.append(parent)
                proc = ctx.Process(target=_worker, daemon=True, name=f"alfworld-env-{i}",
                                   args=(child, self._conns, self.games, options, None if seed is None else seed + i))
                proc.start()
                child.close()
                self._procs.append(proc)
            self._gather("start")
        except BaseException:
            self.close()
            raise

    # -- gymnasium API --
    def reset(self, *, seed=None, options: dict | None = None):
        self._check_open()
        mask = None if not options else options.get("reset_mask")
        seeds = _seeds(seed, self.num_envs)
        for i in range(self.num_envs):
            if mask is None or mask[i]:
                self._send(i, ("reset", seeds[i]))
        for i, info in self._gather("reset", only=mask).items():
            self._infos[i], self._finals[i] = info, None
        return self._observations(), self._batched_infos()

    def step(self, actions):
        self._check_open()
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions, got {len(actions)}")
        if any(info is None for info in self._infos):
            raise RuntimeError("call reset() before step()")
        for i, action in enumerate(actions):
            self._send(i, ("step", action if isinstance(action, str) else int(action)))
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, np.bool_)
        truncated = np.zeros(self.num_envs, np.bool_)
        legal = np.zeros(self.num_envs, np.bool_)
        for i, (info, reward, term, trunc, final) in self._gather("step").items():
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            legal[i] = (final or info)["legal"]
            self._infos[i], self._finals[i] = info, final
        infos = self._batched_infos()
        infos["legal"], infos["_legal"] = legal, np.ones(self.num_envs, np.bool_)
        ended = terminated | truncated
        if ended.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_info = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(ended):
                final_obs[i], final_info[i] = observation(self._finals[i]), self._finals[i]
            infos["final_obs"], infos["_final_obs"] = final_obs, ended.copy()
            infos["final_info"], infos["_final_info"] = final_info, ended.copy()
        return self._observations(), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs):
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():  # (a worker stuck in the engine)
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def close(self, **kwargs):
        if not self.closed:
            self.close_extras()
            self.closed = True

    # -- fastvlmrl additions --
    def describe(self, i: int) -> dict:
        """Env i's info dict (observation, task, admissible commands, previous actions, ...)."""
        if self._infos[i] is None:
            raise RuntimeError("call reset() before describe()")
        return dict(self._infos[i])

    def describe_final(self, i: int) -> dict:
        """Right after a step that ended env i: the info dict of the state it ended in."""
        if self._finals[i] is None:
            raise RuntimeError(f"env {i} did not end on the last step")
        return dict(self._finals[i])

    def get_state(self) -> dict:
        """Every env's episode (its RNG, game and commands so far), for `set_state`."""
        self._check_open()
        for i in range(self.num_envs):
            self._send(i, ("get_state", None))
        states = self._gather("get_state")
        return {"game": "ALFWorld", "games": list(self.games), "envs": [states[i] for i in range(self.num_envs)]}

    def set_state(self, snapshot: dict):
        """Restore a `get_state` snapshot taken over the same games and number of envs."""
        self._check_open()
        if snapshot.get("game") != "ALFWorld" or len(snapshot.get("envs", ())) != self.num_envs:
            raise ValueError(f"cannot restore the envs: the snapshot is of {len(snapshot.get('envs', ()))} "
                             f"{snapshot.get('game')} envs, this batch is {self.num_envs} ALFWorld envs")
        if list(snapshot.get("games", ())) != self.games:
            raise ValueError("cannot restore the envs: the snapshot was taken over another list of games")
        for i, state in enumerate(snapshot["envs"]):
            self._send(i, ("set_state", state))
        for i, info in self._gather("set_state").items():
            self._infos[i], self._finals[i] = info, None
        return self._observations(), self._batched_infos()

    # -- internals --
    def _send(self, i: int, message) -> None:
        try:
            self._conns[i].send(message)
        except (OSError, BrokenPipeError):
            self.close()
            raise RuntimeError(f"ALFWorld workers failed:\nenv {i}'s worker is gone{self._game_of(i)}") from None

    def _gather(self, what: str, only=None) -> dict:
        results, errors = {}, []
        deadline = time.monotonic() + self.timeout_s  # for all the envs together (they work in parallel)
        for i, conn in enumerate(self._conns):
            if only is not None and not only[i]:
                continue
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                errors.append(f"env {i} did not answer {what} within {self.timeout_s:.0f} s{self._game_of(i)}")
                continue
            try:
                status, payload = conn.recv()
            except EOFError:
                errors.append(f"env {i}'s worker died during {what}{self._game_of(i)}")
                continue
            if status == "error":
                errors.append(f"env {i} failed during {what}{self._game_of(i)}:\n{payload}")
            else:
                results[i] = payload
        if errors:
            self.close()
            raise RuntimeError("ALFWorld workers failed:\n" + "\n".join(errors))
        return results

    def _game_of(self, i: int) -> str:
        info = self._infos[i] if i < len(self._infos) else None
        return f" (game {info['game']})" if info else ""

    def _check_open(self):
        if self.closed:
            raise RuntimeError("this ALFWorldVectorEnv is closed")

    def _observations(self) -> dict:
        obs = [observation(info) for info in self._infos]
        return {key: tuple(o[key] for o in obs) for key in ("text", "task", "admissible")}

    def _batched_infos(self) -> dict:
        infos = {}
        every = np.ones(self.num_envs, np.bool_)
        for key in ("won", "goal_progress", "steps", "task_type"):
            values = [info[key] for info in self._infos]
            infos[key] = np.array(values, dtype=object if key == "task_type" else None)
            infos["_" + key] = every
        return infos


def _seeds(seed, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(n)]
    values = [int(s) for s in seed]
    if len(values) != n:
        raise ValueError(f"seed has {len(values)} values for {n} envs")
    return values
