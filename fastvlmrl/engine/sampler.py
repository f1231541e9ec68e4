"""Next-token choice: repetition penalty, temperature, top-p, seeded per-request sampling.

The processing order is Hugging Face ``generate``'s (repetition penalty, then temperature, then
top-p), so greedy decoding with a penalty matches ``generate`` token for token. Everything runs in
fp32 on the upcast logits (dividing bf16 logits by a small temperature inflates rollout/trainer
log-prob gaps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastvlmrl.engine.sequence import Sequence


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[float]  # log_softmax(logits / T) at the token (T = 1 for greedy)
    sampling_logprobs: list[float]  # under the processed distribution sampled from (0 for greedy)
    bad_rows: list[int] = field(default_factory=list)  # rows whose logits were NaN/inf: no valid token


def apply_repetition_penalty(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    rows = [i for i, s in enumerate(seqs) if s.sampling.repetition_penalty != 1.0]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        seen = torch.tensor(seqs[i].token_ids, device=logits.device).unique()
        penalty = seqs[i].sampling.repetition_penalty
        score = logits[i, seen]
        logits[i, seen] = torch.where(score < 0, score * penalty, score / penalty)
    return logits


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row outside its top-p mass and renormalise (keeps at least 1 token)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> SampleOutput:
    """Pick one token per row of ``logits`` ``[B, V]`` for the matching sequences."""
    logits = logits.float()
    device = logits.device
    if any(s.sampling.suppress_token_ids for s in seqs):
        logits = logits.clone()
        for i, s in enumerate(seqs):
            if s.sampling.suppress_token_ids:
                logits[i, list(s.sampling.suppress_token_ids)] = float("-inf")
    temps = torch.tensor([s.sampling.logprob_temperature for s in seqs], device=device)
    base_logprobs = torch.log_softmax(logits / temps[:, None], dim=-1)

    processed = apply_repetition_penalty(logits, seqs)
    # A request whose forward produced NaN/inf (e.g. a NaN image) must fail alone: torch.multinomial
    # would raise for the whole batch. Its row gets a harmless stand-in; the engine fails it.
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)
    bad_rows = bad.nonzero().flatten().tolist()
    if bad_rows:
        processed = processed.masked_fill(bad[:, None], 0.0)
    tokens = processed.argmax(dim=-1)
    sampling_lp = torch.zeros(len(seqs), device=device)

    sampled = [i for i, s in enumerate(seqs) if not s.sampling.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=device)
        probs = torch.softmax(processed[idx] / temps[idx, None], dim=-1)
        top_p = torch.tensor([seqs[i].sampling.top_p for i in sampled], device=device)
        if bool((top_p < 1.0).any()):
            probs = top_p_filter(probs, top_p)
        # Each request draws from its own generator: its samples do not depend on the batch.
        picks = torch.cat([torch.multinomial(probs[j], 1, generator=seqs[i].generator) for j, i in enumerate(sampled)])
        tokens[idx] = picks
        sampling_lp[idx] = probs.gather(-1, picks[:, None]).squeeze(-1).log()

    logprobs = base_logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    return SampleOutput(tokens.tolist(), logprobs.tolist(), sampling_lp.tolist(), bad_rows)
