"""The frozen reference policy PPO's KL penalty holds the policy near (ppo.kl_coef): the model as
PPO found it. With LoRA it costs no memory: the same model with its adapters disabled, that is the
model the run loaded (config validation refuses LoRA with this run's own SFT, whose adapters the
reference would drop). For full fine-tuning it is a frozen copy of the policy's trainable
parameters (as much memory again as those; the frozen ones, e.g. a vision tower under
model.freeze_vision, are shared with the policy, which never changes them), saved once in the run
directory (`reference/`) so that a resumed run keeps the same reference. Either costs one no-grad
forward per rollout."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from fastvlmrl.rl.batch import PackedBatch


class ReferencePolicy:
    def __init__(self, policy, frozen=None):
        self.policy = policy  # with LoRA: the live policy, scored with its adapters off
        self.frozen = frozen  # full fine-tuning: a frozen copy of the Policy

    @classmethod
    def build(cls, policy, run_dir: Path, *, lora: bool, resume: bool, save: bool = True) -> ReferencePolicy:
        """save: write the full fine-tuning reference's weights to the run directory (rank 0's job)."""
        if lora:
            if not hasattr(policy.model, "disable_adapter"):
                raise ValueError("model.lora is set but the model has no adapters to disable for the KL reference")
            return cls(policy)
        path = Path(run_dir) / "reference" / "model.pt"
        trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
        shared = {id(p): p for p in policy.parameters() if not p.requires_grad}  # deepcopy's memo: not copied
        frozen = copy.deepcopy(policy, shared)
        if resume:
            if not path.is_file():
                raise ValueError(f"{path} is missing: the run's KL reference (ppo.kl_coef > 0) cannot be restored")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if set(saved) != trainable:
                raise ValueError(f"{path} holds other parameters than the policy trains: not this run's KL reference")
            frozen.load_state_dict(saved, strict=False)
        elif save:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({name: p.detach().cpu() for name, p in frozen.named_parameters() if name in trainable}, path)
        frozen.eval().requires_grad_(False)
        return cls(policy, frozen)

    @torch.no_grad()
    def logprobs(self, batch: PackedBatch, temperature: float, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        """[T] per-token log-probs of the batch's outputs under the reference policy."""
        from fastvlmrl.rl.batch import forward_logp_and_values

        if self.frozen is not None:
            return forward_logp_and_values(self.frozen, batch, temperature, logit_bias)[0]
        with self.policy.model.disable_adapter():  # peft: the base model, as before any update
            return forward_logp_and_values(self.policy, batch, temperature, logit_bias)[0]


def k3_kl(token_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate k3 = exp(r) - r - 1 with r = ref - logp (always
    >= 0, unbiased for samples from the policy; Schulman's estimator, as GRPO uses)."""
    r = ref_logp - token_logp
    return torch.exp(r) - r - 1
