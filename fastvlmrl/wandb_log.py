"""Weights & Biases beside metrics.jsonl and TensorBoard (`log.wandb=true`, an optional extra):
the same scalars (PPO ones against env steps, SFT ones against the SFT step), the samples as a
table, the resolved config; a resumed run continues the same W&B run (its id is kept in
runs/<name>/wandb_id). `log.wandb_mode=offline` writes under runs/<name>/wandb/ for `wandb sync`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

_PPO_SECTIONS = ("rollout", "actor", "critic", "thought", "timing", "throughput")


def require_wandb():
    """The wandb module, or a ValueError saying what to install (checked before a run starts)."""
    try:
        import wandb
    except ImportError:
        raise ValueError("log.wandb=true needs the wandb package: pip install 'fastvlmrl[wandb]' "
                         "(or set log.wandb=false)") from None
    return wandb


class WandbLogger:
    def __init__(self, cfg, run_dir: Path, resume: bool):
        import dataclasses

        wandb = require_wandb()
        self.wandb = wandb
        id_file = Path(run_dir) / "wandb_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=cfg.log.wandb_project, name=Path(run_dir).name, id=run_id, resume="allow",
                              dir=str(run_dir), config=dataclasses.asdict(cfg), mode=cfg.log.wandb_mode)
        self.run.define_metric("sft/step")
        self.run.define_metric("sft/*", step_metric="sft/step")
        self.run.define_metric("env_steps")
        for section in _PPO_SECTIONS:
            self.run.define_metric(f"{section}/*", step_metric="env_steps")
        self.run.define_metric("lr", step_metric="env_steps")

    def log(self, record: dict) -> None:
        numbers = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "time"}
        if numbers:
            self.run.log(numbers)

    def log_samples(self, env_steps: int, samples: list[dict]) -> None:
        columns = ["update", "game", "state", "output", "parsed_action", "legal", "action", "reward"]
        table = self.wandb.Table(columns=columns)
        for s in samples:
            table.add_data(s["update"], s["game"], str(s["state"]), s["output"], s["parsed_action"], s["legal"],
                           s["action"], s["reward"])
        self.run.log({"samples": table, "env_steps": env_steps})

    def finish(self) -> None:
        self.run.finish()
