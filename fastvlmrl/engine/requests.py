"""Requests: what a caller hands the engine, and its checks before it may take cache blocks.

A batch of rollouts must survive one bad request (an empty prompt, a corrupt frame, a prompt too
long for the context): every check here raises a ``ValueError`` that names the fix, and the engine
turns it into that request's ``Generation.error`` while the rest of the batch runs. A request that
passes can always run to completion: it fits the model's context and the whole KV cache.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence as Seq

import torch

from fastvlmrl.engine.block_manager import BlockManager, block_keys, mm_digest
from fastvlmrl.engine.families import Family
from fastvlmrl.engine.model_runner import ModelRunner
from fastvlmrl.engine.sampling_params import SamplingParams
from fastvlmrl.engine.sequence import Generation, Sequence


@dataclass
class Request:
    """A pre-processed request: prompt token ids (image placeholders expanded, as the model's
    processor makes them) and this request's image tensors (e.g. ``pixel_values`` and, per family,
    ``image_grid_thw`` or ``image_sizes``; empty for a text-only prompt)."""

    prompt_token_ids: Seq[int] | torch.Tensor
    mm_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sampling: SamplingParams | None = None


def per_request(sampling: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    """One SamplingParams per request: a shared one gives request i the seed ``seed + i``."""
    if sampling is None:
        sampling = SamplingParams()
    if isinstance(sampling, SamplingParams):
        return [sampling.for_index(i) for i in range(n)]
    sampling = list(sampling)
    if len(sampling) != n:
        raise ValueError(f"got {len(sampling)} SamplingParams for {n} requests")
    return sampling


def with_sampling(requests: Seq[Request], params: list[SamplingParams]) -> list[Request]:
    """Each request with its own sampling params, or ``params[i]`` where it has none."""
    return [
        r if r.sampling is not None else Request(r.prompt_token_ids, r.mm_inputs, sp) for r, sp in zip(requests, params)
    ]


def preprocess(processor: Any, family: Family, image: Any, prompt: str, sp: SamplingParams) -> Request | str:
    """(image, prompt text) -> a Request through the model's processor, or why it cannot be one."""
    if not isinstance(prompt, str) or not prompt.strip():
        return f"empty prompt: {prompt!r}"
    try:
        if image is None:
            enc = processor(text=[prompt], return_tensors="pt")
        else:
            enc = processor(images=image if isinstance(image, list) else [image], text=[prompt], return_tensors="pt")
    except Exception as e:  # noqa: BLE001 - a processor error belongs to this request only
        return f"preprocessing failed: {type(e).__name__}: {e}"
    mm = {k: enc[k] for k in family.mm_keys if k in enc and enc[k] is not None}
    return Request(enc["input_ids"][0], mm, sp)


class SequenceBuilder:
    """Turns requests into Sequences ready to queue, against one engine's model family (image
    checks, positions), cache (block keys, size limit), context and vocabulary."""

    def __init__(self, family: Family, block_manager: BlockManager, runner: ModelRunner, max_model_len: int):
        self.family = family
        self.block_manager = block_manager
        self.runner = runner
        self.max_model_len = max_model_len
        self._seq_ids = itertools.count()

    def admit(self, item: Request | str) -> tuple[Generation, Sequence | None]:
        """The request's Generation and, when it can run, its Sequence (whose ``result`` is that
        Generation). A request that cannot (a string is preprocessing's error) gets its error now."""
        if isinstance(item, str):
            return Generation(prompt_token_ids=[], finish_reason="error", error=item), None
        gen = Generation(prompt_token_ids=[])
        try:
            ids = item.prompt_token_ids
            gen.prompt_token_ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
            seq = self.build(item)
        except ValueError as e:
            gen.finish_reason, gen.error = "error", str(e)
            return gen, None
        except Exception as e:  # noqa: BLE001 - e.g. a family's position helper on odd input
            gen.finish_reason, gen.error = "error", f"{type(e).__name__}: {e}"
            return gen, None
        seq.result = gen
        return gen, seq

    def build(self, req: Request) -> Sequence:
        """A checked request as a Sequence: ids, images on the device, its sampling seed,
        prefix-cache keys and the family's prompt positions. Raises ValueError."""
        ids = req.prompt_token_ids
        ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(t) for t in ids]
        sp, family, device = req.sampling, self.family, self.runner.device
        # Looked up per request: LoRA (modules_to_save) may have replaced the embedding.
        vocab_size = self.runner.embed.weight.shape[0]
        _check_prompt(ids, sp, self.block_manager, self.max_model_len, vocab_size, family.image_token_id)
        # Checks, the image digest and the positions run on the host copies (a processor's output
        # is on the CPU): no device sync per request; the images then move in one copy each.
        mm = _check_images(ids, req.mm_inputs, family)
        seed = sp.seed if sp.seed is not None else int(torch.randint(2**62, ()).item())
        positions, delta = family.prompt_positions(torch.tensor(ids), mm)
        digest = mm_digest(mm) if mm and self.block_manager.enable_prefix_caching else None
        mm = {k: v.to(device, non_blocking=True) for k, v in mm.items()}
        seq = Sequence(next(self._seq_ids), ids, len(ids), sp, mm, None if sp.greedy else seed)
        if self.block_manager.enable_prefix_caching:
            seq.prefix_keys = block_keys(ids, self.block_manager.block_size, family.image_token_id, digest)
        seq.prompt_positions = positions.to(device) if positions is not None else None
        seq.rope_delta = delta
        return seq


def _check_prompt(
    ids: list[int], sp: SamplingParams, block_manager: BlockManager, max_model_len: int, vocab_size: int,
    image_token_id: int | None = None,
) -> None:
    if not ids:
        raise ValueError("empty prompt: no tokens")
    if len(ids) >= max_model_len:
        raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {max_model_len}")
    # The image token may lie past the embedding (Gemma 3 allows it): its rows get image features.
    text = [t for t in ids if t != image_token_id]
    if text and (min(text) < 0 or max(text) >= vocab_size):
        raise ValueError(
            f"prompt token ids must be in the vocabulary [0, {vocab_size}), got range [{min(text)}, {max(text)}]"
        )
    # Preemption can make room for any sequence that fits the cache alone; one that does not would
    # wait forever.
    total = min(len(ids) + sp.max_new_tokens, max_model_len)
    if block_manager.blocks_needed(total) > block_manager.num_blocks:
        raise ValueError(
            f"prompt + max_new_tokens = {total} tokens need {block_manager.blocks_needed(total)} KV blocks; "
            f"the cache has {block_manager.num_blocks}: raise num_blocks/memory_fraction"
        )


def _check_images(ids: list[int], mm_inputs: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """The request's image tensors, checked by its family, on the host."""
    has_image_tokens = family.image_token_id in ids
    mm = {k: v for k, v in mm_inputs.items() if v is not None}
    if mm and not has_image_tokens:
        raise ValueError("images were given but the prompt has no image token")
    if has_image_tokens and not mm:
        raise ValueError("the prompt has image tokens but no images were given")
    if mm:
        mm = {k: v.cpu() for k, v in family.check_mm(mm).items()}
        if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in mm.values()):
            raise ValueError("image inputs contain NaN or inf values")
    return mm
