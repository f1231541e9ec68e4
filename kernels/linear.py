"""LM-head logits in fp32 from bf16/fp16 inputs: ``x @ weight.T (+ bias)`` with an fp32 output.

A bf16 GEMM accumulates in fp32 and then rounds its output to bf16: at |z| of 10-30 a logit moves
by up to 0.06-0.125, a sampling temperature of 0.2 multiplies that by 5, and a sequence log-prob
sums it over ~100 tokens into a PPO ratio clipped at 0.1. The rollout's and the trainer's log-probs
both take their logits from here, so they share one definition without the rounding:

- CUDA, bf16/fp16: the GEMM writes fp32 directly (``torch.mm(..., out_dtype=torch.float32)``, the
  same cuBLAS work). A torch without it falls back to the rounded output, once said in a warning
  and in :func:`fp32_gemm_available`.
- CPU, bf16/fp16: the inputs are upcast (CPU low precision is for tests; it is exact fp32 math).
- fp32 and fp64: the plain product.
"""

from __future__ import annotations

import warnings

import torch

_FP32_GEMM: dict[str, bool] = {}


def fp32_gemm_available(device: torch.device) -> bool:
    """Whether bf16/fp16 products on ``device`` write fp32 logits directly (probed once per device type)."""
    key = device.type
    if key not in _FP32_GEMM:
        if device.type != "cuda":
            _FP32_GEMM[key] = False
        else:
            try:
                a = torch.ones(2, 2, device=device, dtype=torch.bfloat16)
                _FP32_GEMM[key] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
            except (TypeError, RuntimeError, NotImplementedError):
                _FP32_GEMM[key] = False
                warnings.warn("this torch has no torch.mm(out_dtype=float32) on CUDA: LM-head logits are "
                              "rounded to bf16/fp16 before their fp32 softmax", stacklevel=2)
    return _FP32_GEMM[key]


def linear_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` as fp32 (fp64 for fp64 inputs); ``x`` is ``[T, H]``, ``weight`` ``[V, H]``."""
    if x.dtype in (torch.float32, torch.float64):
        out = x @ weight.t()
        return out + bias if bias is not None else out
    if x.is_cuda and fp32_gemm_available(x.device):
        out = torch.mm(x, weight.t(), out_dtype=torch.float32)
    elif x.is_cuda:
        out = (x @ weight.t()).float()
    else:
        out = x.float() @ weight.float().t()
    return out + bias.float() if bias is not None else out
