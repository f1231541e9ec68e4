"""fastvlmrl.kernels: Triton kernels with PyTorch references (imports torch and triton only).

Every op picks its Triton kernel for CUDA tensors and its PyTorch reference
(:mod:`fastvlmrl.kernels.reference`) for CPU tensors, unless ``TRITON_INTERPRET=1`` is set, in
which case the Triton kernel runs on CPU through Triton's interpreter (how the tests check the
kernels without a GPU). Without triton installed everything runs on the references.

- :func:`fused_linear_logprob`: per-token log-prob (and entropy) from hidden states and the LM
  head, never materialising the ``[T, V]`` logits.
- :func:`fused_linear_ppo_loss`: the LM head, the per-token log-prob and the PPO loss in one pass
  over the logits (3 GEMMs: the gradient is known in forward).
- :func:`ppo_clip_loss`: RL4VLM's sequence-level PPO loss over packed, λ-weighted tokens;
  :func:`ppo_clip_loss_token_level`: the per-token (GRPO/DAPO-style) variant.
- :func:`paged_decode_attention` and :func:`store_kv`: decode attention over a paged KV cache.
"""

from ._dispatch import HAS_TRITON
from ._types import FusedPPOLossOutput, PPOLossOutput
from .linear_ppo_loss import fused_linear_ppo_loss
from .logprob import fused_linear_logprob
from .paged_attention import paged_decode_attention, store_kv
from .ppo_loss import ppo_clip_loss, ppo_clip_loss_token_level

__all__ = [
    "HAS_TRITON",
    "FusedPPOLossOutput",
    "PPOLossOutput",
    "fused_linear_logprob",
    "fused_linear_ppo_loss",
    "paged_decode_attention",
    "ppo_clip_loss",
    "ppo_clip_loss_token_level",
    "store_kv",
]
