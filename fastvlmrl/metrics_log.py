"""The run's metrics: `metrics.jsonl` (one JSON object per line, flushed as written, so a killed
run keeps its lines) and, with `log.tensorboard=true`, the same scalars as TensorBoard events in
`runs/<name>/tensorboard/`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tensorboard_writer(log_dir: Path):
    """A TensorBoard SummaryWriter, or a ValueError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError("log.tensorboard=true needs the tensorboard package: "
                         "pip install 'fastvlmrl[tensorboard]' (or set log.tensorboard=false)") from e
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLog:
    """Appends records to metrics.jsonl; non-finite numbers are written as null (valid JSON)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path = path
        self.writer = tensorboard_writer(tensorboard_dir) if tensorboard_dir is not None else None
        self.file = path.open("a")

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.writer is not None:
            # PPO records are placed by env steps, SFT records by SFT step
            step = record.get("env_steps", record.get("sft/step", 0))
            for key, value in record.items():
                if key not in ("update", "env_steps", "sft/step") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and np.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a run killed mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
