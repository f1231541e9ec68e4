import subprocess
import sys

from PIL import Image

from fastvlmrl.cli import main


def test_envs_prints_oracle_statistics(capsys):
    assert main(["envs", "--game", "ezpoints", "--episodes", "100", "--num-envs", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["game", "success", "return"]
    name, success, ret = out[1].split()[:3]
    assert name == "EZPoints" and float(success) == 1.0 and float(ret) == 10.0


def test_envs_random_policy_runs(capsys):
    assert main(["envs", "--game", "Blackjack", "--policy", "random", "--episodes", "50"]) == 0


def test_unknown_game_is_one_clear_line(capsys):
    assert main(["envs", "--game", "Chess"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastvlmrl envs: error: unknown game 'Chess': choose one of NumberLine, EZPoints, Points24, Blackjack"]


def test_render_writes_png_and_gif(tmp_path, capsys):
    png, gif = tmp_path / "ep.png", tmp_path / "ep.gif"
    assert main(["render", "--game", "NumberLine", "--seed", "1", "--size", "96", "--out", str(png)]) == 0
    assert main(["render", "--game", "Points24", "--seed", "1", "--size", "96", "--out", str(gif)]) == 0
    assert Image.open(png).size[1] > 96
    assert Image.open(gif).n_frames >= 1
    assert main(["render", "--game", "NumberLine", "--out", str(tmp_path / "ep.jpg")]) == 2


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "fastvlmrl.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "envs" in result.stdout and "render" in result.stdout
