"""Next-token choice: repetition penalty, temperature, top-p, seeded per-request sampling, batched.

The processing order is Hugging Face ``generate``'s (repetition penalty, then temperature, then
top-p), so greedy decoding with a penalty matches ``generate`` token for token. Everything runs in
fp32 on the upcast logits (dividing bf16 logits by a small temperature inflates rollout/trainer
log-prob gaps).

One step costs a fixed handful of batched ops whatever the batch holds: the suppressed tokens
come from a cached additive mask per token set, the per-row settings travel to the device in one
copy, every sampled row draws in one inverse-CDF search, and the results come back in one copy.
A row's random number is a counter-based hash of (its request's seed, the index of the token being
drawn): a request's samples depend on neither the rest of the batch nor the device, and a
sequence preempted and recomputed draws the same tokens again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastvlmrl.engine.sequence import Sequence

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sampling_uniform(seed: int, index: int) -> float:
    """The uniform in [0, 1) that draws token ``index`` (0 = the first output token) of the request
    seeded with ``seed``: 53 bits of a SplitMix64 hash of the pair."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ index) >> 11) * 2.0**-53


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


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative probability (float64) exceeds ``u`` times the row's
    total: token j with probability probs[j] / total, never a zero-probability token."""
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    # u < 1, but u * total may round up to total: stay strictly below it.
    target = torch.minimum(uniforms.double()[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


class _SuppressMasks:
    """Additive [V] masks (-inf at the suppressed ids, 0 elsewhere), one per (token set, vocabulary
    size, device), built once: a step adds them instead of writing -inf row by row."""

    def __init__(self) -> None:
        self._masks: dict[tuple, torch.Tensor] = {}

    def get(self, ids: tuple[int, ...], vocab: int, device: torch.device) -> torch.Tensor:
        key = (ids, vocab, str(device))
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) > 64:  # a run uses one or two sets; never grow without bound
                self._masks.clear()
            mask = torch.zeros(vocab, device=device)
            if ids:
                mask[torch.tensor(ids, device=device)] = float("-inf")
            self._masks[key] = mask
        return mask

    def rows(self, seqs: list[Sequence], vocab: int, device: torch.device) -> torch.Tensor | None:
        """[1, V] when every row shares one set, [B, V] otherwise, None when nothing is suppressed."""
        sets = [s.sampling.suppress_token_ids for s in seqs]
        if not any(sets):
            return None
        if all(s == sets[0] for s in sets):
            return self.get(sets[0], vocab, device)[None]
        return torch.stack([self.get(s, vocab, device) for s in sets])


SUPPRESS_MASKS = _SuppressMasks()


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> SampleOutput:
    """Pick one token per row of ``logits`` ``[B, V]`` for the matching sequences."""
    logits = logits.float()
    device, (batch, vocab) = logits.device, logits.shape
    mask = SUPPRESS_MASKS.rows(seqs, vocab, device)
    if mask is not None:
        logits = logits + mask

    # Every per-row setting in one host-to-device copy: log-prob temperature, sampling flag, top-p,
    # the row's uniform.
    sampled = [not s.sampling.greedy for s in seqs]
    settings = torch.tensor(
        [[s.sampling.logprob_temperature for s in seqs], [float(f) for f in sampled],
         [s.sampling.top_p for s in seqs],
         [sampling_uniform(s.seed, s.num_outputs) if f else 0.0 for s, f in zip(seqs, sampled)]],
        dtype=torch.float64,
    )
    if device.type == "cuda":
        settings = settings.pin_memory()
    settings = settings.to(device, non_blocking=True)
    temps, is_sampled, top_p, uniforms = settings[0].float(), settings[1].bool(), settings[2].float(), settings[3]
    base_logprobs = torch.log_softmax(logits / temps[:, None], dim=-1)

    processed = apply_repetition_penalty(logits, seqs)
    # One pass gives the greedy tokens and the rows to fail: a request whose forward produced NaN
    # or inf (e.g. a NaN image) has a non-finite row maximum (max propagates NaN; all -inf gives
    # -inf); the engine fails it alone. Its token is any index in range, and no host sync happens
    # here: the flags come back with the rest.
    best, tokens = processed.max(dim=-1)
    bad = ~torch.isfinite(best)
    sampling_lp = torch.zeros(batch, device=device)

    if any(sampled):
        # Sampling temperature = log-prob temperature for sampled rows: without a penalty the
        # distribution is the one already computed.
        penalised = processed is not logits
        probs = torch.softmax(processed / temps[:, None], dim=-1) if penalised else base_logprobs.exp()
        if any(s.sampling.top_p < 1.0 for s, f in zip(seqs, sampled) if f):
            # Only the rows that ask for it: a row at top_p = 1 keeps its whole distribution.
            probs = torch.where((top_p < 1.0)[:, None], top_p_filter(probs, top_p), probs)
        picks = inverse_cdf_sample(probs, uniforms).clamp_(max=vocab - 1)  # a NaN row may search past the end
        tokens = torch.where(is_sampled, picks, tokens)
        sampling_lp = torch.where(is_sampled, probs.gather(-1, tokens[:, None]).squeeze(-1).log(), sampling_lp)

    logprobs = base_logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    # One device-to-host copy (token ids are exact in float64).
    packed = torch.stack([tokens.double(), logprobs.double(), sampling_lp.double(), bad.double()]).cpu()
    token_ids, lps, slps, bad_flags = packed.tolist()
    return SampleOutput([int(t) for t in token_ids], lps, slps, [i for i, b in enumerate(bad_flags) if b])
