"""The loop: (SFT warm start) -> [rollout -> GAE -> PPO update -> log -> checkpoint] x updates ->
evaluation on fresh seeds. Everything a run writes goes to runs/<name>/:

    config.yaml       the resolved configuration
    metrics.jsonl     one JSON object per update (and "sft/..." lines for the warm start)
    samples.jsonl     a few replies every log.samples_every updates: game, state, output, action, legal, reward
    curves.png        the curves of metrics.jsonl, redrawn at every checkpoint
    tensorboard/      the same scalars as TensorBoard events (log.tensorboard=true)
    wandb/, wandb_id  Weights & Biases files and the W&B run's id, kept for resume (log.wandb=true)
    checkpoints/      step_N/ and `latest` (fastvlmrl/checkpoint.py): `fastvlmrl train
                      resume=runs/<name>` continues from there
    eval.json         success_rate (+ its 95% interval), episode_return, legal_action_rate, episodes
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from fastvlmrl import checkpoint as ckpt
from fastvlmrl import distributed, sharding
from fastvlmrl.build import (alfworld_envs, build_encoder, build_player, game_of, is_alfworld, logprob_temperature,
                             resolve_device, resolve_dtype)
from fastvlmrl.console import banner, progress, result_line, say, update_line
from fastvlmrl.checkpoint import save_checkpoint  # by name: the resume test replaces it to kill a run
from fastvlmrl.config import Config, save_config
from fastvlmrl.curves import redraw_curves
from fastvlmrl.engine.nvtx import nvtx_range
from fastvlmrl.evaluate import final_evaluation
from fastvlmrl.metrics_log import MetricsLog
from fastvlmrl.run_dir import GracefulStop, RunLock, RunStopped
from fastvlmrl.wandb_log import WandbLogger, require_wandb


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Run a whole training run; returns its directory (default <run.out_dir>/<run.name>).

    resume=True continues the run in `run_dir` from its latest checkpoint: weights, optimizer,
    learning-rate schedule, RNG states and the envs' episodes are restored, metrics.jsonl keeps
    the lines up to that checkpoint, and the updates that follow are the ones the uninterrupted
    run would have made."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    world = distributed.init_from_environment(resolve_device(cfg).type)  # a world of one without torchrun
    try:
        check_world(cfg, world)
        # rank 0's name (a free `name-N` is picked per process): every rank writes to, or reads, one directory
        cfg.run.name = world.broadcast(cfg.run.name)
        run_dir = Path(world.broadcast(str(run_dir) if run_dir is not None else str(Path(cfg.run.out_dir) / cfg.run.name)))
        lock = RunLock(run_dir)  # one job per run directory: taken by rank 0 once the directory is this run's
        try:
            with GracefulStop(notify=say) as stop:
                return _train(cfg, run_dir, resume, stop, lock, world)
        finally:
            lock.release()
    finally:
        distributed.shutdown()


def check_world(cfg: Config, world) -> None:
    """What a run over several processes needs, checked before anything is written."""
    if not world.active:
        if cfg.model.fsdp:
            raise ValueError("model.fsdp=true shards the model over torchrun's processes: start the run with "
                             "`torchrun --nproc-per-node G -m fastvlmrl train ...` (G >= 2), or leave model.fsdp off")
        return
    if cfg.model.fsdp:
        _check_fsdp(cfg)
    _, local = world.local_slice(cfg.env.num_envs, "env.num_envs")
    if cfg.algo.name != "ppo" and local % cfg.algo.group_size:  # a group's episodes are on one rank
        raise ValueError(f"algo.name={cfg.algo.name}: each process's env.num_envs / {world.size} = {local} envs must "
                         f"be a multiple of algo.group_size={cfg.algo.group_size} (a group plays on one process)")


def _check_fsdp(cfg: Config) -> None:
    """What FSDP (model.fsdp) does not run yet."""
    if cfg.ppo.kl_coef > 0 and not cfg.model.lora:
        raise ValueError("ppo.kl_coef > 0 with full fine-tuning keeps a whole frozen copy of the model, which "
                         "model.fsdp does not shard: use model.lora=true (the reference is the adapters switched "
                         "off), or leave model.fsdp off")
    if cfg.gtr.enabled and cfg.gtr.corrector == "self":
        raise ValueError("gtr.corrector=self swaps the teacher's weights into the model, which model.fsdp does not "
                         "shard yet: use another corrector, or leave model.fsdp off")


def _train(cfg: Config, run_dir: Path, resume: bool, stop: GracefulStop, lock: RunLock, world) -> Path:
    from fastvlmrl.models import load_policy
    from fastvlmrl.models.policy import enable_gradient_checkpointing
    from fastvlmrl.models.tiny import tiny_config_from
    from fastvlmrl.rl.ppo import cosine_lr, make_optimizer, ppo_update, set_lr
    from fastvlmrl.rl.reference_policy import ReferencePolicy
    from fastvlmrl.rl.sft import demo_stream, encode_demos, sft_train, text_demo_stream

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    tensorboard_dir = run_dir / "tensorboard" if cfg.log.tensorboard else None
    if cfg.log.wandb:
        require_wandb()  # before anything is written

    # -- the policy: fresh (a new run) or from the latest checkpoint (resume) ------------------
    if resume:
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir} is not a run directory")
        if world.is_main:
            lock.acquire()
        world.barrier()  # (rank 0 holds the lock: a live run there stopped the job)
        checkpoint = ckpt.latest_checkpoint(run_dir)
        state = ckpt.read_trainer_state(checkpoint, cfg.ppo.updates)
        log = None  # opened once the run is restored: a failed resume leaves the directory as it was
        policy, processor = ckpt.load_checkpoint(cfg, checkpoint, device, dtype, trainable=True)
        sft_state = state if "sft_step" in state else None
        if sft_state is not None and "ranks" in state:  # SFT's batches are drawn alike on every rank
            sft_state = {**state, **state["ranks"][0]}
        if sft_state is not None:  # stopped during SFT: it continues from its checkpoint, then all as new
            torch.set_rng_state(sft_state["torch_rng"])
            if sft_state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(sft_state["cuda_rng"])
            if world.is_main:
                ckpt.truncate_sft_metrics(run_dir / "metrics.jsonl", sft_state["sft_step"])
                save_config(cfg, run_dir / "config.yaml")  # the overrides resume allows (ppo.updates, log.*)
            log = _open_log(cfg, run_dir, tensorboard_dir, world, resume=True)
    else:
        sft_state = None
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # before anything there is judged or cleared: a live run there is refused
            if ckpt.check_new_run_dir(run_dir):
                say(f"reusing {run_dir}: the run there stopped before its first update (nothing to resume)")
            save_config(cfg, run_dir / "config.yaml")
        world.barrier()  # the directory is this run's before any rank goes on
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        log = _open_log(cfg, run_dir, tensorboard_dir, world, resume=False)
        policy, processor = load_policy(cfg.model.path, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
                                        lora_alpha=cfg.model.lora_alpha, lora_dropout=cfg.model.lora_dropout,
                                        freeze_vision=cfg.model.freeze_vision, dtype=dtype, device=device,
                                        seed=cfg.run.seed, tiny=tiny_config_from(cfg.model))
    world.broadcast_parameters(policy)  # the replicas start equal, whatever each process loaded
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(policy, vision=cfg.model.gradient_checkpointing_vision)
    if cfg.model.fsdp:  # (after LoRA and checkpointing, before any optimizer: the parameters become shards)
        say(f"FSDP: {sharding.shard(policy)} units sharded over {world.size} processes")
    encoder = build_encoder(policy, processor, dtype)
    logit_bias = encoder.logit_bias(policy.lm_head_weight().shape[0], device, policy.lm_head_weight().dtype)
    for line in banner(cfg, run_dir, device, dtype, policy, resume_from=checkpoint.name if resume else None):
        say(line)

    resume_ppo = resume and sft_state is None  # a resumed run past its SFT

    # -- SFT warm start on (noisy) oracle demonstrations ---------------------------------------
    if cfg.sft.steps and not resume_ppo:
        if is_alfworld(cfg):  # the oracle plays the training games in their worker processes
            stream = text_demo_stream(alfworld_envs(cfg, cfg.alfworld.split, 8, seed=cfg.run.seed), game_of(cfg),
                                      cfg.sft.demos, noise=cfg.sft.noise, seed=cfg.run.seed, cot=cfg.prompt.cot,
                                      style=cfg.prompt.style)
        else:
            stream = demo_stream(cfg.env.name, cfg.sft.demos, noise=cfg.sft.noise, seed=cfg.run.seed,
                                 cot=cfg.prompt.cot, style=cfg.prompt.style, image_size=cfg.env.image_size,
                                 face_cards_as_10=cfg.env.face_cards_as_10)
        demos = encode_demos(encoder, stream, total=cfg.sft.demos)
        start = time.perf_counter()
        losses, reached = sft_train(policy, encoder, demos, cfg.sft, device=device, seed=cfg.run.seed, logit_bias=logit_bias,
                           log=lambda step, loss: log.write({"sft/step": step, "sft/loss": loss}) if step % 10 == 0 else None,
                           should_stop=lambda: world.max(float(stop.requested)) > 0, resume=sft_state,
                           on_checkpoint=(lambda step, optimizer, rng: _save(
                               world, run_dir, 0, policy, optimizer, processor,
                               {"sft_step": step, "sft_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                               name=f"sft_{step}")) if cfg.sft.checkpoint_every else None)
        del demos
        if world.max(float(stop.requested)) > 0 and reached < cfg.sft.steps:  # (a stop in SFT's last step waits)
            log.close()
            if ckpt.checkpoints(run_dir):
                raise RunStopped(f"stopped during SFT (step {reached} of {cfg.sft.steps}), checkpoint saved: continue "
                                 f"with `fastvlmrl train resume={run_dir}`")
            raise RunStopped(f"stopped during SFT (step {reached} of {cfg.sft.steps}): the run holds no update, "
                             "so the same command starts it again in the same directory")
        tail = losses[-10:]
        say(f"SFT: {len(losses)} steps in {time.perf_counter() - start:.0f}s, final loss "
            f"{sum(tail) / max(len(tail), 1):.4f} (mean of the last {len(tail)} steps)")

    with sharding.full_weights(policy):  # (FSDP: the engine is built, warmed and sized beside the whole weights)
        player = build_player(cfg, policy, processor, encoder)
    try:  # a crash closes the envs too (ALFWorld's worker processes)
        player.guide = build_guide(cfg, world, policy=policy, player=player)
        cloning = build_cloning(cfg, player.guide, encoder)
        if cfg.sft.steps and cfg.ppo.updates and not resume_ppo:  # the warm-started model's success, to compare with PPO's
            policy.eval()
            with sharding.full_weights(policy, player.engine):
                sft_eval = player.evaluate(cfg.eval.episodes, cfg.eval.temperature, cfg.eval.seed, desc="eval sft")
            log.write({f"sft/eval_{k}": v for k, v in sft_eval.items()})
            say(result_line("SFT model", sft_eval))
        optimizer = make_optimizer(policy, cfg.ppo)
        reference = (ReferencePolicy.build(policy, run_dir, lora=cfg.model.lora, resume=resume_ppo, save=world.is_main)
                     if cfg.ppo.kl_coef > 0 else None)  # the policy PPO starts from, for the KL penalty
        generator = torch.Generator().manual_seed(cfg.run.seed)  # mini-batch order

        # -- where the updates start: 0, or the checkpoint's --------------------------------------
        if resume_ppo:
            sharding.load_optimizer_state(optimizer, state["optimizer"])
            obs = ckpt.restore(ckpt.rank_state(state, world, say), generator, player, seed=cfg.run.seed + state["env_steps"])
            first, env_steps, planned = state["update"], state["env_steps"], state["planned_updates"]
            del state  # the optimizer's CPU copy: as large as the optimizer state itself
            if world.is_main:
                ckpt.truncate_metrics(run_dir / "metrics.jsonl", first)
                ckpt.truncate_metrics(run_dir / "samples.jsonl", first)
                save_config(cfg, run_dir / "config.yaml")
            log = _open_log(cfg, run_dir, tensorboard_dir, world, resume=True, purge_step=env_steps + 1)
            say(f"resuming {run_dir} from {checkpoint.name} (update {first} of {cfg.ppo.updates})")
        else:
            obs = player.reset(cfg.run.seed)
            first, env_steps, planned = 0, 0, cfg.ppo.updates

        # -- PPO: rollout -> advantages -> update -> log -> checkpoint ---------------------------
        # the critic-free algorithms train no value head
        update_cfg = cfg.ppo if cfg.algo.name == "ppo" else dataclasses.replace(cfg.ppo, value_coef=0.0)
        teacher_kl = cfg.gtr.enabled and cfg.gtr.corrector == "self" and cfg.gtr.self_mode == "kl"
        if teacher_kl:  # GTR-Turbo's KL mode: the self-teacher is the KL reference, over the thought tokens
            update_cfg = dataclasses.replace(update_cfg, kl_coef=cfg.gtr.self_kl_coef)
            reference = player.guide.corrector
        checkpoint_s = 0.0
        bar = progress(range(first, cfg.ppo.updates), desc="ppo", initial=first, total=cfg.ppo.updates)
        for update in bar:
            # over the updates the run first planned: a run extended by resume holds lr_end after them
            iteration_start = time.perf_counter()
            lr = cosine_lr(update, planned, cfg.ppo.lr, cfg.ppo.lr_end, cfg.ppo.warmup_updates)
            set_lr(optimizer, lr)
            policy.eval()
            with nvtx_range("rollout"):
                with sharding.full_weights(policy, player.engine):  # (FSDP: the engine reads whole weights)
                    obs, storage, stats, rollout_s, steps, critic = collect_rollout(cfg, player, obs, update)
            start = time.perf_counter()
            with nvtx_range("update"):
                metrics = ppo_update(policy, optimizer, storage, update_cfg, temperature=logprob_temperature(cfg),
                                     pad_id=encoder.pad_id, device=device, generator=generator, logit_bias=logit_bias,
                                     critic_only=update < cfg.ppo.critic_warmup_updates, reference=reference,
                                     cloning=cloning, kl_thoughts_only=teacher_kl)
                if player.guide is not None:
                    player.guide.after_update()  # (the self-teacher's EMA or adapter merge)
            update_s = time.perf_counter() - start
            env_steps += steps
            guided = player.guide.metrics() if player.guide is not None else {}
            record = {"update": update, "env_steps": env_steps, "lr": lr, **stats.summary(), **guided, **metrics, **critic,
                      "timing/rollout_s": rollout_s, "timing/update_s": update_s,
                      **{f"timing/{k}_s": v for k, v in stats.seconds.items()},
                      "timing/checkpoint_s": checkpoint_s,  # the previous update's checkpoint and curves
                      "timing/iteration_s": time.perf_counter() - iteration_start,
                      "throughput/tokens_per_s": stats.tokens / max(rollout_s, 1e-9)}
            log.write(record)
            log.write_samples(update, env_steps, stats.samples)
            bar.set_postfix(success=f"{record['rollout/success_rate']:.3f}")
            say(update_line(record, cfg.ppo.updates))
            done = update + 1
            checkpoint_start = time.perf_counter()
            stopping = world.max(float(stop.requested)) > 0  # every rank stops at the same update
            if done == cfg.ppo.updates or stopping or (cfg.log.checkpoint_every and done % cfg.log.checkpoint_every == 0):
                _save(world, run_dir, done, policy, optimizer, processor, ckpt.capture(planned, env_steps, generator, player),
                      keep=cfg.log.keep_checkpoints)
                if world.is_main:
                    redraw_curves(run_dir)
            checkpoint_s = time.perf_counter() - checkpoint_start
            if stopping and done < cfg.ppo.updates:
                log.close()
                player.close()
                raise RunStopped(f"stopped after update {done} of {cfg.ppo.updates}, checkpoint saved: continue with "
                                 f"`fastvlmrl train resume={run_dir}`")

        if cfg.ppo.updates == 0 or first >= cfg.ppo.updates:  # SFT only, or a finished run resumed
            if not world.broadcast((run_dir / "checkpoints" / f"step_{cfg.ppo.updates}").is_dir()):
                _save(world, run_dir, cfg.ppo.updates, policy, optimizer, processor,
                      ckpt.capture(planned, env_steps, generator, player), keep=cfg.log.keep_checkpoints)

        # -- evaluation on fresh seeds -------------------------------------------------------------
        policy.eval()
        with sharding.full_weights(policy, player.engine):
            result = final_evaluation(cfg, player)  # under torchrun: the ranks' episodes pooled
        if world.is_main:
            (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        say(result_line("final model", result))
        log.close()
        player.close()
        if world.is_main:
            redraw_curves(run_dir)
        world.barrier()  # eval.json is written before any rank returns
        return run_dir
    except BaseException:
        player.close()
        raise


def _open_log(cfg: Config, run_dir: Path, tensorboard_dir, world, *, resume: bool, purge_step: int | None = None):
    """metrics.jsonl (+ TensorBoard, W&B) on rank 0; nothing on the other ranks."""
    from fastvlmrl.metrics_log import NullLog

    if not world.is_main:
        return NullLog()
    return MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir, purge_step=purge_step,
                      wandb=WandbLogger(cfg, run_dir, resume=resume) if cfg.log.wandb else None)


# what each rank of a run over several processes has of its own (the rest is the same everywhere)
RANK_STATE = ("torch_rng", "cuda_rng", "player", "envs", "sft_rng")


def _save(world, run_dir: Path, update: int, policy, optimizer, processor, state: dict, keep: int = 0,
          name: str | None = None) -> None:
    """A checkpoint written by rank 0 with every rank's own part of the state (its envs, player and
    RNGs: `checkpoint.rank_state` gives them back on resume); the other ranks wait for it."""
    if world.active:
        parts = world.gather_to_main({k: v for k, v in state.items() if k in RANK_STATE})
        state = {**{k: v for k, v in state.items() if k not in RANK_STATE}, "world_size": world.size, "ranks": parts}
    whole = sharding.full_state(policy, optimizer) if sharding.is_sharded(policy) else (None, None)  # (every rank)
    if world.is_main:
        save_checkpoint(run_dir, update, policy, optimizer, processor, state, keep=keep, name=name,
                        model_state=whole[0], optimizer_state=whole[1])
    world.barrier()


def build_guide(cfg: Config, world, *, policy, player):
    """GTR's ThoughtGuide with the configured corrector (gtr.enabled), else None. The self-teacher
    runs on the player's engine (the policy's own weights, swapped with the teacher's)."""
    if not cfg.gtr.enabled:
        return None
    from fastvlmrl.gtr.guide import ThoughtGuide

    game = player.game
    if cfg.gtr.corrector == "http":
        from fastvlmrl.gtr.http_corrector import HTTPCorrector

        corrector = HTTPCorrector.from_config(cfg.gtr, game)
    elif cfg.gtr.corrector == "vlm":
        from fastvlmrl.gtr.vlm_corrector import VLMCorrector

        device = resolve_device(cfg)
        corrector = VLMCorrector.from_config(cfg.gtr, game, device=device, dtype=resolve_dtype(cfg, device),
                                             num_envs=world.local_slice(cfg.env.num_envs, "env.num_envs")[1])
    elif cfg.gtr.corrector == "self":
        from fastvlmrl.gtr.self_teacher import SelfTeacher

        corrector = SelfTeacher(game, policy, player.engine, player.encoder, lora=cfg.model.lora,
                                lora_scale=cfg.model.lora_alpha / cfg.model.lora_r, merge=cfg.gtr.self_merge,
                                density=cfg.gtr.self_density, ema_decay=cfg.gtr.self_ema_decay,
                                every=cfg.gtr.self_every, max_new_tokens=cfg.sampling.max_new_tokens,
                                mode=cfg.gtr.self_mode)
    else:
        from fastvlmrl.gtr.oracle_corrector import OracleCorrector

        corrector = OracleCorrector(game)
    return ThoughtGuide(corrector, game, cfg.gtr, seed=(cfg.run.seed, world.rank))


