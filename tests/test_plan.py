"""`fastvlmrl plan`: parameters counted exactly, the KV cache the engine really allocates, the
activation formula against what autograd keeps, AnyRes image tokens as transformers counts them,
and the rl4vlm presets within one 80 GB GPU."""

import types

import pytest
import torch
from fastvlmrl.configs import preset_path

from fastvlmrl.cli import main
from fastvlmrl.config import load_config
from fastvlmrl.plan import (
    GiB,
    _layer_activation_bytes,
    estimate,
    estimated_image_tokens,
    model_shape,
    plan_run,
)


def test_the_tiny_vlm_is_counted_exactly_and_its_kv_cache_is_the_engines():
    from fastvlmrl.build import build_encoder, build_player
    from fastvlmrl.models import load_policy

    cfg = load_config(None, ["env.num_envs=5", "model.dtype=float32", "sampling.max_new_tokens=50",
                             "prompt.style=short", "env.image_size=64"])
    plan = plan_run(cfg)
    torch.manual_seed(0)
    policy, processor = load_policy(None, seed=0, lora=True, lora_r=cfg.model.lora_r, lora_alpha=8)
    base = policy.hf_model
    lora = sum(p.numel() for n, p in base.named_parameters() if "lora_" in n)
    assert plan.shape.params == sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    assert plan.shape.lora_params == lora
    assert plan.shape.value_head_params == sum(p.numel() for p in policy.value_head.parameters())
    policy, processor = load_policy(None, seed=0)
    player = build_player(cfg, policy, processor, build_encoder(policy, processor, torch.float32))
    try:
        assert plan.rollout["KV cache"] == player.engine.kv.nbytes
    finally:
        player.envs.close()


