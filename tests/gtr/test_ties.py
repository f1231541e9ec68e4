"""TIES merging against merges computed by hand, and the LoRA merge (exact deltas, SVD back to a
LoRA pair)."""

import pytest
import torch

from fastvlmrl.gtr.ties import low_rank, merge_lora_adapters, ties_merge, trim


def test_trim_keeps_the_largest_magnitudes():
    delta = torch.tensor([0.1, -0.5, 0.3, -0.05, 0.2])
    assert torch.equal(trim(delta, 0.6), torch.tensor([0.0, -0.5, 0.3, 0.0, 0.2]))
    assert torch.equal(trim(delta, 1.0), delta)
    with pytest.raises(ValueError, match="density"):
        trim(delta, 0.0)


def test_ties_by_hand():
    a = torch.tensor([1.0, -2.0, 0.5, 0.0])
    b = torch.tensor([3.0, 1.0, -0.5, 0.0])
    c = torch.tensor([-1.0, 4.0, -1.5, 0.0])
    # density 1 (no trim): signs of the sums [3, 3, -1.5, 0] -> +, +, -, 0
    # entry 0: agreeing 1, 3 -> 2; entry 1: agreeing 1, 4 -> 2.5; entry 2: agreeing -0.5, -1.5 -> -1; entry 3: none -> 0
    assert torch.allclose(ties_merge([a, b, c], density=1.0), torch.tensor([2.0, 2.5, -1.0, 0.0]))
    # density 0.5: a keeps [_, -2, _, _] and 1.0 (two largest: -2, 1), b keeps 3, 1; c keeps 4, -1.5
    # trimmed a = [1, -2, 0, 0], b = [3, 1, 0, 0], c = [0, 4, -1.5, 0]; sums [4, 3, -1.5, 0]
    # entry 0: 1, 3 -> 2; entry 1: 1, 4 -> 2.5 (a's -2 disagrees); entry 2: -1.5; entry 3: 0
    assert torch.allclose(ties_merge([a, b, c], density=0.5), torch.tensor([2.0, 2.5, -1.5, 0.0]))
    assert torch.allclose(ties_merge([a], density=1.0), a)


def test_low_rank_is_exact_within_the_rank():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)
    a, b = low_rank(delta, 2)
    assert a.shape == (2, 5) and b.shape == (6, 2)
    assert torch.allclose(b @ a, delta, atol=1e-5)


def test_low_rank_of_a_large_matrix_takes_the_randomized_svd_and_keeps_the_callers_random_stream():
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(64, 3, generator=g) @ torch.randn(3, 48, generator=g)  # rank 3, far above 3 + 8
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a, b = low_rank(delta, 4)
    assert torch.equal(torch.rand(1), expected_next)
    assert a.shape == (4, 48) and b.shape == (64, 4)
    assert torch.allclose(b @ a, delta, atol=1e-4)
    a2, b2 = low_rank(delta, 2)  # the best rank-2 approximation: its error is the third singular value
    assert torch.linalg.matrix_norm(b2 @ a2 - delta, ord=2) == pytest.approx(float(torch.linalg.svdvals(delta)[2]), rel=1e-3)


def test_merge_lora_adapters_merges_the_exact_deltas():
    g = torch.Generator().manual_seed(1)
    adapters = [{"m.q.lora_A.weight": torch.randn(2, 4, generator=g), "m.q.lora_B.weight": torch.randn(3, 2, generator=g)}
                for _ in range(3)]
    scale = 2.0
    merged = merge_lora_adapters(adapters, scale=scale, density=0.8, rank=3)  # rank 3 = full: exact
    deltas = [scale * a["m.q.lora_B.weight"] @ a["m.q.lora_A.weight"] for a in adapters]
    expected = ties_merge(deltas, 0.8)
    assert torch.allclose(scale * merged["m.q.lora_B.weight"] @ merged["m.q.lora_A.weight"], expected, atol=1e-5)
    one = merge_lora_adapters(adapters[:1], scale=scale, density=1.0, rank=2)
    assert torch.allclose(one["m.q.lora_B.weight"] @ one["m.q.lora_A.weight"],
                          adapters[0]["m.q.lora_B.weight"] @ adapters[0]["m.q.lora_A.weight"], atol=1e-5)
    with pytest.raises(ValueError, match="different modules"):
        merge_lora_adapters([adapters[0], {"x.lora_A.weight": torch.ones(1, 1), "x.lora_B.weight": torch.ones(1, 1)}],
                            scale=1.0, rank=1)
