"""GTR-Turbo's self-teacher (`gtr.corrector=self`): the corrector is the agent's own recent past,
so no second model and no endpoint. With LoRA the teacher is a TIES merge (`ties.py`) of the
adapters of the last `gtr.self_merge` updates (density `gtr.self_density`); with full fine-tuning
an exponential moving average of the trainable weights (`gtr.self_ema_decay`). Either way the
teacher is a set of float32 tensors shaped like the trainable weights: to run it, they are copied
into the engine's (the trainer's) tensors in place, the teacher answers the step's prompts
greedily, and the trainer's own values are copied back, bit for bit. The base weights are shared; in-place writes keep every
tensor's address, so captured CUDA graphs stay valid (the engine only drops its prefix cache).

`gtr.self_mode=sft`: a reply whose thought (the JSON without the action) is the teacher's is
correct; otherwise the teacher's thought is the correction (thought cloning, as with the other
correctors); a teacher reply that is not valid JSON is no correction, counted. `gtr.self_mode=kl`:
no corrections; PPO's loss adds `gtr.self_kl_coef` x the mean per-token k3 KL from the agent to
the teacher over the agent's thought tokens (the action's are free), the teacher's log-probs
scored once per rollout.
"""

from __future__ import annotations

from collections import Counter, deque
from contextlib import contextmanager

import torch

from fastvlmrl.envs.parse import strict_reply
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.correction import CORRECT, NO_VERDICT, UNPARSABLE, WRONG, Correction, CorrectionItem
from fastvlmrl.gtr.questions import thought_of
from fastvlmrl.gtr.ties import merge_lora_adapters

_ADAPTER = ".default."  # peft's name of the trained adapter inside parameter names