def build_cloning(cfg: Config, guide, encoder):
    """The cloning term of the PPO update over the guide's DAgger buffer (gtr.enabled), else None."""
    if guide is None:
        return None
    from fastvlmrl.gtr.cloning import ThoughtCloning

    return ThoughtCloning(guide.buffer, encoder, batch_size=cfg.gtr.sft_batch_size or cfg.ppo.minibatch_size,
                          coef=cfg.gtr.sft_coef, micro_batch_size=cfg.ppo.micro_batch_size)


def collect_rollout(cfg: Config, player, obs, update: int):
    """One update's samples, as (obs, storage, stats, seconds, env steps, critic metrics):
    ppo: cfg.ppo.num_steps steps of every env, GAE over the critic (time limits bootstrapped);
    grpo/gigpo: groups of cfg.algo.group_size whole episodes from identical starts (new starts
    every update), with group advantages (`rl/groups.py`)."""
    from fastvlmrl.rl.groups import group_advantages
    from fastvlmrl.rl.storage import RolloutStorage, SampleStorage

    samples = cfg.log.samples if cfg.log.samples_every and update % cfg.log.samples_every == 0 else 0
    if cfg.algo.name == "ppo":
        storage = RolloutStorage(cfg.ppo.num_steps, player.envs.num_envs, player.env_offset, player.global_envs)
        obs, stats, seconds, last_values = player.collect(obs, storage, cfg.ppo.gamma, reward_scale=cfg.ppo.reward_scale,
                                                          samples=samples)
        storage.finish(last_values, cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.ppo.normalize_advantages,
                       bonus_scale=cfg.ppo.reward_scale)
        return obs, storage, stats.pooled(player.env_offset), seconds, cfg.ppo.num_steps * cfg.env.num_envs, storage.critic_stats()
    groups = cfg.env.num_envs // cfg.algo.group_size
    episodes, stats, seconds = player.collect_groups(cfg.run.seed * 1_000_003 + update * groups, cfg.algo.group_size,
                                                     cfg.algo.max_episode_steps, reward_scale=cfg.ppo.reward_scale,
                                                     samples=samples)
    # each group is whole on its rank: its advantages are the single process's
    advantages = group_advantages(episodes, cfg.algo.name, gamma=cfg.ppo.gamma, step_weight=cfg.algo.step_weight)
    storage = SampleStorage.for_world([(t, a, 0.0) for e, row in zip(episodes, advantages)
                                       for t, a in zip(e.transitions, row)])
    steps = int(distributed.current().sum([sum(len(e.rewards) for e in episodes)])[0])
    return obs, storage, stats.pooled(player.env_offset), seconds, steps, {}
