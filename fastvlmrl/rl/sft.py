"""SFT warm start (RL4VLM fine-tunes on SFT data before RL): oracle demonstrations played on the
C batch, optionally noisy (imperfect: with probability `noise` a demonstration decides a random
action, its thought reasoning to that action while still reading the frame truthfully:
`Game.reasoned`), encoded once, and cross-entropy on the reply tokens.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fastvlmrl.console import progress
from fastvlmrl.distributed import current as current_world
from fastvlmrl.envs.oracles import oracle_step
from fastvlmrl.envs.prompts import task_prompt
from fastvlmrl.envs.vector import make_batch
from fastvlmrl.rl.batch import forward_logp_and_values, micro_batches, pack
from fastvlmrl.rl.storage import Transition
from fastvlmrl.sharding import is_sharded, load_optimizer_state, lockstep


@dataclass
class Demo:
    frame: np.ndarray | None  # uint8 [H, W, 3]: what the model sees (None: a text game's prompt)
    task: str  # the task prompt for that frame
    reply: str  # the demonstrated reply (JSON)
    info: dict  # the env's state as its info dict (what the oracle read)


def demo_stream(game: str, count: int, *, noise: float = 0.0, seed: int = 0, cot: bool = True, style: str = "full",
                image_size: int = 300, face_cards_as_10: bool = True, num_envs: int = 64) -> Iterator[Demo]:
    """`count` demonstrations from the oracle, one at a time, following the demonstrated (possibly
    noisy) actions. A stream: the frames need not all be held at once (8192 frames of 300x300
    are 2.2 GB)."""
    envs = make_batch(game, num_envs, height=image_size, width=image_size, autoreset_mode="SameStep",
                      face_cards_as_10=face_cards_as_10)
    try:
        rng = np.random.default_rng(seed)
        obs, _ = envs.reset(seed=seed)
        made = 0
        actions = np.zeros(num_envs, np.int64)
        while made < count:
            for i in range(min(num_envs, count - made)):
                info = envs.describe(i)
                if rng.random() < noise:
                    step = oracle_step(envs.game, info, cot=cot, action=int(rng.integers(envs.game.num_actions)))
                else:
                    step = oracle_step(envs.game, info, cot=cot)
                actions[i] = step.action
                made += 1
                yield Demo(obs[i], task_prompt(envs.game, info, cot=cot, style=style), step.text, info)
            obs, *_ = envs.step(actions)
    finally:
        envs.close()


def text_demo_stream(envs, game, count: int, *, noise: float = 0.0, seed: int = 0, cot: bool = True,
                     style: str = "full") -> Iterator[Demo]:
    """`count` demonstrations of a text game (ALFWorld) from the oracle its envs describe, played
    on `envs` (closed at the end); with probability `noise` a demonstration takes a random legal
    action, its thought reasoning to it (`Game.reasoned`). Frames are None: the prompts are text."""
    import json

    try:
        rng = np.random.default_rng(seed)
        envs.reset(seed=seed)
        made = 0
        while made < count:
            actions = np.zeros(envs.num_envs, np.int64)
            for i in range(envs.num_envs):
                info = envs.describe(i)
                legal = game.legal_actions(info)
                if rng.random() < noise:
                    fields, action, thoughts = game.reasoned(info, legal[int(rng.integers(len(legal)))])
                else:
                    fields, action, thoughts = game.oracle(info)
                actions[i] = legal.index(action)
                if made < count:
                    reply = {**fields, "thoughts": thoughts, "action": action} if cot else {"action": action}
                    made += 1
                    yield Demo(None, task_prompt(game, info, cot=cot, style=style), json.dumps(reply), info)
            envs.step(actions)
    finally:
        envs.close()


def make_demos(game: str, count: int, **kwargs) -> list[Demo]:
    """`demo_stream` as a list (tests, inspection)."""
    return list(demo_stream(game, count, **kwargs))


def encode_demos(encoder, demos: Iterable[Demo], total: int | None = None) -> list[Transition]:
    """Each demonstration as a packed-batch sample, encoded once: the prompt, and the reply plus
    EOS as the output (no rollout log-probs or value: SFT's loss is the cross-entropy of every
    reply token). Demonstrations of the same frame and task share one encoding (NumberLine's 8192
    demonstrations show 30 frames)."""
    encoded: dict[tuple[bytes, str], tuple[torch.Tensor, dict]] = {}
    samples = []
    for demo in progress(demos, total=total, desc="encode demos", leave=False):
        frame = b"" if demo.frame is None else np.ascontiguousarray(demo.frame).data  # (text games: no frame)
        key = (hashlib.blake2b(frame, digest_size=16).digest(), demo.task)
        if key not in encoded:
            encoded[key] = encoder.encode(demo.frame, demo.task)
        prompt_ids, mm = encoded[key]
        reply_ids = encoder.reply_ids(demo.reply)
        samples.append(Transition(prompt_ids, mm, reply_ids, logprobs=torch.zeros(len(reply_ids)),
                                  is_action=torch.ones(len(reply_ids), dtype=torch.bool), value=0.0))
    return samples


def sft_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    done = (step - warmup) / max(total - warmup, 1)
    return 0.5 * lr * (1 + math.cos(math.pi * min(done, 1.0)))


def sft_backward(policy, samples: list[Transition], micro_batch_size: int, *, pad_id: int, device,
                 logit_bias: torch.Tensor | None = None, filler: Transition | None = None) -> torch.Tensor:
    """The batch's mean reply-token cross-entropy, its gradients accumulated into `.grad` over
    micro-batches of `micro_batch_size` demonstrations (0: one): each micro-batch's token sum over
    the whole batch's token count, so the gradients are the unsplit batch's. Returns the loss
    (detached); a non-finite one leaves the gradients zeroed and unapplied. filler: what a sharded
    policy's rank with fewer micro-batches runs its extra passes on (default: its first sample)."""
    world = current_world()  # under torchrun: this rank's part of the batch, the tokens of all ranks'
    tokens = world.sum([sum(len(t.output_ids) for t in samples)])[0]
    if tokens == 0:  # nothing to learn from: skipped like a non-finite batch (Adam would still move the weights)
        return torch.tensor(float("nan"))
    total = torch.zeros((), device=device)
    finite = True
    filler = filler if filler is not None else (samples[0] if samples else None)
    # (none on a rank whose share is empty; FSDP: as many passes as the busiest rank, in lockstep)
    for part, counts in lockstep(policy, micro_batches(samples, micro_batch_size), filler):
        token_logp, _ = forward_logp_and_values(policy, pack(part, pad_id, device), 1.0, logit_bias)
        loss = -token_logp.float().sum() / tokens * (1.0 if counts else 0.0)
        if not torch.isfinite(loss):
            finite = False
            if not is_sharded(policy):
                break  # (sharded: the other ranks' passes still need this one's collectives)
        loss.backward()
        total += loss.detach()
    if not world.all_finite(finite):  # every rank skips together
        policy.zero_grad(set_to_none=True)
        return torch.tensor(float("nan"))
    world.reduce_gradients([p for p in policy.parameters() if p.requires_grad])
    return torch.tensor(world.sum([float(total)])[0])


