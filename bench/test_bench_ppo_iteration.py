"""A whole PPO iteration (rollout of N envs, GAE, update), the fast path vs the reference path,
measured in the same run on the same model with the same settings.

- **fast**: the trainer's own code: the C batch of games, one batched generation per env step
  through the engine (paged KV cache, the trainer's weights), `ppo_update` through
  `fused_linear_logprob` + `ppo_clip_loss` on mini-batches.
- **reference** (RL4VLM's way): the Python reference games stepped one at a time, Hugging Face
  `generate` one env at a time followed by a forward for the value and the output's log-prob, and
  an update one sample at a time (full `[L, V]` logits, eager `log_softmax` + `gather`, the eager
  PyTorch PPO loss of `fastvlmrl.kernels.reference`), gradients accumulated over the mini-batch.
  Both suppress the same special and image tokens when sampling and in the log-probs.

Both generate exactly `new_tokens` tokens per env step (EOS ignored), at temperature 1 from a
random-weight model, so they do the same work. Printed: env steps/s and generated tokens/s of the
whole iteration for each path (the fastest of 3 after a warm-up), and their ratio.

- CPU (default): the built-in tiny VLM, 32 envs x 2 steps, 64 new tokens, one epoch.
- GPU (``-m gpu``): CLIP ViT-L/14-336 + a TinyLlama-1.1B-sized decoder in bf16, 16 envs x 2 steps,
  128 new tokens.

    pytest bench/test_bench_ppo_iteration.py -q -p no:cacheprovider   (the table is in the 'bench report')
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fastvlmrl.build import build_encoder, build_player, logprob_temperature
from fastvlmrl.config import Config, PPOConfig, SamplingConfig
from fastvlmrl.envs import reference
from fastvlmrl.envs.parse import choose_action, parse_action
from fastvlmrl.envs.prompts import task_prompt
from fastvlmrl.kernels.reference import ppo_clip_loss as reference_ppo_loss
from fastvlmrl.models import TinyVLMConfig, build_tiny_vlm, load_policy, make_policy
from fastvlmrl.rl.gae import compute_gae
from fastvlmrl.rl.ppo import make_optimizer, ppo_update
from fastvlmrl.rl.storage import RolloutStorage
from fastvlmrl.rl.token_weights import action_token_weights

RESULTS: dict[str, dict[str, float]] = {}
ROUNDS = 3  # timed iterations per path after one warm-up; the fastest counts


@dataclass
class Case:
    name: str
    num_envs: int
    num_steps: int
    new_tokens: int
    device: str
    dtype: torch.dtype
    image_size: int = 300


CPU = Case("tiny VLM (cpu)", num_envs=32, num_steps=2, new_tokens=64, device="cpu", dtype=torch.float32)
GPU = Case("LLaVA layout, CLIP ViT-L/14-336 + 1.1B Llama (bf16)", num_envs=16, num_steps=2, new_tokens=128,
           device="cuda", dtype=torch.bfloat16)
# TinyLlama-1.1B's decoder behind CLIP ViT-L/14-336 (LLaVA-1.5's tower), with the character
# tokenizer: real-size vision and decoder compute without a tokenizer download. Not real size: the
# vocabulary (101 tokens), so the LM head and the full-vocabulary log_softmax the reference pays
# for are far smaller than at 32k-152k tokens; the fused log-prob's own gain is measured in
# bench/test_bench_kernels.py.
GPU_MODEL = TinyVLMConfig(image_size=336, patch_size=14, vision_hidden_size=1024, vision_layers=24, vision_heads=16,
                          vision_mlp_size=4096, hidden_size=2048, layers=22, heads=32, kv_heads=4, mlp_size=5632)


def _ppo_cfg(case: Case) -> PPOConfig:
    return PPOConfig(num_steps=case.num_steps, epochs=1, minibatch_size=case.num_envs, lr=1e-5)


def _policy(case: Case):
    if case.device == "cpu":
        return load_policy(None, dtype=case.dtype, device=case.device, seed=0)
    model, processor = build_tiny_vlm(GPU_MODEL, seed=0)
    return make_policy(model.to(case.device, case.dtype)), processor


def _setup(case: Case):
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.set_grad_enabled(True)
    policy, processor = _policy(case)
    return policy, processor, build_encoder(policy, processor, case.dtype)


def _record(name: str, path: str, seconds: float, env_steps: int, tokens: int) -> None:
    RESULTS.setdefault(name, {})[path] = {"s": seconds, "steps_per_s": env_steps / seconds,
                                          "tokens_per_s": tokens / seconds}


# -- fast path: the trainer's code --------------------------------------------------------------

def fast_iteration(case: Case):
    """The trainer's own assembly (fastvlmrl.build) and update; returns (iteration, close)."""
    policy, processor, encoder = _setup(case)
    cfg = Config()
    cfg.ppo = _ppo_cfg(case)
    cfg.sampling = SamplingConfig(temperature=1.0, max_new_tokens=case.new_tokens)
    cfg.env.name, cfg.env.num_envs, cfg.env.image_size = "NumberLine", case.num_envs, case.image_size
    cfg.prompt.style, cfg.run.seed = "full", 0
    player = build_player(cfg, policy, processor, encoder, ignore_eos=True)
    optimizer = make_optimizer(policy, cfg.ppo)
    bias = encoder.logit_bias(policy.lm_head_weight().shape[0], case.device, policy.lm_head_weight().dtype)
    obs = player.reset(0)

    def iteration():
        nonlocal obs
        storage = RolloutStorage(cfg.ppo.num_steps, case.num_envs)
        policy.eval()
        obs, stats, _, last_values = player.collect(obs, storage, cfg.ppo.gamma)
        storage.finish(last_values, cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.ppo.normalize_advantages)
        ppo_update(policy, optimizer, storage, cfg.ppo, temperature=logprob_temperature(cfg), pad_id=encoder.pad_id,
                   device=case.device, generator=torch.Generator().manual_seed(0), logit_bias=bias)
        return stats.tokens

    return iteration, player.envs.close


