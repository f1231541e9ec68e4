"""`fastvlmrl train` end to end at toy sizes: the run directory, metrics, checkpoint and eval, and
the same code on a saved Hugging Face checkpoint directory with and without LoRA."""

import json

import pytest

from fastvlmrl.cli import main

TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.updates=2", "ppo.num_steps=2", "env.num_envs=2",
       "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64"]
METRICS = ["update", "env_steps", "rollout/success_rate", "rollout/episode_return", "rollout/legal_action_rate",
           "actor/pg_loss", "actor/clip_frac", "actor/approx_kl", "critic/value_loss", "timing/rollout_s",
           "timing/update_s", "throughput/tokens_per_s", "thought/perception_correct", "thought/action_follows_thought",
           "critic/explained_variance", "actor/entropy"]


def test_train_writes_the_run_directory_then_eval_reloads_it(tmp_path, capsys):
    assert main(["train", *TOY, "log.tensorboard=true", "eval.start_states=true", f"run.out_dir={tmp_path}", "run.name=toy"]) == 0
    run = tmp_path / "toy"
    assert (run / "config.yaml").is_file()
    assert (run / "curves.png").stat().st_size > 0
    for phase in ("sft", "ppo"):
        assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard" / phase).iterdir())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in lines if "update" in r]
    assert [r["update"] for r in updates] == [0, 1]
    for key in METRICS:
        assert key in updates[0], key
    assert any("sft/loss" in r for r in lines) and any("sft/eval_success_rate" in r for r in lines)
    for r in updates:  # the timings add up to the update's wall time (slack for a loaded machine)
        assert r["timing/rollout_s"] + r["timing/update_s"] == pytest.approx(r["timing/iteration_s"], rel=0.05, abs=0.05)
        parts = sum(r[f"timing/{k}_s"] for k in ("prompt", "generate", "parse", "env", "value"))
        assert parts <= r["timing/rollout_s"] + 1e-6
        assert parts == pytest.approx(r["timing/rollout_s"], rel=0.05, abs=0.05)
        assert r["timing/ppo_forward_backward_s"] + r["timing/ppo_optimizer_s"] <= r["timing/update_s"]
    assert (run / "checkpoints" / "latest").read_text() == "step_2"
    result = json.loads((run / "eval.json").read_text())
    assert set(result) == {"success_rate", "success_ci95_low", "success_ci95_high", "episode_return",
                           "legal_action_rate", "episodes", "start_states", "start_state_success_rate"}
    assert result["start_states"] == 30  # NumberLine: every (target, current) pair once
    assert result["success_ci95_low"] <= result["success_rate"] <= result["success_ci95_high"]
    assert result["episodes"] == 2
    # the model's own words: log.samples_every=5 keeps replies of update 0
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["update"] for s in samples} == {0}  # log.samples=4 of 2 envs x 2 steps
    for sample in samples:
        assert set(sample) == {"update", "env_steps", "env", "game", "state", "output", "parsed_action", "legal",
                               "action", "reward"}
        assert sample["game"] == "NumberLine" and set(sample["state"]) == {"Target", "Current"}
        assert isinstance(sample["output"], str) and isinstance(sample["reward"], float)
        assert sample["action"] in ("-", "+") and (sample["parsed_action"] is None or sample["legal"])
    assert all(isinstance(r["time"], float) for r in lines)
    out = capsys.readouterr().out  # the console: banner, SFT result, one line per update, the final result
    assert f"run {run}" in out and "phases: SFT 2 steps x 4 of 16 demos" in out and "PPO 2 updates" in out
    assert "SFT: 2 steps in" in out and "SFT model: success" in out
    assert "update 1/2 success" in out and "update 2/2 success" in out
    assert "final model: success" in out
    assert "\r" not in out and "it/s" not in capsys.readouterr().err  # off a terminal: no bars
    final = (run / "eval.json").read_text()
    assert main(["eval", str(run), "eval.episodes=3", "run.threads=1", "eval.start_states=false"]) == 0
    assert json.loads((run / "eval" / "step_2_3ep.json").read_text())["episodes"] == 3
    assert main(["eval", str(run), "--checkpoint", "step_2", "eval.episodes=4", "eval.start_states=false"]) == 0
    assert json.loads((run / "eval" / "step_2_4ep.json").read_text())["checkpoint"] == "step_2"
    assert (run / "eval.json").read_text() == final  # the training's own result stays
    capsys.readouterr()
    assert main(["eval", str(run), "ppo.clip=0.2"]) == 2
    assert "eval uses only eval.*, run.threads, run.device, env.threads, alfworld.eval_split: ppo.clip would change nothing" \
        in capsys.readouterr().err
    assert main(["eval", str(run), "--checkpoint", "step_7"]) == 2
    assert "has no checkpoint 'step_7' (it has: step_2)" in capsys.readouterr().err


@pytest.fixture
def saved_llava(tmp_path):
    from fastvlmrl.models import build_tiny_vlm

    model, processor = build_tiny_vlm(seed=1)
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    return tmp_path / "llava"


@pytest.mark.parametrize("family,lora", [
    ("llava", False), ("llava", True), ("qwen2_vl", False), ("qwen2_vl", True), ("qwen3_vl", True), ("gemma3", True),
    ("llava_onevision", True), ("internvl", True), ("idefics3", True), ("smolvlm", True),
])
def test_one_ppo_update_from_a_saved_checkpoint_directory(tmp_path, request, family, lora):
    """Real-size models go through the same code: a random-weight checkpoint saved to a directory,
    trained for one PPO update from model.path, then evaluated from its saved checkpoint."""
    path = request.getfixturevalue("saved_llava" if family == "llava" else f"{family}_dir")
    # Blackjack: episodes of a few steps (NumberLine's evaluation plays all 30 start states to the
    # step limit, minutes with a random model).
    args = [a for a in TOY if not a.startswith(("sft.", "ppo.updates"))] + ["sft.steps=0", "ppo.updates=1",
                                                                            "env.name=Blackjack"]
    assert main(["train", *args, f"model.path={path}", f"model.lora={lora}", "model.lora_r=4",
                 "model.lora_alpha=8", f"run.out_dir={tmp_path}", "run.name=from-dir"]) == 0
    run = tmp_path / "from-dir"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["actor/optimizer_steps"] > 0
    assert main(["eval", str(run), "eval.episodes=2"]) == 0


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    assert main(["train", "ppo.clipp=0.2", f"run.out_dir={tmp_path}"]) == 2
    assert "unknown config key 'ppo.clipp'" in capsys.readouterr().err
    assert main(["train", f"model.path={tmp_path / 'missing'}", f"run.out_dir={tmp_path}"]) == 2
    assert not any(tmp_path.iterdir())
    from fastvlmrl.models import build_tiny_vlm

    model, _ = build_tiny_vlm(seed=0)
    model.save_pretrained(tmp_path / "no-processor")  # weights and config, no processor files
    capsys.readouterr()
    assert main(["train", f"model.path={tmp_path / 'no-processor'}", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "has no image processor" in err and len(err.strip().splitlines()) == 1
    assert main(["train", f"model.path={tmp_path}", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["train", "env.name=Chess", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    assert "unknown game 'Chess'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _comparable(records):
    """Metrics without the wall-clock ones."""
    return [{k: v for k, v in r.items() if not k.startswith(("timing/", "throughput/")) and k != "time"}
            for r in records]


GTR = ["env.name=Points24", "gtr.enabled=true", "gtr.truncate_off_path=true", "gtr.truncate_unsolvable=true"]
# a valid Points24 reply with a wrong thought (the tiny random model never writes valid JSON)
P24_REPLY = '{"cards": [1, 2, 3, 4], "current formula": "", "thoughts": "so I append \'1\'.", "action": "1"}'


def script_replies(monkeypatch, text: str) -> None:
    """Every reply the engine generates is `text` (tests/scripted.py)."""
    from fastvlmrl.engine import Engine

    from .scripted import scripted_generate

    monkeypatch.setattr(Engine, "generate_requests", scripted_generate(Engine.generate_requests, text))


@pytest.mark.parametrize("lora, extra", [
    (False, []), (True, []), (False, GTR),
    # (slow: CI's budget; the self-teacher's swap, state and KL have unit tests in tests/gtr)
    pytest.param(True, [*GTR, "gtr.corrector=self", "gtr.self_merge=2", "gtr.self_mode=kl"], marks=pytest.mark.slow),
], ids=["full", "lora", "gtr", "gtr-self-kl-lora"])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, monkeypatch, lora, extra):
    """With LoRA, dropout draws from torch's RNG during the update: its state must be restored too.
    With GTR (the replies scripted: valid JSON, wrong thoughts), its DAgger buffer, the cloning
    draws and the episodes it cut short."""
    import fastvlmrl.train as train_module

    if extra:
        script_replies(monkeypatch, P24_REPLY)

    args = [*TOY, "ppo.updates=4", "log.checkpoint_every=2", "sampling.temperature=1.0", f"model.lora={lora}",
            "model.lora_r=4", "model.lora_alpha=8", "model.lora_dropout=0.5", "log.samples_every=1", *extra]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=whole"]) == 0

    save = train_module.save_checkpoint

    def killed_after_step_2(run_dir, update, *a, **k):
        path = save(run_dir, update, *a, **k)
        if update == 2:
            # an update logged after the checkpoint, then the process dies: resume must redo it
            (run_dir / "metrics.jsonl").open("a").write(json.dumps({"update": 2, "env_steps": -1}) + "\n")
            (run_dir / "samples.jsonl").open("a").write(json.dumps({"update": 2, "output": "redone"}) + "\n")
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_step_2)
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=stopped"]) == 130  # interrupted
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    stopped = tmp_path / "stopped"
    assert not (stopped / "eval.json").exists()
    assert main(["train", "resume=" + str(stopped)]) == 0

    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("update") for r in resumed if "update" in r] == [0, 1, 2, 3]
    assert _comparable(resumed) == _comparable(whole)
    assert (stopped / "eval.json").read_text() == (tmp_path / "whole" / "eval.json").read_text()
    assert (stopped / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    assert (stopped / "curves.png").stat().st_size > 0
    if extra:
        updates = [r for r in whole if "update" in r]
        assert all(r["thought/valid_json_rate"] == 1.0 and r["gtr/format_reward_mean"] == 5.0 for r in updates)
        assert sum(r["gtr/truncated_episodes"] for r in updates) > 0
        if "gtr.corrector=self" not in extra:  # the oracle corrects the scripted thoughts; they are cloned
            assert updates[-1]["gtr/buffer_added"] > 0 and all(r["gtr/sft_steps"] > 0 for r in updates)
        if "gtr.self_mode=kl" in extra:  # the KL to the self-teacher (a merge of the last adapters)
            assert all(r["actor/kl_ref"] >= 0 for r in whole if "update" in r)
            assert any(r["actor/kl_ref"] > 0 for r in whole if "update" in r)


def test_a_run_killed_during_sft_resumes_from_its_sft_checkpoint_exactly(tmp_path, monkeypatch):
    """SFT is the longest phase of the tiny runs: its checkpoints (sft.checkpoint_every) resume it
    as if it had not stopped, then the run goes on as a new one would."""
    import fastvlmrl.train as train_module

    args = [*TOY, "sft.steps=6", "sft.checkpoint_every=2", "sampling.temperature=1.0"]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=whole"]) == 0
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir() if p.is_dir()) == ["sft_4", "step_2"]
    save = train_module.save_checkpoint

    def killed_after_sft_4(run_dir, update, *a, **k):
        path = save(run_dir, update, *a, **k)
        if k.get("name") == "sft_4":
            (run_dir / "metrics.jsonl").open("a").write(json.dumps({"sft/step": 4, "sft/loss": -1.0}) + "\n")
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_sft_4)
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=stopped"]) == 130
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    stopped = tmp_path / "stopped"
    assert (stopped / "checkpoints" / "latest").read_text() == "sft_4"
    assert main(["train", "resume=" + str(stopped)]) == 0
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert _comparable(resumed) == _comparable(whole)
    assert (stopped / "eval.json").read_text() == (tmp_path / "whole" / "eval.json").read_text()


def test_resume_with_lora_and_errors(tmp_path, capsys):
    args = [*TOY, "sft.steps=0", "ppo.updates=1", "model.lora=true", "model.lora_r=4", "model.lora_alpha=8"]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=lora"]) == 0
    run = tmp_path / "lora"
    # a finished run resumed with more updates planned continues with trainable adapters
    assert main(["train", f"resume={run}", "ppo.updates=2"]) == 0
    updates = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in x]
    assert [r["update"] for r in updates] == [0, 1] and updates[1]["actor/optimizer_steps"] > 0
    capsys.readouterr()
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=lora"]) == 2
    assert "already holds a run: continue it with `fastvlmrl train resume=" in capsys.readouterr().err
    assert main(["train", f"resume={tmp_path / 'nothing'}"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["train", f"resume={run}", "env.num_envs=4"]) == 2
    assert "only ppo.updates, eval., log., run.threads, ppo.micro_batch_size" in (err := capsys.readouterr().err)
    assert "can be changed, not env.num_envs" in err
    assert main(["train", f"resume={run}", "ppo.updates=1"]) == 2
    assert "ppo.updates=1 is below the 2 updates" in capsys.readouterr().err
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["train", f"resume={tmp_path / 'early'}"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    (tmp_path / "early" / "metrics.jsonl").write_text(json.dumps({"sft/step": 0, "sft/loss": 4.0}) + "\n")
    # a run that stopped before its first update does not block its corrected rerun
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=early"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert "sft/loss" not in (tmp_path / "early" / "metrics.jsonl").read_text()
    (tmp_path / "early2").mkdir()  # an update logged but no checkpoint: kept, and refused
    (tmp_path / "early2" / "metrics.jsonl").write_text(json.dumps({"update": 0, "env_steps": 4}) + "\n")
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=early2"]) == 2
    assert "stopped before its first checkpoint, so it cannot be resumed" in capsys.readouterr().err


def test_kl_penalty_and_entropy_bonus_train_and_resume(tmp_path):
    """Full fine-tuning keeps its KL reference in the run directory, so a resumed run penalises
    the distance to the same policy."""
    args = [*TOY, "ppo.updates=2", "log.checkpoint_every=1", "ppo.kl_coef=0.1", "ppo.entropy_coef=0.01"]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=kl"]) == 0
    run = tmp_path / "kl"
    assert (run / "reference" / "model.pt").is_file()
    assert main(["train", f"resume={run}", "ppo.updates=3"]) == 0
    updates = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in x]
    assert [r["update"] for r in updates] == [0, 1, 2]
    assert all("actor/kl_ref" in r and "actor/entropy" in r for r in updates)


@pytest.mark.parametrize("algo,level", [("grpo", "token"), ("gigpo", "sequence")])
def test_critic_free_algorithms_train(tmp_path, algo, level):
    args = [*TOY, "env.num_envs=4", "ppo.minibatch_size=4", f"algo.name={algo}", "algo.group_size=2",
            f"ppo.loss_level={level}", "ppo.clip_high=0.28", "sampling.temperature=1.0"]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=groups"]) == 0
    updates = [json.loads(x) for x in (tmp_path / "groups" / "metrics.jsonl").read_text().splitlines()
               if '"update"' in x]
    assert [r["update"] for r in updates] == [0, 1]
    assert all(r["actor/optimizer_steps"] > 0 and r["rollout/episodes"] == 4 for r in updates)
    assert "critic/explained_variance" not in updates[0]


def test_tiny_model_sizes_from_the_config_hold_through_lora_checkpoints(tmp_path):
    """model.tiny_image_size / tiny_patch_size size the built-in VLM; with LoRA a checkpoint holds
    only the adapters, so evaluating it rebuilds the base from the same keys."""
    from safetensors.torch import load_file

    args = [*TOY, "model.tiny_image_size=48", "model.tiny_patch_size=12", "model.lora=true", "model.lora_r=4",
            "model.lora_alpha=8", "log.checkpoint_every=1"]
    assert main(["train", *args, f"run.out_dir={tmp_path}", "run.name=sized"]) == 0
    run = tmp_path / "sized"
    checkpoint = sorted((run / "checkpoints").glob("step_*"))[-1]
    adapters = load_file(checkpoint / "model" / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in adapters)
    assert main(["eval", str(run)]) == 0
    from fastvlmrl.checkpoint import load_checkpoint
    from fastvlmrl.config import load_config

    policy, processor = load_checkpoint(load_config(run / "config.yaml"), checkpoint, "cpu", None)
    vision = policy.model.config.vision_config
    assert (vision.image_size, vision.patch_size) == (48, 12)
    assert processor.image_processor.crop_size["height"] == 48


def test_tiny_model_sizes_are_checked(capsys):
    assert main(["train", "model.tiny_image_size=100", "model.tiny_patch_size=16"]) == 2
    assert "model.tiny_image_size (100) must be a positive multiple of model.tiny_patch_size (16)" in capsys.readouterr().err
    assert main(["train", "model.tiny_image_size=448", "model.tiny_patch_size=8"]) == 2
    assert "3136 image tokens" in capsys.readouterr().err


def test_tiny_model_sizes_reach_the_trained_model(tmp_path):
    """Without LoRA the checkpoint is the whole model: the sizes it was trained at are saved."""
    import json as _json

    assert main(["train", *TOY, "model.tiny_image_size=48", "model.tiny_patch_size=12", "ppo.updates=1",
                 "log.checkpoint_every=1", f"run.out_dir={tmp_path}", "run.name=full"]) == 0
    checkpoint = sorted((tmp_path / "full" / "checkpoints").glob("step_*"))[-1]
    vision = _json.loads((checkpoint / "model" / "config.json").read_text())["vision_config"]
    assert (vision["image_size"], vision["patch_size"]) == (48, 12)
