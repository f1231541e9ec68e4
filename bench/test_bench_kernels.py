"""Kernel benchmarks: each fast path against its PyTorch reference in the same run.

    pytest bench/test_bench_kernels.py            # CPU: small shapes, reference vs fallback
    scripts/bench_kernels_gpu.sh                  # GPU: real shapes (Qwen2.5-7B LM head, ...)

Each op is benchmarked once per implementation (pytest-benchmark groups them); the last
implementation of a group prints its ratios against the others (time, memory, TFLOP/s or
bandwidth) to the terminal, and stores them in the benchmark's ``extra_info`` for --benchmark-json.
"""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from fastvlmrl.kernels import (
    fused_linear_logprob,
    fused_linear_ppo_loss,
    paged_decode_attention,
    ppo_clip_loss,
    reference,
    store_kv,
)

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
ROUNDS = 10

# (T, H, V): GPU = Qwen2.5-7B / Qwen2.5-VL-7B LM head over 8k tokens.
LOGPROB_SHAPE = (8192, 3584, 152064) if GPU else (512, 128, 4000)
LOGPROB_DTYPE = torch.bfloat16 if GPU else torch.float32
# (tokens, sequences)
PPO_SHAPE = (1 << 20, 1024) if GPU else (1 << 15, 64)
# (batch, context, q heads, kv heads, head dim, block size)
DECODE_SHAPE = (64, 1024, 32, 8, 128, 16) if GPU else (8, 256, 8, 2, 64, 16)
DECODE_DTYPE = torch.bfloat16 if GPU else torch.float32

RESULTS: dict[tuple[str, str], dict] = {}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """On CPU, one intra-op thread: with OpenMP threads fighting other processes for the cores
    (shared CI machines), timings swing by 100x; single-threaded they are comparable."""
    if GPU:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sync():
    if GPU:
        torch.cuda.synchronize()


def report(request, line: str) -> None:
    """Into the session's "bench report" (bench/conftest.py), printed whatever pytest's flags."""
    request.getfixturevalue("report")(line)


def run(benchmark, fn, rounds=ROUNDS) -> float:
    """Benchmark ``fn`` (synchronised); return the median seconds on GPU, the minimum on CPU
    (CPU runners are shared machines: the minimum is the estimate least hit by other load)."""

    def call():
        fn()
        sync()

    benchmark.pedantic(call, rounds=rounds, warmup_rounds=2, iterations=1)
    return benchmark.stats.stats.median if GPU else benchmark.stats.stats.min


def peak_extra_bytes(fn) -> int | None:
    """Peak CUDA memory allocated by one call beyond what was allocated before it."""
    if not GPU:
        return None
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() - base


