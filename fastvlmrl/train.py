"""The loop: (SFT warm start) -> [rollout -> GAE -> PPO update -> log -> checkpoint] x updates ->
evaluation on fresh seeds. Everything a run writes goes to runs/<name>/:

    config.yaml       the resolved configuration
    metrics.jsonl     one JSON object per update (and "sft/..." lines for the warm start)
    checkpoints/      step_N/ (model or LoRA adapters, value head, optimizer) and `latest`
    eval.json         success_rate, episode_return, legal_action_rate, episodes
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fastvlmrl.config import Config, save_config


def resolve_device(cfg: Config) -> torch.device:
    if cfg.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is cuda but no CUDA device is available: use run.device=cpu")
    return device


def resolve_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    if cfg.model.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.model.dtype)


class MetricsLog:
    """metrics.jsonl, one JSON object per line, flushed as written (a killed run keeps its lines)."""

    def __init__(self, path: Path):
        self.file = path.open("a")

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def save_checkpoint(run_dir: Path, update: int, policy, optimizer, processor) -> Path:
    """checkpoints/step_N/ written to a temporary folder first, then renamed: a run killed while
    saving leaves the previous checkpoint and `latest` intact."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    final = root / f"step_{update}"
    tmp = root / f".step_{update}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
              tmp / "value_head.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "update": update}, tmp / "trainer_state.pt")
    if final.exists():
        import shutil

        shutil.rmtree(final)
    tmp.rename(final)
    (root / "latest.tmp").write_text(final.name)
    (root / "latest.tmp").replace(root / "latest")
    return final


