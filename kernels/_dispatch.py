"""Choosing between a Triton kernel and the PyTorch reference, and loading kernels lazily.

Triton decides whether a ``@triton.jit`` function runs compiled or through its CPU interpreter
when the decorator runs, that is when the module holding it is imported, by reading the
``TRITON_INTERPRET`` environment variable. So the modules with ``@triton.jit`` code (the
``_*_jit.py`` files) are never imported by ``fastvlmrl.kernels`` itself: :func:`load_jit` imports
them on first use, once per mode, under a mode-specific module name. A process can then run the
interpreter in one test and compiled kernels in another, whatever the import order.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
from types import ModuleType

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # triton is optional: every op falls back to its reference
    HAS_TRITON = False

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, bool], ModuleType] = {}


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now (read at every call, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors should run its Triton kernel.

    CUDA tensors use Triton when it is installed. CPU tensors use the reference, unless
    ``TRITON_INTERPRET=1`` is set, which runs the Triton kernel through the interpreter (tests).
    float64 always goes to the reference (the kernels compute in fp32).
    """
    if not HAS_TRITON:
        return False
    if any(t.dtype == torch.float64 for t in tensors):
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreter_requested() and all(t.device.type == "cpu" for t in tensors)


def load_jit(name: str) -> ModuleType:
    """Import ``kernels/<name>.py`` (a module with ``@triton.jit`` kernels) for the current mode."""
    interpret = interpreter_requested()
    key = (name, interpret)
    module = _LOADED.get(key)
    if module is not None:
        return module
    with _LOCK:
        module = _LOADED.get(key)
        if module is None:
            module = _import_fresh(name, interpret)
            _LOADED[key] = module
    return module


def triton_language_interpreted() -> bool:
    """Whether triton itself was imported with ``TRITON_INTERPRET=1`` (its helpers interpreted).

    Compiled kernels cannot be built in such a process: set the variable per call instead.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.sum, InterpretedFunction)


def _import_fresh(name: str, interpret: bool) -> ModuleType:
    if not interpret and triton_language_interpreted():
        raise RuntimeError(
            "triton was imported while TRITON_INTERPRET=1 was set, so compiled Triton kernels "
            "cannot be built in this process; unset TRITON_INTERPRET before importing triton "
            "(fastvlmrl.kernels reads it at call time, so it can be set later, per call)"
        )
    path = os.path.join(os.path.dirname(__file__), f"{name}.py")
    qualname = f"{__package__}.{name}" + ("_interpreted" if interpret else "")
    spec = importlib.util.spec_from_file_location(qualname, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    # The decorator reads TRITON_INTERPRET while the module body runs: pin it to the mode asked.
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        sys.modules[qualname] = module
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(qualname, None)
        raise
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreter_index_compat()

        for value in vars(module).values():
            if isinstance(value, InterpretedFunction):
                value.run = _in_interpreter_scope(value.run)
    return module


def _interpreter_index_compat() -> None:
    """Triton 3.6's interpreter turns a scalar tensor into an int with ``int(array)``, which NumPy 2
    refuses for the one-element arrays the interpreter keeps scalars in (a kernel's
    ``range(start, end, TILE)`` over loaded bounds fails); later tritons squeeze the array first.
    Do the same for older ones (where triton already squeezes, the same function again)."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "fastvlmrl_compat", False):
        return

    def patch_lang_tensor(tensor, *args, **kwargs):
        original(tensor, *args, **kwargs)
        index = lambda self: int(self.handle.data.squeeze())  # noqa: E731
        scope = args[0] if args else kwargs.get("scope")
        if scope is not None:  # triton >= 3.5 patches through a scope it undoes after the run
            scope.set_attr(tensor, "__index__", index)
        else:  # older tritons set the attribute directly
            tensor.__index__ = index

    patch_lang_tensor.fastvlmrl_compat = True
    interpreter._patch_lang_tensor = patch_lang_tensor


# Triton's own helpers in triton.language (tl.sum, tl.max, tl.zeros, ...) are @triton.jit
# functions too, decorated when triton was imported. If that import happened without
# TRITON_INTERPRET=1 (the usual case: the env var is only set for some tests), they are compiled
# JIT functions that the interpreter refuses to call. While an interpreted kernel runs, they are
# swapped for interpreted twins, and put back afterwards (compiled kernels never see the twins).
_TWINS: dict[int, object] = {}
_SWAP_LOCK = threading.RLock()


#
# The interpreter also patches triton.language itself while a kernel runs (tl.load, tensor
# methods, tl.range, dtype.to_ir, ...). It undoes that for the kernel, but not for @triton.jit
# helper functions the kernel calls (InterpretedFunction.__call__ never restores its patches), so
# one interpreted run would leave triton.language patched for the whole process and every later
# compiled kernel fails to build. The namespaces the interpreter patches are therefore
# snapshotted before an interpreted run and put back after it.
def _language_namespaces() -> list:
    import triton.language as tl

    core = [getattr(tl.core, name, None) for name in ("tensor", "dtype", "condition", "tensor_descriptor_base")]
    return [tl, tl.core, tl.math, tl.standard] + [ns for ns in core if ns is not None]  # (older tritons lack some)


def _snapshot(namespaces: list) -> list[tuple[object, dict]]:
    return [(ns, dict(vars(ns))) for ns in namespaces]


def _restore(snapshot: list[tuple[object, dict]]) -> None:
    """Put back every member that was replaced. Names the interpreter added stay: its rewritten
    helper functions look up names it injects into their module's globals, and an added name
    shadows nothing a compiled kernel uses."""
    for ns, before in snapshot:
        now = vars(ns)
        for name, member in before.items():
            if now.get(name) is not member:
                setattr(ns, name, member)


@contextlib.contextmanager
def _interpreted_triton_language():
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    snapshot = _snapshot(_language_namespaces())
    swapped = []
    for namespace in (tl, tl.standard, tl.math, tl.core):
        for name, member in list(vars(namespace).items()):
            if isinstance(member, JITFunction):
                twin = _TWINS.get(id(member))
                if twin is None:
                    twin = _TWINS[id(member)] = InterpretedFunction(member.fn)
                swapped.append((namespace, name, member))
                setattr(namespace, name, twin)
    try:
        yield
    finally:
        for namespace, name, member in reversed(swapped):
            setattr(namespace, name, member)
        _restore(snapshot)


def _in_interpreter_scope(run):
    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        with _SWAP_LOCK, _interpreted_triton_language():
            return run(*args, **kwargs)

    return wrapped


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