def gib(n):
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def si(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: 1.23 TFLOP/s, 45.6 GB/s."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def compare(request, benchmark, op: str, impl: str, result: dict, fmt) -> None:
    """Record this implementation's result, print it, and its ratios against earlier ones."""
    RESULTS[(op, impl)] = result
    benchmark.extra_info.update({k: v for k, v in result.items() if v is not None})
    report(request, f"[{op}] {impl}: {fmt(result)}")
    for (other_op, other), res in RESULTS.items():
        if other_op != op or other == impl:
            continue
        speedup = res["median_s"] / result["median_s"]
        line = f"[{op}] {impl} vs {other}: speedup {speedup:.2f}x"
        if result.get("peak_bytes") and res.get("peak_bytes"):
            line += f", {res['peak_bytes'] / result['peak_bytes']:.1f}x less peak memory"
        benchmark.extra_info[f"speedup_vs_{other}"] = speedup
        report(request, line)


# ---------------------------------------------------------------------------------------------
# fused linear log-prob


def logprob_reference(hidden, weight, targets):
    """What RL trainers do: full logits, fp32 log_softmax, gather."""
    logits = hidden @ weight.t()
    return logits.float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def logprob_inputs():
    T, H, V = LOGPROB_SHAPE
    torch.manual_seed(0)
    hidden = torch.randn(T, H, device=DEV).to(LOGPROB_DTYPE).requires_grad_()
    weight = (torch.randn(V, H, device=DEV) * H**-0.5).to(LOGPROB_DTYPE).requires_grad_()
    targets = torch.randint(0, V, (T,), device=DEV)
    return hidden, weight, targets


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_logprob_forward_backward(benchmark, request, logprob_inputs, impl):
    benchmark.group = "logprob fwd+bwd"
    hidden, weight, targets = logprob_inputs
    T, H, V = LOGPROB_SHAPE
    fn_logp = logprob_reference if impl == "reference" else fused_linear_logprob

    def step():
        hidden.grad = weight.grad = None
        fn_logp(hidden, weight, targets).sum().backward()

    peak = peak_extra_bytes(step)
    median = run(benchmark, step)
    floor_flops = 3 * 2 * T * H * V  # forward GEMM + the two backward GEMMs
    result = dict(median_s=median, peak_bytes=peak, flops_per_s=floor_flops / median)
    compare(request, benchmark, "logprob", impl, result, lambda r: (
        f"{r['median_s'] * 1e3:.2f} ms, {si(r['flops_per_s'], 'FLOP/s')} counting the 3 GEMMs, "
        f"peak extra memory {gib(r['peak_bytes'])} (T={T}, H={H}, V={V}, {LOGPROB_DTYPE})"))


# ---------------------------------------------------------------------------------------------
# log-prob and PPO loss from the hidden states: eager, the two fused ops, the one fused op

LOSS_SEQUENCES = 64 if GPU else 8  # LOGPROB_SHAPE's tokens in sequences of equal length


@pytest.mark.parametrize("impl", ["eager", "logprob_then_ppo", "fused_ppo"])
def test_logprob_and_ppo_loss(benchmark, request, logprob_inputs, impl):
    benchmark.group = "log-prob + PPO loss fwd+bwd"
    hidden, weight, targets = logprob_inputs
    T, H, V = LOGPROB_SHAPE
    g = torch.Generator().manual_seed(1)
    cu = torch.linspace(0, T, LOSS_SEQUENCES + 1).long().to(DEV)
    token_weight = torch.where(torch.rand(T, generator=g) < 0.7, 0.5, 1.0).to(DEV)
    old = (-torch.rand(LOSS_SEQUENCES, generator=g) * 3).to(DEV)
    adv = torch.randn(LOSS_SEQUENCES, generator=g).to(DEV)

    def step():
        hidden.grad = weight.grad = None
        if impl == "fused_ppo":
            loss = fused_linear_ppo_loss(hidden, weight, targets, token_weight, cu, old, adv).loss
        else:
            logp = (logprob_reference if impl == "eager" else fused_linear_logprob)(hidden, weight, targets)
            loss_fn = reference.ppo_clip_loss if impl == "eager" else ppo_clip_loss
            loss = loss_fn(logp, token_weight, cu, old, adv).loss
        loss.backward()

    peak = peak_extra_bytes(step)
    median = run(benchmark, step)
    result = dict(median_s=median, peak_bytes=peak, flops_per_s=3 * 2 * T * H * V / median)
    compare(request, benchmark, "logprob+ppo", impl, result, lambda r: (
        f"{r['median_s'] * 1e3:.2f} ms, {si(r['flops_per_s'], 'FLOP/s')} counting 3 GEMMs, "
        f"peak extra memory {gib(r['peak_bytes'])} (T={T} in {LOSS_SEQUENCES} sequences, H={H}, V={V}, "
        f"{LOGPROB_DTYPE})"))


# ---------------------------------------------------------------------------------------------
# PPO loss


@pytest.fixture(scope="module")
def ppo_inputs():
    T, B = PPO_SHAPE
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(T - 1, generator=g)[: B - 1] + 1).values
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([T])]).to(torch.int32).to(DEV)
    token_logp = (-torch.rand(T, generator=g) * 0.01).to(DEV).requires_grad_()
    weight = torch.where(torch.rand(T, generator=g) < 0.7, 0.5, 1.0).to(DEV)
    old = (-torch.rand(B, generator=g)).to(DEV)
    adv = torch.randn(B, generator=g).to(DEV)
    values = torch.randn(B, generator=g).to(DEV).requires_grad_()
    old_values = values.detach() + 0.1
    returns = torch.randn(B, generator=g).to(DEV)
    return token_logp, weight, cu, old, adv, values, old_values, returns


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_ppo_loss_forward_backward(benchmark, request, ppo_inputs, impl):
    benchmark.group = "ppo loss fwd+bwd"
    token_logp, weight, cu, old, adv, values, old_values, returns = ppo_inputs
    fn_loss = reference.ppo_clip_loss if impl == "reference" else ppo_clip_loss

    def step():
        token_logp.grad = values.grad = None
        fn_loss(token_logp, weight, cu, old, adv, values=values, old_values=old_values,
                returns=returns).loss.backward()

    peak = peak_extra_bytes(step)
    median = run(benchmark, step)
    T, B = PPO_SHAPE
    result = dict(median_s=median, peak_bytes=peak, tokens_per_s=T / median)
    compare(request, benchmark, "ppo", impl, result, lambda r: (
        f"{r['median_s'] * 1e3:.3f} ms, {si(r['tokens_per_s'], 'tokens/s')}, "
        f"peak extra memory {gib(r['peak_bytes'])} ({T} tokens in {B} sequences)"))


