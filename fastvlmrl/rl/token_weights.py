"""Which output tokens are the action, and the λ-weighting PPO builds on that split: λ for the
thought, 1 for the action.

The split comes from character offsets: the action part starts at the last `"action"` key of the
decoded output (`envs.parse.action_char_span`), and a token belongs to the action when the text
decoded up to it reaches past that character. It works for any tokenizer (RL4VLM matched
hard-coded token ids, which were silently wrong for some tokenizers). Tokens past the text (EOS)
belong to the action, as in RL4VLM. An output without an action key is all thought.

The first action token is found by bisection over prefix decodes (O(log n) decodes, not one per
token). A tokenizer's offset mapping would not do: it describes the canonical encoding of a
text, and sampled ids need not be that encoding. Bisection gives the rule's split whenever the
decoded length never shrinks as tokens are added; a multi-byte character split across tokens can
break that (it may decode longer before it is complete), so the probed lengths are checked to be
in order around the boundary, and any disorder falls back to decoding every prefix.
"""

from __future__ import annotations

import torch

from fastvlmrl.envs.parse import action_char_span


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """The length of the decoded text after each token (special tokens decode to nothing)."""
    ends = []
    for k in range(1, len(token_ids) + 1):
        ends.append(len(tokenizer.decode(token_ids[:k], skip_special_tokens=True)))
    return ends


def action_token_mask(tokenizer, token_ids: list[int]) -> list[bool]:
    """For each output token: whether it belongs to the action part of the reply."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    span = action_char_span(text)
    if span is None:
        return [False] * len(token_ids)
    start, n = span[0], len(token_ids)
    cache = {0: 0, n: len(text)}

    def end(k: int) -> int:  # decoded length after the first k tokens
        if k not in cache:
            cache[k] = len(tokenizer.decode(token_ids[:k], skip_special_tokens=True))
        return cache[k]

    low, high = 0, n  # the first action token is the smallest k with end(k + 1) > start
    while low < high:
        mid = (low + high) // 2
        if end(mid + 1) > start:
            high = mid
        else:
            low = mid + 1
    boundary = end(low) <= start < end(low + 1)
    probed = [cache[k] for k in sorted(cache)]
    if boundary and all(a <= b for a, b in zip(probed, probed[1:])):
        return [k >= low for k in range(n)]
    ends = token_char_ends(tokenizer, token_ids)  # not monotone here: every prefix, one by one
    return [e > start for e in ends]


def token_weights(is_action: torch.Tensor, thought_coef: float) -> torch.Tensor:
    """[O] float32 weights of a reply's tokens in its sequence log-prob: 1 on action tokens, λ
    (`thought_coef`) on thought tokens (RL4VLM's λ-weighted log-prob)."""
    return torch.where(is_action, 1.0, float(thought_coef)).to(torch.float32)


def action_token_weights(tokenizer, token_ids: list[int], thought_coef: float) -> list[float]:
    """`token_weights` of a reply given as token ids, as Python floats (for code outside the
    trainer, e.g. the bench's RL4VLM-style reference loop; the trainer stores the mask)."""
    return [1.0 if in_action else float(thought_coef) for in_action in action_token_mask(tokenizer, token_ids)]
