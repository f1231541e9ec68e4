"""Training curves from metrics.jsonl (matplotlib, no display needed).

`curves.png` (one run, redrawn at every checkpoint): success rate with the SFT model's and the
final evaluation's levels, return, legal-action rate, approx-KL, clip fraction, value loss, the
thought metrics (what they read and decide, valid JSON, GTR's corrected rate) and their diversity
(distinct-n, self-BLEU), entropy and KL to the reference, rollout throughput, against env steps; an
SFT-only run draws its SFT loss. `fastvlmrl plot RUN_DIR...` (`plot_runs`) overlays runs, one
colour per configuration: runs that differ only in `run.seed` are drawn as their mean with a band
from the lowest to the highest seed, against env steps or wall time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from fastvlmrl.metrics_log import read_metrics

# (title, metrics, y limits): rates on a 0-1 axis
PANELS = [
    ("success rate", ["rollout/success_rate"], (-0.02, 1.02)),
    ("episode return", ["rollout/episode_return"], None),
    ("legal action rate", ["rollout/legal_action_rate"], (-0.02, 1.02)),
    ("approx KL (old -> new policy)", ["actor/approx_kl"], None),
    ("clip fraction", ["actor/clip_frac"], (-0.02, 1.02)),
    ("value loss", ["critic/value_loss"], None),
    ("thoughts", ["thought/perception_correct", "thought/action_follows_thought", "thought/valid_json_rate",
                  "gtr/corrected_rate"], (-0.02, 1.02)),
    ("thought diversity (collapse: distinct falls, self-BLEU rises)",
     ["thought/distinct_1", "thought/distinct_2", "thought/self_bleu"], (-0.02, 1.02)),
    ("entropy, KL to reference", ["actor/entropy", "actor/kl_ref"], None),
    ("tokens/s (rollout)", ["throughput/tokens_per_s"], None),
]
X_AXES = {"steps": "env steps", "time": "wall time (min)"}


def _run_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    return read_metrics(path)


def _x(updates: list[dict], records: list[dict], axis: str) -> list[float]:
    """Each update's position: env steps, or minutes since the run's first line (a run written
    before lines carried their time: the rollout and update seconds summed)."""
    if axis == "steps":
        return [r["env_steps"] for r in updates]
    times = [r.get("time") for r in records if r.get("time") is not None]
    if times and all(r.get("time") is not None for r in updates):
        return [(r["time"] - times[0]) / 60 for r in updates]
    spent = np.cumsum([r.get("timing/rollout_s", 0.0) + r.get("timing/update_s", 0.0) for r in updates])
    return list(spent / 60)


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def _finish(ax, title: str, xlabel: str, ylim) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(plt, fig, out: Path) -> Path:
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw run_dir/metrics.jsonl into run_dir/curves.png (or `out`); returns the file."""
    run_dir = Path(run_dir)
    records = _run_records(run_dir)
    updates = [r for r in records if "update" in r]
    out = Path(out) if out is not None else run_dir / "curves.png"
    if not updates:  # an SFT-only run (or one stopped before its first update): its SFT loss
        plt, fig, axes = _figure(1)
        points = [(r["sft/step"], r["sft/loss"]) for r in records if r.get("sft/loss") is not None]
        if points:
            axes[0].plot(*zip(*points), marker=".", label="loss")
            axes[0].set_yscale("log")
        _finish(axes[0], "SFT loss (cross-entropy per reply token)", "SFT step", None)
        fig.suptitle(run_dir.name)
        return _save(plt, fig, out)
    sft_eval = next((r["sft/eval_success_rate"] for r in records if "sft/eval_success_rate" in r), None)
    final = None
    if (run_dir / "eval.json").is_file():
        final = json.loads((run_dir / "eval.json").read_text()).get("success_rate")
    plt, fig, axes = _figure(len(PANELS))
    steps = _x(updates, records, "steps")
    for ax, (title, keys, ylim) in zip(axes, PANELS):
        for key in keys:
            points = [(s, r[key]) for s, r in zip(steps, updates) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=key.split("/")[-1])
        if title == "success rate":
            if sft_eval is not None:
                ax.axhline(sft_eval, color="gray", linestyle="--", label=f"SFT model, greedy eval ({sft_eval:.3f})")
            if final is not None:
                ax.axhline(final, color="green", linestyle=":", label=f"final greedy eval ({final:.3f})")
        _finish(ax, title, X_AXES["steps"], ylim)
    fig.suptitle(run_dir.name)
    return _save(plt, fig, out)


def _configuration(run_dir: Path) -> str:
    """A run's configuration without its seed and name: runs that share it are seeds of one setting."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return str(run_dir)
    config = yaml.safe_load(path.read_text()) or {}
    run = dict(config.get("run", {}))
    for key in ("seed", "name", "out_dir", "threads", "device"):
        run.pop(key, None)
    return json.dumps({**config, "run": run}, sort_keys=True)


def group_runs(run_dirs: list[Path]) -> list[list[Path]]:
    """The runs in groups of the same configuration but the seed, in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        groups.setdefault(_configuration(run_dir), []).append(Path(run_dir))
    return list(groups.values())


def _label(group: list[Path]) -> str:
    names = [p.name for p in group]
    if len(names) == 1:
        return names[0]
    common = names[0]
    while common and not all(n.startswith(common) for n in names):
        common = common[:-1]
    return f"{common.rstrip('-_') or names[0]} ({len(names)} seeds)"


def plot_runs(run_dirs: list[Path], out: Path, x: str = "steps") -> Path:
    """Overlay runs on the PANELS against env steps (x="steps") or wall time (x="time"); a group
    of seeds is drawn as its mean over the updates all of them reached, with a min-max band."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, got {x!r}")
    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    runs = {Path(d): _run_records(d) for d in run_dirs}
    plt, fig, axes = _figure(len(PANELS))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, group in enumerate(group_runs(list(runs))):
        colour = colours[number % len(colours)]
        series = []
        for run_dir in group:
            updates = [r for r in runs[run_dir] if "update" in r]
            series.append((updates, _x(updates, runs[run_dir], x)))
        length = min(len(u) for u, _ in series)
        if length == 0:
            continue
        xs = np.mean([xs[:length] for _, xs in series], axis=0)
        for ax, (_, keys, _) in zip(axes, PANELS):
            for style, key in zip(("-", "--", ":", "-."), keys):  # (a panel holds up to four metrics)
                ys = np.array([[np.nan if r.get(key) is None else r[key] for r in u[:length]] for u, _ in series],
                              dtype=float)
                if np.isnan(ys).all():
                    continue
                label = _label(group) + ("" if len(keys) == 1 else f" {key.split('/')[-1]}")
                with warnings.catch_warnings():  # an update some seeds did not log: NaN columns
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ax.plot(xs, np.nanmean(ys, axis=0), style, color=colour, label=label)
                    if len(series) > 1:
                        ax.fill_between(xs, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=colour, alpha=0.2)
    for ax, (title, _, ylim) in zip(axes, PANELS):
        _finish(ax, title, X_AXES[x], ylim)
    return _save(plt, fig, out)


def redraw_curves(run_dir: Path) -> None:
    """curves.png during a run or after an evaluation: a plotting failure is reported, never
    fatal (the run's results matter more than its picture)."""
    try:
        plot_curves(run_dir)
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(f"warning: could not draw {Path(run_dir) / 'curves.png'}: {error}")
