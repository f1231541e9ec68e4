"""`fastvlmrl eval RUN_DIR [--checkpoint step_N]`: a run's checkpoint (default the latest) plays
eval.episodes episodes on fresh seeds; the result goes to eval/<checkpoint>_<episodes>ep.json,
beside the others (eval.json keeps the training's own final result)."""

from __future__ import annotations

import json
from pathlib import Path

from fastvlmrl.build import build_encoder, build_player, resolve_device, resolve_dtype
from fastvlmrl.checkpoint import latest_checkpoint, load_checkpoint, named_checkpoint


# the overrides an evaluation uses (ALFWorld: the split it plays, e.g. valid_unseen)
EVAL_KEYS = ("eval.", "run.threads", "run.device", "env.threads", "alfworld.eval_split")


def evaluate_run(run_dir, overrides: list[str], checkpoint: str | None = None) -> tuple[dict, Path]:
    """Evaluate a run's checkpoint (`step_N`, default the latest; eval.* settings from the run's
    config and overrides); (result, the file it was written to)."""
    from fastvlmrl.config import load_config

    import torch

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    for text in overrides:
        key = text.split("=", 1)[0]
        if not key.startswith(EVAL_KEYS):
            raise ValueError(f"eval uses only {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in EVAL_KEYS)}"
                             f": {key} would change nothing here (the run's own settings play)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    path = latest_checkpoint(run_dir) if checkpoint is None else named_checkpoint(run_dir, checkpoint)
    policy, processor = load_checkpoint(cfg, path, device, dtype)
    policy.eval()
    player = build_player(cfg, policy, processor, build_encoder(policy, processor, dtype))
    try:
        result = final_evaluation(cfg, player)
    finally:
        player.close()
    split = f"_{cfg.alfworld.eval_split}" if cfg.env.name.lower() == "alfworld" else ""  # (ALFWorld: per split)
    out = run_dir / "eval" / f"{path.name}_{cfg.eval.episodes}ep{split}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**result, "checkpoint": path.name, "temperature": cfg.eval.temperature,
                               "seed": cfg.eval.seed}, indent=2) + "\n")
    return result, out


def final_evaluation(cfg, player) -> dict:
    """eval.json's numbers: the first eval.episodes episodes started from eval.seed, and, for a
    game with few start states (NumberLine's 30), the success rate over each of them exactly
    (eval.start_states)."""
    from fastvlmrl.envs.play import start_state_seeds
    from fastvlmrl.rl.rollout import evaluate_start_states

    result = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed)
    if not cfg.eval.start_states or not player.game.has_frames:  # (a text game, ALFWorld: no C start states)
        return result
    seeds = start_state_seeds(cfg.env.name, face_cards_as_10=cfg.env.face_cards_as_10)
    if seeds is not None:
        result.update(evaluate_start_states(player, seeds, cfg.eval.temperature))
    return result
