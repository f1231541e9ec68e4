"""What a run prints: a start banner, the SFT result, and one plain line per update.

On a terminal the phases also show tqdm bars (SFT, rollout, update, eval: `progress`). Off a
terminal (SLURM, nohup, CI logs) bars would write thousands of carriage-return frames into the
log, so they are off there and the plain lines are the record. The libraries' own bars
(`Loading weights`, `Writing model shards`) are silenced either way (`quiet_libraries`).
"""

from __future__ import annotations

import math
import os
import sys

import torch


def progress(*args, **kwargs):
    """A tqdm bar shown only when stderr is a terminal (tqdm's disable=None)."""
    from tqdm.auto import tqdm

    from fastvlmrl.distributed import current

    return tqdm(*args, disable=None if current().is_main else True, **kwargs)  # under torchrun: rank 0's


def quiet_libraries() -> None:
    """No progress bars from transformers and the Hugging Face hub (loading, saving shards)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def say(line: str) -> None:
    """One line for the user, written through tqdm so that a live bar is not broken."""
    from tqdm.auto import tqdm

    from fastvlmrl.distributed import current

    if not current().is_main:  # under torchrun: rank 0 speaks for the job
        return
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def parameter_counts(policy) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in policy.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def banner(cfg, run_dir, device, dtype, policy, *, resume_from: str | None = None) -> list[str]:
    """The lines printed before a run starts: where it writes, on what, how big, and what it will do."""
    trainable, total = parameter_counts(policy)
    model = cfg.model.path or "the built-in tiny VLM"
    adapters = f", LoRA r={cfg.model.lora_r}" if cfg.model.lora else ""
    lines = [
        f"run {run_dir}" + (f" (resuming from {resume_from})" if resume_from else ""),
        f"model {model}{adapters}: {_count(trainable)} trainable of {_count(total)} parameters",
        f"device {device}, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} CPU threads, seed {cfg.run.seed}",
        f"env {cfg.env.name}: {cfg.env.num_envs} envs, "
        + (f"text (tasks {cfg.alfworld.task_types}, {cfg.alfworld.split} -> eval {cfg.alfworld.eval_split})"
           if cfg.env.name.lower() == "alfworld" else f"{cfg.env.image_size}px frames")
        + f", prompt {cfg.prompt.style}"
        f"{'' if cfg.prompt.cot else ' (no CoT)'}",
    ]
    from fastvlmrl.distributed import current

    world = current()
    if world.active:
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "?"
        lines.append(f"processes {world.size} ({backend}): {cfg.env.num_envs // world.size} envs and "
                     f"{cfg.ppo.minibatch_size // world.size} samples of each mini-batch per process")
    phases = []
    if cfg.sft.steps and not resume_from:
        phases.append(f"SFT {cfg.sft.steps} steps x {cfg.sft.batch_size} of {cfg.sft.demos} demos (noise {cfg.sft.noise:g})")
    if cfg.ppo.updates:
        if cfg.algo.name == "ppo":
            per_update = f"{cfg.env.num_envs} envs x {cfg.ppo.num_steps} steps"
        else:
            per_update = f"{cfg.env.num_envs // cfg.algo.group_size} groups of {cfg.algo.group_size} episodes"
        phases.append(f"{cfg.algo.name.upper()} {cfg.ppo.updates} updates of {per_update}, {cfg.ppo.epochs} epochs")
    phases.append(f"eval {cfg.eval.episodes} episodes")
    lines.append("phases: " + " -> ".join(phases))
    return lines


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def update_line(record: dict, total: int) -> str:
    """`update 3/30 success 0.81 return -1.20 legal 0.98 kl 0.010 clip 0.05 ev 0.42 12.3s`."""
    seconds = record.get("timing/rollout_s", 0.0) + record.get("timing/update_s", 0.0)
    parts = [f"update {record['update'] + 1}/{total}",
             f"success {_fmt(record.get('rollout/success_rate'), 2)}",
             f"return {_fmt(record.get('rollout/episode_return'), 2)}",
             f"legal {_fmt(record.get('rollout/legal_action_rate'), 2)}"]
    for key, name, digits in (("actor/approx_kl", "kl", 3), ("actor/clip_frac", "clip", 2),
                              ("critic/explained_variance", "ev", 2), ("actor/kl_ref", "kl_ref", 3)):
        if key in record:
            parts.append(f"{name} {_fmt(record[key], digits)}")
    parts.append(f"{seconds:.1f}s")
    return " ".join(parts)


def result_line(prefix: str, result: dict) -> str:
    """`SFT model: success 0.076 (95% 0.056-0.103) return -9.16 legal 1.00 over 500 episodes`."""
    interval = ""
    if "success_ci95_low" in result:
        interval = f" (95% {result['success_ci95_low']:.3f}-{result['success_ci95_high']:.3f})"
    return (f"{prefix}: success {result['success_rate']:.3f}{interval} return {result['episode_return']:.2f} "
            f"legal {result['legal_action_rate']:.2f} over {result['episodes']} episodes")
