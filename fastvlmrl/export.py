"""`fastvlmrl export RUN_DIR OUT_DIR`: a run's checkpoint as a standard Hugging Face model
directory (LoRA adapters merged into the weights; the processor beside it) that
`AutoModelForImageTextToText.from_pretrained(OUT_DIR)` loads with no fastvlmrl code, plus the value
head as `value_head.safetensors` and a `fastvlmrl_export.json` saying where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path


def export_run(run_dir, out_dir, checkpoint: str | None = None) -> Path:
    """Write the checkpoint (default the latest) of `run_dir` to `out_dir` (new or empty)."""
    import torch
    from safetensors.torch import save_file

    from fastvlmrl.checkpoint import latest_checkpoint, load_checkpoint, named_checkpoint
    from fastvlmrl.config import load_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not an empty directory: export into a new one")
    if not out_dir.parent.is_dir():
        raise ValueError(f"the parent directory {out_dir.parent} does not exist")
    cfg = load_config(run_dir / "config.yaml")
    path = latest_checkpoint(run_dir) if checkpoint is None else named_checkpoint(run_dir, checkpoint)
    policy, processor = load_checkpoint(cfg, path, "cpu", torch.float32)
    model = policy.model
    if cfg.model.lora:
        model = model.merge_and_unload()  # peft: adapters folded into the base weights
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
              tmp / "value_head.safetensors")
    (tmp / "fastvlmrl_export.json").write_text(json.dumps(
        {"run": str(run_dir.resolve()), "checkpoint": path.name, "lora_merged": bool(cfg.model.lora),
         "game": cfg.env.name, "prompt_style": cfg.prompt.style, "cot": cfg.prompt.cot}, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return out_dir
