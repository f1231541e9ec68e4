import pytest

from fastvlmrl.config import Config, ConfigError, load_config, save_config


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.ppo.clip, cfg.ppo.value_coef, cfg.ppo.epochs) == (0.9, 0.95, 0.1, 0.5, 4)
    assert (cfg.ppo.lr, cfg.ppo.thought_coef, cfg.sampling.temperature, cfg.sampling.max_new_tokens) == (1e-5, 0.5, 0.2, 256)
    assert (cfg.model.lora_r, cfg.model.lora_alpha) == (128, 256)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  name: EZPoints\n  num_envs: 8\nppo:\n  clip: 0.2\nmodel:\n  path: null\n")
    cfg = load_config(path, ["ppo.clip=0.3", "prompt.cot=false", "sampling.temperature=0", "ppo.lr=3e-4"])
    assert cfg.env.name == "EZPoints" and cfg.env.num_envs == 8
    assert cfg.ppo.clip == 0.3 and cfg.prompt.cot is False and cfg.sampling.temperature == 0.0
    assert cfg.ppo.lr == 3e-4 and cfg.model.path is None
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.clipp=0.2", "unknown config key 'ppo.clipp'"),
        ("pp.clip=0.2", "unknown config section 'pp'"),
        ("clip=0.2", "keys look like section.name"),
        ("ppo.clip", "must look like key=value"),
        ("ppo.clip.low=0.1", "keys look like section.name"),
        ("pp.clip=0.2", "did you mean ppo"),
        ("model.path=7", "model.path '7' is not a directory"),
        ("ppo.epochs=two", "ppo.epochs must be an integer"),
        ("ppo.updates=-1", "ppo.updates must be 0 or more"),
        ("ppo.epochs=1.5", "ppo.epochs must be an integer"),
        ("prompt.cot=maybe", "prompt.cot must be true or false"),
        ("ppo.clip=-1", "ppo.clip must be positive"),
        ("env.name=Chess", "unknown game 'Chess'"),
        ("env.num_envs=0", "env.num_envs must be at least 1"),
        ("env.illegal_action=skip", "env.illegal_action must be"),
        ("model.path=/no/such/dir", "model.path '/no/such/dir' is not a directory"),
        ("sampling.top_p=0", "sampling.top_p must be in"),
        ("ppo.value_clip=-0.1", "ppo.value_clip must be 0 \\(no clip\\) or more"),
        ("ppo.value_lr=0", "ppo.value_lr must be positive"),
        ("ppo.reward_scale=0", "ppo.reward_scale must be positive"),
        ("ppo.critic_warmup_updates=-1", "ppo.critic_warmup_updates must be 0 or more"),
        ("algo.name=a2c", "algo.name must be ppo, grpo or gigpo"),
        ("ppo.loss_level=episode", "ppo.loss_level must be"),
        # values torch, the C envs or the loss rejected (or took) only after work was done
        ("sft.lr=-1", "sft.lr must be in \\(0, inf\\), got -1"),
        ("ppo.clip=50", "ppo.clip must be in \\(0, 1\\), got 50"),
        ("env.image_size=5000", "env.image_size must be in \\[32, 4096\\], got 5000"),
        ("env.image_size=16", "env.image_size must be in \\[32, 4096\\]"),
        ("ppo.value_coef=-5", "ppo.value_coef must be in \\[0, inf\\)"),
        ("ppo.thought_coef=-1", "ppo.thought_coef must be in \\[0, 1\\]"),
        ("ppo.thought_coef=1.5", "ppo.thought_coef must be in \\[0, 1\\]"),
        ("ppo.lr_end=-1", "ppo.lr_end must be in \\[0, 1e-05\\]"),
        ("ppo.lr_end=1", "ppo.lr_end must be in \\[0, 1e-05\\]"),
        ("sft.warmup_steps=-3", "sft.warmup_steps must be in \\[0, inf\\)"),
        ("ppo.clip_high=2", "ppo.clip_high must be in \\(0, 1\\)"),
        ("ppo.max_grad_norm=0", "ppo.max_grad_norm must be in \\(0, inf\\)"),
        ("run.seed=-1", "run.seed must be in \\[0, inf\\)"),
    ],
)
def test_bad_overrides_say_what_to_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("env:\n  colour: red\n")
    with pytest.raises(ConfigError, match="unknown config key 'env.colour'"):
        load_config(bad)


def test_override_values_are_read_as_yaml():
    cfg = load_config(None, ["ppo.clip=0.5", "prompt.cot=false", "ppo.value_lr=null", "run.name=a=b", "run.name=x=y"])
    assert (cfg.ppo.clip, cfg.prompt.cot, cfg.ppo.value_lr) == (0.5, False, None)
    assert cfg.run.name == "x=y"  # everything after the first '=' is the value; a later override wins


