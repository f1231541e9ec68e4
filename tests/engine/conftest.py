"""Tiny random-weight VLMs of the supported families, built from configs (no downloads).

Each model is small enough that the whole engine suite runs in a couple of minutes on 2 cores.
Token ids: 0 pad, 1 bos, 2 eos, 3..97 printable ASCII (the test processor's character vocabulary),
120 image, 121 vision start, 122 vision end, 123 video; vocabulary 128.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

VOCAB, PAD, BOS, EOS = 128, 0, 1, 2
IMAGE, VSTART, VEND, VIDEO = 120, 121, 122, 123
FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl",
            "idefics3", "smolvlm"]
GEMMA_IMAGE_TOKENS = 4  # SigLIP 56 px / patch 14 = 4x4 patches, pooled to 2x2
INTERNVL_TILE_TOKENS = 4  # 56 px tiles / patch 14, pixel-shuffled by 0.5
IDEFICS_TILE_TOKENS = 4  # 32 px tiles / patch 8, pixel-shuffled by 2

_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)
_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
)
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim/2


def build_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "llava":
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(**_CLIP),
            text_config=LlamaConfig(**_TEXT),
            image_token_id=IMAGE,
            vision_feature_layer=-1,
        )
        model = LlavaForConditionalGeneration(cfg)
    elif family == "llava_next":
        cfg = LlavaNextConfig(
            vision_config=dict(model_type="clip_vision_model", **_CLIP, projection_dim=32),
            text_config=dict(model_type="mistral", **_TEXT),
            image_token_id=IMAGE,
            image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
            vision_feature_layer=-1,
        )
        model = LlavaNextForConditionalGeneration(cfg)
    elif family == "llava_onevision":
        cfg = LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", **_CLIP),
            text_config=dict(model_type="qwen2", **_TEXT),
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
            vision_feature_layer=-1,
        )
        model = LlavaOnevisionForConditionalGeneration(cfg)
    elif family == "qwen2_vl":
        cfg = Qwen2VLConfig(
            text_config=dict(**_TEXT, rope_parameters=_MROPE),
            vision_config=dict(
                depth=2,
                embed_dim=32,
                hidden_size=64,
                num_heads=2,
                mlp_ratio=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        model = Qwen2VLForConditionalGeneration(cfg)
    elif family == "qwen2_5_vl":
        cfg = Qwen2_5_VLConfig(
            text_config=dict(**_TEXT, rope_parameters=_MROPE),
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                fullatt_block_indexes=[1],
                window_size=56,
            ),
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    elif family == "qwen3_vl":
        cfg = Qwen3VLConfig(
            text_config=dict(_TEXT, num_hidden_layers=3, head_dim=16,
                             rope_parameters={**_MROPE, "mrope_interleaved": True}),
            vision_config=dict(
                depth=3,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                patch_size=16,
                spatial_merge_size=2,
                temporal_patch_size=2,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0, 1],  # fed into decoder layers 0 and 1 of 3
            ),
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            vision_start_token_id=VSTART,
            vision_end_token_id=VEND,
        )
        model = Qwen3VLForConditionalGeneration(cfg)
    elif family == "gemma3":
        cfg = Gemma3Config(
            text_config=dict(
                _TEXT, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=256,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                patch_size=14, vision_use_head=False,
            ),
            mm_tokens_per_image=GEMMA_IMAGE_TOKENS,
            image_token_id=IMAGE,
            boi_token_id=VSTART,
            eoi_token_id=VEND,
        )
        model = Gemma3ForConditionalGeneration(cfg)
    elif family == "internvl":
        cfg = InternVLConfig(
            text_config=dict(model_type="qwen2", **_TEXT),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=56, patch_size=14),
            image_token_id=IMAGE,
            image_seq_length=INTERNVL_TILE_TOKENS,
            downsample_ratio=0.5,  # pixel shuffle: 4x4 patches -> 2x2 tokens
            vision_feature_layer=-1,
            tie_word_embeddings=False,  # tied, a 2-layer random model mostly repeats its last token
        )
        model = InternVLForConditionalGeneration(cfg)
    elif family in ("idefics3", "smolvlm"):
        config_cls, model_cls = ((Idefics3Config, Idefics3ForConditionalGeneration) if family == "idefics3"
                                 else (SmolVLMConfig, SmolVLMForConditionalGeneration))
        cfg = config_cls(
            text_config=dict(model_type="llama", **_TEXT),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            scale_factor=2,
            image_token_id=IMAGE,
            pad_token_id=PAD,
            tie_word_embeddings=False,
        )
        model = model_cls(cfg)
    else:
        raise ValueError(family)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model.eval()


class TinyTokenizer:
    """Character-level: printable ASCII 32..126 -> ids 3..97; other ids are special."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) - 32 for c in text if 32 <= ord(c) <= 126]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3 + 32) for i in ids if 3 <= i <= 97)


