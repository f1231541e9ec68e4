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


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
    log.write({"update": 0, "env_steps": 64, "rollout/success_rate": 0.5, "actor/approx_kl": math.inf})
    log.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["rollout/success_rate"]
    (scalar,) = events.Scalars("rollout/success_rate")
    assert (scalar.step, scalar.value) == (64, 0.5)


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match=r"pip install 'fastvlmrl\[tensorboard\]'"):
        MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
