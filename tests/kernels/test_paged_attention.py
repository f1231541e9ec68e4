"""paged_decode_attention / store_kv: Triton kernels (interpreted) and the references."""

import math

import pytest
import torch

from fastvlmrl.kernels import HAS_TRITON, paged_attention, paged_decode_attention, reference, store_kv

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")


def naive_attention(q, k_cache, v_cache, block_table, seq_lens, scale):
    """float64, one (sequence, head) at a time, reading the cache token by token."""
    B, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        L = int(seq_lens[b])
        if L == 0:
            continue
        slots = [(int(block_table[b, p // block_size]), p % block_size) for p in range(L)]
        for h in range(Hq):
            kvh = h // (Hq // Hkv)
            k = torch.stack([k_cache[blk, off, kvh] for blk, off in slots]).double()
            v = torch.stack([v_cache[blk, off, kvh] for blk, off in slots]).double()
            p = torch.softmax(k @ q[b, h].double() * scale, dim=0)
            out[b, h] = p @ v
    return out


def random_paged_cache(seq_lens, Hkv, D, block_size, dtype, spare_blocks=3):
    """Caches filled with random numbers, each sequence on shuffled, non-adjacent blocks."""
    B = len(seq_lens)
    max_blocks = max(1, max(math.ceil(n / block_size) for n in seq_lens))
    num_blocks = B * max_blocks + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, Hkv, D).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D).to(dtype)
    perm = torch.randperm(num_blocks)[: B * max_blocks].view(B, max_blocks).to(torch.int32)
    # Entries past a sequence's end are junk and must never be read.
    for b, n in enumerate(seq_lens):
        perm[b, math.ceil(n / block_size):] = -7
    return k_cache, v_cache, perm, torch.tensor(seq_lens, dtype=torch.int32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "Hq,Hkv,D,block_size",
    # GQA ratios 1, 4, 8; head dims 16 ... 128 (80 and 96 are padded to 128 in the kernel);
    # block sizes smaller and larger than the kernel's 32-token tile.
    [(4, 4, 16, 4), (8, 2, 32, 16), (8, 1, 80, 64), (16, 2, 64, 8), (4, 1, 96, 32), (8, 2, 128, 16)],
)
def test_decode_matches_float64(dtype, Hq, Hkv, D, block_size):
    seq_lens = [1, 45, 7, 0, 33]  # length 1, several tiles, a sequence with nothing cached
    k_cache, v_cache, block_table, lens = random_paged_cache(seq_lens, Hkv, D, block_size, dtype)
    q = torch.randn(len(seq_lens), Hq, D).to(dtype)
    out = paged_decode_attention(q, k_cache, v_cache, block_table, lens)
    assert out.shape == q.shape and out.dtype == dtype
    want = naive_attention(q, k_cache, v_cache, block_table, lens, D**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out.double() - want).abs().max() < tol
    assert out[3].abs().max() == 0


@needs_triton
@pytest.mark.parametrize("num_splits,block_size", [(2, 8), (3, 16)])
def test_split_context_reduction(num_splits, block_size):
    # Flash-decoding path (chosen on GPU for small batches): forced here, with splits that end
    # past some sequences' ends and one sequence that needs them all.
    seq_lens = [70, 3, 0, 96]
    k_cache, v_cache, block_table, lens = random_paged_cache(seq_lens, 2, 32, block_size, torch.float32)
    q = torch.randn(4, 8, 32)
    out = paged_attention._decode_triton(q, k_cache, v_cache, block_table, lens, 0.3,
                                         num_splits=num_splits)
    want = naive_attention(q, k_cache, v_cache, block_table, lens, 0.3)
    assert (out.double() - want).abs().max() < 1e-5


@needs_triton
def test_large_scores_do_not_overflow():
    k_cache, v_cache, block_table, lens = random_paged_cache([20, 9], 1, 16, 4, torch.float32)
    q = torch.randn(2, 2, 16) * 100  # scores in the hundreds: exp overflows fp32 unless taken after the max
    out = paged_decode_attention(q, k_cache, v_cache, block_table, lens)
    assert torch.isfinite(out).all()
    want = naive_attention(q, k_cache, v_cache, block_table, lens, 0.25)
    # fp32 scores of size ~s carry rounding ~s * 2^-23 * sqrt(D) (~1e-4 here), which moves the
    # softmax weights, and so the output, by about as much: 1e-3 bounds it with margin.
    assert (out.double() - want).abs().max() < 1e-3


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_writes_slots_and_skips_padding(dtype):
    num_blocks, block_size, Hkv, D = 6, 8, 3, 16  # 3 heads: padded to 4 in the kernel
    k_cache = torch.zeros(num_blocks, block_size, Hkv, D, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_blocks * block_size)[:9].to(torch.int64)
    slots[[2, 5]] = -1
    k, v = torch.randn(9, Hkv, D), torch.randn(9, Hkv, D)  # fp32 into a bf16 cache: cast
    assert store_kv(k, v, k_cache, v_cache, slots) is None
    want_k, want_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            want_k[s // block_size, s % block_size] = k[t].to(dtype)
            want_v[s // block_size, s % block_size] = v[t].to(dtype)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@needs_triton
def test_store_then_decode_equals_sdpa_on_contiguous_cache():
    # The rollout engine's path: prefill K/V stored through slot mappings, then one decode step,
    # compared with PyTorch SDPA over the same keys laid out contiguously.
    B, Hq, Hkv, D, block_size = 3, 8, 2, 32, 4
    lens = [5, 12, 1]
    max_blocks = 4
    block_table = torch.randperm(16)[: B * max_blocks].view(B, max_blocks).to(torch.int32)
    k_cache = torch.full((16, block_size, Hkv, D), float("nan"))  # unwritten slots must stay unread
    v_cache = torch.full_like(k_cache, float("nan"))
    keys = [torch.randn(n, Hkv, D) for n in lens]
    values = [torch.randn(n, Hkv, D) for n in lens]
    for b, n in enumerate(lens):
        pos = torch.arange(n)
        slots = block_table[b, pos // block_size].long() * block_size + pos % block_size
        store_kv(keys[b], values[b], k_cache, v_cache, slots)
    q = torch.randn(B, Hq, D)
    out = paged_decode_attention(q, k_cache, v_cache, block_table, torch.tensor(lens, dtype=torch.int32))
    for b in range(B):
        k = keys[b].repeat_interleave(Hq // Hkv, dim=1).transpose(0, 1)  # [Hq, n, D]
        v = values[b].repeat_interleave(Hq // Hkv, dim=1).transpose(0, 1)
        want = torch.nn.functional.scaled_dot_product_attention(q[b][:, None], k, v)[:, 0]
        torch.testing.assert_close(out[b], want, atol=1e-5, rtol=1e-5)


def test_reference_matches_naive_float64():
    k_cache, v_cache, block_table, lens = random_paged_cache([9, 1, 0, 17], 2, 16, 4, torch.float32)
    q = torch.randn(4, 8, 16)
    out = reference.paged_decode_attention(q, k_cache, v_cache, block_table, lens, scale=0.2)
    want = naive_attention(q, k_cache, v_cache, block_table, lens, 0.2)
    assert (out.double() - want).abs().max() < 1e-5


def _decode_args(**overrides):
    args = dict(
        q=torch.randn(2, 4, 16), k_cache=torch.randn(5, 4, 2, 16), v_cache=torch.randn(5, 4, 2, 16),
        block_table=torch.zeros(2, 3, dtype=torch.int32), seq_lens=torch.ones(2, dtype=torch.int32),
    )
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(q=torch.randn(2, 4, 1, 16)), "q must be"),
        (dict(q=torch.randn(2, 3, 16)), "multiple of num_kv_heads"),
        (dict(q=torch.randn(2, 4, 32)), "head_dim"),
        (dict(q=torch.randn(2, 4, 16, dtype=torch.float64)), "dtype"),
        (dict(k_cache=torch.randn(5, 3, 2, 16), v_cache=torch.randn(5, 3, 2, 16)), "power of two"),
        (dict(v_cache=torch.randn(5, 4, 2, 8)), "v_cache shape"),
        (dict(k_cache=torch.randn(5, 4, 2, 16).transpose(1, 2)), "k_cache must be|v_cache shape"),
        (dict(block_table=torch.zeros(3, 3, dtype=torch.int32)), "block_table must be"),
        (dict(block_table=torch.zeros(2, 3)), "int32"),
        (dict(seq_lens=torch.ones(2)), "seq_lens must be int32"),
        (dict(seq_lens=torch.ones(3, dtype=torch.int32)), "seq_lens must be"),
    ],
)
def test_decode_bad_arguments(overrides, match):
    args = _decode_args(**overrides)
    with pytest.raises(ValueError, match=match):
        paged_decode_attention(**args)


def test_store_kv_bad_arguments():
    kc, vc = torch.zeros(4, 8, 2, 16), torch.zeros(4, 8, 2, 16)
    with pytest.raises(ValueError, match="k must be"):
        store_kv(torch.randn(3, 3, 16), torch.randn(3, 3, 16), kc, vc, torch.arange(3))
    with pytest.raises(ValueError, match="slot_mapping must be"):
        store_kv(torch.randn(3, 2, 16), torch.randn(3, 2, 16), kc, vc, torch.arange(4))
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        store_kv(torch.randn(3, 2, 16), torch.randn(3, 2, 16), kc, vc, torch.zeros(3))
    with pytest.raises(ValueError, match="contiguous in head_dim"):
        store_kv(torch.randn(3, 2, 16), torch.randn(3, 2, 16), kc, torch.zeros(4, 8, 16, 2).transpose(2, 3),
                 torch.arange(3))


@needs_triton
def test_non_contiguous_index_tensors():
    k_cache, v_cache, block_table, lens = random_paged_cache([9, 30, 4], 2, 16, 8, torch.float32)
    q = torch.randn(3, 4, 16)
    table_t = block_table.t().contiguous().t()  # same values, column-major
    lens_strided = torch.stack([lens, lens]).t()[:, 0]  # stride 2
    out = paged_decode_attention(q, k_cache, v_cache, table_t, lens_strided)
    want = naive_attention(q, k_cache, v_cache, block_table, lens, 0.25)
    assert (out.double() - want).abs().max() < 1e-5
    kc, vc = torch.zeros(4, 8, 2, 16), torch.zeros(4, 8, 2, 16)
    slots = torch.tensor([[3, 0], [9, 0], [-1, 0], [20, 0]])[:, 0]  # stride 2
    k, v = torch.randn(4, 2, 16), torch.randn(4, 2, 16)
    store_kv(k, v, kc, vc, slots)
    assert torch.equal(kc[1, 1], k[1]) and torch.equal(vc[2, 4], v[3]) and kc[0, 3].equal(k[0])