class TinyProcessor:
    """What the engine needs of a Hugging Face processor, for the tiny models (no PIL needed).

    ``"<image>"`` in a prompt becomes the family's image tokens; an image is an ``[H, W, 3]`` uint8
    array turned into that family's pixel tensors (values only need to be deterministic).
    """

    def __init__(self, model, family: str):
        self.model, self.family = model, family
        self.tokenizer = TinyTokenizer()

    def _pixels(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0  # [3, H, W]
        h, w = img.shape[1:]
        if self.family == "llava":
            return {"pixel_values": img[None]}, (h // 14) * (w // 14)
        if self.family in ("llava_next", "llava_onevision"):
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

            tiles = image_size_to_num_patches((h, w), self.model.config.image_grid_pinpoints, 28)
            crops = [torch.nn.functional.interpolate(img[None], size=(28, 28))[0]]
            for i in range(tiles - 1):  # deterministic stand-ins for the AnyRes crops
                crops.append(torch.roll(crops[0], shifts=i + 1, dims=2))
            mm = {"pixel_values": torch.stack(crops)[None], "image_sizes": torch.tensor([[h, w]])}
            with torch.no_grad():
                n = self.model.model.get_image_features(**mm, return_dict=True).pooler_output[0].shape[0]
            return mm, n
        if self.family in ("idefics3", "smolvlm"):  # 32 px tiles, and the global image when there are several
            grid = [img[:, r : r + 32, c : c + 32] for r in range(0, h - 31, 32) for c in range(0, w - 31, 32)]
            tiles = grid + ([torch.nn.functional.interpolate(img[None], size=(32, 32))[0]] if len(grid) > 1 else [])
            pv = torch.stack(tiles)[None]
            return ({"pixel_values": pv, "pixel_attention_mask": torch.ones(1, len(tiles), 32, 32, dtype=torch.long)},
                    IDEFICS_TILE_TOKENS * len(tiles))
        if self.family == "internvl":  # 56 px tiles over the image, and a thumbnail when there are several
            grid = [img[:, r : r + 56, c : c + 56] for r in range(0, h - 55, 56) for c in range(0, w - 55, 56)]
            tiles = grid + ([torch.nn.functional.interpolate(img[None], size=(56, 56))[0]] if len(grid) > 1 else [])
            return {"pixel_values": torch.stack(tiles)}, INTERNVL_TILE_TOKENS * len(tiles)
        if self.family == "gemma3":  # one fixed-size image, a fixed number of pooled tokens
            return {"pixel_values": torch.nn.functional.interpolate(img[None], size=(56, 56))}, GEMMA_IMAGE_TOKENS
        # Qwen2-VL / 2.5-VL / 3-VL: [t*gh*gw, 3*2*p*p] patches, grid (1, H/p, W/p), p = 14 or 16.
        p = self.model.config.vision_config.patch_size
        gh, gw = h // p, w // p
        frames = img[None].repeat(2, 1, 1, 1)  # temporal patch of 2 identical frames
        patches = frames.reshape(2, 3, gh, p, gw, p).permute(2, 4, 1, 0, 3, 5).reshape(gh * gw, -1)
        return {"pixel_values": patches, "image_grid_thw": torch.tensor([[1, gh, gw]])}, gh * gw // 4

    def __call__(self, images=None, text=None, return_tensors="pt"):
        (prompt,) = text
        pieces = prompt.split("<image>")
        images = list(images or [])
        if len(images) != len(pieces) - 1:
            raise ValueError(f"{len(pieces) - 1} <image> placeholders for {len(images)} images")
        ids, mms = [BOS], []
        for i, piece in enumerate(pieces):
            if i > 0:
                mm, n = self._pixels(images[i - 1])
                mms.append(mm)
                marker = [IMAGE] * n
                ids += [VSTART, *marker, VEND] if self.family.startswith(("qwen", "gemma")) else marker
            ids += self.tokenizer.encode(piece)
        out = {"input_ids": torch.tensor([ids])}
        if self.family.startswith("qwen"):  # as Qwen's processor returns it (M-RoPE needs it)
            out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).int()
        if self.family == "gemma3":  # as Gemma 3's processor returns it (its image-block mask)
            out["token_type_ids"] = (out["input_ids"] == IMAGE).long()
        for key in mms[0] if mms else []:
            out[key] = torch.cat([m[key] for m in mms])
        return out


def frame(seed: int, h: int = 28, w: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models():
    """Lazily built tiny models, shared by the tests of one module."""
    cache: dict[str, torch.nn.Module] = {}

    def get(family: str) -> torch.nn.Module:
        if family not in cache:
            cache[family] = build_model(family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, for test modules (imported by importlib, they cannot import conftest)."""

    class _Tiny:
        build_model = staticmethod(build_model)
        TinyProcessor = TinyProcessor
        frame = staticmethod(frame)
        IMAGE, EOS, FAMILIES = IMAGE, EOS, FAMILIES

    return _Tiny
