"""Fused LM head + per-token log-prob (and entropy), never materialising the ``[T, V]`` logits.

Design (why it looks like this):

- The logits tiles come from torch matmuls with an fp32 output (cuBLAS accumulates in fp32; the
  output is not rounded to bf16, see :mod:`.linear`); a Triton kernel then does the softmax math
  on each tile. Writing our own GEMM would
  not beat cuBLAS, while the softmax epilogue is where the memory goes.
- Forward: chunks of tokens with their whole vocabulary row (``rows * V <= chunk_elements``),
  one pass per row with an online log-sum-exp; it saves only ``lse`` and the entropy ``[T]``.
- Backward recomputes the logits instead of keeping them. Forward-time gradients (Liger's FLCE
  trick) only work for a scalar loss: here the outputs are per token and the upstream gradient
  ``g_t`` is unknown in forward, while ``grad_W = sum_t g_t * dlogits_t^T h_t`` needs it inside
  the sum. So the cost is 4 GEMMs instead of 3, for memory bounded by one tile.
- Backward walks the vocabulary in slices (all tokens of a slice at once when they fit): with
  ``lse``/``H`` saved, a logit's gradient depends on nothing else in its row. Each slice of
  ``grad_W`` is then written once by one GEMM with K = T (fp32 accumulation inside cuBLAS,
  no bf16 re-rounding across chunks), and ``grad_hidden`` is accumulated over slices in fp32.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._dispatch import load_jit, next_power_of_2, use_triton
from .linear import linear_fp32

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEFAULT_CHUNK_ELEMENTS = 1 << 26  # one logits tile: 256 MiB (fp32)
_MAX_BLOCK_V = 4096  # columns per kernel step (module attribute so tests can shrink it)


def _check_args(hidden, weight, targets, bias, temperature, chunk_elements) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [tokens, hidden_size], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [vocab, hidden_size={hidden.shape[1]}], got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary (0 rows)")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must be [tokens={hidden.shape[0]}], got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    if hidden.dtype not in _FLOAT_DTYPES or weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a float dtype, got {hidden.dtype} and {weight.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(
            f"bias must be [vocab={weight.shape[0]}] of dtype {weight.dtype}, "
            f"got shape {tuple(bias.shape)} dtype {bias.dtype}"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    for name, t in (("weight", weight), ("targets", targets), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"hidden is on {hidden.device} but {name} is on {t.device}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile_logits(hidden, weight, bias, t0, t1, v0, v1):
    """A tile of fp32 logits (:func:`linear_fp32`: no bf16 rounding of the GEMM's output)."""
    return linear_fp32(hidden[t0:t1], weight[v0:v1], bias[v0:v1] if bias is not None else None)


def _forward(hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_elements):
    jit = load_jit("_logprob_jit")
    T, V = hidden.shape[0], weight.shape[0]
    logp = torch.empty(T, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(logp)
    entropy = torch.zeros_like(logp) if with_entropy else logp.new_zeros(0)
    rows = max(1, min(T, chunk_elements // V))
    if rows >= 128:
        rows -= rows % 64  # whole GEMM tiles
    block_v = min(_MAX_BLOCK_V, next_power_of_2(V))
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        logits = _tile_logits(hidden, weight, bias, t0, t1, 0, V)
        jit.logprob_fwd_kernel[(t1 - t0,)](
            logits, logits.stride(0), targets[t0:t1], logp[t0:t1], lse[t0:t1],
            entropy[t0:t1] if with_entropy else logp, V, 1.0 / temperature, ignore_index,
            BLOCK_V=block_v, WITH_ENTROPY=with_entropy, num_warps=8 if block_v >= 2048 else 4,
        )
    return logp, lse, entropy


def _backward(ctx, g_logp, g_ent):
    jit = load_jit("_logprob_jit")
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    T, H = hidden.shape
    V = weight.shape[0]
    chunk = ctx.chunk_elements
    # Vocabulary slices: all tokens at once when T * slice fits the budget, but never slices so
    # thin that the grad_hidden accumulation (T x H per slice) dominates.
    cols = min(V, max(chunk // max(T, 1), math.isqrt(chunk), 1))
    rows = max(1, min(T, chunk // cols))
    single_slice = cols == V
    low_precision = hidden.dtype != torch.float32
    grad_h = grad_w = grad_b = None
    if need_h:
        acc_dtype = torch.float32 if (low_precision and not single_slice) else hidden.dtype
        grad_h = torch.zeros((T, H), device=hidden.device, dtype=acc_dtype)
    if need_w:
        grad_w = torch.empty_like(weight)
    if need_b and bias is not None:
        grad_b = torch.zeros(V, device=weight.device, dtype=torch.float32)
    block_v = min(_MAX_BLOCK_V, next_power_of_2(cols))
    for v0 in range(0, V, cols):
        v1 = min(V, v0 + cols)
        w_slice = weight[v0:v1]
        # grad_W of the slice sums over token chunks: fp32 when there are several in bf16/fp16.
        w_acc = None
        if need_w and rows < T:
            w_acc = torch.zeros((v1 - v0, H), device=weight.device,
                                dtype=torch.float32 if low_precision else weight.dtype)
        for t0 in range(0, T, rows):
            t1 = min(T, t0 + rows)
            dlogits = _tile_logits(hidden, weight, bias, t0, t1, v0, v1)
            jit.logprob_bwd_kernel[(t1 - t0, _cdiv(v1 - v0, block_v))](
                dlogits, dlogits.stride(0), targets[t0:t1], lse[t0:t1],
                entropy[t0:t1] if g_ent is not None else lse[t0:t1],
                g_logp[t0:t1] if g_logp is not None else lse[t0:t1],
                g_ent[t0:t1] if g_ent is not None else lse[t0:t1],
                v0, v1 - v0, 1.0 / ctx.temperature, ctx.ignore_index,
                BLOCK_V=block_v, HAS_G_LOGP=g_logp is not None, HAS_G_ENT=g_ent is not None,
                num_warps=8 if block_v >= 2048 else 4,
            )
            # The logits tile is fp32; its gradient feeds the GEMMs in the inputs' dtype.
            d = dlogits if dlogits.dtype == hidden.dtype else dlogits.to(hidden.dtype)
            if need_h:
                if grad_h.dtype == d.dtype:
                    grad_h[t0:t1].addmm_(d, w_slice)
                else:
                    grad_h[t0:t1] += d @ w_slice
            if need_w:
                if w_acc is None:  # written in place: no [slice, H] temporary
                    torch.mm(d.t(), hidden[t0:t1], out=grad_w[v0:v1])
                else:
                    w_acc += d.t() @ hidden[t0:t1]
            if grad_b is not None:
                grad_b[v0:v1] += dlogits.sum(0, dtype=torch.float32)
        if w_acc is not None:
            grad_w[v0:v1] = w_acc
    if grad_h is not None:
        grad_h = grad_h.to(hidden.dtype)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return grad_h, grad_w, grad_b


class FusedLinearLogprobFunction(torch.autograd.Function):
    """autograd wrapper: forward saves (hidden, weight, bias, targets, lse, entropy) only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_elements):
        hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
        weight = weight if weight.stride(-1) == 1 else weight.contiguous()
        targets = targets.contiguous()  # the kernels index it with stride 1
        logp, lse, entropy = _forward(
            hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_elements
        )
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.ignore_index, ctx.chunk_elements = temperature, ignore_index, chunk_elements
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        if g_logp is None and g_ent is None:
            return (None,) * 8
        g_logp = g_logp.float().contiguous() if g_logp is not None else None
        g_ent = g_ent.float().contiguous() if (g_ent is not None and g_ent.numel()) else None
        grad_h, grad_w, grad_b = _backward(ctx, g_logp, g_ent)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def fused_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``targets`` under the LM head, without the ``[T, V]`` logits.

    Computes ``log_softmax((hidden @ weight.T + bias) / temperature)[t, targets[t]]`` in fp32,
    tile by tile: the extra memory is one logits tile of at most ``chunk_elements`` entries (but
    at least one vocabulary row), plus an fp32 ``[T, H]`` accumulator in backward for bf16/fp16,
    whatever ``T`` and ``V``. Backward recomputes the tiles (4 GEMMs in all instead of 3).

    Args:
        hidden: ``[T, H]`` final hidden states (fp32, bf16 or fp16; T may be 0 or 1).
        weight: ``[V, H]`` LM-head weight, same dtype; any ``V``.
        targets: ``[T]`` integer token ids in ``[0, V)``, or ``ignore_index``.
        bias: optional ``[V]`` LM-head bias.
        temperature: the sampling temperature; log-probs are of the tempered distribution.
        ignore_index: targets equal to it get ``logp = 0`` (and ``entropy = 0``) and no gradient.
        return_entropy: also return the entropy of the tempered distribution per token.
        chunk_elements: memory knob, the most logits entries one tile may hold.

    Returns:
        ``logp`` ``[T]`` float32, or ``(logp, entropy)`` if ``return_entropy``. Both are
        differentiable with respect to ``hidden``, ``weight`` and ``bias``.

    CUDA tensors run the Triton kernels; CPU tensors the PyTorch reference (which does
    materialise the logits), unless ``TRITON_INTERPRET=1``.
    """
    _check_args(hidden, weight, targets, bias, temperature, chunk_elements)
    temperature = float(temperature)
    if not use_triton(hidden, weight) or hidden.shape[0] == 0:
        return reference.fused_linear_logprob(
            hidden, weight, targets, bias=bias, temperature=temperature,
            ignore_index=ignore_index, return_entropy=return_entropy,
        )
    logp, entropy = FusedLinearLogprobFunction.apply(
        hidden, weight, bias, targets, temperature, int(ignore_index), bool(return_entropy),
        int(chunk_elements),
    )
    return (logp, entropy) if return_entropy else logp
