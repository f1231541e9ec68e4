"""What GTR does at each training step of the rollout, beside PPO's own work: the format reward
(a valid JSON reply with the prompt's keys earns `gtr.format_reward`, added to that step's return
after GAE), the corrector's verdicts on the valid replies (each wrong thought, corrected and with
the agent's own action, goes into the DAgger buffer), and early truncation (an episode whose
formula left every solution, or whose hand cannot make the target, ends there with reward -1,
judged exactly from the env's state by the game's solver). Counts for the `gtr/*` metrics."""

from __future__ import annotations

import numpy as np

from fastvlmrl.distributed import current as current_world
from fastvlmrl.envs.parse import strict_reply
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.buffer import CorrectedSample, DAggerBuffer
from fastvlmrl.gtr.correction import NO_VERDICT, WRONG, CorrectionItem, corrected_reply

TRUNCATION_REWARD = -1.0  # GTR's: an episode cut short ends as a loss


class ThoughtGuide:
    def __init__(self, corrector, game, cfg, *, seed=0):
        """cfg: the run's GTRConfig. seed: the DAgger buffer's draws (per rank under torchrun)."""
        self.corrector, self.game, self.cfg = corrector, game, cfg
        self.keys = reply_keys(game, cot=True)
        self.buffer = DAggerBuffer(cfg.buffer_size, seed=seed)
        self.targets: list[str | None] = []  # per env: the target formula the corrector fixed this episode
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts = {"replies": 0, "valid": 0, "judged": 0, "corrected": 0, "no_verdict": 0, "truncated": 0,
                       "format_reward": 0.0}

    def observe(self, frames, infos: list[dict], prompts: list[str], texts: list[str]) -> np.ndarray:
        """Judge one step's replies (one per env); returns each env's format reward [N]."""
        replies = [strict_reply(text, self.keys) for text in texts]
        if len(self.targets) != len(texts):
            self.targets = [None] * len(texts)
        bonus = np.array([self.cfg.format_reward if r is not None else 0.0 for r in replies], np.float32)
        valid = [i for i, r in enumerate(replies) if r is not None]
        frames = [None if f is None else np.asarray(f) for f in frames]  # (None: a text game's prompt)
        items = [CorrectionItem(frames[i], prompts[i], texts[i], infos[i], replies[i], self.targets[i])
                 for i in valid]
        corrections = self.corrector.evaluate(items) if items else []  # ([] from a corrector that judges nothing)
        for i, correction in zip(valid, corrections):
            if correction.target:  # GTR: the target formula holds for the rest of the episode
                self.targets[i] = correction.target
            if correction.verdict == NO_VERDICT:
                self.counts["no_verdict"] += 1
                continue
            self.counts["judged"] += 1
            if correction.verdict == WRONG and correction.corrected_thought is not None:
                self.counts["corrected"] += 1
                self.buffer.add(CorrectedSample(None if frames[i] is None else frames[i].copy(), prompts[i],
                                                corrected_reply(correction.corrected_thought, replies[i]["action"])))
        self.counts["replies"] += len(texts)
        self.counts["valid"] += len(valid)
        self.counts["format_reward"] += float(bonus.sum())
        return bonus

    def truncations(self, infos_before: list[dict], infos_after: list[dict], ended: np.ndarray) -> np.ndarray:
        """Which envs still playing after this step should be cut short (bool [N]): the hand they
        played cannot make the target (`gtr.truncate_unsolvable`), or the formula now extends no
        solution (`gtr.truncate_off_path`). The episodes that end (here or by the game) forget
        their target formula."""
        cut = np.zeros(len(infos_before), bool)
        for i in np.flatnonzero(~np.asarray(ended)):
            if self.cfg.truncate_unsolvable and self.game.solvable(infos_before[i]) is False:
                cut[i] = True
            elif self.cfg.truncate_off_path and not self.game.on_path(infos_after[i]):
                cut[i] = True
        self.counts["truncated"] += int(cut.sum())
        for i in np.flatnonzero(np.asarray(ended) | cut):
            if i < len(self.targets):
                self.targets[i] = None
        return cut

    def metrics(self) -> dict[str, float]:
        """The rollout's GTR metrics over every rank's envs (then the counts start again)."""
        world = current_world()
        c = dict(zip(self.counts, world.sum([float(v) for v in self.counts.values()])))
        failures = sum(getattr(self.corrector, "failures", {}).values())  # (cumulative: an HTTP corrector's)
        size, added, failures = world.sum([float(len(self.buffer)), float(self.buffer.added), float(failures)])
        out = {"gtr/corrected_rate": c["corrected"] / c["judged"] if c["judged"] else float("nan"),
               "gtr/no_verdict": c["no_verdict"], "gtr/truncated_episodes": c["truncated"],
               "gtr/format_reward_mean": c["format_reward"] / max(c["replies"], 1),
               "gtr/buffer_size": size, "gtr/buffer_added": added, "gtr/corrector_failures": failures}
        self.reset_counts()
        return out

    def close(self) -> None:
        self.corrector.close()

    def after_update(self) -> None:
        """After each PPO update (a self-teacher moves its EMA or its merge)."""
        if hasattr(self.corrector, "after_update"):
            self.corrector.after_update()

    def get_state(self) -> dict:
        state = {"buffer": self.buffer.state_dict(), "counts": dict(self.counts), "targets": list(self.targets),
                 "failures": dict(getattr(self.corrector, "failures", {}))}
        if hasattr(self.corrector, "get_state"):
            state["corrector"] = self.corrector.get_state()
        return state

    def set_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.counts = dict(state["counts"])
        self.targets = list(state["targets"])
        if hasattr(self.corrector, "failures"):  # (cumulative, as logged)
            self.corrector.failures.clear()
            self.corrector.failures.update(state["failures"])
        if hasattr(self.corrector, "set_state"):
            self.corrector.set_state(state["corrector"])
