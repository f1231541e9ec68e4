"""Which path each op takes (Triton / interpreter / reference), and the package's import rules."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import fastvlmrl.kernels as K
from fastvlmrl.kernels import logprob, paged_attention, ppo_loss, reference

KERNELS_DIR = pathlib.Path(K.__file__).parent
OP_MODULES = (logprob, paged_attention, ppo_loss)


def small_calls():
    """One call of every public op on small CPU inputs."""
    h, w, t = torch.randn(3, 8), torch.randn(11, 8), torch.tensor([1, 4, -100])
    kc, vc = torch.zeros(4, 4, 2, 16), torch.zeros(4, 4, 2, 16)
    K.store_kv(torch.randn(5, 2, 16), torch.randn(5, 2, 16), kc, vc, torch.tensor([0, 1, 2, 5, -1]))
    return [
        K.fused_linear_logprob(h, w, t, return_entropy=True),
        K.ppo_clip_loss(torch.randn(5), torch.ones(5), torch.tensor([0, 2, 5]), torch.zeros(2), torch.ones(2)),
        K.ppo_clip_loss_token_level(torch.randn(5), torch.ones(5), torch.randn(5), torch.randn(5)),
        K.paged_decode_attention(torch.randn(2, 4, 16), kc, vc, torch.tensor([[0, 1], [1, 0]], dtype=torch.int32),
                                 torch.tensor([6, 3], dtype=torch.int32)),
    ]


def test_cpu_without_env_var_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")

    def no_triton(name):
        raise AssertionError(f"Triton module {name} loaded on the CPU fallback path")

    for module in OP_MODULES:
        monkeypatch.setattr(module, "load_jit", no_triton)
    outputs = small_calls()
    assert all(o is not None for o in outputs)


@pytest.mark.skipif(not K.HAS_TRITON, reason="triton not installed")
def test_cpu_with_env_var_runs_the_triton_kernels(monkeypatch):
    for name in ("fused_linear_logprob", "ppo_clip_loss", "ppo_clip_loss_token_level",
                 "paged_decode_attention", "store_kv"):
        monkeypatch.setattr(reference, name, lambda *a, _n=name, **k: pytest.fail(f"reference {_n} called"))
    small_calls()


@pytest.mark.skipif(not K.HAS_TRITON, reason="triton not installed")
def test_interpreted_kernels_leave_triton_language_as_they_found_it():
    """Triton's interpreter patches triton.language while a kernel runs and does not undo it for
    @triton.jit helpers (the PPO kernels call two, tl.sum/tl.max are others): left patched, every
    later compiled kernel in the process failed to build (tests/kernels/test_compile.py after
    tests/engine's interpreter test)."""
    from fastvlmrl.kernels._dispatch import _language_namespaces

    namespaces = _language_namespaces()
    before = [dict(vars(ns)) for ns in namespaces]
    small_calls()  # TRITON_INTERPRET=1 (tests/kernels/conftest.py): every op through the interpreter
    for ns, members in zip(namespaces, before):
        now = vars(ns)
        # (names the interpreter adds, once per process, to the modules of the helpers it rewrites
        # stay: they replace nothing; see _dispatch._restore)
        replaced = sorted(n for n in members if now.get(n) is not members[n])
        assert not replaced, f"{ns.__name__} still patched: {replaced[:8]}"


@pytest.mark.skipif(not K.HAS_TRITON, reason="triton not installed")
def test_float64_always_takes_the_reference(monkeypatch):
    for module in OP_MODULES:
        monkeypatch.setattr(module, "load_jit", lambda name: pytest.fail("float64 reached Triton"))
    logp = K.fused_linear_logprob(torch.randn(2, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64),
                                  torch.tensor([0, 3]))
    assert logp.dtype == torch.float64


@pytest.mark.skipif(not K.HAS_TRITON, reason="triton not installed")
def test_interpreter_leaves_triton_language_as_it_found_it():
    import triton.language as tl

    before = {name: getattr(tl, name) for name in ("sum", "max", "zeros")}
    small_calls()
    assert all(getattr(tl, name) is obj for name, obj in before.items())


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_INTERPRET"] = "1"  # even when asked, no triton means the reference
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_imports_and_runs_without_triton():
    code = f"""
import sys
sys.modules["triton"] = None  # import triton -> ImportError
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import fastvlmrl.kernels as K
assert not K.HAS_TRITON
from test_dispatch import small_calls
small_calls()
assert "triton" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_vendored_copy_works_without_the_rest_of_fastvlmrl():
    # Other projects import kernels/ on its own: load it under another package name, with every
    # other fastvlmrl module blocked.
    code = f"""
import importlib.util, sys
sys.modules["fastvlmrl"] = None
spec = importlib.util.spec_from_file_location(
    "vendored_kernels", {str(KERNELS_DIR / "__init__.py")!r},
    submodule_search_locations=[{str(KERNELS_DIR)!r}])
mod = importlib.util.module_from_spec(spec)
sys.modules["vendored_kernels"] = mod
spec.loader.exec_module(mod)
import torch
out = mod.ppo_clip_loss(torch.randn(4), torch.ones(4), torch.tensor([0, 4]), torch.zeros(1), torch.ones(1))
assert torch.isfinite(out.loss)
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_kernels_import_only_torch_triton_and_the_standard_library():
    allowed = {"torch", "triton", "__future__", "contextlib", "functools", "importlib", "math", "os",
               "sys", "threading", "types", "typing", "warnings"}
    for path in sorted(KERNELS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
