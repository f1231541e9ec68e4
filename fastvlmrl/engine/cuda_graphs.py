"""CUDA graphs for the decode step (GPU only).

One graph per batch size in ``batch_sizes`` (1, 2, 4, 8, then every 16 up to ``max_num_seqs``),
captured largest first into one shared memory pool. Only the transformer body is graphed (embed,
layers, final norm); the LM head and the sampler run eager, as in nano-vllm. A step with B
sequences replays the smallest graph >= B after copying its inputs into the static buffers.

Pitfalls handled (from issues in other engines): the block-table buffer is as wide as the longest
possible sequence (``max_model_len`` / ``block_size`` blocks) and every row is rewritten on each
replay; padded rows are empty sequences (slot -1 = nothing stored, length 1 over block 0, whose
content is finite because the cache is zero-initialised); the table slice a graph reads is a row
prefix of a contiguous buffer, so it stays contiguous.

Graphs read the parameters by address: in-place optimizer steps are seen by the next replay;
replaced modules or parameter tensors (and switched peft adapters) make the engine capture again at
the next ``generate`` (see :mod:`fastvlmrl.engine.weights`).

Testing: the padded static-buffer step runs on CPU in the tests (``capture=False``); capture and
replay themselves run only in the GPU tests (tests/engine/test_gpu.py, scripts/bench_engine_gpu.sh).
"""

from __future__ import annotations

import torch


class DecodeGraphs:
    """Static buffers + one captured graph per batch size.

    ``capture=False`` keeps the buffers and runs the same padded step eagerly instead of
    replaying: that is how the CPU tests check the padding rows and the buffer refills.
    """

    def __init__(self, runner, max_num_seqs: int, capture: bool = True):
        self.runner = runner
        sizes = [1, 2, 4, 8, *range(16, max_num_seqs + 1, 16), max_num_seqs]
        self.batch_sizes = sorted({b for b in sizes if b <= max_num_seqs})
        self.max_bs = self.batch_sizes[-1]
        device = runner.device
        self.ids = torch.zeros(self.max_bs, dtype=torch.long, device=device)
        self.positions = torch.zeros(runner.rows, self.max_bs, dtype=torch.long, device=device)
        self.slots = torch.full((self.max_bs,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(self.max_bs, runner.max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(self.max_bs, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if capture:
            self._capture()

    def _capture(self) -> None:
        pool = None
        for bs in reversed(self.batch_sizes):
            args = self._static(bs)
            self.runner.decode_body(*args)  # warm-up: lazy inits and autotuning happen outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self.runner.decode_body(*args)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def _static(self, bs: int):
        return self.ids[:bs], self.positions[:, :bs], self.slots[:bs], self.block_tables[:bs], self.seq_lens[:bs]

    def fits(self, batch: int) -> bool:
        return batch <= self.max_bs

    def run(self, ids, positions, slots, block_tables, seq_lens) -> torch.Tensor:
        b = ids.shape[0]
        bs = next(s for s in self.batch_sizes if s >= b)
        self.ids[:b] = ids
        self.positions[:, :b] = positions
        self.slots.fill_(-1)
        self.slots[:b] = slots
        self.block_tables.zero_()
        self.block_tables[:b, : block_tables.shape[1]] = block_tables
        self.seq_lens.fill_(1)
        self.seq_lens[:b] = seq_lens
        if bs not in self.graphs:  # capture=False
            return self.runner.decode_body(*self._static(bs))[:b]
        self.graphs[bs].replay()
        return self.outputs[bs][:b]
