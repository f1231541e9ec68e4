"""Which sequences run in the next step: admission control and preemption.

A step is either a prefill (new sequences, packed) or a decode (one token for every running
sequence), never both, as in nano-vllm. Prefill admits waiting sequences in order while their
blocks fit and the token budget holds; a sequence that does not fit waits for blocks to be freed.
During decode, a sequence that needs a new block and finds none preempts the most recently
admitted sequence (its blocks are freed and it goes back to the front of the queue to be
recomputed later): a batch larger than the cache completes instead of running out of memory.
"""

from __future__ import annotations

from collections import deque

from fastvlmrl.engine.block_manager import BlockManager
from fastvlmrl.engine.sequence import Sequence, Status


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def prefill_candidates(self) -> list[Sequence]:
        """The waiting sequences the next prefill may admit (their images get encoded first)."""
        out, tokens = [], 0
        for seq in self.waiting:
            if len(out) + len(self.running) >= self.max_num_seqs:
                break
            if out and tokens + len(seq) > self.max_num_batched_tokens:
                break
            out.append(seq)
            tokens += len(seq)
        return out

    def remove_waiting(self, seq: Sequence) -> None:
        self.waiting.remove(seq)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """Returns (sequences, is_prefill)."""
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if scheduled and num_tokens + len(seq) > self.max_num_batched_tokens:
                break
            if seq.image_features is None and seq.has_images:
                break  # not encoded yet: the engine encodes candidates before scheduling
            if not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            num_tokens += len(seq) - seq.num_cached_tokens
            seq.status = Status.RUNNING
            self.waiting.popleft()
            scheduled.append(seq)
        if scheduled:
            self.running.extend(scheduled)
            return scheduled, True

        while self.running:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.append(seq)
                scheduled.append(seq)
        self.running.extend(scheduled)
        return scheduled, False

    def preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.block_manager.deallocate(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        self.block_manager.deallocate(seq)
        self.running.remove(seq)

    def abort_all(self) -> None:
        """Drop every sequence and return its blocks (after an error in a step)."""
        for seq in self.running:
            self.block_manager.deallocate(seq)
            seq.status = Status.FINISHED
        for seq in self.waiting:
            seq.status = Status.FINISHED
        self.running.clear()
        self.waiting.clear()
