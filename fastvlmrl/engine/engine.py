"""The rollout engine: batched generation for N envs over the trainer's own model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence as Seq

import torch
from torch import nn

from fastvlmrl.engine.attention import flash_usable, select_backend
from fastvlmrl.engine.block_manager import BlockManager
from fastvlmrl.engine.cuda_graphs import DecodeGraphs
from fastvlmrl.engine.families import eos_ids, family_for, sliding_window
from fastvlmrl.engine.kv_cache import KVCache, cache_shape_for, kv_blocks_needed, num_blocks_for
from fastvlmrl.engine.model_runner import ModelRunner
from fastvlmrl.engine.nvtx import nvtx_range
from fastvlmrl.engine.requests import Request, SequenceBuilder, per_request, preprocess, with_sampling
from fastvlmrl.engine.sampler import SampleOutput, sample
from fastvlmrl.engine.sampling_params import SamplingParams
from fastvlmrl.engine.scheduler import Scheduler
from fastvlmrl.engine.sequence import Generation, Sequence, Status, finish_reason
from fastvlmrl.engine.weights import WeightVersions

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters of the last ``generate`` call."""

    prefill_steps: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed
    cached_prompt_tokens: int = 0  # prompt tokens served by the prefix cache
    decode_steps: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


class Engine:
    """Generates for a batch of (image, prompt) requests at once with a paged KV cache.

    The engine keeps a reference to ``model``: it reads the same parameter tensors the optimizer
    updates (LoRA layers included), so there is nothing to copy or sync between an update and the
    next rollout. A ``generate`` call checks and queues its requests (:mod:`.requests`), drops what
    the weights' changes made stale (:mod:`.weights`), then runs :meth:`step` until the queue is
    empty. Arguments:

    - ``block_size``: tokens per KV block, a power of two. None = 256 when flash-attn's paged
      decode can run (it needs a multiple of 256), else 16 (the project's paged-decode kernel).
    - ``num_blocks``: KV blocks to allocate; None = what ``expected_seqs`` sequences of
      ``expected_seq_len`` tokens need (each rounded up to whole blocks; without them, what
      ``max_num_seqs`` sequences of ``max_model_len`` tokens could use), clamped to what fits in
      ``memory_fraction`` of the device's free memory now. Fewer blocks than needed is correct but
      slower: sequences are preempted and recomputed (logged).
    - ``max_num_seqs`` / ``max_num_batched_tokens``: per-step limits (a prefill step packs up to
      this many prompt tokens).
    - ``max_model_len``: context limit. None = ``expected_seq_len`` with a margin (an eighth, at
      least 64 tokens, rounded up to whole blocks) when given, else the text config's
      ``max_position_embeddings``. It sets the block tables' width, which sizes the CUDA graphs'
      inputs and the paged-decode splits: a run that knows its longest sequence should say it.
    - ``enable_prefix_caching``: share full prompt blocks between requests (and across calls while
      the weights are unchanged).
    - ``use_flash_attn``: None = when installed, False = never, True = required.
    - ``use_cuda_graphs``: capture the decode step for a set of batch sizes (CUDA only). None = try
      on CUDA models and decode eagerly if capture fails (logged, and said in ``backend``); True =
      required; False = off. Captured graphs read the parameters in place, so optimizer steps are
      seen; when the parameter tensors themselves change (LoRA injected later, ``.to()``) or a peft
      adapter is switched, the next ``generate`` captures them again.
    - ``compile_decode``: run the decode body through ``torch.compile`` (before graph capture on
      CUDA); a compile that fails raises (with ``use_cuda_graphs`` None too). Off by default: it
      has not run on a GPU yet (scripts/gpu_check.sh measures it). ``runner.compile_decode()``
      opts in without requiring it (a failed compile then decodes eagerly, logged, said in
      ``backend``).
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any = None,
        *,
        block_size: int | None = None,
        num_blocks: int | None = None,
        memory_fraction: float = 0.3,
        expected_seqs: int | None = None,
        expected_seq_len: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 16384,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        use_flash_attn: bool | None = None,
        use_cuda_graphs: bool | None = None,
        compile_decode: bool = False,
    ):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        self.family = family_for(base)
        embed = base.get_input_embeddings().weight
        device, dtype = embed.device, embed.dtype
        if block_size is None:
            # flash-attn 2's paged decode needs blocks of a multiple of 256 tokens.
            block_size = 256 if use_flash_attn is not False and flash_usable(device, dtype) else 16
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(
                f"block_size must be a power of two (the paged-decode kernel's rule; flash-attn's paged "
                f"decode also needs a multiple of 256), got {block_size}"
            )
        self.model = base
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        text_config = base.config.get_text_config()
        self.max_model_len = max_model_len or text_config.max_position_embeddings
        if max_model_len is None and expected_seq_len:
            with_margin = expected_seq_len + max(64, expected_seq_len // 8)
            self.max_model_len = min(self.max_model_len, -(-with_margin // block_size) * block_size)
        window = sliding_window(text_config)
        if window is not None and window < self.max_model_len:
            # The paged attention is full attention: within the window it is the same thing, so cap
            # the context there instead of silently diverging from the model past it.
            logger.warning(
                "fastvlmrl engine: the model uses sliding-window attention (%d tokens), which the paged "
                "attention does not implement: max_model_len capped from %d to %d",
                window,
                self.max_model_len,
                window,
            )
            self.max_model_len = window

        shape = cache_shape_for(text_config, block_size, dtype)
        if num_blocks is None:
            needed = kv_blocks_needed(min(expected_seqs or max_num_seqs, max_num_seqs),
                                      min(expected_seq_len or self.max_model_len, self.max_model_len), block_size)
            num_blocks = num_blocks_for(shape, device, memory_fraction, needed)
            if num_blocks < needed:
                logger.warning("fastvlmrl engine: %d KV blocks needed, %d fit in %.0f%% of free memory: sequences "
                               "will be preempted and recomputed", needed, num_blocks, 100 * memory_fraction)
        self.kv = KVCache(shape, num_blocks, device)
        self.attention = select_backend(device, dtype, block_size, use_flash_attn, self.family.image_blocks)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.runner = ModelRunner(base, self.family, self.kv, self.attention, self.max_model_len)
        self.requests = SequenceBuilder(self.family, self.block_manager, self.runner, self.max_model_len)
        self.eos_ids = eos_ids(base, self.tokenizer)
        self.stats = EngineStats()
        self._said_context_cut = False
        self.weight_versions = WeightVersions(base)
        self._require_graphs = bool(use_cuda_graphs)
        if compile_decode:
            self.runner.compile_decode(required=True)

        if use_cuda_graphs and device.type != "cuda":
            raise ValueError("use_cuda_graphs=True needs a CUDA model")
        graphs = "no CUDA graphs"
        if use_cuda_graphs or (use_cuda_graphs is None and device.type == "cuda"):
            try:
                self.capture_cuda_graphs()
                graphs = f"CUDA graphs for batch sizes {self.runner.graphs.batch_sizes}"
            except Exception as e:
                if use_cuda_graphs or compile_decode:  # (the graphs' warm-up call compiles)
                    raise
                self.runner.graphs = None
                graphs = f"no CUDA graphs (capture failed: {type(e).__name__}: {e})"
                logger.warning("fastvlmrl engine: CUDA graph capture failed, decoding eagerly: %s", e)
        self._graphs_note = graphs
        logger.info(
            "fastvlmrl engine (%s): %s; %d KV blocks x %d tokens (%.1f MiB)",
            self.family.name,
            self.backend,
            num_blocks,
            block_size,
            self.kv.nbytes / 2**20,
        )

    @property
    def backend(self) -> str:
        """What runs each part of a step, e.g. "prefill: torch sdpa; decode: fastvlmrl.kernels
        paged_decode_attention (torch reference); eager decode body; no CUDA graphs; LM head:
        float32 logits"."""
        return (f"{self.attention.name}; {self.runner.decode_body_note}; {self._graphs_note}; "
                f"LM head: {_logits_precision(self.kv.shape.dtype, self.runner.device)}")

    def capture_cuda_graphs(self) -> None:
        """(Re)capture the decode graphs; the engine calls it again when the weight tensors change."""
        with self.runner.engine_mode():
            self.runner.graphs = None
            self.weight_versions.graphs_dropped()
            self.runner.graphs = DecodeGraphs(self.runner, self.scheduler.max_num_seqs)
            self.weight_versions.graphs_captured()

    # -- public API --------------------------------------------------------------------------------

    def generate(
        self,
        images: Seq[Any],
        prompts: Seq[str],
        sampling: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[Generation]:
        """One output per (image, prompt), in order.

        ``images[i]`` is what the processor takes for one prompt (an image, a list of images, or
        None for text only); ``prompts[i]`` is the full prompt text with the image placeholder (a
        chat template already applied). A request that fails (empty prompt, bad image, too long)
        gets a Generation with ``error`` set; the others complete.
        """
        if self.processor is None:
            raise ValueError("Engine.generate needs a processor; use generate_requests with token ids instead")
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        params = per_request(sampling, len(prompts))
        items = [preprocess(self.processor, self.family, im, p, sp) for im, p, sp in zip(images, prompts, params)]
        return self._generate(items)

    def generate_requests(
        self, requests: Seq[Request], sampling: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[Generation]:
        """Like :meth:`generate` for requests already turned into token ids and image tensors."""
        return self._generate(with_sampling(requests, per_request(sampling, len(requests))))

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt blocks (done automatically when the weights change in place)."""
        self.block_manager.reset_prefix_cache()

    def step(self) -> list[Generation]:
        """One scheduling step, as nano-vllm's: encode the images of the sequences the next prefill
        may admit, schedule, run a packed prefill or a batched decode, sample one token for each
        scheduled sequence, append it and finish the sequences that are done.

        Returns the generations that finished (or failed) in this step. ``generate`` calls it until
        the queue is empty, inside the engine mode (paged attention switched on, inference mode):
        it only runs there.
        """
        if not self.runner.in_engine_mode:
            raise RuntimeError("Engine.step runs inside generate/generate_requests (the engine mode)")
        sched, done = self.scheduler, []
        candidates, errors = sched.prefill_candidates(), {}
        if candidates:
            t0 = time.perf_counter()
            with nvtx_range("engine/vision"):
                errors = self.runner.encode_images(candidates)
            self.stats.vision_s += time.perf_counter() - t0
            for seq in candidates:
                if seq.seq_id in errors:
                    sched.remove_waiting(seq)
                    self._fail(seq, errors[seq.seq_id])
                    done.append(seq.result)
        seqs, is_prefill = sched.schedule()
        if not seqs:
            # Only failed candidates were removed this round; anything else is a scheduler bug
            # (requests that can never fit the cache are rejected before they are queued).
            assert errors, f"no progress: {len(sched.waiting)} waiting, {sched.block_manager.num_free} free"
            return done
        out = self._prefill(seqs) if is_prefill else self._decode(seqs)
        bad = set(out.bad_rows)
        for i, (seq, tok, lp, slp) in enumerate(zip(seqs, out.token_ids, out.logprobs, out.sampling_logprobs)):
            if i in bad:
                self._fail_running(seq, "the model produced non-finite logits (NaN/inf) for this request")
            else:
                self._append(seq, tok, lp, slp)
        return done + [seq.result for seq in seqs if seq.status is Status.FINISHED]

    # -- internals ---------------------------------------------------------------------------------

    def _generate(self, items: list[Request | str]) -> list[Generation]:
        self.stats = EngineStats()
        with self.runner.engine_mode():
            self._check_weights_version()
            results = []
            for item in items:
                gen, seq = self.requests.admit(item)
                results.append(gen)
                if seq is not None:
                    self.scheduler.add(seq)
            preempted_before = self.scheduler.num_preemptions
            try:
                while not self.scheduler.is_finished():
                    self.step()
            except BaseException:
                self.scheduler.abort_all()  # leave the engine usable for the next call
                # Blocks registered in the prefix cache by the failed step may never have been
                # written: drop every cached key rather than serve garbage K/V next call.
                self.reset_prefix_cache()
                raise
            self.stats.preemptions = self.scheduler.num_preemptions - preempted_before
        for gen in results:
            if gen.hidden_state is not None:
                # Outside inference mode: a normal tensor a value head may use under autograd.
                gen.hidden_state = gen.hidden_state.clone()
        return results

    def _check_weights_version(self) -> None:
        values_changed, graphs_stale = self.weight_versions.check()
        if values_changed:
            self.reset_prefix_cache()
        if graphs_stale:
            try:
                self.capture_cuda_graphs()
            except Exception as e:
                self.runner.graphs = None
                self.weight_versions.graphs_dropped()
                if self._require_graphs:
                    raise
                self._graphs_note = f"no CUDA graphs (re-capture failed: {type(e).__name__}: {e})"
                logger.warning("fastvlmrl engine: CUDA graph re-capture failed, decoding eagerly: %s", e)

    def _prefill(self, seqs: list[Sequence]) -> SampleOutput:
        t0 = time.perf_counter()
        with nvtx_range("engine/prefill"):
            logits, hidden = self.runner.prefill(seqs)
            out = sample(logits, seqs)
        self.stats.prefill_steps += 1
        for seq, h in zip(seqs, hidden):
            self.stats.prefill_tokens += len(seq) - seq.num_cached_tokens
            self.stats.cached_prompt_tokens += seq.num_cached_tokens
            seq.image_features = seq.image_token_positions = None
            if seq.result.hidden_state is None:  # not a recompute after preemption
                seq.result.hidden_state = h.clone()
                seq.result.num_cached_tokens = seq.num_cached_tokens
        self.stats.prefill_s += time.perf_counter() - t0
        return out

    def _decode(self, seqs: list[Sequence]) -> SampleOutput:
        t0 = time.perf_counter()
        with nvtx_range("engine/decode"):
            logits = self.runner.decode(seqs)
            out = sample(logits, seqs)
        self.stats.decode_steps += 1
        self.stats.decode_s += time.perf_counter() - t0
        return out

    def _append(self, seq: Sequence, token: int, logprob: float, sampling_logprob: float) -> None:
        seq.token_ids.append(token)
        gen = seq.result
        gen.logprobs.append(logprob)
        gen.sampling_logprobs.append(sampling_logprob)
        self.stats.generated_tokens += 1
        detokenize = self._detokenize if self.tokenizer is not None else None
        reason, text = finish_reason(seq, self.eos_ids, self.max_model_len, detokenize)
        if reason is None:
            return
        if reason == "length" and seq.num_outputs < seq.sampling.max_new_tokens and not self._said_context_cut:
            self._said_context_cut = True
            logger.warning("fastvlmrl engine: a sequence reached the context limit (max_model_len=%d) after %d of its "
                           "%d new tokens; give the engine a larger max_model_len (or expected_seq_len)",
                           self.max_model_len, seq.num_outputs, seq.sampling.max_new_tokens)
        self.scheduler.finish(seq)
        gen.token_ids = seq.output_ids
        gen.finish_reason = reason
        gen.text = text if text is not None else self._detokenize(gen.token_ids)

    def _fail(self, seq: Sequence, error: str) -> None:
        seq.result.finish_reason, seq.result.error = "error", error

    def _fail_running(self, seq: Sequence, error: str) -> None:
        """Fail a scheduled sequence: its blocks are freed and its partial output dropped."""
        self.scheduler.finish(seq)
        gen = seq.result
        gen.token_ids, gen.logprobs, gen.sampling_logprobs, gen.text, gen.hidden_state = [], [], [], "", None
        self._fail(seq, error)

    def _detokenize(self, ids: list[int]) -> str:
        if self.tokenizer is None or not hasattr(self.tokenizer, "decode"):
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _logits_precision(dtype: torch.dtype, device: torch.device) -> str:
    """How the LM head's logits are computed, for ``backend``."""
    from fastvlmrl.kernels.linear import fp32_gemm_available

    if dtype in (torch.float32, torch.float64):
        return f"{str(dtype).removeprefix('torch.')} logits"
    if device.type != "cuda":
        return "fp32 logits (inputs upcast)"
    if fp32_gemm_available(device):
        return "fp32 logits (fp32-output GEMM)"
    return "logits rounded to bf16/fp16 (this torch has no mm out_dtype)"