def test_values_are_read_as_a_user_means_them():
    cfg = load_config(None, ["ppo.epochs=2.0", "sft.demos=1e3", "ppo.value_lr=none", "ppo.clip = 0.3"])
    assert (cfg.ppo.epochs, cfg.sft.demos, cfg.ppo.value_lr, cfg.ppo.clip) == (2, 1000, None, 0.3)
    assert isinstance(cfg.ppo.epochs, int)
    with pytest.raises(ConfigError, match="model.lora must be true or false, got 2"):
        load_config(None, ["model.lora=2"])
    with pytest.raises(ConfigError, match="env.name must be a string, got True"):
        load_config(None, ["env.name=true"])


def test_the_reader_is_omegaconf(tmp_path):
    """Interpolations, as verl and Hydra users write them; an int where a float is asked; the
    file's values under the command line's."""
    cfg = load_config(None, ["ppo.lr=3e-4", "ppo.value_lr=${ppo.lr}", "ppo.value_coef=1"])
    assert cfg.ppo.value_lr == 3e-4 and isinstance(cfg.ppo.value_coef, float)
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  lr: 2.0e-4\n  value_lr: ${ppo.lr}\n")
    assert load_config(path).ppo.value_lr == 2e-4
    assert load_config(path, ["ppo.lr=1e-4"]).ppo.value_lr == 1e-4  # resolved after every override
    with pytest.raises(ConfigError, match="ppo.value_lr"):
        load_config(None, ["ppo.value_lr=${ppo.no_such_key}"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("ppo: 3\n", "ppo in config file .* must be a mapping of its keys"),
        ("ppo:\n  clip:\n    low: 0.1\n", "ppo.clip is one setting, not a section"),
        ("ppo:\n  clipp: 0.2\n", "unknown config key 'ppo.clipp' \\(did you mean ppo.clip\\?\\)"),
        ("colour: red\n", "unknown config section 'colour' in config file"),
        ("ppo:\n  epochs: [1, 2]\n", "ppo.epochs must be an integer"),
        ("- a\n- b\n", "must hold a mapping of sections"),
    ],
)
def test_bad_file_contents_are_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_critic_settings():
    cfg = load_config(None, ["ppo.value_lr=1e-3", "ppo.value_clip=0", "ppo.reward_scale=0.1"])
    assert (cfg.ppo.value_lr, cfg.ppo.value_clip, cfg.ppo.reward_scale) == (1e-3, 0.0, 0.1)
    assert load_config(None, ["ppo.value_lr=null"]).ppo.value_lr is None


def test_settings_that_would_be_silently_meaningless_are_refused():
    with pytest.raises(ConfigError, match="must be at least 2 and divide env.num_envs=32"):
        load_config(None, ["algo.name=grpo", "algo.group_size=3"])
    with pytest.raises(ConfigError, match="trains no critic"):
        load_config(None, ["algo.name=gigpo", "algo.group_size=4", "ppo.critic_warmup_updates=2"])
    # a preset's critic learning rate does not block a critic-free run of it (no value head is trained)
    assert load_config(None, ["algo.name=gigpo", "algo.group_size=4", "ppo.value_lr=1e-3"]).algo.name == "gigpo"
    with pytest.raises(ConfigError, match="adapters off"):
        load_config(None, ["ppo.kl_coef=0.1", "model.lora=true", "sft.steps=10"])
    assert load_config(None, ["ppo.kl_coef=0.1", "model.lora=true"]).ppo.kl_coef == 0.1


@pytest.mark.parametrize("overrides, message", [
    (["gtr.self_mode=ema"], "gtr.self_mode must be sft or kl"),
    (["gtr.corrector=self", "gtr.self_mode=kl", "ppo.kl_coef=0.1"], "one KL reference at a time"),
    (["gtr.self_density=0"], "gtr.self_density must be in"),
    (["gtr.self_merge=0"], "gtr.self_merge must be at least 1"),
    (["gtr.corrector=gpt"], "gtr.corrector must be oracle, http, vlm or self"),
    (["gtr.corrector=vlm"], "gtr.vlm_path '' is not a directory"),
    (["algo.name=grpo"], "gtr.enabled runs with algo.name=ppo"),
    (["prompt.cot=false"], "needs prompt.cot=true"),
    (["gtr.corrector=http"], "needs gtr.http_base_url"),
    (["gtr.buffer_size=0"], "gtr.buffer_size must be at least 1"),
    (["gtr.sft_coef=-1"], "gtr.sft_batch_size and gtr.sft_coef must be 0 or more"),
    (["gtr.corrector=http", "gtr.http_base_url=http://x/v1", "gtr.http_api_key_env=''", "gtr.http_timeout_s=0"],
     "gtr.http_timeout_s must be positive"),
    (["gtr.corrector=http", "gtr.http_base_url=http://x/v1", "gtr.http_api_key_env=NO_SUCH_KEY_SET"],
     "environment variable NO_SUCH_KEY_SET, which is not set"),
])
def test_gtr_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["gtr.enabled=true", "sft.steps=1", *overrides])
    load_config(None, ["sft.steps=1", *overrides])  # the GTR keys are checked only when it is enabled
