"""PPO as RL4VLM: λ-weighted sequence log-probs of the outputs, clipped surrogate with the ratio
cap, clipped value loss, Adam with a cosine learning rate, gradient-norm clipping; a mini-batch
whose loss is not finite is skipped and counted. A mini-batch can run as micro-batches
(`ppo.micro_batch_size`) whose gradients accumulate to exactly the unsplit mini-batch's.

The training forward (`rl.batch`) stops at the final hidden states of the output tokens; the
LM head, their log-probs and the policy loss (with the entropy and KL terms) come from
`fastvlmrl.kernels.fused_linear_ppo_loss` in one pass (no [T, V] logits, 3 GEMMs). The loss math,
written out in plain PyTorch, is `kernels/reference.py: ppo_terms` (what runs on CPU); the value
loss (RL4VLM's clipped one) is written here.

λ (`cfg.thought_coef`) is applied here and only here: the rollout stores each output token's
log-prob and whether it belongs to the action; the old and new sequence log-probs are both
weighted from those.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from fastvlmrl.distributed import current as current_world
from fastvlmrl.sharding import full_weights, is_sharded, lockstep
from fastvlmrl.engine.nvtx import nvtx_range
from fastvlmrl.kernels import fused_linear_ppo_loss
from fastvlmrl.rl.batch import forward_hidden_and_values, forward_logp_and_values, micro_batches, pack
from fastvlmrl.rl.reference_policy import k3_kl
from fastvlmrl.rl.storage import RolloutStorage, Transition
from fastvlmrl.rl.token_weights import token_weights


def sequence_logp(transition: Transition, thought_coef: float) -> torch.Tensor:
    """The λ-weighted log-prob of a transition's output at rollout time (a float32 scalar)."""
    return (transition.logprobs * token_weights(transition.is_action, thought_coef)).sum()


def train_without_dropout(policy) -> None:
    """Train mode with every dropout layer off (LoRA's included): the rollout sampled with dropout
    off (the engine runs the model in eval mode), so a PPO forward with dropout on would score
    another policy and the first ratio would not be 1 (TRL and verl turn dropout off for RL too).
    SFT's `policy.train()` turns it back on."""
    policy.train()
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout) or _has_attention_dropout(module):
            module.eval()


def _has_attention_dropout(module) -> bool:
    """Hugging Face attention applies its dropout inside the attention call while the module is in
    train mode (`attention_dropout`, CLIP's `dropout`: floats from the config), not as a layer."""
    return any(isinstance(getattr(module, name, None), float) and getattr(module, name) > 0
               for name in ("attention_dropout", "dropout"))


def sequence_log_ratio(token_logp: torch.Tensor, batch, old_logp: torch.Tensor, thought_coef: float) -> torch.Tensor:
    """[B] new minus old λ-weighted sequence log-probs of a packed batch (no gradient)."""
    weighted = (token_logp.detach().float() * token_weights(batch.is_action, thought_coef))
    lengths = torch.diff(batch.cu_seqlens.long())
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=weighted.device), lengths)
    new = torch.zeros(len(lengths), device=weighted.device).index_add_(0, segment, weighted)
    return new - old_logp.float()


@torch.no_grad()
def recompute_logprobs(policy, storage: RolloutStorage, cfg, *, temperature: float, pad_id: int, device,
                       logit_bias: torch.Tensor | None = None) -> float:
    """Replace the rollout's per-token log-probs by the trainer's own forward (no dropout), so the
    ratio starts at 1 even where the engine's kernels and the trainer's differ numerically (bf16
    on GPU); RL4VLM and verl score the old policy this way. (The rollout's values stay the
    engine's: GAE already used them.)
    Returns the largest |engine - trainer| per-token log-prob difference it replaced."""
    transitions = [t for row in storage.transitions for t in row]
    largest = 0.0
    for chunk in micro_batches(transitions, cfg.micro_batch_size or cfg.minibatch_size):
        batch = pack(chunk, pad_id, device)
        token_logp, _ = forward_logp_and_values(policy, batch, temperature, logit_bias)
        for t, logprobs in zip(chunk, torch.split(token_logp.float().cpu(), [len(t.output_ids) for t in chunk])):
            largest = max(largest, float((logprobs - t.logprobs).abs().max())) if len(logprobs) else largest
            t.logprobs = logprobs
    return largest


