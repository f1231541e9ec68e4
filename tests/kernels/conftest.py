"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` is set per test (monkeypatch, so it never leaks into other test folders);
``fastvlmrl.kernels`` reads it at call time and loads an interpreted copy of the kernel modules,
so test order does not matter. Tests of the CPU fallback remove it again with
``monkeypatch.delenv``.

Inputs are fresh random numbers every run: the seed is printed so a failure can be replayed
with ``KERNEL_TEST_SEED=<seed>``.
"""

import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = int(os.environ.get("KERNEL_TEST_SEED", random.randrange(2**31)))
    print(f"KERNEL_TEST_SEED={seed}")
    torch.manual_seed(seed)
    return seed
