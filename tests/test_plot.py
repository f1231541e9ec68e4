"""`fastvlmrl plot` overlays runs: seeds of one setting grouped into a mean with a band, other
settings in their own colour; against env steps or wall time; clear errors; curves.png of an
SFT-only run draws the SFT loss."""

import json

import matplotlib
import pytest
import yaml

from fastvlmrl.cli import main
from fastvlmrl.curves import group_runs, plot_curves, plot_runs

matplotlib.use("Agg")


def _record_calls(monkeypatch, method):
    from matplotlib.axes import Axes

    calls, original = [], getattr(Axes, method)

    def recording(ax, *args, **kwargs):
        calls.append((ax.get_title(), args, kwargs))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(Axes, method, recording)
    return calls


def _fake_run(root, name, seed, lr, success, updates=5, with_time=True):
    run = root / name
    run.mkdir(parents=True)
    config = {"run": {"name": name, "seed": seed, "out_dir": str(root)}, "ppo": {"lr": lr}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"sft/step": 0, "sft/loss": 2.0}]
    for u in range(updates):
        record = {"update": u, "env_steps": 128 * (u + 1), "rollout/success_rate": success(u),
                  "rollout/episode_return": success(u) * 2 - 1, "rollout/legal_action_rate": 1.0,
                  "actor/approx_kl": 0.01, "actor/clip_frac": 0.1, "critic/value_loss": 0.5,
                  "timing/rollout_s": 6.0, "timing/update_s": 4.0, "throughput/tokens_per_s": 3000.0}
        if with_time:
            record["time"] = 1_000_000.0 + 10 * u
        lines.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_seeds_of_one_setting_are_one_group(tmp_path):
    a = [_fake_run(tmp_path, f"nl-s{s}", s, 1e-5, lambda u, s=s: min(1, 0.2 * u + 0.1 * s)) for s in range(3)]
    b = _fake_run(tmp_path, "nl-fast", 0, 1e-4, lambda u: 0.9)
    assert group_runs([a[0], b, a[1], a[2]]) == [[a[0], a[1], a[2]], [b]]


@pytest.mark.parametrize("x", ["steps", "time"])
def test_plot_overlays_runs(tmp_path, capsys, monkeypatch, x):
    lines, bands = _record_calls(monkeypatch, "plot"), _record_calls(monkeypatch, "fill_between")
    runs = [_fake_run(tmp_path, f"nl-s{s}", s, 1e-5, lambda u, s=s: min(1, 0.2 * u + 0.1 * s)) for s in range(3)]
    runs.append(_fake_run(tmp_path, "old", 0, 1e-4, lambda u: 0.5, updates=3, with_time=False))
    out = tmp_path / "overlay.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--x", x]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4 runs in 2 configurations" in capsys.readouterr().out
    firsts = {}  # each group's first line is its success rate (the first panel)
    for call in lines:
        firsts.setdefault(call[2].get("label"), call)
    success = list(firsts.values())
    assert [c[2]["label"] for c in success] == ["nl-s (3 seeds)", "old"]
    xs, mean = success[0][1][:2]
    assert list(mean) == pytest.approx([(0.0 + 0.1 + 0.2) / 3 + 0.2 * u for u in range(5)])
    assert list(xs) == ([128, 256, 384, 512, 640] if x == "steps" else pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6]))
    assert len(bands) == 7  # a band per metric the seeds logged (not the thought ones), none for the single run


def test_plot_errors_are_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path, "r", 0, 1e-5, lambda u: 0.5)
    assert main(["plot", str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert main(["plot", str(run), "--out", str(tmp_path / "missing" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="x must be"):
        plot_runs([run], tmp_path / "x.png", x="epochs")


def test_sft_only_curves_draw_the_sft_loss(tmp_path, monkeypatch):
    lines = _record_calls(monkeypatch, "plot")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"sft/step": s, "sft/loss": 3.0 / (s + 1)}) + "\n"
                                                    for s in range(0, 100, 10)))
    out = plot_curves(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(lines) == 1 and list(lines[0][1][1]) == [3.0 / (s + 1) for s in range(0, 100, 10)]


def test_a_panel_draws_every_one_of_its_metrics(tmp_path, monkeypatch):
    """The thought panels hold three and four metrics: each is drawn (with its own line style)."""
    lines = _record_calls(monkeypatch, "plot")
    run = _fake_run(tmp_path, "gtr", 0, 1e-5, lambda u: 0.5)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        r.update({"thought/perception_correct": 0.9, "thought/action_follows_thought": 0.8,
                  "thought/valid_json_rate": 1.0, "gtr/corrected_rate": 0.2, "thought/distinct_1": 0.3,
                  "thought/distinct_2": 0.4, "thought/self_bleu": 0.7})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_runs([run], tmp_path / "one.png")
    labels = {c[2].get("label") for c in lines}
    for key in ("valid_json_rate", "corrected_rate", "distinct_1", "distinct_2", "self_bleu"):
        assert f"gtr {key}" in labels, key
