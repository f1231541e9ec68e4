"""A run's checkpoints and how a stopped run continues exactly.

    runs/<name>/checkpoints/step_N/   model/ (weights or LoRA adapters + processor),
                                      value_head.safetensors, trainer_state.pt (optimizer, update,
                                      RNG states, the envs' snapshot, the player's counters),
                                      manifest.json (every file's size and SHA-256, written last)
    runs/<name>/checkpoints/latest    the name of the newest complete step_N

Resume, eval, render and export verify the manifest: a corrupt or partial latest checkpoint is
reported in one line and the newest one that verifies is used. log.keep_checkpoints keeps only
the newest K; a full disk fails the checkpoint being written, cleanly, and says so.

`fastvlmrl train resume=RUN_DIR` reloads the latest checkpoint and continues as if the run had
not stopped: only the settings in RESUMABLE may change, metrics.jsonl keeps the lines up to the
checkpoint, and nothing is written before the restore has succeeded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from fastvlmrl.config import Config

# What `train resume=` may change: the length of the run, how it is logged and evaluated, and how
# its memory is spent (micro-batches, recomputation and FSDP's sharding give the same gradients); the
# rest would make the continuation a different run.
RESUMABLE = ("ppo.updates", "eval.", "log.", "run.threads", "ppo.micro_batch_size", "sft.micro_batch_size",
             "model.gradient_checkpointing", "model.fsdp")


def check_resume_overrides(overrides: list[str]) -> None:
    """Refuse (ValueError) any override of a setting a resumed run may not change."""
    changed = [o.split("=", 1)[0] for o in overrides if not o.split("=", 1)[0].startswith(RESUMABLE)]
    if changed:
        raise ValueError(f"resume continues a run with its own settings: only {', '.join(RESUMABLE)}... can be "
                         f"changed, not {', '.join(changed)}")


def check_new_run_dir(run_dir: Path) -> bool:
    """A new run never writes into a directory that holds a run (a checkpoint or an update); one
    left by a run that stopped before its first update (nothing to resume) is cleared for reuse.
    Returns True when it was."""
    from fastvlmrl.run_dir import clear_before_first_update, holds_updates

    if holds_updates(run_dir):
        hint = (f"continue it with `fastvlmrl train resume={run_dir}`, or pick another run.name"
                if (run_dir / "checkpoints" / "latest").is_file() else
                "it stopped before its first checkpoint, so it cannot be resumed: delete the directory or "
                "pick another run.name")
        raise ValueError(f"{run_dir} already holds a run: {hint}")
    return clear_before_first_update(run_dir)


def save_checkpoint(run_dir: Path, update: int, policy, optimizer, processor, resume_state: dict | None = None,
                    keep: int = 0, name: str | None = None, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """checkpoints/step_N/ written to a temporary folder first, its manifest last, then renamed:
    a run killed (or out of disk) while saving leaves the previous checkpoint and `latest` intact.
    `resume_state` (see `capture`) is what a resumed run needs to continue exactly; keep > 0
    removes all but the newest `keep` checkpoints. name: the folder (default step_<update>; SFT's
    are sft_<step>). model_state / optimizer_state: the policy's and the optimizer's whole state
    when the live ones are shards (FSDP: `sharding.full_state`), written in the same files."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    name = name or f"step_{update}"
    final = root / name
    tmp = root / f".{name}.partial"
    if tmp.exists():  # left by a run killed while saving
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        if model_state is None:
            policy.model.save_pretrained(tmp / "model")
            head = policy.value_head.state_dict()
        else:
            policy.model.save_pretrained(tmp / "model", state_dict=_under(model_state, "model."))
            head = _under(model_state, "value_head.")
        processor.save_pretrained(tmp / "model")
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, tmp / "value_head.safetensors")
        torch.save({"optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                    "update": update, **(resume_state or {})}, tmp / "trainer_state.pt")
        write_manifest(tmp)
        (root / "latest.tmp").write_text(final.name)
    except Exception as error:  # torch and safetensors report a full disk as their own errors
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            raise ValueError(f"the disk is full: checkpoint {name} of {run_dir} was not written (the previous "
                             "one is intact); free space, then resume") from None
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (root / "latest.tmp").replace(root / "latest")
    if name.startswith("sft_"):  # SFT's: only the newest is kept (it resumes the SFT)
        for old in checkpoints(run_dir, "sft")[:-1]:
            shutil.rmtree(old)
    elif keep > 0:
        for old in checkpoints(run_dir, "step")[:-keep]:
            if old != final:  # (a higher-numbered, corrupt one a resume passed over may still be there)
                shutil.rmtree(old)
    return final


def _under(state: dict, prefix: str) -> dict:
    """The entries of a module's state dict that belong to its submodule `prefix`, named as in it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(checkpoint: Path) -> None:
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {str(p.relative_to(checkpoint)): {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if every file of the manifest is there with its size and checksum, else what is wrong.
    (A checkpoint from before manifests existed is taken as it is.)"""
    path = checkpoint / "manifest.json"
    if not checkpoint.is_dir():
        return "it is missing"
    if not path.is_file():
        return None if (checkpoint / "trainer_state.pt").is_file() else "it has no manifest (a partial write)"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "its manifest is not JSON"
    for name, entry in manifest.items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, not {entry['bytes']}"
        if _digest(file) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def checkpoints(run_dir: Path, kind: str | None = None) -> list[Path]:
    """The run's checkpoint directories, oldest first: SFT's sft_N, then PPO's step_N (kind:
    "sft" or "step" for one kind only)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for prefix in ("sft", "step"):
        if kind not in (None, prefix):
            continue
        found = [p for p in root.glob(f"{prefix}_*") if p.is_dir() and p.name.split("_", 1)[1].isdigit()]
        out += sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))
    return out


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint `latest` names, verified; if it is corrupt or partial, one line says so and
    the newest checkpoint that verifies is used."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise ValueError(f"{run_dir} has no checkpoint (no checkpoints/latest; a run stopped before its first "
                         "checkpoint cannot be resumed): train first, or check the path")
    latest = run_dir / "checkpoints" / pointer.read_text().strip()
    problem = verify_checkpoint(latest)
    if problem is None:
        return latest
    kind = latest.name.split("_", 1)[0]  # never back from PPO's checkpoints into SFT's
    for candidate in reversed(checkpoints(run_dir, kind)):
        if candidate != latest and verify_checkpoint(candidate) is None:
            print(f"warning: checkpoint {latest.name} of {run_dir} is unusable ({problem}): using {candidate.name}",
                  file=sys.stderr)
            return candidate
    raise ValueError(f"checkpoint {latest.name} of {run_dir} is unusable ({problem}) and no earlier one verifies")


def named_checkpoint(run_dir: Path, name: str) -> Path:
    """checkpoints/<name> (e.g. step_20), verified, or a ValueError listing the ones there are."""
    path = Path(run_dir) / "checkpoints" / name
    if not path.is_dir() or name.startswith("."):
        found = [p.name for p in checkpoints(run_dir)]
        raise ValueError(f"{run_dir} has no checkpoint {name!r} (it has: {', '.join(found) or 'none'})")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(f"checkpoint {name} of {run_dir} is unusable: {problem}")
    return path


def load_checkpoint(cfg: Config, checkpoint: Path, device, dtype, trainable: bool = False):
    """(policy, processor) from a checkpoint: full weights, or the base model plus LoRA adapters
    (trainable: the adapters take gradients, to resume training)."""
    from safetensors.torch import load_file

    from fastvlmrl.models import load_policy
    from fastvlmrl.models.tiny import tiny_config_from

    if cfg.model.lora:
        from peft import PeftModel

        policy, processor = load_policy(cfg.model.path, lora=False, freeze_vision=cfg.model.freeze_vision,
                                        dtype=dtype, device=device, seed=cfg.run.seed, tiny=tiny_config_from(cfg.model))
        policy.model = PeftModel.from_pretrained(policy.model, checkpoint / "model", is_trainable=trainable).to(device)
    else:
        policy, processor = load_policy(str(checkpoint / "model"), lora=False, freeze_vision=cfg.model.freeze_vision,
                                        dtype=dtype, device=device, seed=cfg.run.seed)
    policy.value_head.load_state_dict(load_file(checkpoint / "value_head.safetensors"))
    return policy, processor


def read_trainer_state(checkpoint: Path, updates: int) -> dict:
    """The checkpoint's trainer state, checked before anything is restored from it (`updates`:
    the resumed run's ppo.updates)."""
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    if "sft_step" in state:  # a checkpoint during SFT: the run continues its SFT
        return state
    if "envs" not in state and "ranks" not in state:  # (a run over several processes keeps them per rank)
        raise ValueError(f"{checkpoint} has no resume state (written by an older fastvlmrl): start a new run")
    if updates < state["update"]:
        raise ValueError(f"ppo.updates={updates} is below the {state['update']} updates {checkpoint} "
                         "already made: give ppo.updates >= that to resume")
    return state


def truncate_sft_metrics(path: Path, step: int) -> None:
    """Keep the SFT lines before `step` (a run killed after an SFT checkpoint may have logged more)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "sft/step" in record and record["sft/step"] < step:
            keep.append(record)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)


def capture(planned_updates: int, env_steps: int, generator: torch.Generator, player) -> dict:
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


def rank_state(state: dict, world, notify=print) -> dict:
    """This process's part of a checkpoint's state. A checkpoint written by N processes keeps each
    rank's envs, player and RNGs (`ranks`); resumed on the same N, rank r continues exactly its own.
    On another number of processes (or a single-process checkpoint under torchrun, or the reverse)
    the episodes cannot be split anew (each rank's C envs are one opaque snapshot): the weights,
    the optimizer, the schedule and the mini-batch order continue, and every env starts a fresh
    episode (`fresh_episodes`)."""
    saved = state.get("world_size", 1)
    if saved == world.size:
        return {**state, **state["ranks"][world.rank]} if saved > 1 else state
    notify(f"the checkpoint was written by {saved} process(es), this run has {world.size}: the weights, optimizer "
           "and schedule continue; the envs start fresh episodes (the run is not the uninterrupted one's)")
    player = state["ranks"][0]["player"] if saved > 1 else state["player"]
    return {"minibatch_rng": state["minibatch_rng"], "fresh_episodes": True,
            "calls": player["calls"]}  # sampling seeds go on from where they were, never reused


def restore(state: dict, generator: torch.Generator, player, seed: int = 0):
    """Put the RNGs, the player and the envs back as they were; returns the current frames. A
    state marked `fresh_episodes` (`rank_state`) restores the mini-batch order and starts every env
    anew from `seed` instead."""
    if state.get("fresh_episodes"):
        generator.set_state(state["minibatch_rng"])
        player.calls = int(state["calls"])
        return player.reset(seed)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        for device, rng in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, device)
    generator.set_state(state["minibatch_rng"])
    player.set_state(state["player"])
    obs, _ = player.envs.set_state(state["envs"])
    return obs


def truncate_metrics(path: Path, update: int) -> None:
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
