"""LM-head logits in fp32 from bf16 inputs: the rollout engine and the trainer's fused log-prob
share one definition, without the bf16 rounding of the GEMM's output that a low temperature
multiplies."""

import pytest
import torch
from torch import nn

from fastvlmrl.kernels import fused_linear_logprob, reference
from fastvlmrl.kernels.linear import fp32_gemm_available, linear_fp32

TEMPERATURE = 0.2  # RL4VLM's


def inputs(T=37, H=64, V=1000, scale=2.0):
    # Logits of |z| ~ 10-30, where a bf16 output moves by 0.06-0.125.
    hidden = (torch.randn(T, H) * scale).bfloat16()
    weight = (torch.randn(V, H) * scale / H**0.5 * 4).bfloat16()
    return hidden, weight, torch.randint(0, V, (T,))


def test_fp32_output_equals_float64_math_not_the_rounded_product():
    hidden, weight, _ = inputs()
    exact = hidden.double() @ weight.double().t()
    got = linear_fp32(hidden, weight)
    assert got.dtype == torch.float32
    assert (got.double() - exact).abs().max() < 1e-4
    rounded = (hidden @ weight.t()).float()
    assert (rounded.double() - exact).abs().max() > 1e-2  # what the old path lost
    bias = torch.randn(weight.shape[0]).bfloat16()
    torch.testing.assert_close(linear_fp32(hidden, weight, bias).double(), exact + bias.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_inputs_are_the_plain_product(dtype):
    hidden, weight = torch.randn(5, 8, dtype=dtype), torch.randn(7, 8, dtype=dtype)
    out = linear_fp32(hidden, weight)
    assert out.dtype == dtype and torch.equal(out, hidden @ weight.t())


@pytest.mark.parametrize("path", ["interpreted kernel", "reference"])
def test_trainer_log_probs_use_the_unrounded_logits(path, monkeypatch):
    """fused_linear_logprob on bf16 inputs (Triton interpreted, and the reference) gives the
    log-probs of fp32 logits; the rounded logits would be off by far more at T = 0.2."""
    if path == "reference":
        monkeypatch.delenv("TRITON_INTERPRET")
    hidden, weight, targets = inputs()
    exact = torch.log_softmax((hidden.double() @ weight.double().t()) / TEMPERATURE, -1)
    exact = exact.gather(-1, targets[:, None])[:, 0]
    got = fused_linear_logprob(hidden, weight, targets, temperature=TEMPERATURE)
    assert (got.double() - exact).abs().max() < 1e-3
    rounded = torch.log_softmax((hidden @ weight.t()).float() / TEMPERATURE, -1).gather(-1, targets[:, None])[:, 0]
    assert (rounded.double() - exact).abs().max() > 1e-2
    torch.testing.assert_close(got, reference.fused_linear_logprob(hidden, weight, targets, temperature=TEMPERATURE),
                               atol=1e-4, rtol=0)


def test_gradients_of_the_fp32_tiles_match_the_reference():
    hidden, weight, targets = inputs(T=19, H=32, V=300)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    g = torch.randn(19)
    (fused_linear_logprob(h1, w1, targets, temperature=TEMPERATURE, chunk_elements=1000) * g).sum().backward()
    (reference.fused_linear_logprob(h2, w2, targets, temperature=TEMPERATURE) * g).sum().backward()
    for a, b in ((h1.grad, h2.grad), (w1.grad, w2.grad)):
        assert a.dtype == torch.bfloat16
        assert ((a.float() - b.float()).norm() / b.float().norm()) < 2e-2


def test_the_engine_computes_the_same_logits():
    from fastvlmrl.engine.model_runner import ModelRunner

    hidden, weight, _ = inputs()
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16)
    head.weight.data.copy_(weight)

    class Runner:
        lm_head = head

    got = ModelRunner.logits(Runner(), hidden)
    exact = hidden.double() @ weight.double().t()
    assert got.dtype == torch.float32 and (got.double() - exact).abs().max() < 1e-4
    assert ((head(hidden).float().double() - exact).abs().max()) > 1e-2  # the module's own bf16 output


def test_cpu_reports_no_fp32_gemm():
    assert fp32_gemm_available(torch.device("cpu")) is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_writes_fp32_logits_directly():
    hidden, weight, _ = inputs(T=256, H=512, V=4096)
    hidden, weight = hidden.cuda(), weight.cuda()
    assert fp32_gemm_available(hidden.device), "this torch has no torch.mm(out_dtype=float32) on CUDA"
    exact = hidden.double() @ weight.double().t()
    assert (linear_fp32(hidden, weight).double() - exact).abs().max() < 1e-3
