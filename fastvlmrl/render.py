"""`fastvlmrl render RUN_DIR`: a run's checkpoint plays episodes and every step is drawn with the
model's own words: the step, the action it took (legal or not), the reward, and its thought; the
last panel of each episode says how it ended. What `legal_action_rate` cannot show (a thought
that says nothing about the frame) is plain in the picture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fastvlmrl.envs.strip import Panel, check_picture_path, write_episodes


def _words(text: str) -> str:
    """The reply's thought (what the picture shows under the frame), or the whole reply when it
    has no "thoughts" field."""
    from fastvlmrl.envs.parse import reply_object

    reply = reply_object(text)
    if isinstance(reply, dict) and "thoughts" in reply:
        rest = {k: v for k, v in reply.items() if k not in ("thoughts", "action")}
        seen = " ".join(f"{k}: {json.dumps(v)}." for k, v in rest.items())
        return f"{seen} {reply['thoughts']}".strip()
    return text if reply is not None else f"(not JSON) {text}"


def play_run(run_dir, checkpoint: str | None, episodes: int, seed: int, max_steps: int,
             overrides: list[str] = ()) -> tuple[list[list[Panel]], list[float]]:
    """Play `episodes` episodes (env i from seed + i, greedy as eval.temperature) with a run's
    checkpoint (`checkpoint` = "step_N", default the latest); (panels per episode, returns)."""
    import numpy as np

    from fastvlmrl.build import build_encoder, build_player, resolve_device, resolve_dtype
    from fastvlmrl.checkpoint import latest_checkpoint, load_checkpoint, named_checkpoint
    from fastvlmrl.config import load_config
    from fastvlmrl.rl.rollout import EpisodeStats

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_envs=episodes))
    path = latest_checkpoint(run_dir) if checkpoint is None else named_checkpoint(run_dir, checkpoint)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    policy, processor = load_checkpoint(cfg, path, device, dtype)
    policy.eval()
    player = build_player(cfg, policy, processor, build_encoder(policy, processor, dtype))
    try:
        obs, _ = player.envs.reset(seed=[seed + i for i in range(episodes)])
        panels: list[list[Panel]] = [[] for _ in range(episodes)]
        returns = [0.0] * episodes
        alive = np.ones(episodes, bool)
        for step in range(max_steps):
            frames = [o.copy() for o in obs]
            stats = EpisodeStats(samples_wanted=episodes)
            _, rewards, terminated, truncated, obs, infos = player.step(obs, cfg.eval.temperature, stats, record=False)
            for sample in stats.samples:
                i = sample["env"]
                if not alive[i]:
                    continue
                legal = "legal" if sample["legal"] else "illegal, played at random"
                returns[i] += sample["reward"]
                panels[i].append(Panel(frames[i], f"step {step + 1}: {sample['action']!r} ({legal}), "
                                                  f"reward {sample['reward']:g}", _words(sample["output"])))
            for i in np.flatnonzero((terminated | truncated) & alive):
                alive[i] = False
                end = "won" if returns[i] > 0 else "lost"
                why = " (time limit)" if truncated[i] else ""
                panels[i].append(Panel(infos["final_obs"][i], f"end: {end}{why}, return {returns[i]:g}"))
            if not alive.any():
                break
        for i in np.flatnonzero(alive):
            panels[i].append(Panel(obs[i], f"stopped after {max_steps} steps, return {returns[i]:g}"))
    finally:
        player.envs.close()
    return panels, returns


def render_run(run_dir, out: str, *, checkpoint: str | None = None, episodes: int = 2, seed: int = 0,
               max_steps: int = 20) -> str:
    """Write the run's episodes to `out` (.gif or .png); returns a one-line summary."""
    check_picture_path(out)
    if not Path(out).parent.is_dir():
        raise ValueError(f"--out: the directory {Path(out).parent} does not exist")
    panels, returns = play_run(run_dir, checkpoint, episodes, seed, max_steps)
    write_episodes(panels, out)
    wins = sum(r > 0 for r in returns)
    return f"wrote {out}: {episodes} episodes, {wins} won, {sum(len(p) for p in panels)} panels"
