"""Playing the batch of games with the policy: prompts from each env's state, one batched
generation through the engine (which reads the trainer's weights), parsing, env step.

`Player.collect` fills a RolloutStorage for PPO; `Player.evaluate` plays whole episodes greedily
on fresh seeds. Episode statistics follow RL4VLM: an episode succeeds when its summed env reward
is > 0 (ALFWorld: when it is won: its reward adds partial progress every step); illegal-output
penalties and bootstrap terms are not part of the episode return.
"""

from __future__ import annotations

import time
import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from fastvlmrl.console import progress
from fastvlmrl.distributed import current as current_world
from fastvlmrl.engine import Request, SamplingParams
from fastvlmrl.engine.nvtx import nvtx_range
from fastvlmrl.envs.parse import choose_action, reply_object, strict_reply
from fastvlmrl.envs.prompts import reply_keys, task_prompt
from fastvlmrl.rl.storage import RolloutStorage, Transition
from fastvlmrl.rl.thought_metrics import thought_summary
from fastvlmrl.rl.token_weights import action_token_mask


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    wins: list[bool] = field(default_factory=list)  # per ended episode: Game.episode_success
    legal: int = 0
    outputs: int = 0
    tokens: int = 0
    cut: int | None = None  # group rollouts: episodes cut at the step cap (their returns count as failures)
    # replies whose thought states what the frame shows / whose action follows from the thought,
    # over the replies that say it (Game.judge): a failure reads as seeing or deciding
    perception: list[int] = field(default_factory=lambda: [0, 0])  # [correct, judged]
    follows: list[int] = field(default_factory=lambda: [0, 0])
    valid: int = 0  # replies that are one JSON object with every key the prompt asks for (parse.strict_reply)
    thoughts: list[str] = field(default_factory=list)  # the "thoughts" of the replies that have one (thought metrics)
    # a few replies as they were (samples.jsonl): the first `samples_wanted` of the rollout
    samples_wanted: int = 0
    samples: list[dict] = field(default_factory=list)
    # where the rollout's time went (timing/*_s): prompts, generation, reading replies, env steps
    seconds: dict = field(default_factory=lambda: {"prompt": 0.0, "generate": 0.0, "parse": 0.0, "env": 0.0,
                                                   "value": 0.0})

    def summary(self) -> dict[str, float]:
        r = np.array(self.returns, dtype=np.float64)
        return {
            "rollout/success_rate": float(np.mean(self.wins)) if self.wins else float("nan"),
            "rollout/episode_return": float(r.mean()) if len(r) else float("nan"),
            "rollout/episode_length": float(np.mean(self.lengths)) if self.lengths else float("nan"),
            "rollout/episodes": len(r),
            "rollout/legal_action_rate": self.legal / max(self.outputs, 1),
            **({} if self.cut is None else {"rollout/cut_episodes": self.cut}),
            "thought/perception_correct": self.perception[0] / self.perception[1] if self.perception[1] else float("nan"),
            "thought/action_follows_thought": self.follows[0] / self.follows[1] if self.follows[1] else float("nan"),
            "thought/valid_json_rate": self.valid / max(self.outputs, 1),
            **thought_summary(self.thoughts),
        }

    def pooled(self, env_offset: int = 0) -> EpisodeStats:
        """Every rank's statistics together (under torchrun; this one as it is otherwise): the
        episodes and counts of all ranks, the rollout's first samples over the global envs (as a
        single process keeps them: step by step, env by env; this rank's envs start at global env
        `env_offset`), the slowest rank's seconds."""
        world = current_world()
        if not world.active:
            return self
        samples, step = [], 0
        for k, sample in enumerate(self.samples):  # kept step by step, env by env (fewer envs once some ended)
            step += k > 0 and sample["env"] <= self.samples[k - 1]["env"]
            samples.append(({**sample, "env": sample["env"] + env_offset}, step))
        parts = world.gather((self.returns, self.lengths, self.legal, self.outputs, self.tokens, self.cut,
                              self.perception, self.follows, samples, self.valid, self.thoughts, self.wins,
                              self.seconds))
        out = EpisodeStats(samples_wanted=self.samples_wanted)
        ordered = sorted((pair for p in parts for pair in p[8]), key=lambda pair: (pair[1], pair[0]["env"]))
        out.samples = [sample for sample, _ in ordered[: self.samples_wanted]]
        for returns, lengths, legal, outputs, tokens, cut, perception, follows, _, valid, thoughts, wins, _ in parts:
            out.wins += wins
            out.valid += valid
            out.thoughts += thoughts
            out.returns += returns
            out.lengths += lengths
            out.legal, out.outputs, out.tokens = out.legal + legal, out.outputs + outputs, out.tokens + tokens
            out.cut = None if cut is None else (out.cut or 0) + cut
            out.perception = [a + b for a, b in zip(out.perception, perception)]
            out.follows = [a + b for a, b in zip(out.follows, follows)]
        out.seconds = {k: max(p[-1][k] for p in parts) for k in self.seconds}
        return out

    def end(self, ret: float, length: int, won: bool) -> None:
        """Count an ended episode."""
        self.returns.append(float(ret))
        self.lengths.append(int(length))
        self.wins.append(bool(won))

    def keep_sample(self, env: int, game, info: dict, text: str, parsed, action: int, legal: tuple[str, ...]) -> None:
        """Keep a reply (the first `samples_wanted`); `legal`: the actions the indices name."""
        if len(self.samples) < self.samples_wanted:
            self.samples.append({"env": int(env), "game": game.name, "state": info, "output": text,
                                 "parsed_action": None if parsed.action is None else legal[parsed.action],
                                 "legal": bool(parsed.legal), "action": legal[action] if action >= 0 else None,
                                 "reward": None})

    def settle_rewards(self, rewards) -> None:
        """The rewards of the step the kept samples acted in (known once the envs stepped)."""
        for sample in self.samples:
            if sample["reward"] is None:
                sample["reward"] = float(rewards[sample["env"]])

    def judge(self, game, info: dict, text: str, keys: tuple[str, ...]) -> None:
        """Count a reply's format, keep its thought, and judge what it says against the state."""
        self.valid += strict_reply(text, keys) is not None
        reply = reply_object(text)
        if reply is None:
            return
        if isinstance(reply.get("thoughts"), str):
            self.thoughts.append(reply["thoughts"])
        for tally, verdict in zip((self.perception, self.follows), game.judge(info, reply)):
            if verdict is not None:
                tally[0] += int(verdict)
                tally[1] += 1


