"""Noticing that the shared model changed between two ``generate`` calls.

The engine reads the trainer's own parameter tensors, so nothing is copied after an update; but
two things it keeps across calls depend on the weights, and go stale in different ways:

- cached prefix K/V was computed with the weights' *values*: any in-place write (an optimizer
  step bumps each tensor's version counter) or a peft adapter switched off/on
  (``disable_adapter()``, ``set_adapter``, which change the function without touching a
  parameter) makes it wrong;
- captured CUDA graphs read parameters by *address* and bake in Python-level branches: in-place
  writes are seen by the next replay, but new or moved tensors (LoRA injected after the engine was
  built, ``.to()``, assigned state dicts) or a switched adapter would be silently ignored.

:class:`WeightVersions` tells the engine which of the two happened; the engine decides what to do
(drop the prefix cache, capture the graphs again).
"""

from __future__ import annotations

from torch import nn


def adapter_state(model: nn.Module) -> list[tuple]:
    """(disabled, active adapters, merged) of every peft LoRA-style layer, in module order."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional
        return []
    return [
        (bool(m.disable_adapters), tuple(m.active_adapters), bool(m.merged))
        for m in model.modules()
        if isinstance(m, BaseTunerLayer)
    ]


def graph_key(model: nn.Module, params: list[tuple[int, int]] | None = None, adapters: list | None = None) -> list:
    """What captured graphs depend on: the parameter tensors' addresses and the adapter state."""
    params = params if params is not None else [(p.data_ptr(), 0) for p in model.parameters()]
    adapters = adapters if adapters is not None else adapter_state(model)
    return [ptr for ptr, _ in params] + adapters


class WeightVersions:
    """The model's weight version as last seen, and the graph key the decode graphs were captured
    with (None while there are no graphs to keep current)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.version: list | None = None  # None: never looked, so the first check is a change
        self.graph_key: list | None = None

    def graphs_captured(self) -> None:
        self.graph_key = graph_key(self.model)

    def graphs_dropped(self) -> None:
        self.graph_key = None

    def check(self) -> tuple[bool, bool]:
        """(the values changed: cached K/V is stale; the graphs are stale) since the last check."""
        params = [(p.data_ptr(), p._version) for p in self.model.parameters()]
        adapters = adapter_state(self.model)
        version = params + adapters
        values_changed = version != self.version
        self.version = version
        graphs_stale = self.graph_key is not None and graph_key(self.model, params, adapters) != self.graph_key
        return values_changed, graphs_stale
