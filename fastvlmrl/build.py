"""A run's parts put together from its config, the same way for training, evaluation and the
benchmarks: the device and dtype, the prompt encoder, and the player (the rollout engine over
the policy's own weights, the C batch of games, the encoder)."""

from __future__ import annotations

import torch

from fastvlmrl.config import Config


def resolve_device(cfg: Config) -> torch.device:
    from fastvlmrl.distributed import current

    if cfg.run.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is cuda but no CUDA device is available: use run.device=cpu")
    if device.type == "cuda" and current().active:  # under torchrun: each rank its own GPU
        return torch.device("cuda", current().local_rank)
    return device


def resolve_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    if cfg.model.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.model.dtype)


def build_encoder(policy, processor, dtype: torch.dtype):
    """The PromptEncoder for this policy: its family's image inputs, its placeholder tokens suppressed."""
    from fastvlmrl.engine.families import family_for
    from fastvlmrl.models.encoder import PromptEncoder, placeholder_token_ids

    return PromptEncoder(processor, family_for(policy.model).mm_keys, dtype,
                         placeholder_token_ids(policy.hf_model.config))


def build_player(cfg: Config, policy, processor, encoder, *, ignore_eos: bool = False, guide=None):
    """The Player of cfg's game: an Engine over `policy`'s weights and a batch of cfg.env.num_envs
    C envs (SameStep autoreset, for the truncation bootstrap). Close it with `player.close()`.
    ignore_eos: every reply runs to sampling.max_new_tokens (benchmarks). guide: GTR's ThoughtGuide."""
    from fastvlmrl.distributed import current as current_world
    from fastvlmrl.engine import Engine
    from fastvlmrl.envs.vector import make_batch
    from fastvlmrl.rl.rollout import Player

    first, count = current_world().local_slice(cfg.env.num_envs, "env.num_envs")  # this rank's envs
    envs = make_batch(cfg.env.name, count, height=cfg.env.image_size, width=cfg.env.image_size,
                      num_threads=cfg.env.threads, autoreset_mode="SameStep", face_cards_as_10=cfg.env.face_cards_as_10)
    engine = Engine(policy.model, processor, expected_seqs=count,
                    expected_seq_len=longest_prompt_tokens(cfg, envs, encoder) + cfg.sampling.max_new_tokens)
    return Player(policy, engine, encoder, envs, cot=cfg.prompt.cot, style=cfg.prompt.style,
                  sampling=cfg.sampling, illegal_action=cfg.env.illegal_action,
                  illegal_penalty=cfg.env.illegal_penalty, seed=cfg.run.seed, ignore_eos=ignore_eos,
                  env_offset=first, global_envs=cfg.env.num_envs, guide=guide)


def longest_prompt_tokens(cfg: Config, envs, encoder) -> int:
    """The longest prompt (in tokens, image placeholders included) an env of this run can see: a
    frame of the run's size with the game's text state at its longest (`Game.longest_info`). The
    envs are reset to read a state; every caller resets them again before playing."""
    from fastvlmrl.envs.prompts import task_prompt

    obs, _ = envs.reset(seed=cfg.run.seed)
    info = envs.game.longest_info(envs.describe(0))
    prompt_ids, _ = encoder.encode(obs[0], task_prompt(envs.game, info, cot=cfg.prompt.cot, style=cfg.prompt.style))
    return len(prompt_ids)


def logprob_temperature(cfg: Config) -> float:
    """The temperature of the rollout's log-probs, which PPO's training log-probs must match."""
    from fastvlmrl.engine import SamplingParams

    return SamplingParams(temperature=cfg.sampling.temperature).logprob_temperature
