"""The DAgger buffer: every corrected sample since the run began (the newest `capacity`; the
oldest go first), from which each PPO mini-batch draws its cloning samples uniformly. A sample is
kept compact and model-free: the frame (zlib-compressed: the games' frames are mostly flat
colour), the task prompt and the reply to clone; `cloning.py` encodes it when drawn. The buffer
and its random stream are part of the checkpoint, so a resumed run draws what the uninterrupted
run would have."""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CorrectedSample:
    frame: np.ndarray | None  # uint8 [H, W, 3]; None: a text game's prompt
    task: str  # the task prompt the agent answered
    reply: str  # the corrected thought with the agent's own action (`correction.corrected_reply`)


class DAggerBuffer:
    def __init__(self, capacity: int, seed=0):
        if capacity < 1:
            raise ValueError(f"the DAgger buffer needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[tuple[bytes, tuple[int, ...], str, str]] = deque(maxlen=capacity)
        self.added = 0  # every sample ever added (the dropped ones too)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sample: CorrectedSample) -> None:
        if sample.frame is None:  # a text game's prompt (ALFWorld): no frame to keep
            self._items.append((None, None, sample.task, sample.reply))
        else:
            frame = np.ascontiguousarray(sample.frame, dtype=np.uint8)
            self._items.append((zlib.compress(frame.tobytes(), 1), frame.shape, sample.task, sample.reply))
        self.added += 1

    def _sample(self, index: int) -> CorrectedSample:
        data, shape, task, reply = self._items[index]
        frame = None if data is None else np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape)
        return CorrectedSample(frame, task, reply)

    def draw(self, count: int) -> list[CorrectedSample]:
        """`count` samples drawn uniformly (without replacement while the buffer holds enough)."""
        if not self._items or count < 1:
            return []
        picks = self.rng.choice(len(self._items), size=count, replace=count > len(self._items))
        return [self._sample(int(i)) for i in picks]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "items": list(self._items), "added": self.added,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; a smaller capacity than the saved one keeps the newest samples."""
        self._items = deque(state["items"], maxlen=self.capacity)
        self.added = int(state["added"])
        self.rng.bit_generator.state = state["rng"]
