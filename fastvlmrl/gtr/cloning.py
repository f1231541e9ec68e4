"""Thought cloning: a corrected sample becomes a training sample (the prompt with its frame, the
corrected reply as the output) whose loss covers the thought and the JSON scaffolding but not the
action: the action span is found by character offsets (`token_weights.action_token_mask`, the
split PPO's λ uses), so the agent's own action, and the EOS after it, carry no loss (GTR: cloning
the corrector's actions fights the environment's feedback). Each PPO mini-batch adds the mean
cross-entropy over those tokens of `gtr.sft_batch_size` samples drawn from the DAgger buffer, at
weight `gtr.sft_coef`, to its gradient."""

from __future__ import annotations

import torch

from fastvlmrl.distributed import current as current_world
from fastvlmrl.gtr.buffer import CorrectedSample, DAggerBuffer
from fastvlmrl.rl.batch import forward_logp_and_values, micro_batches, pack
from fastvlmrl.rl.storage import Transition
from fastvlmrl.rl.token_weights import action_token_mask
from fastvlmrl.sharding import is_sharded, lockstep


def clone_sample(encoder, sample: CorrectedSample) -> Transition:
    """The training sample of a corrected reply: output = the reply's tokens and EOS; `is_action`
    marks the tokens that carry no cloning loss (the action and what follows it)."""
    prompt_ids, mm = encoder.encode(sample.frame, sample.task)
    reply_ids = encoder.reply_ids(sample.reply)
    is_action = torch.tensor(action_token_mask(encoder.tokenizer, reply_ids.tolist()), dtype=torch.bool)
    return Transition(prompt_ids, mm, reply_ids, logprobs=torch.zeros(len(reply_ids)), is_action=is_action, value=0.0)


class ThoughtCloning:
    """The cloning term of the PPO update, drawn from `buffer` (this rank's: under torchrun each
    rank keeps the corrections of its own envs and draws its share of every cloning batch)."""

    def __init__(self, buffer: DAggerBuffer, encoder, *, batch_size: int, coef: float, micro_batch_size: int = 0):
        self.buffer, self.encoder = buffer, encoder
        self.batch_size, self.coef, self.micro_batch_size = batch_size, coef, micro_batch_size

    def backward(self, policy, *, pad_id: int, device, logit_bias: torch.Tensor | None = None,
                 filler: Transition | None = None) -> float | None:
        """Accumulate coef x the mean cloning cross-entropy of one drawn batch into `.grad`
        (micro-batched; the mean is over every rank's loss tokens). Returns the mean cross-entropy,
        None when no rank's buffer holds a sample yet, NaN when it was not finite (then nothing of
        it is accumulated: the caller skips the step). filler: any sample, for the passes a sharded
        policy's rank with fewer cloning samples runs in lockstep with the others."""
        world = current_world()
        share = self.batch_size // world.size + (1 if world.rank < self.batch_size % world.size else 0)
        samples = [clone_sample(self.encoder, s) for s in self.buffer.draw(share)]
        tokens = world.sum([float(sum(int((~t.is_action).sum()) for t in samples))])[0]
        if tokens == 0:
            return None
        total, finite = 0.0, True
        filler = samples[0] if samples else filler  # what a sharded rank's extra passes run on (lockstep)
        for part, counts in lockstep(policy, micro_batches(samples, self.micro_batch_size), filler):
            batch = pack(part, pad_id, device)
            token_logp, _ = forward_logp_and_values(policy, batch, 1.0, logit_bias)
            loss = -(token_logp.float() * (~batch.is_action).float()).sum() / tokens * (1.0 if counts else 0.0)
            if not torch.isfinite(loss):
                finite = False
                if not is_sharded(policy):
                    break  # (sharded: the other ranks' passes still need this one's collectives)
            (self.coef * loss).backward()
            total += float(loss.detach())
        if not world.all_finite(finite):
            return float("nan")
        return world.sum([total])[0]
