"""The batched sampler: one inverse-CDF draw per row from a counter-based uniform, against plain
references; the sampled distribution is the tempered (top-p, suppressed) softmax; a request's
samples depend only on its seed and the token's index (not the batch, not preemption)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams
from fastvlmrl.engine.sampler import inverse_cdf_sample, sample, sampling_uniform


@dataclass
class Row:
    """What the sampler reads of a Sequence."""

    sampling: SamplingParams
    seed: int | None
    num_outputs: int = 0
    token_ids: tuple = (1,)


def rows(n, sp, first_seed=0, num_outputs=0):
    return [Row(sp, None if sp.greedy else first_seed + i, num_outputs) for i in range(n)]


def chi_square(counts: np.ndarray, expected_p: np.ndarray) -> float:
    keep = expected_p > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    expected = expected_p[keep] * counts.sum()
    return float(((counts[keep] - expected) ** 2 / expected).sum())


# chi-square critical values at p = 1e-4 (the seeds are fixed: the test is deterministic, this
# only bounds how unlucky the fixed draw may be).
CRITICAL = {2: 18.4, 3: 21.1, 4: 23.5, 5: 25.7, 6: 27.9}


@pytest.mark.parametrize("temperature", [0.2, 0.7, 1.0, 1.6])
def test_sampled_distribution_is_the_tempered_softmax(temperature):
    g = torch.Generator().manual_seed(int(temperature * 10))
    logits = torch.randn(7, generator=g) * 0.6
    n = 30000
    out = sample(logits.expand(n, 7), rows(n, SamplingParams(temperature=temperature)))
    counts = np.bincount(out.token_ids, minlength=7)
    p = torch.softmax(logits.double() / temperature, -1).numpy()
    assert chi_square(counts, p) < CRITICAL[6]
    # The reported log-probs are the tempered ones at the drawn token.
    lp = torch.log_softmax(logits / temperature, -1)
    assert np.allclose(out.logprobs, lp[out.token_ids].numpy(), atol=1e-6)
    assert np.allclose(out.sampling_logprobs, lp[out.token_ids].numpy(), atol=1e-6)


def test_top_p_and_suppressed_tokens_shape_the_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, 3.0])
    n = 30000
    sp = SamplingParams(temperature=1.0, top_p=0.8, suppress_token_ids=(6,))
    out = sample(logits.expand(n, 7), rows(n, sp, first_seed=10**6))
    counts = np.bincount(out.token_ids, minlength=7)
    # Reference: token 6 removed, then the smallest prefix of the sorted probabilities whose mass
    # before each token is under 0.8, renormalised.
    p = torch.softmax(logits[:6].double(), -1).numpy()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = np.zeros(7)
    nucleus[order[before < 0.8]] = p[order[before < 0.8]]
    nucleus /= nucleus.sum()
    assert counts[6] == 0 and (nucleus > 0).sum() == 3
    assert chi_square(counts, nucleus) < CRITICAL[2]


@pytest.mark.parametrize("vocab", [1, 2, 5, 4099])
def test_inverse_cdf_matches_a_float64_reference(vocab):
    g = torch.Generator().manual_seed(vocab)
    batch = 64
    probs = torch.rand(batch, vocab, generator=g) ** 4
    probs[torch.rand(batch, vocab, generator=g) < 0.3] = 0.0  # zero-probability tokens ...
    probs[0, 0] = 0.0  # ... first and last included
    probs[1, -1] = 0.0
    probs[torch.arange(batch), torch.randint(0, vocab, (batch,), generator=g)] += 0.1  # no empty row
    u = torch.rand(batch, generator=g, dtype=torch.float64)
    u[:3] = torch.tensor([0.0, 1.0 - 2.0**-53, 0.5], dtype=torch.float64)
    got = inverse_cdf_sample(probs, u).tolist()
    for row, (p, ui) in enumerate(zip(probs.double().numpy(), u.numpy())):
        cdf = np.cumsum(p)
        want = int(np.searchsorted(cdf, min(ui * cdf[-1], np.nextafter(cdf[-1], 0)), side="right"))
        assert got[row] == want and p[want] > 0, (row, got[row], want)


def test_uniforms_are_uniform_and_keyed_by_seed_and_index():
    u = np.array([sampling_uniform(seed, index) for seed in range(200) for index in range(100)])
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert np.abs(np.sort(u) - (np.arange(len(u)) + 0.5) / len(u)).max() < 0.015  # Kolmogorov-Smirnov
    assert len(set(u.tolist())) == len(u)
    assert sampling_uniform(7, 3) == sampling_uniform(7, 3) != sampling_uniform(8, 3) != sampling_uniform(7, 4)
    assert 0 <= sampling_uniform(-5, 0) < 1 and 0 <= sampling_uniform(2**70, 2**40) < 1


def test_a_rows_draw_does_not_depend_on_its_neighbours():
    """Greedy and sampled rows, different temperatures, top-p and suppressed sets in one batch: each
    row gives what it gives alone."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 50, generator=g) * 3
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.2, seed=1),
              SamplingParams(temperature=1.0, top_p=0.5, seed=2), SamplingParams(temperature=1.3, seed=3,
              suppress_token_ids=(1, 2, 3)), SamplingParams(temperature=0, suppress_token_ids=(4,)),
              SamplingParams(temperature=0.9, seed=4, suppress_token_ids=(1, 2, 3))]
    batch_rows = [Row(sp, sp.seed, num_outputs=5) for sp in params]
    together = sample(logits, batch_rows)
    for i, r in enumerate(batch_rows):
        alone = sample(logits[i:i + 1], [r])
        assert alone.token_ids == together.token_ids[i:i + 1]
        assert alone.logprobs == pytest.approx(together.logprobs[i:i + 1], abs=1e-6)
        assert alone.sampling_logprobs == pytest.approx(together.sampling_logprobs[i:i + 1], abs=1e-6)
    assert together.token_ids[0] == int(logits[0].argmax())
    assert together.token_ids[3] not in (1, 2, 3) and together.token_ids[5] not in (1, 2, 3)
    assert together.sampling_logprobs[0] == 0.0 and together.bad_rows == []


def test_non_finite_rows_are_reported_and_the_rest_sample_normally():
    logits = torch.zeros(3, 9)
    logits[1, 4] = float("nan")
    logits[2] = float("-inf")
    sp = SamplingParams(temperature=1.0)
    out = sample(logits, rows(3, sp))
    assert out.bad_rows == [1, 2]
    assert out.token_ids[0] == sample(logits[:1], rows(1, sp)).token_ids[0]
    assert math.isfinite(out.logprobs[0])


def test_sampled_requests_survive_preemption_unchanged(models, tiny):
    """A cache too small for the batch preempts and recomputes sequences: each still draws the
    tokens it draws in a cache that holds everyone (the draw is keyed by the token's index)."""
    model = models("qwen2_vl")
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    prompts = [f"env {i}: <image> act" + "!" * (i % 5) for i in range(16)]
    images = [tiny.frame(200 + i, 56, 56) for i in range(16)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, seed=11)
    big = Engine(model, processor, block_size=4, num_blocks=1024, enable_prefix_caching=False)
    small = Engine(model, processor, block_size=4, num_blocks=20, enable_prefix_caching=False)
    want = big.generate(images, prompts, sp)
    got = small.generate(images, prompts, sp)
    assert small.stats.preemptions > 0
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert len({tuple(w.token_ids) for w in want}) > 8
