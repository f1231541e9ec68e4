"""λ-weighting of an output's tokens: λ for the thought, 1 for the action.

The split comes from character offsets: the action part starts at the last `"action"` key of the
decoded output (`envs.parse.action_char_span`), and each generated token's characters are found
by decoding the ids one prefix at a time, so it works for any tokenizer (RL4VLM matched hard-coded
token ids, which were silently wrong for some tokenizers). Tokens past the text (EOS) belong to
the action, as in RL4VLM. An output without an action key is all thought.
"""

from __future__ import annotations

from fastvlmrl.envs.parse import action_char_span


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """The length of the decoded text after each token (special tokens decode to nothing)."""
    ends = []
    for k in range(1, len(token_ids) + 1):
        ends.append(len(tokenizer.decode(token_ids[:k], skip_special_tokens=True)))
    return ends


def action_token_weights(tokenizer, token_ids: list[int], thought_coef: float) -> list[float]:
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    span = action_char_span(text)
    if span is None:
        return [float(thought_coef)] * len(token_ids)
    start = span[0]
    weights, begin = [], 0
    for end in token_char_ends(tokenizer, token_ids):
        # a token is part of the action if any of its characters is (or it adds none, past the text)
        in_action = end > start or (end == begin and begin >= len(text))
        weights.append(1.0 if in_action else float(thought_coef))
        begin = end
    return weights
