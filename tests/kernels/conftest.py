"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` is set per test (monkeypatch, so it never leaks into other test folders);
``fastvlmrl.kernels`` reads it at call time and loads an interpreted copy of the kernel modules,
so test order does not matter. Tests of the CPU fallback remove it again with
``monkeypatch.delenv``.

Inputs are random but the same every run: each test's seed comes from its own name, so the
suite never passes or fails by chance. ``KERNEL_TEST_SEED=<seed>`` runs with another seed,
``KERNEL_TEST_SEED=random`` with a fresh one; the seed is printed so a failure can be replayed.
"""

import os
import random
import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fixed_seed(request):
    chosen = os.environ.get("KERNEL_TEST_SEED")
    if chosen == "random":
        seed = random.randrange(2**31)
    elif chosen:
        seed = int(chosen)
    else:
        seed = zlib.crc32(request.node.nodeid.encode())
    print(f"KERNEL_TEST_SEED={seed}")
    torch.manual_seed(seed)
    return seed
