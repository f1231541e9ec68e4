"""Per-request sampling settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    - ``temperature``: 0 means greedy (argmax); RL4VLM samples at 0.2.
    - ``top_p``: nucleus sampling mass (1.0 keeps the whole vocabulary).
    - ``repetition_penalty``: Hugging Face semantics (CTRL): every token already in the prompt or
      the output has its logit divided by the penalty when positive, multiplied when negative.
      GTR uses 1.2.
    - ``max_new_tokens``: generation stops after this many tokens (finish_reason ``"length"``).
    - ``stop``: strings that end generation when they appear in the decoded output (the text is cut
      before the stop string; finish_reason ``"stop"``).
    - ``ignore_eos``: keep generating past EOS (benchmarks, to fix the number of tokens).
    - ``suppress_token_ids``: tokens never emitted (their logits are -inf before everything, so
      ``logprobs`` are those of the distribution without them). A trainer suppresses special and
      image-placeholder tokens, which a reply must not contain.
    - ``seed``: seeds this request's own random stream (token i draws with a hash of the seed and
      i), so a rollout is reproducible whatever else shares the batch, on any device. When one ``SamplingParams`` is shared by a list of prompts, request i
      uses ``seed + i`` (see :meth:`for_index`). ``None`` draws a seed from torch's global RNG.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    seed: int | None = None
    suppress_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            # A bare string would be iterated character by character: make it a one-element tuple.
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "suppress_token_ids", tuple(int(t) for t in self.suppress_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the reported (and trained) log-probs are taken at: the sampling
        temperature, or 1 for greedy decoding, whose argmax has no temperature of its own."""
        return self.temperature or 1.0

    def for_index(self, i: int) -> SamplingParams:
        """The params of request ``i`` of a batch that shares this object (seed + i)."""
        if self.seed is None or i == 0:
            return self
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            ignore_eos=self.ignore_eos,
            seed=self.seed + i,
            suppress_token_ids=self.suppress_token_ids,
        )