# -- reference path: RL4VLM's loop --------------------------------------------------------------

def reference_iteration(case: Case):
    policy, processor, encoder = _setup(case)
    cfg = _ppo_cfg(case)
    model, tokenizer = policy.model, encoder.tokenizer
    envs = [reference.NumberLine(height=case.image_size, width=case.image_size) for _ in range(case.num_envs)]
    obs, infos = zip(*[env.reset(seed=i) for i, env in enumerate(envs)])
    obs, infos = list(obs), list(infos)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    game = envs[0].game

    suppressed = list(encoder.suppressed_ids)  # as the fast path: special and image tokens are never sampled
    bias = encoder.logit_bias(policy.lm_head_weight().shape[0], case.device, torch.float32)

    def token_logp_and_value(prompt_ids, mm, out_ids):
        ids = torch.cat([prompt_ids, out_ids])[None].to(case.device)
        hidden = policy.hidden_states(ids, torch.ones_like(ids), **{k: v.to(case.device) for k, v in mm.items()})[0]
        logits = (hidden @ policy.lm_head_weight().T).float() + bias  # [L, V]: the whole vocabulary
        p = len(prompt_ids)
        token_logp = torch.log_softmax(logits[p - 1: -1], -1).gather(-1, out_ids[:, None].to(case.device))[:, 0]
        return token_logp, policy.value(hidden[p - 1][None]).float()

    def value_of(i):
        prompt_ids, mm = encoder.encode(obs[i], task_prompt(game, infos[i], cot=True))
        ids = prompt_ids[None].to(case.device)
        hidden = policy.hidden_states(ids, torch.ones_like(ids), **{k: v.to(case.device) for k, v in mm.items()})
        return float(policy.value(hidden[:, -1]).float()[0])

    def iteration():
        samples, tokens = [], 0
        rewards, values, dones = (torch.zeros(cfg.num_steps, case.num_envs) for _ in range(3))
        policy.eval()
        for t in range(cfg.num_steps):
            for i, env in enumerate(envs):
                prompt_ids, mm = encoder.encode(obs[i], task_prompt(game, infos[i], cot=True))
                with torch.no_grad():
                    out = model.generate(input_ids=prompt_ids[None].to(case.device),
                                         attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long,
                                                                   device=case.device),
                                         **{k: v.to(case.device) for k, v in mm.items()}, do_sample=True,
                                         temperature=1.0, top_p=1.0, max_new_tokens=case.new_tokens,
                                         min_new_tokens=case.new_tokens, pad_token_id=encoder.pad_id,
                                         suppress_tokens=suppressed)
                    out_ids = out[0, len(prompt_ids):].cpu()
                    weights = torch.tensor(action_token_weights(tokenizer, out_ids.tolist(), cfg.thought_coef))
                    token_logp, value = token_logp_and_value(prompt_ids, mm, out_ids)
                    logp = (token_logp * weights.to(case.device)).sum()
                tokens += len(out_ids)
                parsed = parse_action(game, tokenizer.decode(out_ids, skip_special_tokens=True))
                action, extra = choose_action(parsed, game.num_actions, rng, "random", -1.0)
                obs[i], reward, terminated, truncated, infos[i] = env.step(action)
                if terminated or truncated:
                    obs[i], infos[i] = env.reset()
                rewards[t, i], values[t, i], dones[t, i] = reward + extra, float(value), terminated or truncated
                samples.append((prompt_ids, mm, out_ids, weights, float(logp), float(value)))
        with torch.no_grad():
            last_values = torch.tensor([value_of(i) for i in range(case.num_envs)])
        advantages, returns = compute_gae(rewards, values, dones, last_values, cfg.gamma, cfg.gae_lambda)
        advantages, returns = advantages.flatten(), returns.flatten()  # step-major, as samples
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy.train()
        for _ in range(cfg.epochs):
            for start in range(0, len(samples), cfg.minibatch_size):
                optimizer.zero_grad(set_to_none=True)
                chunk = range(start, min(start + cfg.minibatch_size, len(samples)))
                for j in chunk:  # one sample at a time, gradient accumulation
                    prompt_ids, mm, out_ids, weights, old_logp, old_value = samples[j]
                    token_logp, value = token_logp_and_value(prompt_ids, mm, out_ids)
                    out = reference_ppo_loss(
                        token_logp, weights.to(case.device), torch.tensor([0, len(out_ids)], device=case.device),
                        torch.tensor([old_logp], device=case.device), advantages[j:j + 1].to(case.device),
                        clip_eps=cfg.clip, ratio_cap=cfg.ratio_cap, values=value,
                        old_values=torch.tensor([old_value], device=case.device),
                        returns=returns[j:j + 1].to(case.device), value_clip=cfg.value_clip,
                        value_coef=cfg.value_coef)
                    (out.loss / len(chunk)).backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
        return tokens

    return iteration, lambda: None


