"""The rollout (engine, sampling) and the PPO forward (trainer) agree: before any update, the
ratio of every sample is 1, for prompts of different lengths, with λ-weighted outputs."""

import numpy as np
import torch

from fastvlmrl.config import Config
from fastvlmrl.engine import Engine
from fastvlmrl.engine.families import family_for
from fastvlmrl.envs.vector import make_batch
from fastvlmrl.kernels import ppo_clip_loss
from fastvlmrl.models import load_policy
from fastvlmrl.models.encoder import PromptEncoder
from fastvlmrl.rl.batch import forward_logp_and_values, pack
from fastvlmrl.rl.ppo import sequence_logp
from fastvlmrl.rl.rollout import Player
from fastvlmrl.rl.storage import RolloutStorage
from fastvlmrl.rl.token_weights import token_weights


def test_first_ratio_is_one_and_values_match():
    cfg = Config()
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 0.7, 24
    policy, processor = load_policy(None, lora=False, freeze_vision=False, dtype=torch.float32, device="cpu", seed=0)
    torch.nn.init.normal_(policy.value_head.net[-1].weight, std=0.5)  # non-zero values to compare
    encoder = PromptEncoder(processor, family_for(policy.model).mm_keys,
                            image_token_ids=(policy.hf_model.config.image_token_id,))
    envs = make_batch("Points24", 5, autoreset_mode="SameStep", height=96, width=96)
    player = Player(policy, Engine(policy.model, processor), encoder, envs, cot=True, style="short",
                    sampling=cfg.sampling, illegal_action="random", illegal_penalty=-1.0, seed=3)
    envs.reset(seed=0)
    obs, *_ = envs.step(np.array([0, 10, 10, 14, 16]))  # different formulas: prompts of different lengths
    storage = RolloutStorage(2, 5)
    policy.eval()
    player.collect(obs, storage, gamma=0.9)
    transitions = [t for row in storage.transitions for t in row]
    assert len({len(t.prompt_ids) for t in transitions}) > 1
    batch = pack(transitions, encoder.pad_id, "cpu")
    with torch.no_grad():
        bias = encoder.logit_bias(policy.lm_head_weight().shape[0], "cpu", torch.float32)
        token_logp, values = forward_logp_and_values(policy, batch, 0.7, bias)
    old = torch.stack([sequence_logp(t, 0.5) for t in transitions])
    out = ppo_clip_loss(token_logp, token_weights(batch.is_action, 0.5), batch.cu_seqlens, old,
                        torch.randn(len(transitions)))
    assert abs(float(out.ratio_mean) - 1) < 1e-4 and float(out.approx_kl) < 1e-6
    torch.testing.assert_close(values, torch.tensor([t.value for t in transitions]), atol=1e-4, rtol=1e-4)
    envs.close()


def test_first_ppo_ratio_is_one_with_lora_dropout():
    """RL4VLM's LoRA carries dropout (0.05; 0.5 here to make it plain): the engine samples without
    it, and the PPO forward must score the same policy."""
    from fastvlmrl.build import build_encoder, build_player
    from fastvlmrl.rl.ppo import make_optimizer, ppo_update

    cfg = Config()
    cfg.env.name, cfg.env.num_envs, cfg.env.image_size, cfg.prompt.style = "NumberLine", 4, 64, "short"
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 1.0, 16
    cfg.ppo.minibatch_size, cfg.ppo.epochs, cfg.ppo.lr = 8, 1, 1e-12
    policy, processor = load_policy(None, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.5, dtype=torch.float32,
                                    device="cpu", seed=0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # zero at init, which would hide the dropout on the adapters' input
            torch.nn.init.normal_(param, std=0.5)
    encoder = build_encoder(policy, processor, torch.float32)
    player = build_player(cfg, policy, processor, encoder)
    storage = RolloutStorage(2, 4)
    policy.eval()
    _, _, _, last_values = player.collect(player.reset(0), storage, gamma=0.9)
    storage.finish(last_values, 0.9, 0.95, normalize=True)
    bias = encoder.logit_bias(policy.lm_head_weight().shape[0], "cpu", torch.float32)
    metrics = ppo_update(policy, make_optimizer(policy, cfg.ppo), storage, cfg.ppo, temperature=1.0,
                         pad_id=encoder.pad_id, device="cpu", generator=torch.Generator().manual_seed(0), logit_bias=bias)
    assert metrics["actor/log_ratio_first_minibatch_max"] < 1e-4
    player.envs.close()
