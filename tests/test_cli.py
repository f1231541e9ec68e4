import subprocess
import sys

import pytest

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
    assert err == ["fastvlmrl envs: error: unknown game 'Chess': choose one of NumberLine, EZPoints, Points24, Blackjack, ALFWorld"]
    assert main(["envs", "--game", "ALFWorld"]) == 2
    assert "is a text game" in capsys.readouterr().err


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


def test_the_cli_tells_the_keys(capsys):
    """`fastvlmrl config` lists every key with its value and doc; --print-config is a dry run;
    --version; near-miss keys and `key value` get hints."""
    import dataclasses

    from fastvlmrl.config import Config

    assert main(["config", "ppo.clip=0.3"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [line.split(":")[0] for line in out]
    cfg = Config()
    assert keys == [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]
    assert "ppo.clip: 0.3  # PPO ratio clip epsilon" in out
    assert all("  # " in line for line in out)  # every key has its one-line doc
    assert main(["train", "--print-config", "run.out_dir=/nonexistent/never/made"]) == 0
    assert "run.name: tiny-numberline" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("fastvlmrl ")
    for args, message in [
        (["train", "ppo.clipp=0.2"], "unknown config key 'ppo.clipp' (did you mean ppo.clip?)"),
        (["train", "ppo.clip", "0.2"], "did you mean ppo.clip=0.2?"),
        (["train", "ppo.clip=0.2", "0.3"], "'0.3' is not key=value"),
        (["train", "tiny/chess"], "unknown preset 'tiny/chess'"),
    ]:
        assert main(args) == 2
        assert message in capsys.readouterr().err, args


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "fastvlmrl", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("fastvlmrl ")


def test_a_closed_pipe_is_not_a_traceback():
    """`fastvlmrl config | head -1`: the reader leaves early; the CLI stops quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "fastvlmrl", "config"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes: its print meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()
