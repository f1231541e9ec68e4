"""Configuration as data: dataclasses with every default named once (the schema, one comment of
doc per field), a YAML file, and dotted overrides on the command line (`ppo.clip=0.2
env.name=Points24`), read with OmegaConf (`fastvlmrl.config_io`).

    cfg = load_config("configs/tiny/numberline.yaml", ["ppo.lr=3e-4", "env.num_envs=16"])
    cfg.ppo.clip, cfg.env.name

Unknown keys, values of the wrong type and bad values raise `ConfigError` with one line that
says what to fix, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fastvlmrl.config_io import ConfigError, read_settings

__all__ = ["Config", "ConfigError", "load_config", "save_config", "validate"]


@dataclass
class RunConfig:
    name: str = "run"  # the run directory is <out_dir>/<name>
    out_dir: str = "runs"  # where run directories are made
    seed: int = 0  # seeds the model's init, SFT, sampling and the envs
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class EnvConfig:
    name: str = "NumberLine"  # NumberLine, EZPoints, Points24, Blackjack, or ALFWorld (the text game: alfworld.*)
    num_envs: int = 32  # envs stepped together (one reply each per step)
    image_size: int = 300  # frames are rendered at this size, then preprocessed for the model
    face_cards_as_10: bool = True  # Points24
    illegal_action: str = "random"  # "random" (RL4VLM's card games), "penalty" (random and the penalty), "noop" (ALFWorld, RL4VLM: the game gets no admissible command: nothing happens, -1)
    illegal_penalty: float = -1.0  # added to the reward when illegal_action = "penalty"
    threads: int = 1  # C threads stepping the batch


@dataclass
class ALFWorldConfig:
    data_path: str | None = None  # ALFWorld games: alfworld-download's json_2.1.1 or alfworld-generate's folder; None = $ALFWORLD_DATA, else games generated in run.out_dir
    split: str = "train"  # the split training plays
    eval_split: str = "valid_seen"  # the split evaluations play: valid_seen (in distribution) or valid_unseen (out of distribution)
    task_types: str = "1,2,3,4,5,6"  # task types played, comma-separated (1..6, names or pick, look, clean, heat, cool, pick2)
    num_games: int = 0  # the first N games of each split (0 = all)
    generate_games: int = 60  # with no data: games generated for the train split (each eval split: a quarter, at least 2)
    generate_seed: int = 0  # the generated games' seed (the same games for every run.seed)
    max_steps: int = 50  # actions per episode (a time limit: bootstrapped); RL4VLM: 50
    gtr_truncation: bool = False  # GTR's early end: over 40 actions or the last 5 identical (terminated, reward -3)
    history: int = 20  # previous actions shown in the prompt (GTR); 0 = none
    observation: bool = True  # the engine's text feedback in the prompt (RL4VLM; GTR's visual version drops it)
    memoize: bool = True  # cache TextWorld's parsing (byte-identical observations, about 3x faster steps)
    timeout_s: float = 300.0  # an env worker that does not answer within this is an error


@dataclass
class PromptConfig:
    cot: bool = True  # False: the action-only prompt (the paper's no-CoT ablation)
    style: str = "full"  # "full": RL4VLM's prompt; "short": one line, for the built-in tiny VLM


@dataclass
class ModelConfig:
    path: str | None = None  # a local Hugging Face directory; None = the built-in tiny VLM
    lora: bool = False  # train LoRA adapters (peft) instead of every weight
    lora_r: int = 128  # LoRA rank
    lora_alpha: int = 256  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the adapters' input (SFT only: PPO runs without dropout)
    freeze_vision: bool = False  # keep the vision tower's weights fixed
    tiny_image_size: int = 112  # built-in tiny VLM (model.path null) only: the frame size its vision tower sees
    tiny_patch_size: int = 16  # built-in tiny VLM only: its patch size ((size/patch)^2 image tokens)
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    gradient_checkpointing: bool = False  # recompute the decoder layers' activations in the backward (memory for time)
    gradient_checkpointing_vision: bool = False  # the vision tower's layers too (when it trains: no LoRA, not frozen)
    fsdp: bool = False  # under torchrun: shard weights, gradients and Adam state over the processes (FSDP2); rollouts gather the whole model


@dataclass
class SamplingConfig:
    temperature: float = 0.2  # rollout sampling temperature (0 = greedy)
    top_p: float = 1.0  # nucleus sampling: the smallest token set with this probability mass
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the reply (1 = off)
    max_new_tokens: int = 256  # reply length limit in tokens
    compile_decode: bool = False  # torch.compile the rollout engine's decode step (CPU: 1.6x per step measured; GPU: not yet)


@dataclass
class SFTConfig:
    steps: int = 0  # SFT steps on oracle demonstrations before RL (0 = none)
    batch_size: int = 32  # demonstrations per SFT step
    micro_batch_size: int = 0  # demonstrations per forward/backward, gradients accumulated to the step; 0 = the batch
    lr: float = 2e-3  # AdamW learning rate (cosine decay to 0 after the warm-up)
    warmup_steps: int = 30  # linear warm-up steps of the SFT learning rate
    noise: float = 0.0  # probability that a demonstration decides a random action (its thought reasons to it; its reading of the frame stays true)
    demos: int = 4096  # demonstrations generated
    max_grad_norm: float = 1.0  # gradient-norm clip of SFT steps
    checkpoint_every: int = 200  # SFT steps between checkpoints (sft_N: a run killed in its SFT resumes); 0 = none


@dataclass
class PPOConfig:
    updates: int = 20  # PPO updates (rollout + optimisation) in the run; 0 = SFT only
    num_steps: int = 8  # env steps per env in one rollout
    epochs: int = 4  # passes over each rollout
    minibatch_size: int = 32  # samples per optimizer step (RL4VLM: 1 sample x 128 accumulation)
    micro_batch_size: int = 0  # samples per forward/backward, gradients accumulated to the mini-batch; 0 = the mini-batch
    lr: float = 1e-5  # Adam learning rate of the policy (cosine schedule over the updates)
    lr_end: float = 0.0  # cosine decay to this over the planned updates (no restart)
    warmup_updates: int = 0  # linear ramp of the learning rate over the first updates
    value_lr: float | None = None  # the value head's own learning rate (same schedule); None = ppo.lr
    critic_warmup_updates: int = 0  # the first updates train only the value head (no policy step)
    reward_scale: float = 1.0  # rewards are multiplied by this for GAE and the critic (not in the stats)
    clip: float = 0.1  # PPO ratio clip epsilon
    ratio_cap: float = 10.0  # ratios above this are capped before the clipped loss (outliers)
    value_clip: float = 0.1  # per update, around the rollout's values; 0 = no value clip
    value_coef: float = 0.5  # weight of the value loss beside the policy loss
    gamma: float = 0.9  # discount
    gae_lambda: float = 0.95  # GAE lambda
    thought_coef: float = 0.5  # λ: weight of thought tokens in the sequence log-prob
    max_grad_norm: float = 1.0  # gradient-norm clip of PPO steps
    normalize_advantages: bool = True  # advantages to zero mean and unit std over the rollout
    recompute_logprobs: bool = False  # old log-probs from the trainer's own forward, not the engine's
    entropy_coef: float = 0.0  # bonus on the mean token entropy (tempered distribution)
    kl_coef: float = 0.0  # penalty on the mean token KL (k3) to the policy PPO started from
    target_kl: float = 0.0  # stop an update's epochs once an epoch's mean approx-KL exceeds this; 0 = off
    loss_level: str = "sequence"  # sequence: RL4VLM's λ-weighted sequence ratio; token: per-token ratios
    clip_high: float | None = None  # token level: the upper clip (DAPO's clip-higher); None = ppo.clip


@dataclass
class AlgoConfig:
    name: str = "ppo"  # ppo (RL4VLM: GAE over the critic) | grpo | gigpo (critic-free, groups of episodes)
    group_size: int = 8  # grpo/gigpo: episodes per start state; env.num_envs must be a multiple of it
    step_weight: float = 1.0  # gigpo: weight of the step-level (same-state) advantage
    max_episode_steps: int = 32  # grpo/gigpo: an episode still running after this many steps is cut


@dataclass
class GTRConfig:
    enabled: bool = False  # GTR: correct the thoughts and clone the corrections beside PPO (algo.name=ppo)
    corrector: str = "oracle"  # oracle (exact, from the env's state) | http (an OpenAI-compatible endpoint) | vlm (a local model) | self (GTR-Turbo: the agent's own past)
    sft_coef: float = 1.0  # weight of the cloning loss beside the PPO loss
    sft_batch_size: int = 0  # DAgger-buffer samples per PPO mini-batch; 0 = ppo.minibatch_size (GTR: one per sample)
    buffer_size: int = 10000  # corrected samples kept (the oldest dropped first)
    format_reward: float = 5.0  # added to the return of a step whose reply is valid JSON with the prompt's keys
    truncate_off_path: bool = False  # end an episode (reward -1) once its formula extends no solution
    truncate_unsolvable: bool = False  # end an episode (reward -1) whose hand cannot make the target
    http_base_url: str = ""  # http: the endpoint's base URL (".../v1"), chat/completions is appended
    http_model: str = "gpt-4o"  # http: the model the endpoint serves
    http_api_key_env: str = "OPENAI_API_KEY"  # http: the environment variable holding the API key ("" = none)
    http_timeout_s: float = 60.0  # http: per request
    http_retries: int = 3  # http: retries of a failed request (exponential backoff), then no correction
    http_concurrency: int = 8  # http: requests in flight at once
    http_temperature: float = 0.4  # http: GTR's
    http_max_tokens: int = 400  # http: GTR's for the card games
    vlm_path: str = ""  # vlm: a local Hugging Face VLM directory, run through the engine (greedy)
    vlm_max_new_tokens: int = 400  # vlm: the answer's length limit in tokens
    self_mode: str = "sft"  # self: sft (clone the teacher's thoughts) | kl (a KL term to the teacher on the thought tokens)
    self_kl_coef: float = 0.1  # self_mode=kl: weight of the mean per-token KL to the teacher over the thought tokens
    self_merge: int = 4  # self with LoRA: the teacher is a TIES merge of the adapters of the last K updates
    self_density: float = 0.8  # self with LoRA: TIES keeps this share of each adapter delta's largest entries
    self_every: int = 1  # self with LoRA: updates between the adapter snapshots that join the merge
    self_ema_decay: float = 0.9  # self with full fine-tuning: the teacher is this EMA of the weights (per update)


@dataclass
class EvalConfig:
    episodes: int = 500  # episodes of the final evaluation (the first started from eval.seed)
    temperature: float = 0.0  # greedy
    seed: int = 10_000  # fresh seeds, far from training's
    start_states: bool = True  # also play every start state once when a game has few (NumberLine's 30): an exact success rate


@dataclass
class LogConfig:
    tensorboard: bool = False  # also write TensorBoard events (pip install 'fastvlmrl[tensorboard]')
    wandb: bool = False  # also log to Weights & Biases (pip install 'fastvlmrl[wandb]')
    wandb_project: str = "fastvlmrl"  # the W&B project
    wandb_mode: str = "online"  # online, offline (runs/<name>/wandb/, for `wandb sync`) or disabled
    checkpoint_every: int = 10  # updates between checkpoints (resume points); 0 = only at the end
    keep_checkpoints: int = 0  # keep only the newest K checkpoints; 0 = keep all
    samples_every: int = 5  # updates between sampled replies in samples.jsonl (and TensorBoard text); 0 = none
    samples: int = 4  # replies kept each time (the first envs' replies of the rollout)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    alfworld: ALFWorldConfig = field(default_factory=ALFWorldConfig)
    gtr: GTRConfig = field(default_factory=GTRConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                check_model_files: bool = True) -> Config:
    """Defaults, then the YAML file (if any), then the overrides; validated (model.path's files
    too, unless check_model_files is False: `fastvlmrl plan --model` needs none)."""
    cfg = read_settings(Config, path, overrides)
    validate(cfg, check_model_files=check_model_files)
    return cfg


def _validate_alfworld(cfg: Config) -> None:
    from fastvlmrl.envs.alfworld import available
    from fastvlmrl.envs.alfworld.data import split_name
    from fastvlmrl.envs.alfworld.tasks import task_type

    if not available():
        raise ConfigError("env.name=ALFWorld needs ALFWorld's text engine: pip install 'fastvlmrl[alfworld]'")
    a = cfg.alfworld
    try:
        split_name(a.split), split_name(a.eval_split)
        kinds = [task_type(t) for t in a.task_types.split(",") if t.strip()]
    except ValueError as e:
        raise ConfigError(f"alfworld: {e}") from None
    if not kinds:
        raise ConfigError("alfworld.task_types names no task type")
    for key, value in {"alfworld.max_steps": a.max_steps, "alfworld.generate_games": a.generate_games}.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in {"alfworld.num_games": a.num_games, "alfworld.history": a.history}.items():
        if value < 0:
            raise ConfigError(f"{key} must be 0 or more, got {value}")
    if a.timeout_s <= 0:
        raise ConfigError(f"alfworld.timeout_s must be positive, got {a.timeout_s}")
    if cfg.gtr.enabled and cfg.gtr.corrector != "oracle":
        raise ConfigError(f"gtr.corrector={cfg.gtr.corrector} with env.name=ALFWorld is not supported yet (GTR's "
                          "questions and the self-teacher are written for the card games): use gtr.corrector=oracle")
    for key in ("truncate_off_path", "truncate_unsolvable"):
        if getattr(cfg.gtr, key):
            raise ConfigError(f"gtr.{key} is for the formula and card games (it would do nothing on ALFWorld): "
                              "ALFWorld's early truncation is alfworld.gtr_truncation=true")


def validate(cfg: Config, *, check_model_files: bool = True) -> None:
    """Checks of values (types are checked on the way in)."""
    from fastvlmrl.envs.games import get_game

    try:
        get_game(cfg.env.name)
    except ValueError as e:
        raise ConfigError(f"env.name: {e}") from None
    if cfg.env.name.lower() == "alfworld":
        _validate_alfworld(cfg)
    positive = {
        "env.num_envs": cfg.env.num_envs, "env.image_size": cfg.env.image_size, "env.threads": cfg.env.threads,
        "ppo.num_steps": cfg.ppo.num_steps, "ppo.epochs": cfg.ppo.epochs,
        "ppo.minibatch_size": cfg.ppo.minibatch_size, "sampling.max_new_tokens": cfg.sampling.max_new_tokens,
        "sft.batch_size": cfg.sft.batch_size, "sft.demos": cfg.sft.demos, "eval.episodes": cfg.eval.episodes,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in {"sft.steps": cfg.sft.steps, "ppo.updates": cfg.ppo.updates,
                       "log.checkpoint_every": cfg.log.checkpoint_every, "log.samples_every": cfg.log.samples_every,
                       "log.keep_checkpoints": cfg.log.keep_checkpoints,
                       "sft.checkpoint_every": cfg.sft.checkpoint_every,
                       "log.samples": cfg.log.samples, "ppo.micro_batch_size": cfg.ppo.micro_batch_size,
                       "sft.micro_batch_size": cfg.sft.micro_batch_size, "ppo.warmup_updates": cfg.ppo.warmup_updates,
                       "ppo.critic_warmup_updates": cfg.ppo.critic_warmup_updates,
                       "run.threads": cfg.run.threads}.items():
        if value < 0:
            raise ConfigError(f"{key} must be 0 or more, got {value}")
    if cfg.log.wandb_mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"log.wandb_mode must be online, offline or disabled, got {cfg.log.wandb_mode!r}")
    if cfg.prompt.style not in ("full", "short"):
        raise ConfigError(f"prompt.style must be 'full' or 'short', got {cfg.prompt.style!r}")
    if cfg.env.illegal_action not in ("random", "penalty", "noop"):
        raise ConfigError(f"env.illegal_action must be 'random', 'penalty' or 'noop', got {cfg.env.illegal_action!r}")
    if cfg.env.illegal_action == "noop" and cfg.env.name.lower() != "alfworld":
        raise ConfigError("env.illegal_action=noop (the reply goes to the game as it is) is ALFWorld's: the card "
                          "games take only their actions; use random or penalty")
    if cfg.model.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if cfg.run.device != "auto" and not (cfg.run.device == "cpu" or cfg.run.device.startswith("cuda")):
        raise ConfigError(f"run.device must be auto, cpu or cuda[:N], got {cfg.run.device!r}")
    if cfg.sampling.temperature < 0 or cfg.eval.temperature < 0:
        raise ConfigError("sampling.temperature and eval.temperature must be 0 (greedy) or more")
    if not 0 < cfg.sampling.top_p <= 1:
        raise ConfigError(f"sampling.top_p must be in (0, 1], got {cfg.sampling.top_p}")
    if not 0 <= cfg.sft.noise <= 1:
        raise ConfigError(f"sft.noise must be in [0, 1], got {cfg.sft.noise}")
    for key in ("clip", "lr", "gamma", "gae_lambda", "reward_scale"):
        if getattr(cfg.ppo, key) <= 0:
            raise ConfigError(f"ppo.{key} must be positive, got {getattr(cfg.ppo, key)}")
    for key in ("entropy_coef", "kl_coef", "target_kl"):
        if getattr(cfg.ppo, key) < 0:
            raise ConfigError(f"ppo.{key} must be 0 (off) or more, got {getattr(cfg.ppo, key)}")
    if cfg.ppo.loss_level not in ("sequence", "token"):
        raise ConfigError(f"ppo.loss_level must be 'sequence' or 'token', got {cfg.ppo.loss_level!r}")
    if cfg.algo.name not in ("ppo", "grpo", "gigpo"):
        raise ConfigError(f"algo.name must be ppo, grpo or gigpo, got {cfg.algo.name!r}")
    if cfg.algo.name != "ppo":
        if cfg.algo.group_size < 2 or cfg.env.num_envs % cfg.algo.group_size:
            raise ConfigError(f"algo.group_size must be at least 2 and divide env.num_envs={cfg.env.num_envs}, "
                              f"got {cfg.algo.group_size}")
        if cfg.algo.max_episode_steps < 1:
            raise ConfigError(f"algo.max_episode_steps must be at least 1, got {cfg.algo.max_episode_steps}")
        if cfg.ppo.critic_warmup_updates:  # (a preset's ppo.value_lr is left unused: no value head is trained)
            raise ConfigError(f"algo.name={cfg.algo.name} trains no critic: leave ppo.critic_warmup_updates at 0")
    if cfg.ppo.kl_coef > 0 and cfg.model.lora and cfg.sft.steps > 0:
        raise ConfigError("ppo.kl_coef with model.lora scores the reference with the adapters off, which would be the "
                          "model before this run's SFT: set sft.steps=0 (SFT the model beforehand) or model.lora=false")
    if cfg.model.tiny_patch_size < 1 or cfg.model.tiny_image_size < cfg.model.tiny_patch_size \
            or cfg.model.tiny_image_size % cfg.model.tiny_patch_size:
        raise ConfigError(f"model.tiny_image_size ({cfg.model.tiny_image_size}) must be a positive multiple of "
                          f"model.tiny_patch_size ({cfg.model.tiny_patch_size})")
    if (cfg.model.tiny_image_size // max(cfg.model.tiny_patch_size, 1)) ** 2 > 1024:
        raise ConfigError(f"model.tiny_image_size / model.tiny_patch_size gives "
                          f"{(cfg.model.tiny_image_size // cfg.model.tiny_patch_size) ** 2} image tokens: at most 1024 "
                          "fit the tiny VLM's 2048-token context with the prompt and the reply")
    if cfg.model.gradient_checkpointing_vision and not cfg.model.gradient_checkpointing:
        raise ConfigError("model.gradient_checkpointing_vision needs model.gradient_checkpointing=true")
    if cfg.ppo.value_clip < 0:
        raise ConfigError(f"ppo.value_clip must be 0 (no clip) or more, got {cfg.ppo.value_clip}")
    if cfg.ppo.value_lr is not None and cfg.ppo.value_lr <= 0:
        raise ConfigError(f"ppo.value_lr must be positive (or null for ppo.lr), got {cfg.ppo.value_lr}")
    _check_ranges(cfg)
    _check_gtr(cfg)
    if cfg.ppo.updates == 0 and cfg.sft.steps == 0:
        raise ConfigError("nothing to train: set sft.steps or ppo.updates above 0")
    if cfg.ppo.gamma > 1 or cfg.ppo.gae_lambda > 1:
        raise ConfigError("ppo.gamma and ppo.gae_lambda must be at most 1")
    if cfg.env.name.lower() == "alfworld" and cfg.alfworld.data_path and check_model_files:
        from fastvlmrl.envs.alfworld.data import data_root

        try:  # before any work: a path with no games is a one-line error
            data_root(cfg.alfworld.data_path)
        except ValueError as e:
            raise ConfigError(f"alfworld.data_path: {e}") from None
    if cfg.model.path is not None and check_model_files:
        _check_model_dir("model.path", cfg.model.path, "or leave it out for the built-in tiny VLM")
    if cfg.gtr.enabled and cfg.gtr.corrector == "vlm" and check_model_files:
        _check_model_dir("gtr.vlm_path", cfg.gtr.vlm_path, "holding the corrector model")


def _check_model_dir(key: str, value: str, alternative: str) -> None:
    """A local Hugging Face VLM directory the engine can load: its config names a supported family,
    and it holds an image processor."""
    path = Path(value)
    if not value or not path.is_dir():
        raise ConfigError(f"{key} {value!r} is not a directory: give a local Hugging Face model directory, {alternative}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key} {value!r} has no config.json: it is not a Hugging Face model "
                          "directory (save one with model.save_pretrained)")
    _check_model_type(value, path / "config.json", key)
    from fastvlmrl.models.processor import has_image_processor

    if not has_image_processor(str(path)):
        raise ConfigError(f"{key} {value!r} has no image processor (no preprocessor_config.json): "
                          "save the model's processor into it (processor.save_pretrained)")


def _check_model_type(path: str, config_json: Path, key: str = "model.path") -> None:
    """A model family the engine has no adapter for stops here, before anything loads."""
    import json

    from fastvlmrl.engine.families import family_class

    try:
        model_type = json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key} {path!r}: cannot read config.json ({e})") from e
    if not model_type:
        raise ConfigError(f"{key} {path!r}: its config.json names no model_type (not a Hugging Face model config)")
    try:
        family_class(model_type)
    except ValueError as e:
        raise ConfigError(f"{key} {path!r}: {e}") from e


def _check_gtr(cfg: Config) -> None:
    g = cfg.gtr
    if not g.enabled:
        return
    if g.corrector not in ("oracle", "http", "vlm", "self"):
        raise ConfigError(f"gtr.corrector must be oracle, http, vlm or self, got {g.corrector!r}")
    if g.self_mode not in ("sft", "kl"):
        raise ConfigError(f"gtr.self_mode must be sft or kl, got {g.self_mode!r}")
    if g.corrector == "self" and g.self_mode == "kl":
        if cfg.ppo.kl_coef > 0:
            raise ConfigError("gtr.self_mode=kl holds the policy near the teacher: leave ppo.kl_coef at 0 (one KL "
                              "reference at a time)")
        if g.self_kl_coef <= 0:
            raise ConfigError(f"gtr.self_kl_coef must be positive with gtr.self_mode=kl, got {g.self_kl_coef}")
    if not 0 < g.self_density <= 1 or not 0 <= g.self_ema_decay < 1:
        raise ConfigError("gtr.self_density must be in (0, 1] and gtr.self_ema_decay in [0, 1)")
    if cfg.algo.name != "ppo":
        raise ConfigError(f"gtr.enabled runs with algo.name=ppo (GTR's), got algo.name={cfg.algo.name}")
    if not cfg.prompt.cot:
        raise ConfigError("gtr.enabled corrects thoughts: it needs prompt.cot=true")
    if g.corrector == "http" and not g.http_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"gtr.corrector=http needs gtr.http_base_url (http:// or https://), got {g.http_base_url!r}")
    if g.corrector == "http" and g.http_api_key_env and not os.environ.get(g.http_api_key_env):
        raise ConfigError(f"gtr.corrector=http reads its API key from the environment variable {g.http_api_key_env}, "
                          "which is not set: export it, or set gtr.http_api_key_env='' for an endpoint without a key")
    for key in ("buffer_size", "http_retries", "http_concurrency", "http_max_tokens", "vlm_max_new_tokens", "self_merge",
                "self_every"):
        if getattr(g, key) < (0 if key == "http_retries" else 1):
            raise ConfigError(f"gtr.{key} must be at least {0 if key == 'http_retries' else 1}, got {getattr(g, key)}")
    if g.sft_batch_size < 0 or g.sft_coef < 0:
        raise ConfigError("gtr.sft_batch_size and gtr.sft_coef must be 0 or more")
    if g.http_timeout_s <= 0:
        raise ConfigError(f"gtr.http_timeout_s must be positive, got {g.http_timeout_s}")


def _check_ranges(cfg: Config) -> None:
    """The numeric ranges that torch, the C envs or the loss would otherwise reject (or silently
    accept) only after demonstrations, SFT or the run directory were made."""
    ranges = [  # (key, value, low, high, low inclusive, high inclusive)
        ("sft.lr", cfg.sft.lr, 0, None, False, None),
        ("sft.max_grad_norm", cfg.sft.max_grad_norm, 0, None, False, None),
        ("sft.warmup_steps", cfg.sft.warmup_steps, 0, None, True, None),
        ("ppo.lr_end", cfg.ppo.lr_end, 0, cfg.ppo.lr, True, True),
        ("ppo.clip", cfg.ppo.clip, 0, 1, False, False),
        ("ppo.clip_high", cfg.ppo.clip_high, 0, 1, False, False),
        ("ppo.ratio_cap", cfg.ppo.ratio_cap, 1, None, False, None),
        ("ppo.value_coef", cfg.ppo.value_coef, 0, None, True, None),
        ("ppo.thought_coef", cfg.ppo.thought_coef, 0, 1, True, True),
        ("ppo.max_grad_norm", cfg.ppo.max_grad_norm, 0, None, False, None),
        ("algo.step_weight", cfg.algo.step_weight, 0, None, True, None),
        ("env.image_size", cfg.env.image_size, 32, 4096, True, True),  # the C renderer's limits
        ("sampling.repetition_penalty", cfg.sampling.repetition_penalty, 0, None, False, None),
        ("run.seed", cfg.run.seed, 0, None, True, None),
        ("eval.seed", cfg.eval.seed, 0, None, True, None),
    ]
    for key, value, low, high, low_in, high_in in ranges:
        if value is None:
            continue
        below = value < low if low_in else value <= low
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            lo = f"{'[' if low_in else '('}{low:g}"
            hi = "inf)" if high is None else f"{high:g}{']' if high_in else ')'}"
            raise ConfigError(f"{key} must be in {lo}, {hi}, got {value}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    OmegaConf.save(OmegaConf.structured(cfg), path)
