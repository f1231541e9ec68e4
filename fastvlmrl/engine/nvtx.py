"""NVTX ranges for Nsight Systems that cost nothing on a CPU-only machine.

``torch.cuda.nvtx`` raises on a CPU-only torch build, so the range is a no-op there; on a CUDA
build the ``nvtx`` package is used when installed (domains and colours), else torch's ranges.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

try:
    import nvtx as _nvtx_pkg
except ImportError:  # optional (the "gpu" extra)
    _nvtx_pkg = None


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    if not torch.cuda.is_available():
        yield
    elif _nvtx_pkg is not None:
        with _nvtx_pkg.annotate(name, domain="fastvlmrl"):
            yield
    else:
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
