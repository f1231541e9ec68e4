"""Which output tokens are the action, and the λ-weighting PPO builds on that split: λ for the
thought, 1 for the action.

The split comes from character offsets: the action part starts at the last `"action"` key of the
decoded output (`envs.parse.action_char_span`), and each generated token's characters are found
by decoding the ids one prefix at a time, so it works for any tokenizer (RL4VLM matched hard-coded
token ids, which were silently wrong for some tokenizers). Tokens past the text (EOS) belong to
the action, as in RL4VLM. An output without an action key is all thought.
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
    start = span[0]
    mask, begin = [], 0
    for end in token_char_ends(tokenizer, token_ids):
        # a token is part of the action if any of its characters is (or it adds none, past the text)
        mask.append(end > start or (end == begin and begin >= len(text)))
        begin = end
    return mask


def token_weights(is_action: torch.Tensor, thought_coef: float) -> torch.Tensor:
    """[O] float32 weights of a reply's tokens in its sequence log-prob: 1 on action tokens, λ
    (`thought_coef`) on thought tokens (RL4VLM's λ-weighted log-prob)."""
    return torch.where(is_action, 1.0, float(thought_coef)).to(torch.float32)


def action_token_weights(tokenizer, token_ids: list[int], thought_coef: float) -> list[float]:
    """`token_weights` of a reply given as token ids, as Python floats (for code outside the
    trainer, e.g. the bench's RL4VLM-style reference loop; the trainer stores the mask)."""
    return [1.0 if in_action else float(thought_coef) for in_action in action_token_mask(tokenizer, token_ids)]
