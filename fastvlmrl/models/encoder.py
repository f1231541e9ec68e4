"""From (frame, task text) to model inputs, the same way for rollouts, SFT and PPO: the model's
chat template around the task, the processor for token ids (image placeholders expanded) and
image tensors, and reply ids ending in EOS."""

from __future__ import annotations

import numpy as np
import torch


class PromptEncoder:
    def __init__(self, processor, mm_keys: tuple[str, ...], dtype: torch.dtype = torch.float32,
                 image_token_ids: tuple[int, ...] = ()):
        from fastvlmrl.models import chat_prompt

        self._chat_prompt = chat_prompt
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.mm_keys = tuple(mm_keys)
        self.dtype = dtype
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the model's tokenizer has no EOS token: generation could never stop")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id
        # Tokens a reply must never contain: special tokens (EOS aside) and image placeholders. A
        # sampled image token would break the training forward (more placeholders than images).
        special = set(getattr(self.tokenizer, "all_special_ids", [])) | set(image_token_ids)
        self.suppressed_ids = tuple(sorted(i for i in special if i is not None and i != self.eos_id))

    def logit_bias(self, vocab_size: int, device, dtype: torch.dtype) -> torch.Tensor:
        """[V] bias for the training log-probs (the LM head's dtype): -1e4 at suppressed tokens,
        whose probability then underflows to 0 as in the sampler."""
        bias = torch.zeros(vocab_size, device=device, dtype=dtype)
        bias[list(self.suppressed_ids)] = -1e4
        return bias

    def prompt_text(self, task: str, *, image: bool = True) -> str:
        return self._chat_prompt(self.processor, task, image=image)

    def encode(self, frame: np.ndarray | None, task: str) -> tuple[torch.Tensor, dict]:
        """(prompt token ids [P], image inputs with a batch dimension of one image); a frame of
        None is a text-only prompt (no image inputs)."""
        if frame is None:  # the processor's own text path (its special tokens, as with an image)
            enc = self.processor(text=[self.prompt_text(task, image=False)], return_tensors="pt")
            return enc["input_ids"][0].long(), {}
        enc = self.processor(images=[frame], text=[self.prompt_text(task)], return_tensors="pt")
        mm = {}
        for key in self.mm_keys:
            if key in enc and enc[key] is not None:
                value = enc[key]
                mm[key] = value.to(self.dtype) if value.is_floating_point() else value
        return enc["input_ids"][0].long(), mm

    def reply_ids(self, reply: str) -> torch.Tensor:
        ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        return torch.tensor(list(ids) + [self.eos_id], dtype=torch.long)


def placeholder_token_ids(config) -> tuple[int, ...]:
    """The model's image/video placeholder and vision delimiter token ids (config `*_token_id` /
    `*_token_index` attributes other than bos/eos/pad)."""
    ids = set()
    for name, value in vars(config).items():
        if (name.endswith("_token_id") or name.endswith("_token_index")) and isinstance(value, int):
            if not any(name.startswith(p) for p in ("bos", "eos", "pad", "decoder_start")):
                ids.add(value)
    return tuple(sorted(ids))
