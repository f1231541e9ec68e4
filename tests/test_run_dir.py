"""The run directory's life: a preset's run name does not collide, one process per run
directory, Ctrl-C / SIGTERM stop at a safe point with a checkpoint and one line saying how to
continue, and a run stopped before its first update is rerun in place."""

import json
import os
import signal

import pytest

from fastvlmrl.cli import main
from fastvlmrl.run_dir import RunLock, free_run_name

TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.updates=3", "ppo.num_steps=2", "env.num_envs=2",
       "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64",
       "log.checkpoint_every=0"]


def _updates(run):
    return [json.loads(x)["update"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in x]


def test_a_presets_second_run_gets_the_next_free_name(tmp_path, capsys):
    args = ["train", *TOY, "ppo.updates=1", "sft.steps=0", f"run.out_dir={tmp_path}"]
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "tiny-numberline" / "eval.json").is_file()
    assert (tmp_path / "tiny-numberline-2" / "eval.json").is_file()
    assert free_run_name(tmp_path, "tiny-numberline") == "tiny-numberline-3"
    assert main([*args, "run.name=tiny-numberline"]) == 2  # a name the user gave: refused, as before
    assert "already holds a run" in capsys.readouterr().err


def test_a_live_run_directory_is_refused(tmp_path, capsys):
    assert main(["train", *TOY, "ppo.updates=1", "sft.steps=0", f"run.out_dir={tmp_path}", "run.name=r"]) == 0
    run = tmp_path / "r"
    with RunLock(run):  # another process training there
        assert main(["train", f"resume={run}", "ppo.updates=2"]) == 2
        assert "is in use by a running fastvlmrl (pid" in capsys.readouterr().err
        assert free_run_name(tmp_path, "r") == "r-2"
    assert main(["train", f"resume={run}", "ppo.updates=2"]) == 0  # the lock went with its holder
    assert _updates(run) == [0, 1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_request_during_ppo_saves_a_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch, sig):
    import fastvlmrl.rl.ppo as ppo

    update, calls = ppo.ppo_update, []
    # What the process had before the run (SIG_IGN when started in the background by a shell).
    before = signal.getsignal(signal.SIGINT)

    def signalled_in_update_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)  # the user presses Ctrl-C (or SLURM sends SIGTERM) mid-update
        return update(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", signalled_in_update_2)
    assert main(["train", *TOY, f"run.out_dir={tmp_path}", "run.name=r"]) == 130
    run = tmp_path / "r"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastvlmrl train: stopped after update 2 of 3, checkpoint saved: continue with "
                   f"`fastvlmrl train resume={run}`"]
    assert (run / "checkpoints" / "latest").read_text() == "step_2" and _updates(run) == [0, 1]
    monkeypatch.setattr(ppo, "ppo_update", update)
    assert main(["train", f"resume={run}"]) == 0
    assert _updates(run) == [0, 1, 2] and (run / "eval.json").is_file()
    assert signal.getsignal(signal.SIGINT) == before  # handlers restored


def test_a_stop_during_sft_is_rerun_in_place(tmp_path, capsys, monkeypatch):
    import fastvlmrl.rl.sft as sft

    forward, calls = sft.forward_logp_and_values, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(*args, **kwargs)

    monkeypatch.setattr(sft, "forward_logp_and_values", signalled)
    args = ["train", *TOY, "sft.steps=4", "sft.checkpoint_every=0", f"run.out_dir={tmp_path}", "run.name=r"]
    assert main(args) == 130
    assert "stopped during SFT (step 1 of 4): the run holds no update" in capsys.readouterr().err
    monkeypatch.setattr(sft, "forward_logp_and_values", forward)
    assert main(args) == 0  # the same command again: nothing to resume, the directory is reused
    assert "reusing" in capsys.readouterr().out and _updates(tmp_path / "r") == [0, 1, 2]


def test_a_stop_during_sft_with_sft_checkpoints_resumes(tmp_path, capsys, monkeypatch):
    import fastvlmrl.rl.sft as sft

    forward, calls = sft.forward_logp_and_values, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(*args, **kwargs)

    monkeypatch.setattr(sft, "forward_logp_and_values", signalled)
    args = ["train", *TOY, "sft.steps=6", f"run.out_dir={tmp_path}", "run.name=r"]
    assert main(args) == 130
    run = tmp_path / "r"
    assert f"stopped during SFT (step 3 of 6), checkpoint saved: continue with `fastvlmrl train resume={run}`" \
        in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text() == "sft_3"
    monkeypatch.setattr(sft, "forward_logp_and_values", forward)
    assert main(["train", f"resume={run}"]) == 0 and _updates(run) == [0, 1, 2]


def test_a_second_ctrl_c_stops_at_once(tmp_path, capsys, monkeypatch):
    import fastvlmrl.rl.ppo as ppo

    update = ppo.ppo_update

    def pressed_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return update(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", pressed_twice)
    assert main(["train", *TOY, f"run.out_dir={tmp_path}", "run.name=r"]) == 130
    assert "interrupted" in capsys.readouterr().err