def make_optimizer(policy, cfg) -> torch.optim.Adam:
    """Adam over the trainable parameters in two groups: the policy at cfg.lr and the value head at
    cfg.value_lr (default cfg.lr), both on the same schedule (`set_lr`). A zero-initialised head
    at the policy's small rate can move its output by only about the sum of the learning rates over
    the run (~5e-3 over the tiny presets), so the critic needs a rate of its own."""
    head = {id(p) for p in policy.value_head.parameters()}
    params = [p for p in policy.parameters() if p.requires_grad]
    value_lr = cfg.lr if cfg.value_lr is None else cfg.value_lr
    return torch.optim.Adam([
        {"params": [p for p in params if id(p) not in head], "lr": cfg.lr, "lr_scale": 1.0, "name": "policy"},
        {"params": [p for p in params if id(p) in head], "lr": value_lr, "lr_scale": value_lr / cfg.lr,
         "name": "value"},
    ], lr=cfg.lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this update: the policy group at `lr`, the value group in proportion."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def cosine_lr(update: int, total: int, lr: float, lr_end: float, warmup: int = 0) -> float:
    """Cosine decay from lr to lr_end over the planned updates, held at lr_end after (no restart).
    With warmup > 0 the first `warmup` updates ramp linearly up to the schedule (Adam's first
    steps move every weight by about lr whatever its gradient: a ramp keeps them from undoing
    the warm start)."""
    progress = min(update / max(total, 1), 1.0)
    value = lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * progress))
    return value * min(1.0, (update + 1) / warmup) if warmup > 0 else value


@torch.no_grad()
def score_reference(reference, storage: RolloutStorage, cfg, *, temperature: float, pad_id: int, device,
                    logit_bias: torch.Tensor | None = None) -> None:
    """Each transition's per-token log-probs under the KL reference policy, once per rollout."""
    transitions = [t for row in storage.transitions for t in row]
    for chunk in micro_batches(transitions, cfg.micro_batch_size or cfg.minibatch_size):
        ref = reference.logprobs(pack(chunk, pad_id, device), temperature, logit_bias)
        for t, logprobs in zip(chunk, torch.split(ref.float().cpu(), [len(t.output_ids) for t in chunk])):
            t.ref_logprobs = logprobs


def _minibatch_totals(samples, thought_coef: float, world) -> dict[str, float]:
    """What each loss term of a mini-batch is averaged over, over every rank's part of it: its
    samples, its output tokens and the sum of their λ weights (the token-level policy loss is a
    weighted token mean)."""
    is_action = torch.cat([s[0].is_action for s in samples]) if samples else torch.zeros(0, dtype=torch.bool)
    local = [float(len(samples)), float(len(is_action)), float(token_weights(is_action, thought_coef).sum()),
             float((~is_action).sum())]
    return dict(zip(("samples", "tokens", "weight", "thought_tokens"), world.sum(local)))


def _micro_loss(policy, samples, totals: dict[str, float], cfg, *, value_clip, temperature: float, pad_id: int,
                device, logit_bias, kl_thoughts_only: bool = False):
    """One micro-batch's forward and its part of the mini-batch loss: each term is the micro-batch's
    mean weighted by its share of what the mini-batch's term averages over (samples for the
    sequence loss and the value loss, λ weight for the token-level policy loss, tokens for the
    entropy and the KL), so the gradients summed over micro-batches are the unsplit mini-batch's.
    Returns (loss, metrics weighted the same way, |first log-ratios| of the sequences)."""
    transitions = [s[0] for s in samples]
    batch = pack(transitions, pad_id, device)
    advantages = torch.tensor([s[1] for s in samples], device=device)
    returns = torch.tensor([s[2] for s in samples], device=device)
    old_logp = torch.stack([sequence_logp(t, cfg.thought_coef) for t in transitions]).to(device)
    old_values = torch.tensor([t.value for t in transitions], device=device)
    with nvtx_range("ppo/forward"):
        hidden, values = forward_hidden_and_values(policy, batch)
    weights = token_weights(batch.is_action, cfg.thought_coef)
    sample_share = len(samples) / totals["samples"]
    tokens = max(totals["tokens"], 1.0)
    token_level = cfg.loss_level == "token"
    ref_logp = torch.cat([t.ref_logprobs for t in transitions]).to(device) if cfg.kl_coef > 0 else None
    kl_weight = None
    if kl_thoughts_only and ref_logp is not None:  # the KL's mean over the mini-batch's thought tokens only
        kl_weight = (~batch.is_action).float() * (tokens / max(totals["thought_tokens"], 1.0))
    # The LM head, the tokens' log-probs, the policy loss and the entropy and KL terms in one op
    # (3 GEMMs), each term over what the whole mini-batch averages it over (samples, λ weight or
    # tokens), so that summed over micro-batches it is the mini-batch's loss.
    out = fused_linear_ppo_loss(
        hidden, policy.lm_head_weight(), batch.targets, weights, batch.cu_host, old_logp, advantages,
        bias=logit_bias, temperature=temperature, level=cfg.loss_level,
        old_token_logp=torch.cat([t.logprobs for t in transitions]).to(device) if token_level else None,
        clip_eps=cfg.clip, clip_eps_high=cfg.clip_high if token_level else None,
        ratio_cap=None if token_level else cfg.ratio_cap,
        policy_denominator=max(totals["weight"], 1e-12) if token_level else totals["samples"],
        entropy_coef=cfg.entropy_coef, ref_logp=ref_logp, kl_coef=cfg.kl_coef, token_denominator=tokens,
        kl_weight=kl_weight)
    clipped = values if value_clip is None else old_values + (values - old_values).clamp(-value_clip, value_clip)
    value_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
    loss = out.loss + sample_share * cfg.value_coef * value_loss
    if token_level:
        policy_share = float(weights.sum()) / totals["weight"] if totals["weight"] > 0 else 0.0
    else:
        policy_share = sample_share
    log_ratio = sequence_log_ratio(out.token_logp, batch, old_logp, cfg.thought_coef).abs()
    stats = {"actor/pg_loss": float(out.policy_loss),
             "critic/value_loss": sample_share * float(value_loss.detach()),
             "actor/clip_frac": policy_share * float(out.clip_fraction),
             "actor/approx_kl": policy_share * float(out.approx_kl),
             "actor/ratio_mean": policy_share * float(out.ratio_mean),
             "actor/grad_norm": 0.0,
             "actor/entropy": float(out.entropy.sum()) / tokens}
    if cfg.kl_coef > 0:
        stats["actor/kl_ref"] = float(k3_kl(out.token_logp, ref_logp).sum()) / tokens
    return loss, stats, log_ratio


