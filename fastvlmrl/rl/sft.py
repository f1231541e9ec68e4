"""SFT warm start (RL4VLM fine-tunes on SFT data before RL): oracle demonstrations played on the
C batch, optionally noisy (imperfect: with probability `noise` the reply's action is replaced by
a random one, its thought left as it was), and cross-entropy on the reply tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastvlmrl.envs.oracles import oracle_step
from fastvlmrl.envs.prompts import task_prompt
from fastvlmrl.envs.vector import make_batch
from fastvlmrl.rl.batch import forward_logp_and_values, pack
from fastvlmrl.rl.storage import Transition


@dataclass
class Demo:
    frame: np.ndarray  # uint8 [H, W, 3]: what the model sees
    task: str  # the task prompt for that frame
    reply: str  # the demonstrated reply (JSON)


def make_demos(game: str, count: int, *, noise: float = 0.0, seed: int = 0, cot: bool = True, style: str = "full",
               image_size: int = 300,
               face_cards_as_10: bool = True, num_envs: int = 64) -> list[Demo]:
    """`count` demonstrations from the oracle, following the demonstrated (possibly noisy) actions."""
    envs = make_batch(game, num_envs, height=image_size, width=image_size, autoreset_mode="SameStep",
                      face_cards_as_10=face_cards_as_10)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    demos: list[Demo] = []
    actions = np.zeros(num_envs, np.int64)
    while len(demos) < count:
        for i in range(num_envs):
            info = envs.describe(i)
            step = oracle_step(envs.game, info, cot=cot)
            action, reply = step.action, step.text
            if rng.random() < noise:
                action = int(rng.integers(envs.game.num_actions))
                fields = json.loads(reply)
                fields["action"] = envs.game.actions[action]
                reply = json.dumps(fields)
            demos.append(Demo(obs[i], task_prompt(envs.game, info, cot=cot, style=style), reply))
            actions[i] = action
        obs, *_ = envs.step(actions)
    envs.close()
    return demos[:count]


def demo_transition(encoder, demo: Demo) -> Transition:
    """A demonstration as a packed-batch sample: the prompt, and the reply plus EOS as the output
    (no rollout log-probs or value: SFT's loss is the cross-entropy of every reply token)."""
    prompt_ids, mm = encoder.encode(demo.frame, demo.task)
    reply_ids = encoder.reply_ids(demo.reply)
    return Transition(prompt_ids, mm, reply_ids, logprobs=torch.zeros(len(reply_ids)),
                      is_action=torch.ones(len(reply_ids), dtype=torch.bool), value=0.0)


def sft_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def sft_train(policy, encoder, demos: list[Demo], cfg, *, device, seed: int = 0, log=None,
              logit_bias: torch.Tensor | None = None) -> list[float]:
    """cfg.steps steps of cross-entropy on the replies (prompt tokens carry no loss); losses per step.
    logit_bias: see rl.batch.forward_logp_and_values (tokens the sampler never emits)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    rng = np.random.default_rng(seed)
    losses = []
    policy.train()
    bar = tqdm(range(cfg.steps), desc="sft", leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = sft_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        picks = rng.choice(len(demos), size=min(cfg.batch_size, len(demos)), replace=False)
        batch = pack([demo_transition(encoder, demos[i]) for i in picks], encoder.pad_id, device)
        token_logp, _ = forward_logp_and_values(policy, batch, 1.0, logit_bias)
        loss = -token_logp.mean()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log is not None:
            log(step, losses[-1])
    return losses
