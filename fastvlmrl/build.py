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
    eval_envs = None
    if is_alfworld(cfg):
        envs = alfworld_envs(cfg, cfg.alfworld.split, count, seed=cfg.run.seed + first)
        try:
            eval_envs = alfworld_envs(cfg, cfg.alfworld.eval_split, count, seed=cfg.eval.seed + first)
        except BaseException:
            envs.close()
            raise
    else:
        envs = make_batch(cfg.env.name, count, height=cfg.env.image_size, width=cfg.env.image_size,
                          num_threads=cfg.env.threads, autoreset_mode="SameStep",
                          face_cards_as_10=cfg.env.face_cards_as_10)
    try:
        engine = Engine(policy.model, processor, expected_seqs=count,
                        expected_seq_len=longest_prompt_tokens(cfg, envs, encoder) + cfg.sampling.max_new_tokens,
                        compile_decode=cfg.sampling.compile_decode)
    except BaseException:
        envs.close()
        if eval_envs is not None:
            eval_envs.close()
        raise
    return Player(policy, engine, encoder, envs, cot=cfg.prompt.cot, style=cfg.prompt.style,
                  sampling=cfg.sampling, illegal_action=cfg.env.illegal_action,
                  illegal_penalty=cfg.env.illegal_penalty, seed=cfg.run.seed, ignore_eos=ignore_eos,
                  env_offset=first, global_envs=cfg.env.num_envs, guide=guide, eval_envs=eval_envs,
                  game=game_of(cfg))


def is_alfworld(cfg: Config) -> bool:
    return cfg.env.name.lower() == "alfworld"


def game_of(cfg: Config):
    """The run's Game, with its prompt options (ALFWorld's history and observation)."""
    from fastvlmrl.envs.games import get_game

    game = get_game(cfg.env.name, cfg.env.face_cards_as_10)
    if is_alfworld(cfg):
        game = game.with_prompt(history=cfg.alfworld.history, observation=cfg.alfworld.observation)
    return game


def alfworld_games(cfg: Config, split: str) -> list[str]:
    """The game files of an ALFWorld split: alfworld.data_path (or $ALFWORLD_DATA when it holds
    games); with neither,
    games generated once into run.out_dir/_alfworld/ (seeded by alfworld.generate_seed, shared
    by every run with the same settings; rank 0 writes them under torchrun)."""
    import os

    from fastvlmrl.distributed import current as current_world
    from fastvlmrl.envs.alfworld.data import env_data_path, find_games, split_name

    a = cfg.alfworld
    tasks = [t.strip() for t in a.task_types.split(",") if t.strip()]
    path = a.data_path or env_data_path()
    if path is None:
        path = generated_games_dir(cfg)
        world = current_world()
        if world.is_main and not os.path.isdir(path):
            _generate_games(cfg, path, tasks)
        world.barrier()
    return find_games(path, split_name(split), task_types=tasks, limit=a.num_games)


def generated_games_dir(cfg: Config) -> str:
    import os

    from fastvlmrl.envs.alfworld.generate import GENERATOR_VERSION
    from fastvlmrl.envs.alfworld.tasks import TASK_SHORT, task_type

    a = cfg.alfworld
    tasks = "-".join(sorted({TASK_SHORT[task_type(t)] for t in a.task_types.split(",") if t.strip()}))
    name = f"generated-v{GENERATOR_VERSION}-seed{a.generate_seed}-n{a.generate_games}-{tasks}"
    return os.path.join(cfg.run.out_dir, "_alfworld", name)


def _generate_games(cfg: Config, path: str, tasks: list[str]) -> None:
    """Generate the splits into a temporary folder, then move it in place (two runs starting
    together keep one copy; a killed generation leaves no half folder behind)."""
    import os
    import shutil
    import tempfile

    from fastvlmrl.console import say
    from fastvlmrl.envs.alfworld.generate import generate

    a = cfg.alfworld
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".generating-", dir=os.path.dirname(path))
    try:
        say(f"generating {a.generate_games} ALFWorld games into {path} (no alfworld.data_path or $ALFWORLD_DATA)")
        eval_games = max(2, a.generate_games // 4)
        for split in ("train", "valid_seen", "valid_unseen"):
            generate(tmp, a.generate_games if split == "train" else eval_games, task_types=tasks,
                     seed=a.generate_seed, split=split)
        try:
            os.rename(tmp, path)
        except OSError:  # another run made it first: the same games
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def alfworld_envs(cfg: Config, split: str, count: int, *, seed: int):
    """`count` ALFWorld envs over a split's games, each in its own process."""
    from fastvlmrl.envs.alfworld.vector import ALFWorldVectorEnv

    a = cfg.alfworld
    return ALFWorldVectorEnv(alfworld_games(cfg, split), count, max_steps=a.max_steps,
                             gtr_truncation=a.gtr_truncation, memoize=a.memoize, seed=seed, timeout_s=a.timeout_s)


def longest_prompt_tokens(cfg: Config, envs, encoder) -> int:
    """The longest prompt (in tokens, image placeholders included) an env of this run can see: a
    frame of the run's size with the game's text state at its longest (`Game.longest_info`). The
    envs are reset to read a state; every caller resets them again before playing."""
    from fastvlmrl.envs.prompts import task_prompt

    obs, _ = envs.reset(seed=cfg.run.seed)
    game = game_of(cfg)
    info = game.longest_info(envs.describe(0))
    frame = obs[0] if game.has_frames else None
    prompt_ids, _ = encoder.encode(frame, task_prompt(game, info, cot=cfg.prompt.cot, style=cfg.prompt.style))
    return len(prompt_ids)


def logprob_temperature(cfg: Config) -> float:
    """The temperature of the rollout's log-probs, which PPO's training log-probs must match."""
    from fastvlmrl.engine import SamplingParams

    return SamplingParams(temperature=cfg.sampling.temperature).logprob_temperature