# ---------------------------------------------------------------------------------------------
# paged decode attention


@pytest.fixture(scope="module")
def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), measured now."""
    n = (1 << 28) if GPU else (1 << 25)
    src = torch.empty(n, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    reps = 20 if GPU else 5
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync()
    return 2 * n * reps / (time.perf_counter() - start)


@pytest.fixture(scope="module")
def decode_inputs():
    B, L, Hq, Hkv, D, bs = DECODE_SHAPE
    torch.manual_seed(0)
    blocks_per_seq = math.ceil(L / bs)
    num_blocks = B * blocks_per_seq
    k_cache = torch.empty(num_blocks, bs, Hkv, D, device=DEV, dtype=DECODE_DTYPE)
    v_cache = torch.empty_like(k_cache)
    block_table = torch.randperm(num_blocks, device=DEV).view(B, blocks_per_seq).to(torch.int32)
    keys = torch.randn(B, L, Hkv, D, device=DEV).to(DECODE_DTYPE)
    vals = torch.randn(B, L, Hkv, D, device=DEV).to(DECODE_DTYPE)
    pos = torch.arange(L, device=DEV)
    slots = (block_table[:, pos // bs].long() * bs + pos % bs).reshape(-1)
    store_kv(keys.reshape(-1, Hkv, D), vals.reshape(-1, Hkv, D), k_cache, v_cache, slots)
    seq_lens = torch.full((B,), L, dtype=torch.int32, device=DEV)
    q = torch.randn(B, Hq, D, device=DEV).to(DECODE_DTYPE)
    # The same keys laid out contiguously for SDPA: [B, Hkv, L, D].
    k_contig, v_contig = keys.transpose(1, 2).contiguous(), vals.transpose(1, 2).contiguous()
    return q, k_cache, v_cache, block_table, seq_lens, k_contig, v_contig


# The block-table width of a model-sized context (Qwen2-VL's 32,768 tokens), as CUDA graphs see it
# when the engine is not told the run's longest sequence: the splits are sized by the table's
# width, not by the sequences' real lengths.
WIDE_CONTEXT = 32768


@pytest.mark.parametrize("impl", ["reference", "sdpa_contiguous", "paged", "paged_table_32k"])
def test_paged_decode_attention(benchmark, request, decode_inputs, copy_bandwidth, impl):
    benchmark.group = "paged decode attention"
    q, k_cache, v_cache, block_table, seq_lens, k_contig, v_contig = decode_inputs
    B, L, Hq, Hkv, D, bs = DECODE_SHAPE
    if impl == "reference":
        fn = lambda: reference.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens)  # noqa: E731
    elif impl == "sdpa_contiguous":
        fn = lambda: F.scaled_dot_product_attention(q[:, :, None], k_contig, v_contig, enable_gqa=True)  # noqa: E731
    elif impl == "paged":
        fn = lambda: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens)  # noqa: E731
    else:
        wide = torch.zeros(B, WIDE_CONTEXT // bs, dtype=block_table.dtype, device=DEV)
        wide[:, : block_table.shape[1]] = block_table
        fn = lambda: paged_decode_attention(q, k_cache, v_cache, wide, seq_lens)  # noqa: E731
    torch.testing.assert_close(
        fn().reshape(B, Hq, D).float(),
        F.scaled_dot_product_attention(q[:, :, None], k_contig, v_contig, enable_gqa=True)[:, :, 0].float(),
        atol=2e-2, rtol=2e-2)
    median = run(benchmark, fn, rounds=ROUNDS * 3)
    elem = q.element_size()
    moved = 2 * B * L * Hkv * D * elem + 2 * B * Hq * D * elem  # K and V once, q in, out
    copy_bw = copy_bandwidth
    result = dict(median_s=median, bandwidth=moved / median, copy_bandwidth=copy_bw,
                  fraction_of_copy=moved / median / copy_bw)
    compare(request, benchmark, "decode", impl, result, lambda r: (
        f"{r['median_s'] * 1e6:.1f} us, {si(r['bandwidth'], 'B/s')} = "
        f"{r['fraction_of_copy']:.1%} of the device copy bandwidth ({si(r['copy_bandwidth'], 'B/s')}) "
        f"(B={B}, ctx={L}, {Hq}q/{Hkv}kv heads, D={D}, block {bs}, {DECODE_DTYPE})"))
