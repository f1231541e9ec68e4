"""Every Triton kernel compiles for real GPUs (sm_80, sm_90), no GPU needed.

The interpreter checks the kernels' math but not what only the compiler sees (loop-carried
types, tl.dot shape rules, bf16 tensor-core products, register pressure). Triton ships ptxas,
so the kernels are compiled here all the way to cubin, in the configurations the ops launch,
and checked for register spills.
"""

import os
import re
import subprocess
import tempfile

import pytest

from fastvlmrl.kernels import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")


@pytest.fixture(autouse=True)
def triton_imported_compiled():
    from fastvlmrl.kernels._dispatch import triton_language_interpreted

    if triton_language_interpreted():
        pytest.skip("triton was imported with TRITON_INTERPRET=1 (run pytest without it set)")

FLOAT_SCALARS = {"qk_scale", "inv_temp", "clip_eps", "log_cap", "value_clip", "inv_b", "clip_low", "clip_high"}


@pytest.fixture
def compiled_mode(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")


def compile_kernel(module_name, kernel_name, pointer_types, constexprs, *, arch=90, num_warps=4):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastvlmrl.kernels._dispatch import load_jit

    kernel = getattr(load_jit(module_name), kernel_name)
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, pointer_types["default"])
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))
    except RuntimeError as error:
        if "ptxas" in str(error) and "not found" in str(error).lower():
            pytest.skip(f"no ptxas in this triton install: {error}")
        raise
    return compiled


def spilled_bytes(compiled) -> int:
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return 0
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(r"LOCAL:(\d+)", out)
    return int(match.group(1)) if match else 0


DECODE_CASES = [
    # (dtype, G, D, block_size, split): bf16 GQA-4 D=128 blocks of 16 (the benchmark), fp16 D=80
    # with 256-token blocks, fp32 (exact products), small blocks gathered through the table.
    ("bf16", 4, 128, 16, False),
    ("fp16", 8, 80, 256, True),
    ("fp32", 1, 64, 16, False),
    ("bf16", 4, 96, 8, True),
]


@pytest.mark.parametrize("dtype,G,D,block_size,split", DECODE_CASES)
def test_paged_decode_compiles(compiled_mode, dtype, G, D, block_size, split):
    from fastvlmrl.kernels.paged_attention import _tile_for

    tile = _tile_for(block_size)
    pointers = {"default": f"*{dtype}", "block_table_ptr": "*i32", "seq_lens_ptr": "*i32",
                "part_out_ptr": "*fp32", "part_ml_ptr": "*fp32"}
    constexprs = dict(G=G, G_PAD=16, D=D, D_PAD=128 if D > 64 else 64, BLOCK_SIZE=block_size,
                      TILE=tile, TILE_IN_BLOCK=block_size % tile == 0, SPLIT=split,
                      IEEE=dtype == "fp32")
    compiled = compile_kernel("_paged_attention_jit", "paged_decode_kernel", pointers, constexprs)
    assert spilled_bytes(compiled) == 0
    if split:
        compile_kernel("_paged_attention_jit", "paged_decode_reduce_kernel", {"default": "*fp32",
                       "out_ptr": f"*{dtype}"}, dict(D=D, D_PAD=128 if D > 64 else 64, S_PAD=8))


def test_store_kv_compiles(compiled_mode):
    pointers = {"default": "*bf16", "slot_ptr": "*i64"}
    compile_kernel("_paged_attention_jit", "store_kv_kernel", pointers,
                   dict(HKV=8, HKV_PAD=8, D=128, D_PAD=128, BLOCK_SIZE=16), arch=80)


# The logits tiles are fp32 (kernels/linear.py: bf16 inputs, fp32 GEMM output); bf16 tiles are
# what a caller's own bf16 logits would be.
@pytest.mark.parametrize("logits,arch", [("fp32", 90), ("fp32", 80), ("bf16", 90)])
@pytest.mark.parametrize("with_entropy", [True, False])
def test_logprob_kernels_compile(compiled_mode, with_entropy, logits, arch):
    pointers = {"default": "*fp32", "logits_ptr": f"*{logits}", "targets_ptr": "*i64"}
    fwd = compile_kernel("_logprob_jit", "logprob_fwd_kernel", pointers,
                         dict(BLOCK_V=4096, WITH_ENTROPY=with_entropy), num_warps=8, arch=arch)
    bwd = compile_kernel("_logprob_jit", "logprob_bwd_kernel", pointers,
                         dict(BLOCK_V=4096, HAS_G_LOGP=True, HAS_G_ENT=with_entropy), num_warps=8, arch=arch)
    assert spilled_bytes(fwd) == 0 and spilled_bytes(bwd) == 0


@pytest.mark.parametrize("has_cap,has_value", [(True, True), (False, False)])
def test_ppo_kernels_compile(compiled_mode, has_cap, has_value):
    pointers = {"default": "*fp32", "logp_ptr": "*bf16", "cu_ptr": "*i32", "grad_ptr": "*bf16"}
    compile_kernel("_ppo_loss_jit", "ppo_seq_fwd_kernel", pointers,
                   dict(HAS_CAP=has_cap, HAS_VALUE=has_value, BLOCK=256))
    compile_kernel("_ppo_loss_jit", "ppo_seq_bwd_kernel", pointers, dict(BLOCK=256))
    compile_kernel("_ppo_loss_jit", "ppo_token_fwd_kernel", pointers, dict(HAS_CAP=has_cap, BLOCK=1024))