def sft_train(policy, encoder, demos: list[Transition], cfg, *, device, seed: int = 0, log=None,
              logit_bias: torch.Tensor | None = None, should_stop=None, resume: dict | None = None,
              on_checkpoint=None) -> tuple[list[float], int]:
    """cfg.steps steps of cross-entropy on the replies of `demos` (`encode_demos`; prompt tokens
    carry no loss); (the losses of the steps it made, the step it reached: cfg.steps unless stopped).
    logit_bias: see rl.batch.forward_logp_and_values (tokens the sampler never emits).
    should_stop: polled before each step; True ends the training there (with a checkpoint).
    on_checkpoint(steps_done, optimizer, rng): every cfg.checkpoint_every steps and at a stop.
    resume: a checkpoint's trainer state ("optimizer", "sft_step", "sft_rng") to continue from."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    # under torchrun every rank draws the same batch (the single process's) and trains on its part
    world = current_world()
    rng = np.random.default_rng(seed)
    first = 0
    if resume is not None:
        load_optimizer_state(optimizer, resume["optimizer"])
        rng.bit_generator.state = resume["sft_rng"]
        first = resume["sft_step"]
    losses = []
    policy.train()
    bar = progress(range(first, cfg.steps), desc="sft", leave=False, initial=first, total=cfg.steps)
    reached = first
    for step in bar:
        if should_stop is not None and should_stop():  # a graceful stop (Ctrl-C): a checkpoint of the steps so far
            if on_checkpoint is not None and step > first:
                on_checkpoint(step, optimizer, rng)
            break
        for group in optimizer.param_groups:
            group["lr"] = sft_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        picks = rng.choice(len(demos), size=min(cfg.batch_size, len(demos)), replace=False)
        picks = picks[world.rank::world.size]  # (all of them in a single process)
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(policy, [demos[i] for i in picks], cfg.micro_batch_size, filler=demos[0], pad_id=encoder.pad_id,
                            device=device, logit_bias=logit_bias)
        if torch.isfinite(loss):  # a non-finite batch is skipped, never applied
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if log is not None:
                log(step, losses[-1])
        done = reached = step + 1
        if on_checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            on_checkpoint(done, optimizer, rng)
    return losses, reached
