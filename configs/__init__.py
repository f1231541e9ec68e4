"""YAML presets, installed as fastvlmrl.configs: tiny/ (the built-in tiny VLM, CPU-sized),
rl4vlm/ (the paper's gym_cards runs, with a model path to fill in) and gtr/ (GTR's Points24 run,
with a model path and a corrector endpoint to fill in)."""

from importlib import resources
from pathlib import Path


def preset_path(name: str) -> Path:
    """The file of a preset such as 'tiny/numberline' (a ValueError lists the known ones)."""
    root = resources.files(__name__)
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(f"{d.name}/{f.name[:-5]}" for d in root.iterdir() if d.is_dir() for f in d.iterdir()
                       if f.name.endswith(".yaml"))
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(known)}")
    return Path(str(path))
