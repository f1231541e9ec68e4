"""The sampler in RL mode (temperature 0.2, special and image tokens suppressed, a seed per
request): the batched sampler vs the per-row one it replaced, measured in the same run, and the
sampler's share of a decode step of the tiny model.

- per-row (reference): what the engine did before: -inf written into each row from a Python list,
  one `torch.multinomial` per row with the request's own `torch.Generator`, three `.tolist()`.
- batched: `fastvlmrl.engine.sampler.sample`: a cached additive mask, one host-to-device copy of
  the per-row settings, one inverse-CDF draw for every row, one device-to-host copy.

CPU (default): batch 64 at vocabularies 32,064 (LLaVA) and 152,064 (Qwen2-VL). GPU (``-m gpu``):
the same on CUDA. Printed in the bench report: milliseconds per step of each and the ratio; then
the tiny model's decode step with the sampler's share of it.

    pytest bench/test_bench_sampler.py -q -p no:cacheprovider
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams
from fastvlmrl.engine import engine as engine_module
from fastvlmrl.engine.sampler import sample

BATCH = 64
SUPPRESSED = tuple(range(0, 3)) + tuple(range(32000, 32064))  # specials + image/pad ids, as a trainer does
RESULTS: dict[tuple, dict[str, float]] = {}


@dataclass
class Row:
    sampling: SamplingParams
    seed: int
    generator: torch.Generator
    num_outputs: int = 0
    token_ids: tuple = (1,)


def per_row_sample(logits: torch.Tensor, rows: list[Row]):
    """The sampler before the batched one (reference for timing): per-row masks and draws."""
    logits = logits.float().clone()
    for i, r in enumerate(rows):
        logits[i, list(r.sampling.suppress_token_ids)] = float("-inf")
    temps = torch.tensor([r.sampling.logprob_temperature for r in rows], device=logits.device)
    base = torch.log_softmax(logits / temps[:, None], dim=-1)
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)
    bad_rows = bad.nonzero().flatten().tolist()
    tokens = logits.argmax(-1)
    probs = torch.softmax(logits / temps[:, None], dim=-1)
    picks = torch.cat([torch.multinomial(probs[i], 1, generator=r.generator) for i, r in enumerate(rows)])
    tokens[:] = picks
    lp = probs.gather(-1, picks[:, None]).squeeze(-1).log()
    return tokens.tolist(), base.gather(-1, tokens[:, None]).squeeze(-1).tolist(), lp.tolist(), bad_rows


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


@pytest.mark.benchmark(group="sampler")
@pytest.mark.parametrize("vocab", [32064, 152064])
@pytest.mark.parametrize("impl", ["per_row", "batched"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_sampler_rl_mode(benchmark, report, device, impl, vocab):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(BATCH, vocab, generator=g) * 3).to(device)
    sp = SamplingParams(temperature=0.2, suppress_token_ids=SUPPRESSED)
    rows = [Row(sp, i, torch.Generator(device=device).manual_seed(i)) for i in range(BATCH)]
    fn = (lambda: per_row_sample(logits, rows)) if impl == "per_row" else (lambda: sample(logits, rows))
    seconds = _time(fn, device, repeats=20 if device == "cuda" else 5)
    benchmark.pedantic(fn, rounds=3, iterations=1)
    benchmark.extra_info["ms_per_step"] = seconds * 1e3
    pair = RESULTS.setdefault((device, vocab), {})
    pair[impl] = seconds
    if len(pair) == 2:
        report(f"sampler, RL mode ({device}, batch {BATCH}, vocab {vocab:,}): per-row {pair['per_row'] * 1e3:.2f} ms, "
               f"batched {pair['batched'] * 1e3:.2f} ms per step: {pair['per_row'] / pair['batched']:.1f}x")


@pytest.mark.benchmark(group="sampler-share")
def test_sampler_share_of_a_decode_step(benchmark, report, models_for_bench):
    """The tiny LLaVA of the engine bench, batch 32, 64 new tokens at temperature 0.2 with
    suppressed tokens: decode seconds per step, and the part of it spent in the sampler."""
    model, requests = models_for_bench
    engine = Engine(model, None, memory_fraction=0.05, max_num_seqs=len(requests), max_model_len=800)
    sp = SamplingParams(temperature=0.2, max_new_tokens=64, ignore_eos=True, seed=0,
                        suppress_token_ids=(0, 1, 2, model.config.image_token_id))
    spent = [0.0]

    def timed_sample(logits, seqs):
        start = time.perf_counter()
        out = sample(logits, seqs)
        spent[0] += time.perf_counter() - start
        return out

    original = engine_module.sample
    engine_module.sample = timed_sample
    try:
        engine.generate_requests(requests[:2], SamplingParams(temperature=0.2, max_new_tokens=4, seed=0))
        engine.stats.decode_s = engine.stats.decode_steps = 0
        spent[0] = 0.0
        benchmark.pedantic(lambda: engine.generate_requests(requests, sp), rounds=1, iterations=1)
    finally:
        engine_module.sample = original
    steps = engine.stats.decode_steps + engine.stats.prefill_steps
    step_ms = (engine.stats.decode_s + engine.stats.prefill_s) / max(steps, 1) * 1e3
    share = spent[0] / (engine.stats.decode_s + engine.stats.prefill_s)
    benchmark.extra_info.update({"step_ms": step_ms, "sampler_share": share})
    report(f"tiny LLaVA decode (cpu, batch {len(requests)}, RL mode): {step_ms:.2f} ms per step, "
           f"the sampler {spent[0] / max(steps, 1) * 1e3:.2f} ms of it ({share:.0%})")


@pytest.fixture(scope="module")
def models_for_bench():
    # The engine bench's tiny model and ~600-token prompts with one image each.
    spec = importlib.util.spec_from_file_location("engine_bench", Path(__file__).with_name("test_bench_engine.py"))
    engine_bench = sys.modules.setdefault("engine_bench", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(engine_bench)
    Case, build, make_requests = engine_bench.Case, engine_bench.build, engine_bench.make_requests
    case = Case("tiny-llava", batch=32, new_tokens=64, device="cpu", dtype=torch.float32)
    model = build(case)
    return model, make_requests(model, case)