def _sync(case: Case) -> None:
    if case.device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, report, case: Case, path: str, prepare) -> None:
    """Build the path's model and loop, warm it up once (allocations, kernel compilation, CUDA-graph
    capture), then time ROUNDS iterations: pytest-benchmark's table and the printed ratio both
    show one iteration, and the ratio uses the fastest."""
    iteration, close = prepare(case)
    iteration()
    times, tokens = [], []

    def timed():
        _sync(case)
        start = time.perf_counter()
        tokens.append(iteration())
        _sync(case)
        times.append(time.perf_counter() - start)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
    close()
    best = min(range(len(times)), key=times.__getitem__)
    seconds, steps = times[best], case.num_envs * case.num_steps
    _record(case.name, path, seconds, steps, tokens[best])
    benchmark.extra_info.update({"env_steps_per_s": steps / seconds, "tokens_per_s": tokens[best] / seconds})
    # Each path's own line first: a run that stops before the pair is complete still shows it.
    report(f"PPO iteration, {case.name}, {path} path: {seconds:.2f} s, {steps / seconds:.2f} env steps/s, "
           f"{tokens[best] / seconds:.0f} tokens/s")
    paths = RESULTS[case.name]
    if set(paths) == {"fast", "reference"}:  # the second of the pair: print the comparison
        fast, ref = paths["fast"], paths["reference"]
        benchmark.extra_info["fast_over_reference"] = fast["steps_per_s"] / ref["steps_per_s"]
        report(f"PPO iteration, {case.name}: {case.num_envs} envs x {case.num_steps} steps, "
               f"{case.new_tokens} new tokens per step (fastest of {ROUNDS} after a warm-up)",
               f"{'path':<10} {'seconds':>9} {'env steps/s':>12} {'tokens/s':>10}",
               *(f"{label:<10} {r['s']:>9.2f} {r['steps_per_s']:>12.2f} {r['tokens_per_s']:>10.0f}"
                 for label, r in (("fast", fast), ("reference", ref))),
               f"ratio (fast / reference): {fast['steps_per_s'] / ref['steps_per_s']:.2f}x")


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_ppo_iteration_cpu(benchmark, report, path):
    _run(benchmark, report, CPU, path, fast_iteration if path == "fast" else reference_iteration)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fast", "reference"])
def test_ppo_iteration_gpu(benchmark, report, path):
    _run(benchmark, report, GPU, path, fast_iteration if path == "fast" else reference_iteration)
