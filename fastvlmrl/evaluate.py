"""`fastvlmrl eval RUN_DIR`: a run's latest checkpoint plays eval.episodes episodes on fresh seeds;
the result replaces the run's eval.json."""

from __future__ import annotations

import json
from pathlib import Path

from fastvlmrl.build import build_encoder, build_player, resolve_device, resolve_dtype
from fastvlmrl.checkpoint import latest_checkpoint, load_checkpoint
from fastvlmrl.curves import redraw_curves


def evaluate_run(run_dir, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a run's latest checkpoint (eval.* settings from the run's config and overrides)."""
    from fastvlmrl.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    policy, processor = load_checkpoint(cfg, latest_checkpoint(run_dir), device, dtype)
    policy.eval()
    player = build_player(cfg, policy, processor, build_encoder(policy, processor, dtype))
    result = final_evaluation(cfg, player)
    player.envs.close()
    path = run_dir / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    redraw_curves(run_dir)
    return result, path


def final_evaluation(cfg, player) -> dict:
    """eval.json's numbers: the first eval.episodes episodes started from eval.seed, and, for a
    game with few start states (NumberLine's 30), the success rate over each of them exactly."""
    from fastvlmrl.envs.play import start_state_seeds
    from fastvlmrl.rl.rollout import evaluate_start_states

    result = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed)
    seeds = start_state_seeds(cfg.env.name, face_cards_as_10=cfg.env.face_cards_as_10)
    if seeds is not None:
        result.update(evaluate_start_states(player, seeds, cfg.eval.temperature))
    return result
