"""The run's metrics: `metrics.jsonl` (one JSON object per line with its unix `time`, flushed as
written, so a killed run keeps its lines), `samples.jsonl` (a few of the model's replies as it
wrote them, every log.samples_every updates) and, with `log.tensorboard=true`, the same scalars
as TensorBoard events in `runs/<name>/tensorboard/sft/` (by SFT step) and
`runs/<name>/tensorboard/ppo/` (by env step), the samples as text there; with `log.wandb=true`,
the same to Weights & Biases (`fastvlmrl/wandb_log.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def tensorboard_writer(log_dir: Path, purge_step: int | None = None):
    """A TensorBoard SummaryWriter, or a ValueError saying what to install. purge_step: events at
    or after it are dropped (a resumed run redoes them)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError("log.tensorboard=true needs the tensorboard package: "
                         "pip install 'fastvlmrl[tensorboard]' (or set log.tensorboard=false)") from e
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLog:
    """Appends records to metrics.jsonl; non-finite numbers are written as null (valid JSON)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None, purge_step: int | None = None,
                 wandb=None):
        self.path = path
        self.wandb = wandb  # a WandbLogger (log.wandb=true), or None
        self.writers = {}
        if tensorboard_dir is not None:  # SFT and PPO count steps differently: one writer each
            self.writers = {"sft": tensorboard_writer(tensorboard_dir / "sft"),
                            "ppo": tensorboard_writer(tensorboard_dir / "ppo", purge_step)}
        self.file = path.open("a")
        self.samples_path = path.with_name("samples.jsonl")

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}
        clean["time"] = round(time.time(), 3)
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(clean)
        if self.writers:
            ppo = "env_steps" in record
            writer = self.writers["ppo" if ppo else "sft"]
            step = record["env_steps"] if ppo else record.get("sft/step", 0)
            for key, value in record.items():
                if key not in ("update", "env_steps", "sft/step") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and np.isfinite(value):
                    writer.add_scalar(key, value, step)
            writer.flush()

    def write_samples(self, update: int, env_steps: int, samples: list[dict]) -> None:
        """One line per reply in samples.jsonl; one TensorBoard text entry for the update."""
        if not samples:
            return
        rows = [{"update": update, "env_steps": env_steps, **sample} for sample in samples]
        with self.samples_path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log_samples(env_steps, rows)
        if self.writers:
            text = "\n\n".join(
                f"**{s['game']}** state `{json.dumps(s['state'])}` -> action `{s['action']}` "
                f"({'legal' if s['legal'] else 'illegal'}), reward {s['reward']:g}\n\n    {s['output']}"
                for s in samples)
            self.writers["ppo"].add_text("samples", text, env_steps)
            self.writers["ppo"].flush()

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        for writer in self.writers.values():
            writer.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a run killed mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class NullLog:
    """What ranks other than 0 log to under torchrun: nothing (rank 0 writes the run's files)."""

    def write(self, record: dict) -> None:
        pass

    def write_samples(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass
