"""`fastvlmrl export`: a run's checkpoint as a plain Hugging Face model directory that
AutoModelForImageTextToText loads without fastvlmrl and that generates the run's greedy output;
LoRA adapters merged; the value head beside it; clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from fastvlmrl.build import build_encoder
from fastvlmrl.checkpoint import latest_checkpoint, load_checkpoint
from fastvlmrl.cli import main
from fastvlmrl.config import load_config
from fastvlmrl.rl.sft import make_demos

TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.updates=1", "ppo.num_steps=2", "env.num_envs=2",
       "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64",
       "ppo.lr=1e-2"]


@pytest.mark.parametrize("lora", [False, True])
def test_export_loads_in_plain_transformers_and_generates_the_runs_greedy_output(tmp_path, capsys, lora):
    extra = ["model.lora=true", "model.lora_r=4", "model.lora_alpha=8", "sft.steps=0"] if lora else []
    assert main(["train", *TOY, *extra, f"run.out_dir={tmp_path}", "run.name=r"]) == 0
    run, out = tmp_path / "r", tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert "AutoModelForImageTextToText.from_pretrained" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged, a plain model
    cfg = load_config(run / "config.yaml")
    policy, processor = load_checkpoint(cfg, latest_checkpoint(run), "cpu", torch.float32)
    policy.eval()
    encoder = build_encoder(policy, processor, torch.float32)
    for demo in make_demos("NumberLine", 3, image_size=64, num_envs=3, style="short"):
        ids, mm = encoder.encode(demo.frame, demo.task)
        inputs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long), **mm}
        with torch.no_grad():
            ours = policy.model.generate(**inputs, max_new_tokens=12, do_sample=False)
            theirs = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        assert torch.equal(ours, theirs)
    head = load_file(out / "value_head.safetensors")
    assert all(torch.equal(head[k], v) for k, v in policy.value_head.state_dict().items())
    meta = json.loads((out / "fastvlmrl_export.json").read_text())
    assert meta["checkpoint"] == "step_1" and meta["lora_merged"] is lora


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", *TOY, "sft.steps=0", f"run.out_dir={tmp_path}", "run.name=r"]) == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "full")]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "out"), "--checkpoint", "step_5"]) == 2
    assert "has no checkpoint 'step_5'" in capsys.readouterr().err
