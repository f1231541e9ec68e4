"""metrics.jsonl: valid JSON per line (non-finite numbers as null), a torn last line ignored on
read; TensorBoard events; curves.png from a run's metrics; a clear error without tensorboard."""

import json
import math
import sys

import pytest

from fastvlmrl.curves import plot_curves
from fastvlmrl.metrics_log import MetricsLog, read_metrics


def test_lines_are_json_and_a_torn_line_is_skipped(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"sft/step": 0, "sft/loss": 2.5})
    log.write({"sft/eval_success_rate": 0.25})
    for update in range(3):
        log.write({"update": update, "env_steps": 128 * (update + 1), "rollout/success_rate": update / 2,
                   "actor/approx_kl": math.nan, "critic/value_loss": 0.5})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"update": 3, "env_st')  # killed mid-write
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("update") for r in records] == [None, None, 0, 1, 2]
    assert records[2]["actor/approx_kl"] is None
    (tmp_path / "eval.json").write_text(json.dumps({"success_rate": 0.9}))
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_and_purge_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
    log.write({"sft/step": 500, "sft/loss": 0.25})
    for update, success in enumerate([0.5, 0.75, 0.9]):
        log.write({"update": update, "env_steps": 64 * (update + 1), "rollout/success_rate": success,
                   "actor/approx_kl": math.inf})
    log.close()
    # resumed from the checkpoint at 64 env steps: the updates after it are redone
    log = MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb", purge_step=65)
    log.write({"update": 1, "env_steps": 128, "rollout/success_rate": 0.6})
    log.close()
    assert _scalars(tmp_path / "tb" / "ppo") == {"rollout/success_rate": [(64, 0.5), (128, 0.6)]}
    assert _scalars(tmp_path / "tb" / "sft") == {"sft/loss": [(500, 0.25)]}


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match=r"pip install 'fastvlmrl\[tensorboard\]'"):
        MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
