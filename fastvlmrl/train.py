"""The loop: (SFT warm start) -> [rollout -> GAE -> PPO update -> log -> checkpoint] x updates ->
evaluation on fresh seeds. Everything a run writes goes to runs/<name>/:

    config.yaml       the resolved configuration
    metrics.jsonl     one JSON object per update (and "sft/..." lines for the warm start)
    curves.png        the curves of metrics.jsonl, redrawn at every checkpoint
    tensorboard/      the same scalars as TensorBoard events (log.tensorboard=true)
    checkpoints/      step_N/ (model or LoRA adapters, value head, optimizer, RNG and env state)
                      and `latest`: `fastvlmrl train resume=runs/<name>` continues from there
    eval.json         success_rate, episode_return, legal_action_rate, episodes
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastvlmrl.config import Config, save_config
from fastvlmrl.metrics_log import MetricsLog


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


def save_checkpoint(run_dir: Path, update: int, policy, optimizer, processor, resume_state: dict | None = None) -> Path:
    """checkpoints/step_N/ written to a temporary folder first, then renamed: a run killed while
    saving leaves the previous checkpoint and `latest` intact. `resume_state` (RNG states, the
    envs' snapshot, counters) is what `train(..., resume=True)` needs to continue exactly."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    final = root / f"step_{update}"
    tmp = root / f".step_{update}.partial"
    if tmp.exists():  # left by a run killed while saving
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    policy.model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
              tmp / "value_head.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "update": update, **(resume_state or {})}, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (root / "latest.tmp").write_text(final.name)
    (root / "latest.tmp").replace(root / "latest")
    return final


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Run a whole training run; returns its directory (default <run.out_dir>/<run.name>).

    resume=True continues the run in `run_dir` from its latest checkpoint: weights, optimizer,
    learning-rate schedule, RNG states and the envs' episodes are restored, metrics.jsonl keeps
    the lines up to that checkpoint, and the updates that follow are the ones the uninterrupted
    run would have made."""
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
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.out_dir) / cfg.run.name
    tensorboard_dir = run_dir / "tensorboard" if cfg.log.tensorboard else None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
        if "envs" not in state:
            raise ValueError(f"{checkpoint} has no resume state (written by an older fastvlmrl): start a new run")
        if cfg.ppo.updates < state["update"]:
            raise ValueError(f"ppo.updates={cfg.ppo.updates} is below the {state['update']} updates {checkpoint} "
                             "already made: give ppo.updates >= that to resume")
        log = None  # opened once the run is restored: a failed resume leaves the directory as it was
    else:
        if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
            hint = (f"continue it with `fastvlmrl train resume={run_dir}`, or pick another run.name"
                    if (run_dir / "checkpoints" / "latest").is_file() else
                    "it stopped before its first checkpoint, so it cannot be resumed: delete the directory or "
                    "pick another run.name")
            raise ValueError(f"{run_dir} already holds a run: {hint}")
        torch.manual_seed(cfg.run.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir)

    if resume:
        policy, processor = load_checkpoint(cfg, checkpoint, device, dtype, trainable=True)
    else:
        policy, processor = load_policy(cfg.model.path, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
                                        lora_alpha=cfg.model.lora_alpha, lora_dropout=cfg.model.lora_dropout,
                                        freeze_vision=cfg.model.freeze_vision, dtype=dtype, device=device,
                                        seed=cfg.run.seed)
    encoder = PromptEncoder(processor, family_for(policy.model).mm_keys, dtype,
                            placeholder_token_ids(policy.hf_model.config))
    logit_bias = encoder.logit_bias(policy.lm_head_weight().shape[0], device, policy.lm_head_weight().dtype)

    if cfg.sft.steps and not resume:
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
    if cfg.sft.steps and cfg.ppo.updates and not resume:  # the warm-started model's success, to compare with PPO's
        policy.eval()
        sft_eval = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed, desc="eval sft")
        log.write({f"sft/eval_{k}": v for k, v in sft_eval.items()})
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.ppo.lr)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    temperature = cfg.sampling.temperature if cfg.sampling.temperature > 0 else 1.0

    if resume:
        optimizer.load_state_dict(state["optimizer"])
        obs = _restore(state, generator, player)
        first, env_steps = state["update"], state["env_steps"]
        planned = state["planned_updates"]
        del state  # the optimizer's CPU copy: as large as the optimizer state itself
        _truncate_metrics(run_dir / "metrics.jsonl", first)
        save_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir, purge_step=env_steps + 1)
        print(f"resuming {run_dir} from {checkpoint.name} (update {first} of {cfg.ppo.updates})")
    else:
        obs = player.reset(cfg.run.seed)
        first, env_steps, planned = 0, 0, cfg.ppo.updates
    bar = tqdm(range(first, cfg.ppo.updates), desc="ppo", initial=first, total=cfg.ppo.updates)
    for update in bar:
        # over the updates the run first planned: a run extended by resume holds lr_end after them
        lr = cosine_lr(update, planned, cfg.ppo.lr, cfg.ppo.lr_end, cfg.ppo.warmup_updates)
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
        done = update + 1
        if done == cfg.ppo.updates or (cfg.log.checkpoint_every and done % cfg.log.checkpoint_every == 0):
            save_checkpoint(run_dir, done, policy, optimizer, processor,
                            _resume_state(planned, env_steps, generator, player))
            _draw_curves(run_dir)

    if cfg.ppo.updates == 0 or first >= cfg.ppo.updates:  # SFT only, or a finished run resumed
        if not (run_dir / "checkpoints" / f"step_{cfg.ppo.updates}").is_dir():
            save_checkpoint(run_dir, cfg.ppo.updates, policy, optimizer, processor,
                            _resume_state(planned, env_steps, generator, player))
    policy.eval()
    result = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log.close()
    envs.close()
    _draw_curves(run_dir)
    return run_dir


def _resume_state(planned_updates: int, env_steps: int, generator: torch.Generator, player) -> dict:
    """What continues a run exactly, beyond the weights and the optimizer."""
    return {
        "planned_updates": planned_updates,
        "env_steps": env_steps,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "minibatch_rng": generator.get_state(),
        "player": player.get_state(),
        "envs": player.envs.get_state(),
    }


def _restore(state: dict, generator: torch.Generator, player):
    """Put the RNGs, the player and the envs back as they were; returns the current frames."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        for device, rng in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, device)
    generator.set_state(state["minibatch_rng"])
    player.set_state(state["player"])
    obs, _ = player.envs.set_state(state["envs"])
    return obs


def _truncate_metrics(path: Path, update: int) -> None:
    """Keep the lines a resumed run stands on: the SFT lines and the updates before `update`
    (a run killed after a checkpoint may have logged updates it will now redo)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # only the last line can be torn by a kill
                raise ValueError(f"{path} line {number} is not JSON: repair or remove it, then resume") from None
    keep = [r for r in records if r.get("update", -1) < update]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)


def _draw_curves(run_dir: Path) -> None:
    """curves.png; a plotting failure is reported, never fatal to the run."""
    from fastvlmrl.curves import plot_curves

    try:
        plot_curves(run_dir)
    except Exception as error:  # noqa: BLE001 - the run's results matter more than its picture
        print(f"warning: could not draw {run_dir / 'curves.png'}: {error}")


def latest_checkpoint(run_dir: Path) -> Path:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise ValueError(f"{run_dir} has no checkpoint (no checkpoints/latest; a run stopped before its first "
                         "checkpoint cannot be resumed): train first, or check the path")
    return run_dir / "checkpoints" / pointer.read_text().strip()


def load_checkpoint(cfg: Config, checkpoint: Path, device, dtype, trainable: bool = False):
    """(policy, processor) from a checkpoint: full weights, or the base model plus LoRA adapters
    (trainable: the adapters take gradients, to resume training)."""
    from safetensors.torch import load_file

    from fastvlmrl.models import load_policy

    if cfg.model.lora:
        from peft import PeftModel

        policy, processor = load_policy(cfg.model.path, lora=False, freeze_vision=cfg.model.freeze_vision,
                                        dtype=dtype, device=device, seed=cfg.run.seed)
        policy.model = PeftModel.from_pretrained(policy.model, checkpoint / "model", is_trainable=trainable).to(device)
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
    _draw_curves(run_dir)
    return result, path