@pytest.mark.parametrize("hidden, mlp, kv_heads, heads", [(128, 512, 4, 4), (256, 768, 2, 8)])
def test_the_activation_formula_is_what_autograd_keeps(hidden, mlp, kv_heads, heads):
    """A Llama layer's saved tensors (parameters aside), per token, within 15% of the estimate."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaDecoderLayer,
        LlamaRotaryEmbedding,
    )

    config = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    layer, rope = LlamaDecoderLayer(config, 0), LlamaRotaryEmbedding(config)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    tokens = 128
    x = torch.randn(1, tokens, hidden, requires_grad=True)
    positions = torch.arange(tokens)[None]
    saved = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        layer(x, attention_mask=None, position_embeddings=rope(x, positions), position_ids=positions)
    shape = types.SimpleNamespace(hidden=hidden, intermediate=mlp, kv_dim=kv_heads * hidden // heads)
    assert sum(saved.values()) / tokens == pytest.approx(_layer_activation_bytes(shape, 4, lora=False), rel=0.15)


def test_anyres_image_tokens_are_counted_as_transformers_counts_them():
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    from fastvlmrl.architectures import llava_16_mistral_7b

    config = llava_16_mistral_7b()
    for side in (64, 300, 336, 500, 700):
        stand_in = types.SimpleNamespace(image_processor=types.SimpleNamespace(
            image_grid_pinpoints=config.image_grid_pinpoints), patch_size=14, num_additional_image_tokens=1)
        stand_in._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, stand_in)
        theirs = LlavaNextProcessor._get_number_of_features(stand_in, side, side, 336, 336) - 1  # default: no CLS
        assert estimated_image_tokens(config, side) == theirs, side


def test_checkpointing_and_micro_batches_shrink_the_update():
    from fastvlmrl.architectures import llava_16_mistral_7b

    shape = model_shape(llava_16_mistral_7b(), 128, "llava")
    assert 7.5e9 < shape.params < 7.6e9  # llava-v1.6-mistral-7b-hf: 7.57 B
    cfg = load_config(preset_path("rl4vlm/points24"), ["ppo.micro_batch_size=4", "model.gradient_checkpointing=false"],
                      check_model_files=False)
    whole = estimate(cfg, shape, 1500)
    cfg.ppo.micro_batch_size = 2
    half = estimate(cfg, shape, 1500)
    cfg.model.gradient_checkpointing = True
    checkpointed = estimate(cfg, shape, 1500)
    act = lambda p: sum(v for k, v in p.update.items() if k.startswith("activations"))
    assert act(half) == pytest.approx(act(whole) / 2)
    assert act(checkpointed) < act(half) / 10
    assert checkpointed.rollout_peak == half.rollout_peak  # the rollout does not depend on the update's settings


def test_the_vision_tower_counts_what_it_runs_when_it_trains():
    from fastvlmrl.architectures import qwen2_vl_7b
    from fastvlmrl.plan import vision_tokens_per_frame

    config = qwen2_vl_7b()
    assert vision_tokens_per_frame(config, 300) == 4 * (estimated_image_tokens(config, 300) - 2)  # before the merge
    shape = model_shape(config, 128, "qwen")
    shape.vision_tokens = vision_tokens_per_frame(config, 300)
    cfg = load_config(preset_path("rl4vlm/points24"), ["model.lora=false", "model.freeze_vision=false",
                                                       "model.gradient_checkpointing=false"], check_model_files=False)
    trains = estimate(cfg, shape, 500).update["vision activations"]
    cfg.model.gradient_checkpointing = cfg.model.gradient_checkpointing_vision = True
    checkpointed = estimate(cfg, shape, 500).update["vision activations"]
    assert checkpointed < trains / 5
    cfg.model.freeze_vision = True
    assert "vision activations" not in estimate(cfg, shape, 500).update


def test_the_sft_phase_is_planned_before_the_engine_exists():
    cfg = load_config(None, ["sft.steps=10", "sft.batch_size=64", "ppo.minibatch_size=8"])
    plan = plan_run(cfg)
    assert plan.sft and not any("KV" in k for k in plan.sft)
    assert plan.sft_peak > plan.update_peak - plan.update["KV cache (kept from the rollout)"]


@pytest.mark.parametrize("game", ["numberline", "ezpoints", "points24", "blackjack"])
def test_the_rl4vlm_presets_fit_one_80_gb_gpu_with_lora(game):
    cfg = load_config(preset_path(f"rl4vlm/{game}"), check_model_files=False)
    assert cfg.model.lora and cfg.model.gradient_checkpointing and cfg.ppo.micro_batch_size
    plan = plan_run(cfg, "llava-1.6-mistral-7b")
    assert plan.peak < 0.6 * 80 * GiB  # a margin for the estimate's error
    assert 7.5e9 < plan.shape.params < 7.6e9 and plan.shape.vision_tokens == 3 * 577  # 300 px: base + 2 crops


def test_the_plan_command(capsys):
    assert main(["plan", "rl4vlm/points24", "--model", "qwen2-vl-2b", "--gpu-gb", "8", "80"]) == 0
    out = capsys.readouterr().out
    assert "8 GB GPU  does not fit" in out and "80 GB GPU  fits" in out and "KV cache" in out
    assert main(["plan", "rl4vlm/points24", "--model", "gpt-5"]) == 2
    assert "unknown architecture 'gpt-5'" in capsys.readouterr().err
    assert main(["plan", "rl4vlm/points24"]) == 2  # the preset's model.path is a placeholder
    assert "model.path" in capsys.readouterr().err
    assert main(["plan", "ppo.micro_batch_size=4"]) == 0  # the tiny VLM, measured with its processor
    assert "measured with the model's processor" in capsys.readouterr().out


def test_processes_and_fsdp_divide_what_they_share():
    from fastvlmrl.models import load_policy
    from fastvlmrl.plan import _layer_params

    base = ["env.num_envs=8", "ppo.minibatch_size=8", "model.dtype=float32", "prompt.style=short", "env.image_size=64"]
    one = plan_run(load_config(None, base))
    four = plan_run(load_config(None, base), processes=4)
    assert four.rollout["KV cache"] == plan_run(load_config(None, [*base, "env.num_envs=2"])).rollout["KV cache"]
    assert (one.micro_batch, four.micro_batch) == (8, 2)  # a process's share of each mini-batch
    assert four.parts == one.parts  # replicated: every process holds it all
    sharded = plan_run(load_config(None, [*base, "model.fsdp=true"]), processes=4)
    assert sum(sharded.parts.values()) == pytest.approx(sum(one.parts.values()) / 4)
    assert sharded.rollout["whole weights gathered for generation"] == next(iter(one.parts.values()))
    assert sharded.peak < one.peak
    # a decoder layer's parameters as counted (its norms aside), against the tiny VLM's own
    policy, _ = load_policy(None, seed=0)
    layer = policy.hf_model.model.language_model.layers[0]
    counted = sum(p.numel() for n, p in layer.named_parameters() if "norm" not in n)
    assert _layer_params(one.shape) == counted
    assert main(["plan", "model.fsdp=true", "--processes", "4"]) == 0
