"""The rollout engine: batched generation for N envs over the trainer's own model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence as Seq

import torch
from torch import nn

from fastvlmrl.engine.attention import flash_usable, select_backend
from fastvlmrl.engine.block_manager import BlockManager, block_keys, mm_digest
from fastvlmrl.engine.cuda_graphs import DecodeGraphs
from fastvlmrl.engine.families import eos_ids, family_for, sliding_window
from fastvlmrl.engine.kv_cache import KVCache, cache_shape_for, num_blocks_for
from fastvlmrl.engine.model_runner import ModelRunner
from fastvlmrl.engine.nvtx import nvtx_range
from fastvlmrl.engine.sampler import sample
from fastvlmrl.engine.sampling_params import SamplingParams
from fastvlmrl.engine.scheduler import Scheduler
from fastvlmrl.engine.sequence import Generation, Sequence

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """A pre-processed request: prompt token ids (image placeholders expanded, as the model's
    processor makes them) and this request's image tensors (e.g. ``pixel_values`` and, per family,
    ``image_grid_thw`` or ``image_sizes``; empty for a text-only prompt)."""

    prompt_token_ids: Seq[int] | torch.Tensor
    mm_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sampling: SamplingParams | None = None


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
    next rollout. Arguments:

    - ``block_size``: tokens per KV block, a power of two. None = 256 when flash-attn's paged
      decode can run (it needs a multiple of 256), else 16 (the project's paged-decode kernel).
    - ``num_blocks``: KV blocks to allocate; None = as many as fit in ``memory_fraction`` of the
      device's free memory now (capped at what ``max_num_seqs`` sequences of ``max_model_len``
      tokens could use).
    - ``max_num_seqs`` / ``max_num_batched_tokens``: per-step limits (a prefill step packs up to
      this many prompt tokens).
    - ``max_model_len``: context limit; defaults to the text config's ``max_position_embeddings``.
    - ``enable_prefix_caching``: share full prompt blocks between requests (and across calls while
      the weights are unchanged).
    - ``use_flash_attn``: None = when installed, False = never, True = required.
    - ``use_cuda_graphs``: capture the decode step for a set of batch sizes (CUDA only). None = try
      on CUDA models and decode eagerly if capture fails (logged, and said in ``backend``); True =
      required; False = off. Captured graphs read the parameters in place, so optimizer steps are
      seen; when the parameter tensors themselves change (LoRA injected later, ``.to()``) or a peft
      adapter is switched, the next ``generate`` captures them again.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any = None,
        *,
        block_size: int | None = None,
        num_blocks: int | None = None,
        memory_fraction: float = 0.3,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 16384,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        use_flash_attn: bool | None = None,
        use_cuda_graphs: bool | None = None,
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
        max_useful = max_num_seqs * -(-self.max_model_len // block_size)
        if num_blocks is None:
            num_blocks = num_blocks_for(shape, device, memory_fraction, max_useful)
        self.kv = KVCache(shape, num_blocks, device)
        self.attention = select_backend(device, dtype, block_size, use_flash_attn)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.runner = ModelRunner(base, self.family, self.kv, self.attention, self.max_model_len)
        self.eos_ids = eos_ids(base, self.tokenizer)
        self.stats = EngineStats()
        self._weights_version: list[tuple[int, int]] | None = None
        self._graph_params: list | None = None  # what the graphs were captured with (see _graph_key)
        self._require_graphs = bool(use_cuda_graphs)
        self._next_seq_id = 0

        if use_cuda_graphs and device.type != "cuda":
            raise ValueError("use_cuda_graphs=True needs a CUDA model")
        graphs = "no CUDA graphs"
        if use_cuda_graphs or (use_cuda_graphs is None and device.type == "cuda"):
            try:
                self.capture_cuda_graphs()
                graphs = f"CUDA graphs for batch sizes {self.runner.graphs.batch_sizes}"
            except Exception as e:  # noqa: BLE001 - asked for explicitly: fail; by default: run eager
                if use_cuda_graphs:
                    raise
                self.runner.graphs = None
                graphs = f"no CUDA graphs (capture failed: {type(e).__name__}: {e})"
                logger.warning("fastvlmrl engine: CUDA graph capture failed, decoding eagerly: %s", e)
        self.backend = f"{self.attention.name}; {graphs}"
        logger.info(
            "fastvlmrl engine (%s): %s; %d KV blocks x %d tokens (%.1f MiB)",
            self.family.name,
            self.backend,
            num_blocks,
            block_size,
            self.kv.nbytes / 2**20,
        )

    def capture_cuda_graphs(self) -> None:
        with self.runner.engine_mode():
            self.runner.graphs = None
            self._graph_params = None
            self.runner.graphs = DecodeGraphs(self.runner, self.scheduler.max_num_seqs)
            self._graph_params = self._graph_key()

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
        params = _per_request(sampling, len(prompts))
        items: list[Request | str] = []
        for image, prompt, sp in zip(images, prompts, params):
            items.append(self._preprocess(image, prompt, sp))
        return self._generate(items)

    def generate_requests(
        self, requests: Seq[Request], sampling: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[Generation]:
        """Like :meth:`generate` for requests already turned into token ids and image tensors."""
        params = _per_request(sampling, len(requests))
        items = [
            r if r.sampling is not None else Request(r.prompt_token_ids, r.mm_inputs, sp)
            for r, sp in zip(requests, params)
        ]
        return self._generate(items)

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt blocks (done automatically when the weights change in place)."""
        self.block_manager.reset_prefix_cache()

    # -- internals ---------------------------------------------------------------------------------

    def _preprocess(self, image: Any, prompt: str, sp: SamplingParams) -> Request | str:
        if not isinstance(prompt, str) or not prompt.strip():
            return f"empty prompt: {prompt!r}"
        try:
            if image is None:
                enc = self.processor(text=[prompt], return_tensors="pt")
            else:
                enc = self.processor(
                    images=image if isinstance(image, list) else [image], text=[prompt], return_tensors="pt"
                )
        except Exception as e:  # noqa: BLE001 - a processor error belongs to this request only
            return f"preprocessing failed: {type(e).__name__}: {e}"
        mm = {k: enc[k] for k in self.family.mm_keys if k in enc and enc[k] is not None}
        return Request(enc["input_ids"][0], mm, sp)

    def _make_sequence(self, req: Request) -> Sequence:
        ids = req.prompt_token_ids
        ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(t) for t in ids]
        sp = req.sampling
        if not ids:
            raise ValueError("empty prompt: no tokens")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len}")
        vocab = self.runner.embed.weight.shape[0]
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(
                f"prompt token ids must be in the vocabulary [0, {vocab}), got range [{min(ids)}, {max(ids)}]"
            )
        total = min(len(ids) + sp.max_new_tokens, self.max_model_len)
        if self.block_manager.blocks_needed(total) > self.block_manager.num_blocks:
            raise ValueError(
                f"prompt + max_new_tokens = {total} tokens need {self.block_manager.blocks_needed(total)} KV blocks; "
                f"the cache has {self.block_manager.num_blocks}: raise num_blocks/memory_fraction"
            )
        has_image_tokens = self.family.image_token_id in ids
        mm = {k: v for k, v in req.mm_inputs.items() if v is not None}
        if mm and not has_image_tokens:
            raise ValueError("images were given but the prompt has no image token")
        if has_image_tokens and not mm:
            raise ValueError("the prompt has image tokens but no images were given")
        if mm:
            mm = {k: v.to(self.runner.device) for k, v in self.family.check_mm(mm).items()}
            if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in mm.values()):
                raise ValueError("image inputs contain NaN or inf values")
        device = self.runner.device
        seed = sp.seed if sp.seed is not None else int(torch.randint(2**62, ()).item())
        generator = None if sp.greedy else torch.Generator(device=device).manual_seed(seed)
        seq = Sequence(self._next_seq_id, ids, len(ids), sp, mm, generator)
        self._next_seq_id += 1
        if self.block_manager.enable_prefix_caching:
            digest = mm_digest(mm) if mm else None
            seq.prefix_keys = block_keys(ids, self.block_manager.block_size, self.family.image_token_id, digest)
        positions, delta = self.family.prompt_positions(torch.tensor(ids, device=device), mm)
        seq.prompt_positions, seq.rope_delta = positions, delta
        return seq

    def _generate(self, items: list[Request | str]) -> list[Generation]:
        self.stats = EngineStats()
        results: list[Generation] = []
        with self.runner.engine_mode():
            self._check_weights_version()
            for item in items:
                if isinstance(item, str):
                    results.append(Generation(prompt_token_ids=[], finish_reason="error", error=item))
                    continue
                ids = item.prompt_token_ids
                gen = Generation(prompt_token_ids=[])
                results.append(gen)
                try:
                    gen.prompt_token_ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
                    seq = self._make_sequence(item)
                except ValueError as e:
                    gen.finish_reason, gen.error = "error", str(e)
                    continue
                except Exception as e:  # noqa: BLE001 - e.g. a family's position helper on odd input
                    gen.finish_reason, gen.error = "error", f"{type(e).__name__}: {e}"
                    continue
                seq.result = gen
                self.scheduler.add(seq)
            preempted_before = self.scheduler.num_preemptions
            try:
                self._loop()
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

    def _graph_key(self, params: list[tuple[int, int]] | None = None, adapters: list | None = None) -> list:
        """What captured graphs depend on: the parameter tensors' addresses and the adapter state."""
        params = params if params is not None else [(p.data_ptr(), 0) for p in self.model.parameters()]
        adapters = adapters if adapters is not None else _adapter_state(self.model)
        return [ptr for ptr, _ in params] + adapters

    def _check_weights_version(self) -> None:
        # In-place updates bump a tensor's version counter: cached prefix K/V computed with older
        # weights must not be reused.
        # peft adapters switched off/on (``disable_adapter()``, ``set_adapter``) change the function
        # without touching a parameter: part of the version too.
        params = [(p.data_ptr(), p._version) for p in self.model.parameters()]
        adapters = _adapter_state(self.model)
        version = params + adapters
        if version != self._weights_version:
            self.reset_prefix_cache()
            self._weights_version = version
        # Captured graphs read parameters by address and bake in Python-level branches: in-place
        # updates are seen, but new or moved parameters (LoRA injected after the engine was built,
        # `.to()`, assigned state dicts) or a switched adapter would be silently ignored by the old
        # graphs. Capture again.
        if self._graph_params is not None and self._graph_key(params, adapters) != self._graph_params:
            try:
                self.capture_cuda_graphs()
            except Exception as e:  # noqa: BLE001 - as at construction: required = fail, else eager
                self.runner.graphs, self._graph_params = None, None
                if self._require_graphs:
                    raise
                self.backend = f"{self.attention.name}; no CUDA graphs (re-capture failed: {type(e).__name__}: {e})"
                logger.warning("fastvlmrl engine: CUDA graph re-capture failed, decoding eagerly: %s", e)

    def _loop(self) -> None:
        sched = self.scheduler
        while not sched.is_finished():
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
            seqs, is_prefill = sched.schedule()
            if not seqs:
                # Only failed candidates were removed this round; anything else is a scheduler bug
                # (requests that can never fit the cache are rejected before they are queued).
                assert errors, f"no progress: {len(sched.waiting)} waiting, {sched.block_manager.num_free} free"
                continue
            t0 = time.perf_counter()
            if is_prefill:
                with nvtx_range("engine/prefill"):
                    logits, hidden = self.runner.prefill(seqs)
                    out = sample(logits, seqs)
                self.stats.prefill_steps += 1
                for seq, h in zip(seqs, hidden):
                    computed = len(seq) - seq.num_cached_tokens
                    self.stats.prefill_tokens += computed
                    self.stats.cached_prompt_tokens += seq.num_cached_tokens
                    seq.image_features = seq.image_token_positions = None
                    if seq.result.hidden_state is None:  # not a recompute after preemption
                        seq.result.hidden_state = h.clone()
                        seq.result.num_cached_tokens = seq.num_cached_tokens
                self.stats.prefill_s += time.perf_counter() - t0
            else:
                with nvtx_range("engine/decode"):
                    logits = self.runner.decode(seqs)
                    out = sample(logits, seqs)
                self.stats.decode_steps += 1
                self.stats.decode_s += time.perf_counter() - t0
            bad = set(out.bad_rows)
            for i, (seq, tok, lp, slp) in enumerate(zip(seqs, out.token_ids, out.logprobs, out.sampling_logprobs)):
                if i in bad:
                    self._fail_running(seq, "the model produced non-finite logits (NaN/inf) for this request")
                else:
                    self._append(seq, tok, lp, slp)

    def _append(self, seq: Sequence, token: int, logprob: float, sampling_logprob: float) -> None:
        seq.token_ids.append(token)
        gen = seq.result
        gen.logprobs.append(logprob)
        gen.sampling_logprobs.append(sampling_logprob)
        self.stats.generated_tokens += 1
        sp = seq.sampling
        reason = None
        if not sp.ignore_eos and token in self.eos_ids:
            reason = "eos"
        elif seq.num_outputs >= sp.max_new_tokens or len(seq) >= self.max_model_len:
            reason = "length"
        text = None
        if sp.stop and self.tokenizer is not None:
            text = self._decode(seq.output_ids)
            cut = min((i for i in (text.find(s) for s in sp.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        if reason is None:
            return
        self.scheduler.finish(seq)
        gen.token_ids = seq.output_ids
        gen.finish_reason = reason
        gen.text = text if text is not None else self._decode(gen.token_ids)

    def _fail(self, seq: Sequence, error: str) -> None:
        seq.result.finish_reason, seq.result.error = "error", error

    def _fail_running(self, seq: Sequence, error: str) -> None:
        """Fail a scheduled sequence: its blocks are freed and its partial output dropped."""
        self.scheduler.finish(seq)
        gen = seq.result
        gen.token_ids, gen.logprobs, gen.sampling_logprobs, gen.text, gen.hidden_state = [], [], [], "", None
        self._fail(seq, error)

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None or not hasattr(self.tokenizer, "decode"):
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _per_request(sampling: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if sampling is None:
        sampling = SamplingParams()
    if isinstance(sampling, SamplingParams):
        return [sampling.for_index(i) for i in range(n)]
    sampling = list(sampling)
    if len(sampling) != n:
        raise ValueError(f"got {len(sampling)} SamplingParams for {n} requests")
    return sampling


def _adapter_state(model: nn.Module) -> list[tuple]:
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