def ppo_update(policy, optimizer, storage: RolloutStorage, cfg, *, temperature: float, pad_id: int,
               device, generator: torch.Generator, logit_bias: torch.Tensor | None = None,
               critic_only: bool = False, reference=None, cloning=None,
               kl_thoughts_only: bool = False) -> dict[str, float]:
    """cfg.epochs passes over the rollout in mini-batches; returns the update's metrics.
    `temperature`: the one the rollout's log-probs were taken at (SamplingParams.logprob_temperature).
    critic_only: only the value head steps (critic warm-up); the policy's weights do not move.
    reference: the frozen ReferencePolicy of the KL penalty (needed when cfg.kl_coef > 0).
    cloning: GTR's ThoughtCloning: each mini-batch's gradient also takes its weighted cloning loss
    on a batch drawn from the DAgger buffer, in the same step (its clip and optimizer step).
    kl_thoughts_only: the KL term is the mean over thought tokens only (GTR-Turbo's KL to the
    teacher, whose `logprobs` are the reference's).

    Beyond RL4VLM's loss: `- entropy_coef * mean token entropy` and `+ kl_coef * mean token k3
    KL to the reference`; with target_kl > 0 the epochs stop once an epoch's mean approx-KL
    exceeds it."""
    if cfg.kl_coef > 0 and reference is None:
        raise ValueError("ppo.kl_coef > 0 needs the reference policy")
    world = current_world()  # under torchrun: this rank's part of every global mini-batch, the gradients summed
    params = [p for p in policy.parameters() if p.requires_grad]
    head = {id(p) for p in policy.value_head.parameters()}
    value_clip = cfg.value_clip if cfg.value_clip > 0 else None  # 0: no value clip
    sums = {"actor/pg_loss": 0.0, "critic/value_loss": 0.0, "actor/clip_frac": 0.0, "actor/approx_kl": 0.0,
            "actor/ratio_mean": 0.0, "actor/grad_norm": 0.0, "actor/entropy": 0.0}
    if cfg.kl_coef > 0:
        sums["actor/kl_ref"] = 0.0
    steps = skipped = epochs = 0
    train_without_dropout(policy)
    engine_gap = None
    scoring = full_weights(policy) if cfg.recompute_logprobs or cfg.kl_coef > 0 else contextlib.nullcontext()
    with scoring:  # (FSDP: no-grad passes of each rank's own length, without collectives)
        if cfg.recompute_logprobs:
            engine_gap = recompute_logprobs(policy, storage, cfg, temperature=temperature, pad_id=pad_id,
                                            device=device, logit_bias=logit_bias)
        if cfg.kl_coef > 0:
            score_reference(reference, storage, cfg, temperature=temperature, pad_id=pad_id, device=device,
                            logit_bias=logit_bias)
    samples_here = storage.samples()
    filler = samples_here[0] if samples_here else None  # what a sharded rank's extra passes run on (lockstep)
    clone_sum, clone_steps = 0.0, 0  # GTR's cloning loss (already the global mean on every rank)
    first_log_ratios = []  # of the first mini-batch, before any step: 0 up to numerics, or rollout and trainer disagree
    seconds = {"forward_backward": 0.0, "optimizer": 0.0}  # of the mini-batch steps (timing/ppo_*_s)
    for _ in range(cfg.epochs):
        epochs += 1
        epoch_kl, epoch_steps = 0.0, 0
        for samples in storage.minibatches(cfg.minibatch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            totals = _minibatch_totals(samples, cfg.thought_coef, world)
            step_sums = dict.fromkeys(sums, 0.0)
            finite = True
            for part, counts in lockstep(policy, micro_batches(samples, cfg.micro_batch_size), filler):
                tick = time.perf_counter()
                loss, stats, log_ratio = _micro_loss(policy, part, totals, cfg, value_clip=value_clip,
                                                     temperature=temperature, pad_id=pad_id, device=device,
                                                     logit_bias=logit_bias, kl_thoughts_only=kl_thoughts_only)
                if not counts:  # a sharded rank's extra pass: its collectives, nothing of its loss
                    loss = loss * 0.0
                elif steps + skipped == 0:
                    first_log_ratios.append(log_ratio)
                if not torch.isfinite(loss):
                    finite = False  # never applied: a NaN/inf step would ruin the weights
                    if not is_sharded(policy):
                        break  # (sharded: the other ranks' passes still need this one's collectives)
                with nvtx_range("ppo/backward"):
                    loss.backward()
                seconds["forward_backward"] += time.perf_counter() - tick
                if counts:
                    for key, value in stats.items():
                        step_sums[key] += value
            clone = None
            if cloning is not None and not critic_only:  # (every rank draws, for the collectives inside)
                tick = time.perf_counter()
                clone = cloning.backward(policy, pad_id=pad_id, device=device, logit_bias=logit_bias,
                                         filler=None if filler is None else filler[0])
                seconds["forward_backward"] += time.perf_counter() - tick
                finite = finite and (clone is None or math.isfinite(clone))
            if not world.all_finite(finite):  # every rank skips the step together
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            tick = time.perf_counter()
            world.reduce_gradients(params)  # the global mini-batch's gradient: the shares are of its totals
            if critic_only:  # Adam skips a parameter without a gradient: no step, no moment update
                for p in params:
                    if id(p) not in head:
                        p.grad = None
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            with nvtx_range("ppo/optimizer_step"):
                optimizer.step()
            seconds["optimizer"] += time.perf_counter() - tick
            steps += 1
            if clone is not None:
                clone_sum, clone_steps = clone_sum + clone, clone_steps + 1
            step_sums["actor/grad_norm"] = float(grad_norm)
            for key, value in step_sums.items():
                sums[key] += value
            epoch_kl, epoch_steps = epoch_kl + step_sums["actor/approx_kl"], epoch_steps + 1
        epoch_kl = world.sum([epoch_kl])[0] if cfg.target_kl > 0 else epoch_kl  # the global mini-batches' KL
        if cfg.target_kl > 0 and epoch_steps and epoch_kl / epoch_steps > cfg.target_kl:
            break  # the policy moved far enough from the rollout's for this update
    grad_norm_sum = sums.pop("actor/grad_norm")  # the same on every rank (clipped after the reduction)
    summed = dict(zip(sums, world.sum(list(sums.values()))))  # each rank's shares of the global means
    metrics = {k: v / max(steps, 1) for k, v in summed.items()}
    metrics["actor/grad_norm"] = grad_norm_sum / max(steps, 1)
    metrics["actor/optimizer_steps"] = steps
    metrics["actor/epochs"] = epochs
    if engine_gap is not None:  # what recomputing replaced: the engine/trainer log-prob gap
        metrics["actor/engine_trainer_logprob_max_diff"] = world.max(engine_gap)
    metrics["actor/skipped_nonfinite"] = skipped
    if cloning is not None:
        metrics["gtr/sft_loss"] = clone_sum / clone_steps if clone_steps else float("nan")
        metrics["gtr/sft_steps"] = clone_steps
    metrics.update({f"timing/ppo_{k}_s": v for k, v in seconds.items()})
    first = torch.cat(first_log_ratios) if first_log_ratios else torch.zeros(0)
    total, count = world.sum([float(first.sum()), float(len(first))])
    if count:
        metrics["actor/log_ratio_first_minibatch_mean"] = total / count
        metrics["actor/log_ratio_first_minibatch_max"] = world.max(float(first.max()) if len(first) else 0.0)
    return metrics