class SelfTeacher:
    def __init__(self, game, policy, engine, encoder, *, lora: bool, lora_scale: float = 1.0, merge: int = 4,
                 density: float = 0.8, ema_decay: float = 0.9, every: int = 1, max_new_tokens: int = 256,
                 mode: str = "sft"):
        """mode "sft": the teacher's thoughts are the corrections (`evaluate`); "kl": it judges
        nothing, and PPO holds the agent's thought tokens near it (`logprobs`, the KL reference)."""
        self.game, self.policy, self.engine, self.encoder, self.mode = game, policy, engine, encoder, mode
        self.lora, self.lora_scale, self.density, self.ema_decay, self.every = lora, lora_scale, density, ema_decay, every
        self.max_new_tokens = max_new_tokens
        self.keys = reply_keys(game)
        self.failures: Counter = Counter()
        self.names = [name for name, p in policy.model.named_parameters() if p.requires_grad]
        if lora and not any("lora_" in n for n in self.names):
            raise ValueError("gtr.corrector=self with model.lora merges LoRA adapters, but the model has none")
        self.updates = 0
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=merge)  # LoRA: the last K adapters (CPU)
        self.teacher: dict[str, torch.Tensor] = {}  # on the model's device: what the swap puts in
        self._take_snapshot()
        self._refresh()

    def _params(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.policy.model.named_parameters())
        return {name: named[name] for name in self.names}

    def _take_snapshot(self) -> None:
        if self.lora:
            self.snapshots.append({n: p.detach().to("cpu", copy=True) for n, p in self._params().items()})

    def _refresh(self) -> None:
        """The teacher's tensors from the snapshots (LoRA) or the first EMA (full fine-tuning)."""
        params = self._params()
        if not self.lora:
            if not self.teacher:  # the EMA in float32 (a bf16 EMA would round most of each update away)
                self.teacher = {n: p.detach().float().clone() for n, p in params.items()}
            return
        lora = {_peft_key(n): t for n, t in self.snapshots[-1].items() if "lora_" in n}
        rank = {_peft_key(n): t.shape[0] for n, t in lora.items() if ".lora_A." in _peft_key(n)}
        device = next(iter(params.values())).device  # (the merge's SVDs on the GPU when there is one)
        merged = merge_lora_adapters([{_peft_key(n): t for n, t in s.items() if "lora_" in n} for s in self.snapshots],
                                     scale=self.lora_scale, density=self.density, rank=max(rank.values()),
                                     device=device)
        teacher = {}
        for name, p in params.items():
            key = _peft_key(name)
            value = merged.get(key, self.snapshots[-1][name])  # (a non-LoRA trainable tensor: the newest)
            if value.shape != p.shape:  # a rank-limited SVD of a smaller matrix: zero-padded to the adapter's rank
                padded = torch.zeros(p.shape, dtype=value.dtype)
                padded[tuple(slice(0, s) for s in value.shape)] = value
                value = padded
            teacher[name] = value.to(p.device, torch.float32)
        self.teacher = teacher

    @torch.no_grad()
    def after_update(self) -> None:
        """Called after every PPO update: the EMA steps, or (every `every` updates) the adapter
        snapshot joins the merge."""
        self.updates += 1
        if self.lora:
            if self.updates % self.every == 0:
                self._take_snapshot()
                self._refresh()
            return
        for name, p in self._params().items():
            self.teacher[name].mul_(self.ema_decay).add_(p.detach().float(), alpha=1 - self.ema_decay)

    @contextmanager
    def swapped(self):
        """The model runs as the teacher inside the block (its float32 tensors cast into the weights'
        dtype, in place: addresses stay); its own weights are back, bit for bit, after. Holds one
        copy of the trainable weights meanwhile."""
        params = self._params()
        with torch.no_grad():
            own = {name: p.detach().clone() for name, p in params.items()}
            for name, p in params.items():
                p.copy_(self.teacher[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])

    @torch.no_grad()
    def logprobs(self, batch, temperature: float, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        """[T] per-token log-probs of a packed batch's outputs under the teacher (the KL reference
        of gtr.self_mode=kl, scored once per rollout as ReferencePolicy is)."""
        from fastvlmrl.rl.batch import forward_logp_and_values

        with self.swapped():
            return forward_logp_and_values(self.policy, batch, temperature, logit_bias)[0]

    @torch.no_grad()
    def evaluate(self, items: list[CorrectionItem]) -> list[Correction]:
        from fastvlmrl.engine import Request, SamplingParams

        if self.mode == "kl":  # the teacher teaches through the KL term, not corrections
            return []

        out: list[Correction | None] = [Correction(UNPARSABLE) if item.reply is None else None for item in items]
        asked = [i for i, c in enumerate(out) if c is None]
        if not asked:
            return out
        requests = [Request(*self.encoder.encode(items[i].frame, items[i].prompt)) for i in asked]
        params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens,
                                suppress_token_ids=self.encoder.suppressed_ids)
        with self.swapped():
            gens = self.engine.generate_requests(requests, params)
        for i, gen in zip(asked, gens):
            teacher = strict_reply(gen.text, self.keys) if not gen.error else None
            if teacher is None:
                self.failures["teacher_unparsable"] += 1
                out[i] = Correction(NO_VERDICT)
            elif thought_of(teacher) == thought_of(items[i].reply):
                out[i] = Correction(CORRECT)
            else:
                out[i] = Correction(WRONG, thought_of(teacher))
        return out

    def get_state(self) -> dict:
        return {"updates": self.updates, "snapshots": list(self.snapshots),
                "teacher": {n: t.detach().cpu() for n, t in self.teacher.items()}, "failures": dict(self.failures)}

    def set_state(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.snapshots = deque(state["snapshots"], maxlen=self.snapshots.maxlen)
        params = self._params()
        self.teacher = {n: t.to(params[n].device, torch.float32) for n, t in state["teacher"].items()}
        self.failures = Counter(state.get("failures", {}))

    def close(self) -> None:
        pass


def _peft_key(name: str) -> str:
    """A trained parameter's name as the adapter's saved state names it (no adapter name)."""
    return name.replace(_ADAPTER, ".")


