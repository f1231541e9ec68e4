"""A request's state inside the engine, and what the engine hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch

from fastvlmrl.engine.sampling_params import SamplingParams


@dataclass
class Generation:
    """The result of one request.

    - ``token_ids``: generated tokens (EOS included when it ended the sequence, as in ``generate``).
    - ``logprobs``: per generated token, ``log_softmax(logits / T)`` at the sampled token, computed in
      fp32 from the raw logits (temperature 1 for greedy requests). This is what a PPO trainer
      recomputes at the sampling temperature, so old and new log-probs share one definition.
    - ``sampling_logprobs``: per token, the log-prob under the distribution actually sampled from
      (after repetition penalty, temperature and top-p renormalisation; 0.0 for greedy). Use it for
      importance-sampling corrections when top-p or a penalty is on.
    - ``text``: decoded output (special tokens skipped; cut before a matched stop string).
    - ``finish_reason``: ``"eos"``, ``"stop"`` (stop string), ``"length"`` (max_new_tokens or the
      model's context), or ``"error"``.
    - ``hidden_state``: final hidden state (after the last norm) of the last prompt token, ``[H]``,
      for a value head: no second forward needed.
    - ``num_cached_tokens``: prompt tokens taken from the prefix cache instead of being prefilled.
    - ``error``: why the request failed (then the other fields are empty); the rest of the batch
      completes normally.
    """

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    hidden_state: torch.Tensor | None = field(default=None, repr=False)
    num_cached_tokens: int = 0
    error: str | None = None


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """Tokens, cache blocks and sampling state of one request (prompt and output in one list)."""

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    mm_inputs: dict[str, torch.Tensor]
    seed: int | None  # the sampling seed (None for greedy): sampler.sampling_uniform(seed, token index)
    prefix_keys: list[bytes] = field(default_factory=list)  # block_manager.block_keys of the prompt
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    status: Status = Status.WAITING
    # Per-family positional state, e.g. Qwen2-VL's M-RoPE rows for the prompt and decode offset.
    prompt_positions: torch.Tensor | None = None
    rope_delta: int = 0
    # Vision features for the prompt's image tokens, in token order; held from encoding until the
    # sequence is prefilled (and encoded again if it is preempted and recomputed).
    image_features: torch.Tensor | None = None
    image_token_positions: torch.Tensor | None = None
    result: Generation | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_outputs(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def has_images(self) -> bool:
        return bool(self.mm_inputs)



def finish_reason(
    seq: Sequence, eos_ids: set[int], max_model_len: int, detokenize: Callable[[list[int]], str] | None
) -> tuple[str | None, str | None]:
    """Why ``seq`` ends after its newest token (None: it goes on), and its output text when it had
    to be decoded to look for a stop string (cut before the first match)."""
    sp = seq.sampling
    reason = None
    if not sp.ignore_eos and seq.token_ids[-1] in eos_ids:
        reason = "eos"
    elif seq.num_outputs >= sp.max_new_tokens or len(seq) >= max_model_len:
        reason = "length"
    text = None
    if sp.stop and detokenize is not None:
        text = detokenize(seq.output_ids)
        cut = min((i for i in (text.find(s) for s in sp.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
    return reason, text
