"""`fastvlmrl render RUN_DIR`: a toy run's checkpoint plays episodes; every step becomes a panel
with the step, the action taken, its legality, the reward and the model's own text; each episode
ends with its outcome; bad paths and checkpoints are one line before anything is played."""

import pytest
from PIL import Image

from fastvlmrl.cli import main
from fastvlmrl.render import play_run

TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.updates=1", "ppo.num_steps=2", "env.num_envs=2",
       "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=2", "eval.start_states=false", "env.image_size=64"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TOY, f"run.out_dir={root}", "run.name=toy"]) == 0
    return root / "toy"


def test_panels_hold_the_models_words_and_outcomes(toy_run):
    panels, returns = play_run(toy_run, None, episodes=3, seed=5, max_steps=4)
    assert len(panels) == 3 and len(returns) == 3
    for episode, total in zip(panels, returns):
        steps, last = episode[:-1], episode[-1]
        assert 1 <= len(steps) <= 4
        for k, panel in enumerate(steps, 1):
            assert panel.header.startswith(f"step {k}: ") and "reward" in panel.header
            assert ("legal" in panel.header) and panel.frame.shape == (64, 64, 3)
            assert panel.body  # the model's text (12 tokens of an untrained model: not JSON)
        assert last.header.startswith(("end: won", "end: lost", "stopped after 4 steps"))
        assert f"return {total:g}" in last.header
    again, _ = play_run(toy_run, "step_1", episodes=3, seed=5, max_steps=4)  # greedy: the same episodes
    assert [[p.header for p in e] for e in again] == [[p.header for p in e] for e in panels]


def test_render_writes_a_contact_sheet_and_a_gif(toy_run, tmp_path, capsys):
    sheet, gif = tmp_path / "sheet.png", tmp_path / "ep.gif"
    assert main(["render", str(toy_run), "--episodes", "2", "--max-steps", "3", "--out", str(sheet)]) == 0
    assert "2 episodes" in capsys.readouterr().out
    width, height = Image.open(sheet).size
    assert height > 2 * 64 and width >= 2 * 64  # two rows of panels, each frame with text under it
    assert main(["render", str(toy_run), "--checkpoint", "step_1", "--max-steps", "2", "--out", str(gif)]) == 0
    assert Image.open(gif).n_frames >= 2


def test_render_errors_are_one_line(toy_run, tmp_path, capsys):
    for args, message in [
        ([str(toy_run), "--out", str(tmp_path / "ep.jpg")], "must end in .png or .gif"),
        ([str(toy_run), "--out", str(tmp_path / "missing" / "ep.png")], "does not exist"),
        ([str(toy_run), "--checkpoint", "step_9", "--out", str(tmp_path / "ep.png")], "has no checkpoint 'step_9' (it has: step_1)"),
        ([str(tmp_path), "--out", str(tmp_path / "ep.png")], "not a run directory"),
        ([str(toy_run), "--game", "NumberLine", "--out", str(tmp_path / "ep.png")], "not both"),
        (["--out", str(tmp_path / "ep.png")], "give a run directory"),
    ]:
        assert main(["render", *args]) == 2, args
        assert message in capsys.readouterr().err, args
