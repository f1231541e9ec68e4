"""Checkpoints that survive faults: a manifest written last and verified on load, a corrupt
latest checkpoint reported in one line with the previous one used, only the newest K kept, and a
full disk failing the checkpoint being written cleanly."""

import errno
import json

import pytest

from fastvlmrl import checkpoint as ckpt
from fastvlmrl.cli import main

TOY = ["sft.steps=0", "ppo.updates=3", "ppo.num_steps=2", "env.num_envs=2", "ppo.minibatch_size=2", "ppo.epochs=1",
       "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64", "log.checkpoint_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TOY, f"run.out_dir={root}", "run.name=r"]) == 0
    return root / "r"


def test_every_checkpoint_has_a_manifest_that_verifies(run):
    assert [p.name for p in ckpt.checkpoints(run)] == ["step_1", "step_2", "step_3"]
    for path in ckpt.checkpoints(run):
        manifest = json.loads((path / "manifest.json").read_text())
        assert {"trainer_state.pt", "value_head.safetensors"} <= set(manifest)
        assert any(name.startswith("model/") for name in manifest)
        assert ckpt.verify_checkpoint(path) is None


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    state = copy / "checkpoints" / "step_3" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a torn write
    assert ckpt.latest_checkpoint(copy).name == "step_2"
    assert "checkpoint step_3 of" in capsys.readouterr().err
    assert main(["eval", str(copy)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unusable (trainer_state.pt has 100 bytes" in err[0] and "using step_2" in err[0]
    assert (copy / "eval" / "step_2_2ep.json").is_file()
    assert main(["eval", str(copy), "--checkpoint", "step_3"]) == 2
    assert "checkpoint step_3 of" in capsys.readouterr().err
    model = copy / "checkpoints" / "step_2" / "value_head.safetensors"
    model.write_bytes(b"x" * model.stat().st_size)  # same size, other bytes
    assert ckpt.verify_checkpoint(model.parent) == "value_head.safetensors does not match its checksum"
    assert ckpt.latest_checkpoint(copy).name == "step_1"


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    assert main(["train", *TOY, "ppo.updates=4", "log.keep_checkpoints=2", f"run.out_dir={tmp_path}", "run.name=k"]) == 0
    assert [p.name for p in ckpt.checkpoints(tmp_path / "k")] == ["step_3", "step_4"]


def test_a_full_disk_fails_the_checkpoint_cleanly(tmp_path, capsys, monkeypatch):
    save = ckpt.torch.save

    def full_disk_at_update_2(obj, path, *args, **kwargs):
        if "step_2" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk_at_update_2)
    assert main(["train", *TOY, f"run.out_dir={tmp_path}", "run.name=full"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full: checkpoint step_2" in err and "the previous one is intact" in err
    root = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]  # no partial folder left
    monkeypatch.setattr(ckpt.torch, "save", save)
    assert main(["train", f"resume={tmp_path / 'full'}"]) == 0  # space freed: the run continues
