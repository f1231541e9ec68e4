"""log.wandb=true: the run's scalars, samples and config go to Weights & Biases as well (PPO
scalars against env steps, SFT ones against the SFT step); a resumed run continues the same W&B
run; without the package, one line says what to install before anything is written."""

import json
import sys
import types

import pytest

from fastvlmrl.cli import main

TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.updates=2", "ppo.num_steps=2", "env.num_envs=2",
       "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64",
       "log.samples_every=1", "log.checkpoint_every=1"]


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.metrics, self.finished = kwargs, [], {}, False

    def define_metric(self, name, step_metric=None):
        self.metrics[name] = step_metric

    def log(self, data):
        self.logged.append(data)

    def finish(self):
        self.finished = True


class FakeTable:
    def __init__(self, columns):
        self.columns, self.rows = columns, []

    def add_data(self, *row):
        self.rows.append(row)


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    module = types.SimpleNamespace(init=init, Table=FakeTable)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_scalars_samples_and_config_reach_wandb_and_resume_continues_the_run(tmp_path, fake_wandb):
    assert main(["train", *TOY, "log.wandb=true", "log.wandb_mode=offline", f"run.out_dir={tmp_path}",
                 "run.name=w"]) == 0
    run = fake_wandb[0]
    assert len(run.init["id"]) == 12 and run.init["resume"] == "allow" and run.init["mode"] == "offline"
    assert run.init["config"]["ppo"]["clip"] == 0.1 and run.init["dir"] == str(tmp_path / "w")
    assert run.metrics["rollout/*"] == "env_steps" and run.metrics["sft/*"] == "sft/step"
    ppo = [d for d in run.logged if "actor/pg_loss" in d]
    assert [d["env_steps"] for d in ppo] == [4, 8] and all("time" not in d for d in ppo)
    assert any("sft/loss" in d and "sft/step" in d for d in run.logged)
    tables = [d["samples"] for d in run.logged if "samples" in d]
    assert len(tables) == 2 and tables[0].columns[:2] == ["update", "game"] and len(tables[0].rows) == 4
    assert run.finished
    assert main(["train", f"resume={tmp_path / 'w'}", "ppo.updates=3"]) == 0
    assert fake_wandb[1].init["id"] == run.init["id"]  # the same W&B run, continued


def test_without_wandb_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    assert main(["train", *TOY, "log.wandb=true", f"run.out_dir={tmp_path}", "run.name=w"]) == 2
    assert "pip install 'fastvlmrl[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_the_real_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["train", *TOY, "ppo.updates=1", "log.wandb=true", "log.wandb_mode=offline",
                 f"run.out_dir={tmp_path}", "run.name=w"]) == 0
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert json.loads((tmp_path / "w" / "eval.json").read_text())["episodes"] == 2