class Player:
    def __init__(self, policy, engine, encoder, envs, *, cot: bool, style: str, sampling, illegal_action: str,
                 illegal_penalty: float, seed: int, ignore_eos: bool = False, env_offset: int = 0,
                 global_envs: int | None = None, guide=None, eval_envs=None, game=None):
        """env_offset / global_envs: under torchrun, this rank's envs are global envs env_offset ...
        of global_envs; each is seeded and sampled as that env of a single-process run.
        guide: GTR's ThoughtGuide (format reward, corrections, truncation) for training steps.
        eval_envs: the envs evaluations play, as many as `envs` (ALFWorld's evaluation split);
        None: evaluations play `envs` (reset from the evaluation seed). game: the Game whose text
        protocol the replies follow (default the envs' own; ALFWorld's carries prompt options)."""
        self.policy, self.engine, self.encoder, self.envs = policy, engine, encoder, envs
        self.eval_envs = eval_envs
        self.game = envs.game if game is None else game
        self.guide = guide
        self.cot, self.style, self.sampling = cot, style, sampling
        self.keys = reply_keys(self.game, cot=cot)
        self.illegal_action, self.illegal_penalty = illegal_action, illegal_penalty
        self.ignore_eos = ignore_eos  # benchmarks: every output runs to max_new_tokens
        # (a rank's own stream under torchrun: the random actions for illegal replies differ per rank)
        self.rng = np.random.default_rng(seed if env_offset == 0 else (seed, env_offset))
        self.seed = seed
        self.env_offset = env_offset
        self.global_envs = envs.num_envs if global_envs is None else global_envs
        self.calls = 0
        n = envs.num_envs
        self.episode_return = np.zeros(n)
        self.episode_length = np.zeros(n, int)

    def _tasks(self, infos) -> list[str]:
        return [task_prompt(self.game, info, cot=self.cot, style=self.style) for info in infos]

    def _frames(self, obs, count: int) -> list:
        """The frames of `count` observations; a text game's (ALFWorld) prompts have none."""
        return list(obs) if self.game.has_frames else [None] * count

    def _requests(self, frames, infos, tasks=None):
        reqs = []
        for frame, task in zip(frames, self._tasks(infos) if tasks is None else tasks):
            ids, mm = self.encoder.encode(frame, task)
            reqs.append(Request(ids, mm))
        return reqs

    def _generate(self, requests, temperature: float, max_new_tokens: int):
        params = SamplingParams(temperature=temperature, top_p=self.sampling.top_p,
                                repetition_penalty=self.sampling.repetition_penalty, max_new_tokens=max_new_tokens,
                                suppress_token_ids=self.encoder.suppressed_ids, ignore_eos=self.ignore_eos,
                                # disjoint per call and env (env i's is the single-process run's env i's)
                                seed=self.seed * 1_000_003 + self.calls * self.global_envs + self.env_offset)
        self.calls += 1
        gens = self.engine.generate_requests(requests, params)
        for g in gens:
            if g.error:
                raise RuntimeError(f"generation failed: {g.error}")
        return gens

    @torch.no_grad()
    def values(self, frames, infos) -> torch.Tensor:
        """V of states: the value head on the last prompt token's hidden state (prefill only)."""
        gens = self._generate(self._requests(self._frames(frames, len(infos)), infos), 0.0, 1)
        return self._values_of(gens)

    def _values_of(self, gens) -> torch.Tensor:
        head_dtype = next(self.policy.value_head.parameters()).dtype
        return self.policy.value(torch.stack([g.hidden_state for g in gens]).to(head_dtype)).float()

    def _act(self, env: int, info: dict, req, gen, value: float, stats: EpisodeStats, record: bool,
             bonus: float = 0.0):
        """Env `env`'s reply as (action, extra reward, Transition or None), counted (and judged,
        and perhaps kept as a sample) in stats; an illegal reply becomes an action by
        env.illegal_action (drawing from the player's RNG)."""
        stats.judge(self.game, info, gen.text, self.keys)
        legal = self.game.legal_actions(info)
        parsed = self.game.parse_reply(gen.text, info)
        action, extra = choose_action(parsed, len(legal), self.rng, self.illegal_action, self.illegal_penalty)
        stats.keep_sample(env, self.game, info, gen.text, parsed, action, legal)
        stats.legal += int(parsed.legal)
        stats.outputs += 1
        stats.tokens += len(gen.token_ids)
        if not record:
            return action, extra, None
        return action, extra, Transition(
            torch.as_tensor(req.prompt_token_ids).long(), req.mm_inputs, torch.tensor(gen.token_ids, dtype=torch.long),
            logprobs=torch.tensor(gen.logprobs, dtype=torch.float32),
            is_action=torch.tensor(action_token_mask(self.encoder.tokenizer, gen.token_ids), dtype=torch.bool),
            value=value, bonus=bonus)

    @torch.no_grad()
    def step(self, obs, temperature: float, stats: EpisodeStats, record: bool = True):
        """One env step for every env: (transitions, rewards for PPO, dones, new obs, step infos).
        record=False (evaluation) keeps no transitions and skips the action/thought token split;
        GTR's guide (format reward, corrections, early truncation) acts on training steps only."""
        tick = time.perf_counter()
        infos = [self.envs.describe(i) for i in range(self.envs.num_envs)]
        tasks = self._tasks(infos)
        frames = self._frames(obs, len(infos))
        requests = self._requests(frames, infos, tasks)
        tock = time.perf_counter()
        stats.seconds["prompt"] += tock - tick
        with nvtx_range("rollout/generate"):
            gens = self._generate(requests, temperature, self.sampling.max_new_tokens)
            values = self._values_of(gens)
        tick = time.perf_counter()
        stats.seconds["generate"] += tick - tock
        actions = np.zeros(len(gens), np.int64)
        extra = np.zeros(len(gens), np.float32)
        guided = record and self.guide is not None
        transitions = []
        with nvtx_range("rollout/parse"):
            bonus = self.guide.observe(frames, infos, tasks, [g.text for g in gens]) if guided else np.zeros(len(gens))
            for i, (req, gen) in enumerate(zip(requests, gens)):
                actions[i], extra[i], transition = self._act(i, infos[i], req, gen, float(values[i]), stats, record,
                                                             float(bonus[i]))
                if record:
                    transitions.append(transition)
        tock = time.perf_counter()
        stats.seconds["parse"] += tock - tick
        with nvtx_range("rollout/env_step"):
            obs, rewards, terminated, truncated, step_infos = self.envs.step(actions)
            if guided:
                obs = self._truncate(infos, obs, rewards, terminated, truncated)
        stats.seconds["env"] += time.perf_counter() - tock
        stats.settle_rewards(rewards + extra)
        self.episode_return += rewards
        self.episode_length += 1
        ended = terminated | truncated
        for i in np.flatnonzero(ended):
            ret = self.episode_return[i]
            stats.end(ret, self.episode_length[i], self.game.episode_success(ret, self._final_info(step_infos, i)))
            self.episode_return[i], self.episode_length[i] = 0.0, 0
        return transitions, rewards + extra, terminated, truncated, obs, step_infos

    def _final_info(self, step_infos, i: int) -> dict | None:
        """Env i's info dict of the state its episode ended in (a text game's; the card games'
        success is read from the return alone)."""
        if self.game.has_frames or "final_info" not in step_infos:
            return None
        return step_infos["final_info"][i]

    def _truncate(self, infos, obs, rewards, terminated, truncated):
        """GTR's early truncation: the envs the guide cuts short end here (terminated, reward -1)
        and start a new episode; returns the frames after it."""
        from fastvlmrl.gtr.guide import TRUNCATION_REWARD

        after = [self.envs.describe(i) for i in range(self.envs.num_envs)]
        cut = self.guide.truncations(infos, after, terminated | truncated)
        if not cut.any():
            return obs
        rewards[cut] = TRUNCATION_REWARD
        terminated[cut] = True
        obs, _ = self.envs.reset(options={"reset_mask": cut})
        return obs

    def collect(self, obs, storage: RolloutStorage, gamma: float, desc: str = "rollout", reward_scale: float = 1.0,
                samples: int = 0):
        """Fill storage with storage.num_steps steps; returns (obs after, stats, seconds, V(obs after)).
        The stored rewards are scaled by reward_scale (the critic's units; the stats keep the env's).
        stats.samples keeps the first `samples` replies."""
        stats = EpisodeStats(samples_wanted=samples)
        start = time.perf_counter()
        for t in progress(range(storage.num_steps), desc=desc, leave=False):
            transitions, rewards, terminated, truncated, obs, infos = self.step(obs, self.sampling.temperature, stats)
            rewards = rewards.astype(np.float32) * np.float32(reward_scale)
            tick = time.perf_counter()
            if truncated.any():
                # time-limit truncation: bootstrap from the value of the state the episode stopped in
                idx = np.flatnonzero(truncated)
                finals = [infos["final_obs"][i] for i in idx]
                final_infos = [self.envs.describe_final(i) for i in idx]
                rewards[idx] += gamma * self.values(finals, final_infos).cpu().numpy()
            storage.add(t, transitions, rewards, terminated | truncated)
            stats.seconds["value"] += time.perf_counter() - tick
        tick = time.perf_counter()
        infos = [self.envs.describe(i) for i in range(self.envs.num_envs)]
        last_values = self.values(obs, infos).cpu()
        stats.seconds["value"] += time.perf_counter() - tick
        return obs, stats, time.perf_counter() - start, last_values

    @torch.no_grad()
    def collect_groups(self, seed: int, group_size: int, max_steps: int, reward_scale: float = 1.0, samples: int = 0):
        """Episodes in groups of `group_size` from identical starts (global env i plays group i // K,
        seeded `seed + group`), each played to its end (at most `max_steps`), for the critic-free
        algorithms. Returns (episodes, stats, seconds). An env whose episode ended sits out the
        rest of the rollout: no generation is spent on it. Under torchrun each rank plays the
        groups of its own envs (whole groups: `train.check_world`)."""
        from fastvlmrl.rl.groups import Episode

        n = self.envs.num_envs
        if n % group_size:
            raise ValueError(f"env.num_envs={n} is not a multiple of algo.group_size={group_size}")
        start = time.perf_counter()
        if self.env_offset % group_size:
            raise ValueError(f"this rank's envs start at global env {self.env_offset}, inside a group of {group_size}")
        groups = [(self.env_offset + i) // group_size for i in range(n)]
        obs, _ = self.envs.reset(seed=[seed + g for g in groups])
        self.episode_return[:] = 0
        self.episode_length[:] = 0
        episodes = [Episode(group=g) for g in groups]
        alive = np.ones(n, bool)
        stats = EpisodeStats(samples_wanted=samples)
        for _ in progress(range(max_steps), desc="rollout", leave=False):
            live = np.flatnonzero(alive)
            if not len(live):
                break
            rows = self.envs.state if self.game.has_frames else None
            infos = [self.envs.describe(i) for i in live]
            frames = [obs[i] for i in live] if self.game.has_frames else [None] * len(live)
            requests = self._requests(frames, infos)
            gens = self._generate(requests, self.sampling.temperature, self.sampling.max_new_tokens)
            values = self._values_of(gens)
            actions = np.zeros(n, np.int64)  # an env that sat out steps with 0; that episode is never used
            extra = np.zeros(n, np.float32)
            for j, (i, req, gen) in enumerate(zip(live, requests, gens)):
                actions[i], extra[i], transition = self._act(i, infos[j], req, gen, float(values[j]), stats, record=True)
                episodes[i].transitions.append(transition)
                # the same state reached at another step is the same anchor (GiGPO)
                episodes[i].states.append(self.game.anchor(infos[j], None if rows is None else rows[i]))
            obs, rewards, terminated, truncated, step_infos = self.envs.step(actions)
            stats.settle_rewards(rewards + extra)
            for i in live:
                episodes[i].rewards.append(float((rewards[i] + extra[i]) * reward_scale))
                self.episode_return[i] += rewards[i]
                self.episode_length[i] += 1
                if terminated[i] or truncated[i]:
                    alive[i] = False
                    ret = self.episode_return[i]
                    stats.end(ret, self.episode_length[i],
                              self.game.episode_success(ret, self._final_info(step_infos, i)))
        stats.cut = int(alive.sum())  # still running at max_steps: counted with their return so far, not left out
        for i in np.flatnonzero(alive):
            stats.end(self.episode_return[i], self.episode_length[i], self.game.episode_success(self.episode_return[i], None))
        # every rank's sampling counter as the busiest rank's (a single process counts its longest episode)
        self.calls = int(current_world().max(float(self.calls)))
        return episodes, stats, time.perf_counter() - start

    @contextlib.contextmanager
    def evaluating(self):
        """Play on the evaluation envs inside the block (when there are some); the training envs'
        episodes and counters are as they were after it."""
        if self.eval_envs is None:
            yield
            return
        saved = (self.envs, self.episode_return.copy(), self.episode_length.copy())
        self.envs = self.eval_envs
        try:
            yield
        finally:
            self.envs, self.episode_return[:], self.episode_length[:] = saved[0], saved[1], saved[2]

    def close(self) -> None:
        """Close the envs (and GTR's corrector); a second call does nothing."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
        if self.guide is not None:
            self.guide.close()

    def reset(self, seed: int):
        """New episodes in every env (from `seed`), and no partial episode counted from before."""
        obs, _ = self.envs.reset(seed=seed + self.env_offset)
        self.episode_return[:] = 0
        self.episode_length[:] = 0
        return obs

    def get_state(self) -> dict:
        """The player's own state (its RNG, sampling-seed counter, the episodes' running returns),
        saved in checkpoints so a resumed run samples and counts exactly as the original."""
        state = {"rng": self.rng.bit_generator.state, "calls": self.calls,
                 "episode_return": self.episode_return.copy(), "episode_length": self.episode_length.copy()}
        if self.guide is not None:  # the DAgger buffer: a resumed run clones what the original would have
            state["guide"] = self.guide.get_state()
        return state

    def set_state(self, state: dict) -> None:
        if self.guide is not None:
            if "guide" not in state:
                raise ValueError("the checkpoint was written without gtr.enabled: it holds no DAgger buffer to resume")
            self.guide.set_state(state["guide"])
        self.rng.bit_generator.state = state["rng"]
        self.calls = int(state["calls"])
        self.episode_return[:] = state["episode_return"]
        self.episode_length[:] = state["episode_length"]

    @torch.no_grad()
    def evaluate(self, episodes: int, temperature: float, seed: int, desc: str = "eval") -> dict[str, float]:
        """The first `episodes` episodes started from `seed` (every env plays on; an episode that
        starts after them is not counted), played to their end: counting the first to *end*
        would drop long episodes, mostly failures, and read high. RL4VLM's statistics, with a
        95% (Wilson) interval on the success rate. Under torchrun each rank plays its share of
        the episodes on its own envs (their seeds offset as in training) and the results are pooled."""
        world = current_world()
        share = episodes // world.size + (1 if world.rank < episodes % world.size else 0)
        with self.evaluating():
            returns, wins, stats = self._play_episodes(share, temperature, seed, desc)
        pooled = world.gather((returns.tolist(), wins.tolist(), stats.legal, stats.outputs))
        returns = np.array([r for part, _, _, _ in pooled for r in part])
        wins = np.array([w for _, part, _, _ in pooled for w in part], dtype=bool)
        legal, outputs = sum(p[2] for p in pooled), sum(p[3] for p in pooled)
        low, high = wilson_interval(int(wins.sum()), episodes)
        return {
            "success_rate": float(wins.mean()),
            "success_ci95_low": low,
            "success_ci95_high": high,
            "episode_return": float(returns.mean()),
            "legal_action_rate": legal / max(outputs, 1),
            "episodes": episodes,
        }

    def _play_episodes(self, episodes: int, temperature: float, seed: int, desc: str):
        """(returns and wins of the first `episodes` episodes started from `seed`, their EpisodeStats)."""
        obs = self.reset(seed)
        n = self.envs.num_envs
        index = np.arange(n)  # the start order of each env's current episode
        started = n
        returns = np.full(episodes, np.nan)
        wins = np.zeros(episodes, bool)
        stats = EpisodeStats()
        with progress(total=episodes, desc=desc, leave=False) as bar:
            while np.isnan(returns).any():
                before = len(stats.returns)
                _, _, terminated, truncated, obs, _ = self.step(obs, temperature, stats, record=False)
                ended = zip(np.flatnonzero(terminated | truncated), stats.returns[before:], stats.wins[before:])
                for i, ret, won in ended:
                    if index[i] < episodes:
                        returns[index[i]], wins[index[i]] = ret, won
                        bar.update(1)
                    index[i], started = started, started + 1  # the episode SameStep autoreset began
                done = ~np.isnan(returns)
                bar.set_postfix(success=f"{wins[done].mean():.3f}" if done.any() else "-")
        return returns, wins, stats


def evaluate_start_states(player: Player, seeds: list[int], temperature: float) -> dict[str, float]:
    """The first episode from each seed (one per start state: `envs.play.start_state_seeds`),
    played to its end, in batches of the player's envs: an exact success rate over the states.
    Under torchrun the ranks split the seeds."""
    world = current_world()
    mine = list(seeds)[world.rank::world.size]
    n = player.envs.num_envs
    wins = []
    for begin in range(0, len(mine), n):
        chunk = mine[begin:begin + n]
        obs, _ = player.envs.reset(seed=chunk + [chunk[-1]] * (n - len(chunk)))
        player.episode_return[:] = 0
        player.episode_length[:] = 0
        done = np.full(n, np.nan)
        stats = EpisodeStats()
        while np.isnan(done[: len(chunk)]).any():
            before = len(stats.returns)
            _, _, terminated, truncated, obs, _ = player.step(obs, temperature, stats, record=False)
            for i, won in zip(np.flatnonzero(terminated | truncated), stats.wins[before:]):
                if np.isnan(done[i]):
                    done[i] = float(won)
        wins += done[: len(chunk)].tolist()
    wins = [w for part in world.gather(wins) for w in part]
    return {"start_states": len(seeds), "start_state_success_rate": float(np.mean(wins))}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (sound at 0 and 1, unlike mean ± 2 SE)."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
