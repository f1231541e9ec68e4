"""A corrector that is any local Hugging Face VLM, run through fastvlmrl's own engine: GTR's
evaluation prompt (`questions.py`: the game's rules, the questions, the agent's thought, and the
solver's solutions as GTR's tool result for the formula games) with the frame, answered greedily
in one batch per env step. A reply that is not the JSON asked for is no correction, counted
(`failures`); GTR found 7B correctors often cannot follow the format, so watch `gtr/no_verdict`."""

from __future__ import annotations

from collections import Counter

import torch

from fastvlmrl.envs.games import Game
from fastvlmrl.gtr.correction import NO_VERDICT, UNPARSABLE, Correction, CorrectionItem
from fastvlmrl.gtr.questions import read_answer, system_prompt, user_prompt


class VLMCorrector:
    def __init__(self, game: Game, policy, processor, *, dtype: torch.dtype, max_new_tokens: int = 400,
                 num_envs: int = 32):
        """policy, processor: the corrector model as `load_policy` gives it (its own weights; its
        value head is unused)."""
        from fastvlmrl.build import build_encoder
        from fastvlmrl.engine import Engine

        self.game, self.max_new_tokens = game, max_new_tokens
        self.policy = policy
        self.encoder = build_encoder(policy, processor, dtype)
        self.engine = Engine(policy.model, processor, expected_seqs=num_envs, expected_seq_len=4096)
        self.failures: Counter = Counter()

    @classmethod
    def from_config(cls, cfg, game: Game, *, device, dtype, num_envs: int) -> VLMCorrector:
        from fastvlmrl.models import load_policy

        policy, processor = load_policy(cfg.vlm_path, dtype=dtype, device=device)
        policy.eval()
        return cls(game, policy, processor, dtype=dtype, max_new_tokens=cfg.vlm_max_new_tokens, num_envs=num_envs)

    def prompt(self, item: CorrectionItem) -> str:
        """The corrector's task text (the model's chat template goes around it, with the frame)."""
        return f"{system_prompt(self.game)}\n\n{user_prompt(self.game, item)}"

    @torch.no_grad()
    def evaluate(self, items: list[CorrectionItem]) -> list[Correction]:
        from fastvlmrl.engine import Request, SamplingParams

        out: list[Correction | None] = [Correction(UNPARSABLE) if item.reply is None else None for item in items]
        asked = [i for i, c in enumerate(out) if c is None]
        if not asked:
            return out
        requests = []
        for i in asked:
            ids, mm = self.encoder.encode(items[i].frame, self.prompt(items[i]))
            requests.append(Request(ids, mm))
        params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens,
                                suppress_token_ids=self.encoder.suppressed_ids)
        for i, gen in zip(asked, self.engine.generate_requests(requests, params)):
            if gen.error:
                self.failures["error"] += 1
                out[i] = Correction(NO_VERDICT)
                continue
            out[i] = read_answer(self.game, gen.text)
            if out[i].verdict == NO_VERDICT:
                self.failures["unparsable"] += 1
        return out

    def close(self) -> None:
        pass
