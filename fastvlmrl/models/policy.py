"""The policy: a Hugging Face image-text-to-text model plus a value head.

The trainer never materialises logits: :meth:`Policy.hidden_states` returns the language model's
final hidden states (after its final norm) and the trainer computes per-token log-probs with
``fastvlmrl.kernels.fused_linear_logprob(hidden, policy.lm_head_weight(), targets)``. The value
head reads the final hidden state of the last prompt token (the engine returns exactly that state
from its prefill, so rollouts need no extra forward).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from fastvlmrl.models.processor import load_processor
from fastvlmrl.models.tiny import TinyVLMConfig, build_tiny_vlm

# Where the parts live in transformers 5 (LLaVA / LLaVA-NeXT / Qwen2-VL / Qwen2.5-VL / Idefics3 ...).
_VISION_TOWERS = ("vision_tower", "visual", "vision_model")
_PROJECTORS = ("multi_modal_projector", "visual.merger", "connector")


class ValueHead(nn.Module):
    """RL4VLM's value MLP scaled to the hidden size: H -> H/4 -> H/8 -> 1 (4096 -> 1024 -> 512 -> 1).

    Kept in float32 whatever the model's dtype (a few parameters; values and their loss stay exact).
    The output layer starts at zero, so initial values are 0 instead of random offsets.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        h1, h2 = max(hidden_size // 4, 8), max(hidden_size // 8, 8)
        self.net = nn.Sequential(nn.Linear(hidden_size, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float()).squeeze(-1).clone()  # not a view: FSDP hooks a sharded head's output


class Policy(nn.Module):
    """``model`` (a Hugging Face VLM, peft-wrapped when LoRA is on) + ``value_head``."""

    def __init__(self, model: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.model = model
        hidden = self.hf_model.config.get_text_config().hidden_size
        self.value_head = value_head if value_head is not None else ValueHead(hidden)

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face model itself (under peft's wrapper when there is one)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def hidden_size(self) -> int:
        return self.hf_model.config.get_text_config().hidden_size

    def lm_head_weight(self) -> torch.Tensor:
        """The ``[V, H]`` weight that turns final hidden states into logits (tied or not)."""
        return self.hf_model.get_output_embeddings().weight

    def value(self, h: torch.Tensor) -> torch.Tensor:
        """Values ``[B]`` (float32) from last-prompt-token hidden states ``[B, H]``."""
        return self.value_head(h)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **mm: torch.Tensor,
    ) -> torch.Tensor:
        """Final hidden states ``[B, L, H]`` (after the final norm) of padded prompt+response rows.

        ``mm``: the other image tensors the processor returned (``image_grid_thw``, ``image_sizes``,
        ``mm_token_type_ids`` ...). Positions follow the attention mask, so left- and right-padded
        rows give the same states as one unpadded sequence (as the engine computes them).
        """
        from fastvlmrl.engine.families import family_for

        hf = self.hf_model
        # The family's extra inputs (positions, token types) unless the caller gave them.
        inputs = {**family_for(hf).model_inputs(input_ids, attention_mask),
                  "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, **mm}
        inner = hf.model  # the backbone without the LM head: its output is the normed final state
        dtype = hf.get_input_embeddings().weight.dtype  # image tensors in the model's dtype (bf16 on GPU)
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items() if v is not None}
        return inner(**inputs, use_cache=False, return_dict=True).last_hidden_state

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden_states(*args, **kwargs)


def load_policy(
    path: str | None = None,
    *,
    lora: bool = False,
    lora_r: int = 128,
    lora_alpha: int = 256,
    lora_dropout: float = 0.05,
    freeze_vision: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    tiny: TinyVLMConfig | None = None,
) -> tuple[Policy, object]:
    """The policy and its processor.

    - ``path=None``: the built-in tiny VLM (``tiny`` sizes, random weights from ``seed``);
      a directory: ``AutoModelForImageTextToText`` + its processor, local files only.
    - ``lora``: peft LoRA adapters (RL4VLM preset r=128, alpha=256, dropout 0.05) on every linear
      layer of the language model and the projector (not the vision tower, LM head or value head);
      the base weights are frozen.
    - ``freeze_vision``: the vision tower's weights get no gradient.
    - ``dtype``: None = bfloat16 on CUDA, float32 elsewhere. The value head stays float32.
    - ``seed``: the tiny VLM's weights and the value head's initialisation (global RNG untouched).

    Raises ValueError for a missing directory, a model that is not image-text-to-text, or a
    directory without an image processor.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if path is None:
        model, processor = build_tiny_vlm(tiny or TinyVLMConfig(), seed=seed, dtype=dtype)
    else:
        model, processor = _load_pretrained(os.fspath(path), dtype)
    model = model.to(device)  # device only: a dtype cast here would round fp32-kept buffers (rotary)
    policy = make_policy(
        model, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        freeze_vision=freeze_vision, seed=seed,
    )
    return policy, processor


def make_policy(
    model: nn.Module,
    *,
    lora: bool = False,
    lora_r: int = 128,
    lora_alpha: int = 256,
    lora_dropout: float = 0.05,
    freeze_vision: bool = False,
    seed: int = 0,
) -> Policy:
    """A :class:`Policy` around a model already in hand (see :func:`load_policy` for the options).

    The value head is created on the model's device, in float32, initialised from ``seed``.
    """
    if freeze_vision:
        _vision_tower(model).requires_grad_(False)
    if lora:
        model = _add_lora(model, lora_r, lora_alpha, lora_dropout)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ValueHead(model.config.get_text_config().hidden_size).to(device)
    return Policy(model, head)


def enable_gradient_checkpointing(policy: Policy, *, vision: bool = False) -> int:
    """Recompute each decoder layer's activations in the backward instead of keeping them (and the
    vision tower's layers too with `vision`): memory for one layer's activations plus each layer's
    input, at the cost of a second forward. Non-reentrant `torch.utils.checkpoint`, so it works
    with frozen inputs (LoRA) and full fine-tuning alike, and the RNG (dropout) replays the same.
    Only training forwards are checkpointed: the engine runs the layers in eval mode without
    gradients. Returns the number of layers checkpointed."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    language_model = _language_model(policy.hf_model)
    if language_model is None:
        raise ValueError(f"model.gradient_checkpointing: no language_model in {type(policy.hf_model).__name__}")
    roots = [language_model] + ([_vision_tower(policy.hf_model)] if vision else [])
    layers = [m for root in roots for m in root.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"model.gradient_checkpointing: {type(policy.hf_model).__name__}'s layers do not support it")
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    return len(layers)


def _load_pretrained(path: str, dtype: torch.dtype) -> tuple[nn.Module, object]:
    if not os.path.isdir(path):
        raise ValueError(f"model directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} has no config.json: not a Hugging Face model directory")
    from fastvlmrl.engine.families import FAMILIES, family_class

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(
            f"{path} holds a {config.model_type!r} model, not an image-text-to-text one "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    family_class(config.model_type)  # before the processor and the weights: fail in a second
    processor = load_processor(path)  # before the weights: fail fast on a directory without one
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), processor


def _vision_tower(model: nn.Module) -> nn.Module:
    inner = model.model
    for name in _VISION_TOWERS:
        if isinstance(getattr(inner, name, None), nn.Module):
            return getattr(inner, name)
    raise ValueError(f"freeze_vision: no vision tower ({' / '.join(_VISION_TOWERS)}) in {type(model).__name__}")


def _add_lora(model: nn.Module, r: int, alpha: int, dropout: float) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = _lora_targets(model)
    if not targets:
        raise ValueError(f"lora: no linear layers found in the language model of {type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def _language_model(model: nn.Module) -> nn.Module | None:
    """The decoder: ``model.language_model`` in most families, ``model.text_model`` in Idefics3's."""
    inner = getattr(model, "model", None)
    for name in ("language_model", "text_model"):
        if isinstance(getattr(inner, name, None), nn.Module):
            return getattr(inner, name)
    return None


def _lora_targets(model: nn.Module) -> list[str]:
    """Full names of the language model's and the projector's linear layers."""
    inner = model.model
    language_model = _language_model(model)
    roots = [f"model.{n}" for n, m in inner.named_children() if m is language_model]
    roots += [f"model.{p}" for p in _PROJECTORS if _has(inner, p)]
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == r or name.startswith(r + ".") for r in roots):
            names.append(name)
    return names


def _has(module: nn.Module, dotted: str) -> bool:
    try:
        module.get_submodule(dotted)
        return True
    except AttributeError:
        return False
