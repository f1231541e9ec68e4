"""`curves.png`: the training curves of a run, drawn from its metrics.jsonl (matplotlib, no
display needed). Success rate with the SFT model's and the final evaluation's levels, episode
return, the PPO statistics, the value loss and the rollout throughput, against env steps."""

from __future__ import annotations

import json
from pathlib import Path

from fastvlmrl.metrics_log import read_metrics

PANELS = [
    ("success rate", ["rollout/success_rate"]),
    ("episode return", ["rollout/episode_return"]),
    ("policy", ["actor/approx_kl", "actor/clip_frac"]),
    ("value loss", ["critic/value_loss"]),
    ("legal action rate", ["rollout/legal_action_rate"]),
    ("tokens/s (rollout)", ["throughput/tokens_per_s"]),
]


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw run_dir/metrics.jsonl into run_dir/curves.png (or `out`); returns the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    updates = [r for r in records if "update" in r]
    sft_eval = next((r["sft/eval_success_rate"] for r in records if "sft/eval_success_rate" in r), None)
    final = None
    if (run_dir / "eval.json").is_file():
        final = json.loads((run_dir / "eval.json").read_text()).get("success_rate")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    steps = [r["env_steps"] for r in updates]
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            values = [r.get(key) for r in updates]
            points = [(s, v) for s, v in zip(steps, values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=key.split("/")[-1])
        if title == "success rate":
            if sft_eval is not None:
                ax.axhline(sft_eval, color="gray", linestyle="--", label=f"SFT model, greedy eval ({sft_eval:.3f})")
            if final is not None:
                ax.axhline(final, color="green", linestyle=":", label=f"final greedy eval ({final:.3f})")
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    out = Path(out) if out is not None else run_dir / "curves.png"
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out


def redraw_curves(run_dir: Path) -> None:
    """curves.png during a run or after an evaluation: a plotting failure is reported, never
    fatal (the run's results matter more than its picture)."""
    try:
        plot_curves(run_dir)
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(f"warning: could not draw {Path(run_dir) / 'curves.png'}: {error}")
