import pytest

from fastvlmrl.cli import _config_from
from fastvlmrl.config import ConfigError, load_config
from fastvlmrl.configs import preset_path

GAMES = ["numberline", "ezpoints", "points24", "blackjack"]


@pytest.mark.parametrize("game", GAMES)
def test_tiny_presets_load(game):
    cfg = load_config(preset_path(f"tiny/{game}"))
    assert cfg.model.path is None and cfg.sft.steps > 0 and cfg.env.name.lower() == game


@pytest.mark.parametrize("game", GAMES)
def test_paper_presets_need_a_model_path_and_hold_the_papers_settings(game, tmp_path):
    with pytest.raises(ConfigError, match="model.path .* is not a directory"):
        load_config(preset_path(f"rl4vlm/{game}"))
    # What the check looks for in a model directory: a config of a supported family, an image processor.
    (tmp_path / "config.json").write_text('{"model_type": "llava_next"}')
    (tmp_path / "preprocessor_config.json").write_text("{}")
    cfg = load_config(preset_path(f"rl4vlm/{game}"), [f"model.path={tmp_path}"])
    assert (cfg.ppo.lr, cfg.ppo.lr_end, cfg.ppo.clip, cfg.ppo.epochs, cfg.ppo.minibatch_size) == (1e-5, 1e-9, 0.1, 4, 128)
    assert (cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.ppo.thought_coef, cfg.ppo.max_grad_norm) == (0.9, 0.95, 0.5, 0.01)
    assert cfg.model.lora and (cfg.model.lora_r, cfg.model.lora_alpha) == (128, 256)
    assert (cfg.sampling.temperature, cfg.sampling.max_new_tokens) == (0.2, 256)
    assert cfg.ppo.updates * cfg.ppo.num_steps * cfg.env.num_envs in (14848, 14336)  # ~15,000 env steps


def test_cli_picks_default_preset_files_and_overrides(tmp_path):
    class Args:
        settings = []

    assert _config_from(Args).run.name == "tiny-numberline"
    Args.settings = ["tiny/ezpoints", "ppo.updates=3"]
    cfg = _config_from(Args)
    assert cfg.env.name == "EZPoints" and cfg.ppo.updates == 3
    path = tmp_path / "mine.yaml"
    path.write_text("env:\n  name: Blackjack\n")
    Args.settings = [str(path), "env.num_envs=4"]
    cfg = _config_from(Args)
    assert cfg.env.name == "Blackjack" and cfg.env.num_envs == 4 and cfg.sft.steps == 0
    Args.settings = ["tiny/chess"]
    with pytest.raises(ValueError, match="unknown preset 'tiny/chess'"):
        _config_from(Args)


def test_gtr_presets(tmp_path, monkeypatch):
    cfg = load_config(preset_path("tiny/points24_gtr"))
    assert cfg.gtr.enabled and cfg.gtr.corrector == "oracle" and cfg.gtr.truncate_off_path
    plain = load_config(preset_path("tiny/points24"))
    assert (cfg.sft, cfg.ppo, cfg.sampling) == (plain.sft, plain.ppo, plain.sampling)  # the same budget as plain PPO
    turbo = load_config(preset_path("tiny/points24_turbo"))
    assert turbo.gtr.corrector == "self" and (turbo.sft, turbo.ppo) == (plain.sft, plain.ppo)
    (tmp_path / "config.json").write_text('{"model_type": "llava_next"}')
    (tmp_path / "preprocessor_config.json").write_text("{}")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # before any work
        load_config(preset_path("gtr/points24"), [f"model.path={tmp_path}"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    paper = load_config(preset_path("gtr/points24"), [f"model.path={tmp_path}"])
    rl4vlm = load_config(preset_path("rl4vlm/points24"), [f"model.path={tmp_path}"])
    assert paper.ppo == rl4vlm.ppo and paper.gtr.corrector == "http" and paper.gtr.format_reward == 5.0
    assert paper.sampling.repetition_penalty == 1.2 and paper.gtr.http_model == "gpt-4o"


def test_alfworld_presets(tmp_path):
    pytest.importorskip("alfworld")
    cfg = load_config(preset_path("tiny/alfworld"))
    assert cfg.env.name == "ALFWorld" and cfg.alfworld.data_path is None and cfg.ppo.thought_coef == 0.2
    with pytest.raises(ConfigError, match="alfworld.data_path: no ALFWorld data at /path/to"):
        load_config(preset_path("rl4vlm/alfworld"))
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava_next"}')
    (model / "preprocessor_config.json").write_text("{}")
    cfg = load_config(preset_path("rl4vlm/alfworld"), [f"alfworld.data_path={tmp_path}", f"model.path={model}"])
    assert (cfg.ppo.thought_coef, cfg.ppo.lr, cfg.ppo.lr_end, cfg.ppo.minibatch_size, cfg.alfworld.max_steps) == (
        0.2, 1e-5, 1e-9, 256, 50)
    assert cfg.ppo.updates * cfg.ppo.num_steps * cfg.env.num_envs == 11264  # RL4VLM: 12,000 env steps, 11 updates