def train(cfg: Config) -> Path:
    """Run a whole training run; returns its directory."""
    from fastvlmrl.engine import Engine
    from fastvlmrl.engine.families import family_for
    from fastvlmrl.envs.vector import make_batch
    from fastvlmrl.models import load_policy
    from fastvlmrl.models.encoder import PromptEncoder, placeholder_token_ids
    from fastvlmrl.rl.ppo import cosine_lr, ppo_update
    from fastvlmrl.rl.rollout import Player
    from fastvlmrl.rl.sft import make_demos, sft_train
    from fastvlmrl.rl.storage import RolloutStorage

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricsLog(run_dir / "metrics.jsonl")

    policy, processor = load_policy(cfg.model.path, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
                                    lora_alpha=cfg.model.lora_alpha, lora_dropout=cfg.model.lora_dropout,
                                    freeze_vision=cfg.model.freeze_vision, dtype=dtype, device=device,
                                    seed=cfg.run.seed)
    encoder = PromptEncoder(processor, family_for(policy.model).mm_keys, dtype,
                            placeholder_token_ids(policy.hf_model.config))
    logit_bias = encoder.logit_bias(policy.lm_head_weight().shape[0], device, policy.lm_head_weight().dtype)

    if cfg.sft.steps:
        demos = make_demos(cfg.env.name, cfg.sft.demos, noise=cfg.sft.noise, seed=cfg.run.seed, cot=cfg.prompt.cot,
                           style=cfg.prompt.style,
                           image_size=cfg.env.image_size, face_cards_as_10=cfg.env.face_cards_as_10)
        sft_train(policy, encoder, demos, cfg.sft, device=device, seed=cfg.run.seed, logit_bias=logit_bias,
                  log=lambda step, loss: log.write({"sft/step": step, "sft/loss": loss}) if step % 10 == 0 else None)

    engine = Engine(policy.model, processor)
    envs = make_batch(cfg.env.name, cfg.env.num_envs, height=cfg.env.image_size, width=cfg.env.image_size,
                      num_threads=cfg.env.threads, autoreset_mode="SameStep", face_cards_as_10=cfg.env.face_cards_as_10)
    player = Player(policy, engine, encoder, envs, cot=cfg.prompt.cot, style=cfg.prompt.style, sampling=cfg.sampling,
                    illegal_action=cfg.env.illegal_action, illegal_penalty=cfg.env.illegal_penalty,
                    thought_coef=cfg.ppo.thought_coef, seed=cfg.run.seed)
    if cfg.sft.steps and cfg.ppo.updates:  # the warm-started model's success, to compare with PPO's
        policy.eval()
        sft_eval = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed, desc="eval sft")
        log.write({f"sft/eval_{k}": v for k, v in sft_eval.items()})
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.ppo.lr)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    temperature = cfg.sampling.temperature if cfg.sampling.temperature > 0 else 1.0

    obs = player.reset(cfg.run.seed)
    env_steps = 0
    bar = tqdm(range(cfg.ppo.updates), desc="ppo")
    for update in bar:
        lr = cosine_lr(update, cfg.ppo.updates, cfg.ppo.lr, cfg.ppo.lr_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
        storage = RolloutStorage(cfg.ppo.num_steps, cfg.env.num_envs)
        policy.eval()
        obs, stats, rollout_s, last_values = player.collect(obs, storage, cfg.ppo.gamma)
        storage.finish(last_values, cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.ppo.normalize_advantages)
        start = time.perf_counter()
        metrics = ppo_update(policy, optimizer, storage, cfg.ppo, temperature=temperature, pad_id=encoder.pad_id,
                             device=device, generator=generator, logit_bias=logit_bias)
        update_s = time.perf_counter() - start
        env_steps += cfg.ppo.num_steps * cfg.env.num_envs
        record = {"update": update, "env_steps": env_steps, "lr": lr, **stats.summary(), **metrics,
                  "timing/rollout_s": rollout_s, "timing/update_s": update_s,
                  "throughput/tokens_per_s": stats.tokens / max(rollout_s, 1e-9)}
        log.write(record)
        bar.set_postfix(success=f"{record['rollout/success_rate']:.3f}")
        if cfg.log.checkpoint_every and (update + 1) % cfg.log.checkpoint_every == 0:
            save_checkpoint(run_dir, update + 1, policy, optimizer, processor)

    save_checkpoint(run_dir, cfg.ppo.updates, policy, optimizer, processor)
    policy.eval()
    result = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log.close()
    envs.close()
    return run_dir


def latest_checkpoint(run_dir: Path) -> Path:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise ValueError(f"{run_dir} has no checkpoint (no checkpoints/latest): train first, or check the path")
    return run_dir / "checkpoints" / pointer.read_text().strip()


def load_checkpoint(cfg: Config, checkpoint: Path, device, dtype):
    """(policy, processor) from a checkpoint: full weights, or the base model plus LoRA adapters."""
    from safetensors.torch import load_file

    from fastvlmrl.models import load_policy

    if cfg.model.lora:
        from peft import PeftModel

        policy, processor = load_policy(cfg.model.path, lora=False, freeze_vision=cfg.model.freeze_vision,
                                        dtype=dtype, device=device, seed=cfg.run.seed)
        policy.model = PeftModel.from_pretrained(policy.model, checkpoint / "model").to(device)
    else:
        policy, processor = load_policy(str(checkpoint / "model"), lora=False, freeze_vision=cfg.model.freeze_vision,
                                        dtype=dtype, device=device, seed=cfg.run.seed)
    policy.value_head.load_state_dict(load_file(checkpoint / "value_head.safetensors"))
    return policy, processor


def evaluate_run(run_dir, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a run's latest checkpoint (eval.* settings from the run's config and overrides)."""
    from fastvlmrl.config import load_config
    from fastvlmrl.engine import Engine
    from fastvlmrl.engine.families import family_for
    from fastvlmrl.envs.vector import make_batch
    from fastvlmrl.models.encoder import PromptEncoder, placeholder_token_ids
    from fastvlmrl.rl.rollout import Player

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    policy, processor = load_checkpoint(cfg, latest_checkpoint(run_dir), device, dtype)
    policy.eval()
    encoder = PromptEncoder(processor, family_for(policy.model).mm_keys, dtype,
                            placeholder_token_ids(policy.hf_model.config))
    envs = make_batch(cfg.env.name, cfg.env.num_envs, height=cfg.env.image_size, width=cfg.env.image_size,
                      num_threads=cfg.env.threads, autoreset_mode="SameStep", face_cards_as_10=cfg.env.face_cards_as_10)
    player = Player(policy, Engine(policy.model, processor), encoder, envs, cot=cfg.prompt.cot, style=cfg.prompt.style, sampling=cfg.sampling,
                    illegal_action=cfg.env.illegal_action, illegal_penalty=cfg.env.illegal_penalty,
                    thought_coef=cfg.ppo.thought_coef, seed=cfg.run.seed)
    result = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed)
    envs.close()
    path = run_dir / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result, path
