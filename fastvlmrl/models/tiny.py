"""The built-in tiny VLM: a small LLaVA (CLIP vision tower + Llama) with random weights.

It is the default policy, so ``fastvlmrl train`` runs with nothing downloaded. The defaults are the
ones measured in ``notes/tiny-vlm.md`` (about 1.1M parameters; learns NumberLine on a 2-core CPU in
minutes). Its processor is a standard ``LlavaProcessor`` around a CLIP image processor and the
character tokenizer, so everything downstream treats it like any Hugging Face LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from fastvlmrl.models.char_tokenizer import CHAT_TEMPLATE, IMAGE, CharTokenizer
from fastvlmrl.models.preprocess import clip_image_processor


@dataclass
class TinyVLMConfig:
    """Sizes of the tiny VLM (defaults: the configuration measured to learn NumberLine)."""

    image_size: int = 112  # frames are resized (shortest edge) and center-cropped to this
    patch_size: int = 16  # 112 / 16 = 7 -> 49 image tokens
    vision_hidden_size: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_mlp_size: int = 512
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    mlp_size: int = 512
    max_position_embeddings: int = 2048  # the engine's context limit; prompts are characters
    invert_pixels: bool = True  # normalise to 1 - x/255 (ink 1, white background 0): see the note
    # std of the random weights (Hugging Face's initializer_range, 0.02 by default): the Llama side,
    # the projector and CLIP's patch and position embeddings (CLIP sizes its own layers). Measured on
    # NumberLine's SFT, seed 1: at 0.02 the model read 21% of the frames after 800 steps; at 0.1 it
    # read all of them from step 100 on (0.05: from step 150). Small weights starve the vision path.
    init_std: float = 0.1

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        for name in ("vision_hidden_size", "hidden_size"):
            heads = self.vision_heads if name.startswith("vision") else self.heads
            if getattr(self, name) % heads:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of its number of heads ({heads})")
        if not self.init_std > 0:
            raise ValueError(f"init_std ({self.init_std}) must be positive")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def tiny_config_from(model_cfg) -> TinyVLMConfig:
    """The tiny VLM's sizes from a run config's ``model`` section (its ``tiny_*`` keys)."""
    return TinyVLMConfig(image_size=model_cfg.tiny_image_size, patch_size=model_cfg.tiny_patch_size)


def build_tiny_processor(cfg: TinyVLMConfig | None = None) -> LlavaProcessor:
    """The tiny VLM's processor: CLIP-style image processor + character tokenizer + chat template."""
    cfg = cfg or TinyVLMConfig()
    tokenizer = CharTokenizer()
    return LlavaProcessor(
        image_processor=clip_image_processor(cfg.image_size, invert=cfg.invert_pixels),
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",  # drop CLS ...
        num_additional_image_tokens=1,  # ... which CLIP adds: (S/P)^2 image tokens in all
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def tiny_vlm_config(cfg: TinyVLMConfig, tokenizer: CharTokenizer) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_mlp_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        initializer_range=cfg.init_std,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=cfg.init_std,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        initializer_range=cfg.init_std,
    )


def build_tiny_vlm(
    cfg: TinyVLMConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA (CPU, eval mode) and its processor.

    The same ``cfg`` and ``seed`` give the same weights (rounded to ``dtype``); the global RNG is
    left untouched. Only parameters are cast: buffers such as the rotary ``inv_freq`` stay float32,
    as ``from_pretrained(dtype=...)`` keeps them (``model.to(bfloat16)`` would round them).
    """
    cfg = cfg or TinyVLMConfig()
    processor = build_tiny_processor(cfg)
    config = tiny_vlm_config(cfg, processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    if dtype != torch.float32:
        for param in model.parameters():
            param.data = param.data.to(dtype)
        model.config.dtype = dtype
    tok = processor.tokenizer
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), processor
