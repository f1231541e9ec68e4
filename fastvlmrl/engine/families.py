"""Per-architecture glue: where the language model is, how images are batched, which positions.

The Hugging Face model does the work (vision tower, projector, embeddings, rotary, norms, MLPs);
a family only says how to batch one request's image tensors with the others', how to check them
(so a bad image fails its own request with a clear message), and which position ids a prompt's
tokens get. A family whose model does more at the image tokens says so here too: Qwen3-VL adds
vision features inside early decoder layers (DeepStack, :meth:`Family.scatter_image_features`);
Gemma 3 attends bidirectionally among one image's tokens in prefill (:attr:`Family.image_blocks`).
Adding an architecture = adding a small class here and a parity test. The few things the engine
reads from a Hugging Face config (the EOS ids, a sliding window) are here too.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


class Family:
    """What every family shares: the Hugging Face wrapper's layout (``model.model.language_model``,
    ``get_image_features``) and plain 1-D positions. A subclass names its image tensors
    (``mm_keys``) and says how to check, count and batch them."""

    name: str
    mm_keys: tuple[str, ...]
    # Prefill attention among the tokens of one image is bidirectional (Gemma 3), not causal: the
    # attention needs each sequence's image blocks (:func:`image_block_ids`).
    image_blocks: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.image_token_id: int = self.config.image_token_id

    # where things live
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def image_features(self, mm: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-image features ``[tokens_i, hidden]`` for a batch of images, in order."""
        out = self.model.model.get_image_features(**mm, return_dict=True)
        # transformers 5.x returns a BaseModelOutputWithPooling; earlier versions the features
        # themselves (a [num_images, tokens, hidden] tensor or a tuple of per-image tensors).
        return list(getattr(out, "pooler_output", out))

    def scatter_image_features(self, embeds: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor) -> dict:
        """Put a prefill step's image features into its packed embeddings ``[T, H]`` at ``rows``;
        returns extra keyword arguments for the language model's forward (none here)."""
        embeds[rows] = feats
        return {}

    def model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What the trainer's padded forward adds to the processor's tensors so the model computes
        what the engine does: positions that follow the attention mask (left- or right-padded rows
        give one unpadded sequence's states)."""
        if attention_mask is None:
            return {}
        return {"position_ids": (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)}

    # images
    def check_mm(self, mm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One request's image tensors, normalised; a ValueError that names the expected shape."""
        raise NotImplementedError

    def num_images(self, mm: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError

    def batch_mm(self, mms: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Several requests' checked image tensors as one vision-tower input."""
        raise NotImplementedError

    # positions
    @property
    def position_rows(self) -> int:
        return 1

    def prompt_positions(self, token_ids: torch.Tensor, mm: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        """Position ids of the prompt (None = ``arange``) and the offset of later tokens."""
        return None, 0


class LlavaFamily(Family):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, one fixed-size image each."""

    name = "llava"
    mm_keys = ("pixel_values",)

    def check_mm(self, mm):
        vc = self.config.vision_config
        pv = _require(mm, "pixel_values")
        want = (getattr(vc, "num_channels", 3), *_image_hw(vc))
        if pv.ndim == 3:
            pv = pv.unsqueeze(0)
        if pv.ndim != 4 or tuple(pv.shape[1:]) != want:
            raise ValueError(
                f"pixel_values must be [num_images, {want[0]}, {want[1]}, {want[2]}], got {list(pv.shape)}"
            )
        return {"pixel_values": pv}

    def num_images(self, mm):
        return mm["pixel_values"].shape[0]

    def batch_mm(self, mms):
        return {"pixel_values": torch.cat([m["pixel_values"] for m in mms])}


class InternVLFamily(LlavaFamily):
    """InternVL (transformers-native ``InternVLForConditionalGeneration``): each image is cut into
    tiles (plus a thumbnail) of the tower's size; every tile gives its own pixel-shuffled features,
    so to the engine a tile is an image: ``pixel_values`` [tiles, 3, S, S], features in tile order."""

    name = "internvl"


class Idefics3Family(Family):
    """Idefics3 and SmolVLM: each image split into tiles plus a global image, every tile a fixed
    number of pixel-shuffled tokens. ``pixel_values`` [1, tiles, 3, S, S] per request (the model
    drops all-zero tiles as padding) with ``pixel_attention_mask`` [1, tiles, S, S]; the features
    come per request, the tiles' in order. The language model is ``model.text_model``."""

    name = "idefics3"
    mm_keys = ("pixel_values", "pixel_attention_mask")

    def language_model(self):
        return self.model.model.text_model

    def check_mm(self, mm):
        vc = self.config.vision_config
        pv = _require(mm, "pixel_values")
        if pv.ndim == 4:
            pv = pv.unsqueeze(0)
        want = (getattr(vc, "num_channels", 3), *_image_hw(vc))
        if pv.ndim != 5 or pv.shape[0] != 1 or tuple(pv.shape[2:]) != want:
            raise ValueError(f"pixel_values must be [1, num_tiles, {want[0]}, {want[1]}, {want[2]}] (one "
                             f"request's tiles), got {list(pv.shape)}")
        out = {"pixel_values": pv}
        if mm.get("pixel_attention_mask") is not None:
            mask = torch.as_tensor(mm["pixel_attention_mask"])
            if mask.ndim == 3:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape) != (*pv.shape[:2], *pv.shape[3:]):
                raise ValueError(f"pixel_attention_mask must be {[*pv.shape[:2], *pv.shape[3:]]}, got {list(mask.shape)}")
            out["pixel_attention_mask"] = mask
        return out

    def num_images(self, mm):
        return mm["pixel_values"].shape[0]  # one feature block per request: all its tiles

    def batch_mm(self, mms):
        # Requests split into different tile counts: pad with all-zero tiles, which the model drops.
        tiles = max(m["pixel_values"].shape[1] for m in mms)
        out = {"pixel_values": torch.cat([pad_tiles(m["pixel_values"], tiles) for m in mms])}
        if all("pixel_attention_mask" in m for m in mms):
            out["pixel_attention_mask"] = torch.cat([pad_tiles(m["pixel_attention_mask"], tiles) for m in mms])
        return out


class SmolVLMFamily(Idefics3Family):
    """SmolVLM: Idefics3's layout (its processor adds video, which the engine does not take)."""

    name = "smolvlm"


class LlavaNextFamily(Family):
    """LLaVA-NeXT / 1.6 (``LlavaNextForConditionalGeneration``): AnyRes tiles + ``image_sizes``."""

    name = "llava_next"
    mm_keys = ("pixel_values", "image_sizes")

    def check_mm(self, mm):
        vc = self.config.vision_config
        pv, sizes = _require(mm, "pixel_values"), _require(mm, "image_sizes")
        if pv.ndim == 4:
            pv = pv.unsqueeze(0)
        if sizes.ndim == 1:
            sizes = sizes.unsqueeze(0)
        want = (getattr(vc, "num_channels", 3), *_image_hw(vc))
        if pv.ndim != 5 or tuple(pv.shape[2:]) != want:
            raise ValueError(
                f"pixel_values must be [num_images, num_tiles, {want[0]}, {want[1]}, {want[2]}], got {list(pv.shape)}"
            )
        if sizes.shape != (pv.shape[0], 2):
            raise ValueError(f"image_sizes must be [num_images={pv.shape[0]}, 2], got {list(sizes.shape)}")
        return {"pixel_values": pv, "image_sizes": sizes}

    def num_images(self, mm):
        return mm["image_sizes"].shape[0]

    def image_features(self, mm):
        feats = super().image_features(mm)
        if feats and feats[0].ndim == 3:
            # transformers before the get_image_features clean-up (huggingface/transformers#46405)
            # returned the unpacked AnyRes tiles, [tiles, tokens, hidden] per image, and packed them
            # (unpad + image_newline) in forward: do that packing here.
            inner = self.model.model
            packed, lens = inner.pack_image_features(
                feats,
                mm["image_sizes"],
                vision_feature_select_strategy=self.config.vision_feature_select_strategy,
                image_newline=inner.image_newline,
            )
            feats = list(packed) if isinstance(packed, (list, tuple)) else list(packed.split(lens.tolist()))
        return feats

    def batch_mm(self, mms):
        # Requests processed one by one carry different tile counts: pad to the largest; the model
        # drops the padding tiles using image_sizes.
        tiles = max(m["pixel_values"].shape[1] for m in mms)
        return {"pixel_values": torch.cat([pad_tiles(m["pixel_values"], tiles) for m in mms]),
                "image_sizes": torch.cat([m["image_sizes"] for m in mms])}


class LlavaOnevisionFamily(LlavaNextFamily):
    """LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's AnyRes tiles with
    the features pooled down to ``vision_aspect_ratio`` (anyres_max_9) in ``get_image_features``.
    ``batch_num_images`` groups the images into samples (a sample of several gets one base tile per
    image); the engine passes each request's images as a flat list, whose counts are all ones."""

    name = "llava_onevision"
    mm_keys = ("pixel_values", "image_sizes", "batch_num_images")

    def check_mm(self, mm):
        out = super().check_mm(mm)
        if mm.get("batch_num_images") is not None:
            counts = torch.as_tensor(mm["batch_num_images"]).reshape(-1)
            if int(counts.sum()) != out["image_sizes"].shape[0] or bool((counts < 1).any()):
                raise ValueError(f"batch_num_images must be image counts summing to the request's "
                                 f"{out['image_sizes'].shape[0]} images, got {counts.tolist()}")
            out["batch_num_images"] = counts
        return out

    def batch_mm(self, mms):
        out = super().batch_mm(mms)
        if all("batch_num_images" in m for m in mms):
            out["batch_num_images"] = torch.cat([m["batch_num_images"] for m in mms])
        return out


class Qwen2VLFamily(Family):
    """Qwen2-VL and Qwen2.5-VL: flattened patches + ``image_grid_thw``, 3-row M-RoPE positions."""

    name = "qwen2_vl"
    mm_keys = ("pixel_values", "image_grid_thw")

    def check_mm(self, mm):
        vc = self.config.vision_config
        pv, thw = _require(mm, "pixel_values"), _require(mm, "image_grid_thw")
        if thw.ndim == 1:
            thw = thw.unsqueeze(0)
        cols = getattr(vc, "in_channels", getattr(vc, "in_chans", 3)) * vc.temporal_patch_size * vc.patch_size**2
        if thw.ndim != 2 or thw.shape[1] != 3:
            raise ValueError(f"image_grid_thw must be [num_images, 3], got {list(thw.shape)}")
        if pv.ndim != 2 or pv.shape[1] != cols:
            raise ValueError(f"pixel_values must be [num_patches, {cols}] (flattened patches), got {list(pv.shape)}")
        patches = int(thw.prod(-1).sum())
        if pv.shape[0] != patches:
            raise ValueError(f"pixel_values has {pv.shape[0]} patches but image_grid_thw describes {patches}")
        m = vc.spatial_merge_size
        if bool(((thw[:, 1:] % m) != 0).any()):
            raise ValueError(f"image_grid_thw heights/widths must be multiples of spatial_merge_size={m}")
        return {"pixel_values": pv, "image_grid_thw": thw}

    def num_images(self, mm):
        return mm["image_grid_thw"].shape[0]

    def batch_mm(self, mms):
        return {
            "pixel_values": torch.cat([m["pixel_values"] for m in mms]),
            "image_grid_thw": torch.cat([m["image_grid_thw"] for m in mms]),
        }

    @property
    def position_rows(self) -> int:
        return 3

    def model_inputs(self, input_ids, attention_mask):
        # The model derives its M-RoPE positions itself, from the token types its processor returns.
        return {"mm_token_type_ids": self.token_types(input_ids)}

    def token_types(self, token_ids: torch.Tensor) -> torch.Tensor:
        """What Qwen's processor returns as ``mm_token_type_ids``: 1 at image tokens, 2 at video."""
        types = torch.zeros_like(token_ids, dtype=torch.int32)
        types[token_ids == self.image_token_id] = 1
        video = getattr(self.config, "video_token_id", None)
        if video is not None:
            types[token_ids == video] = 2
        return types

    def prompt_positions(self, token_ids, mm):
        if not mm:
            return None, 0
        types = self.token_types(token_ids)
        # The model's own helper, so positions match `generate` exactly. Its signature changed
        # across transformers 5.x (``mm_token_type_ids`` was added as the 2nd positional
        # argument): pass everything by keyword, the token types only where it takes them.
        get_rope_index = self.model.model.get_rope_index
        kwargs = {"image_grid_thw": mm["image_grid_thw"].to(token_ids.device)}
        if "mm_token_type_ids" in inspect.signature(get_rope_index).parameters:
            kwargs["mm_token_type_ids"] = types[None]
        positions, delta = get_rope_index(input_ids=token_ids[None], **kwargs)
        return positions[:, 0], int(delta.reshape(-1)[0])


class Qwen3VLFamily(Qwen2VLFamily):
    """Qwen3-VL: Qwen2-VL's patches, grids and M-RoPE helper (interleaved rows: the model's rotary
    does that), plus DeepStack: features from several vision layers, each added to the hidden
    states of the image tokens after one of the first decoder layers."""

    name = "qwen3_vl"

    def image_features(self, mm):
        out = self.model.model.get_image_features(**mm, return_dict=True)
        main = list(out.pooler_output)
        deep = [list(per_layer) for per_layer in (out.deepstack_features or [])]
        if not deep:
            return main
        # [tokens, 1 + layers, hidden] per image: the embedding's features, then each layer's.
        return [torch.stack([m, *(d[i] for d in deep)], dim=1) for i, m in enumerate(main)]

    def scatter_image_features(self, embeds, rows, feats):
        if feats.ndim == 2:
            return super().scatter_image_features(embeds, rows, feats)
        embeds[rows] = feats[:, 0]
        mask = torch.zeros(1, embeds.shape[0], dtype=torch.bool, device=embeds.device)
        mask[0, rows] = True  # rows ascend, so mask order = feature order, as the model indexes
        return {"visual_pos_masks": mask, "deepstack_visual_embeds": list(feats[:, 1:].unbind(1))}


class Gemma3Family(LlavaFamily):
    """Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP tower, a fixed number of pooled tokens
    per image (pan-and-scan crops are more images), bidirectional attention among one image's
    tokens in prefill, sliding-window layers (the engine caps the context at the window)."""

    name = "gemma3"
    image_blocks = True

    def __init__(self, model):
        super().__init__(model)
        text = self.config.get_text_config()
        for key in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(text, key, None):
                # The engine's logits and attention and the trainer's fused log-prob do not apply it.
                raise ValueError(f"the engine does not support Gemma with {key}={getattr(text, key)}")
        if getattr(text, "use_bidirectional_attention", False):
            raise ValueError("the engine does not support Gemma with use_bidirectional_attention=True "
                             "(an encoder: every token attends to every other)")

    def model_inputs(self, input_ids, attention_mask):
        # token_type_ids = 1 at image tokens: the model's cue for its bidirectional image mask.
        return {**super().model_inputs(input_ids, attention_mask),
                "token_type_ids": (input_ids == self.image_token_id).long()}


FAMILIES: dict[str, type[Family]] = {
    "llava": LlavaFamily,
    "llava_next": LlavaNextFamily,
    "llava_onevision": LlavaOnevisionFamily,
    "qwen2_vl": Qwen2VLFamily,
    "qwen2_5_vl": Qwen2VLFamily,
    "qwen3_vl": Qwen3VLFamily,
    "gemma3": Gemma3Family,
    "internvl": InternVLFamily,
    "idefics3": Idefics3Family,
    "smolvlm": SmolVLMFamily,
}


def family_for(model: nn.Module) -> Family:
    """The family of a Hugging Face VLM, or of the model under a peft wrapper (``PeftModel``)."""
    if hasattr(model, "get_base_model"):
        # PeftModel forwards attribute lookups to the HF model *class* (``...ForConditionalGeneration``),
        # so ``.model`` on it skips a level: unwrap first.
        model = model.get_base_model()
    return family_class(getattr(model.config, "model_type", None))(model)


def family_class(model_type: str | None) -> type[Family]:
    """The Family for a config's ``model_type``; a one-line ValueError for any other (checked before
    a checkpoint's weights are loaded)."""
    cls = FAMILIES.get(model_type)
    if cls is None:
        raise ValueError(
            f"the engine does not support model_type {model_type!r} yet (supported: {', '.join(sorted(FAMILIES))}); "
            "add a Family in fastvlmrl/engine/families.py"
        )
    return cls


def _image_hw(vision_config) -> tuple[int, int]:
    """The vision tower's input height and width (an int in most configs, a pair in InternVL's)."""
    size = vision_config.image_size
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def pad_tiles(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` zero-padded along dim 1 (the tiles) to ``size``: all-zero tiles, which the tiled
    families drop (by ``image_sizes``, or as padding)."""
    if t.shape[1] == size:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], size - t.shape[1], *t.shape[2:]))], dim=1)


def _require(mm: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in mm or mm[key] is None:
        raise ValueError(f"image inputs are missing {key!r} (got {sorted(mm)})")
    value = mm[key]
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    return value


def image_block_ids(token_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Per token, the index of the image it belongs to (runs of image tokens; -1 for text): in
    prefill a token attends causally and also to every token of its own image (Gemma 3's rule,
    its ``get_block_sequence_ids_for_mask``)."""
    is_image = token_ids == image_token_id
    starts = is_image & ~torch.cat([is_image.new_zeros(1), is_image[:-1]])
    return torch.where(is_image, starts.long().cumsum(0) - 1, -1)


# -- model-config helpers: what the engine reads from a Hugging Face config ------------------------


def sliding_window(text_config) -> int | None:
    """The attention window the HF layers would apply, if any (Mistral: always when set; Qwen2 and
    others: only on layers typed ``sliding_attention``)."""
    window = getattr(text_config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        return int(window) if "sliding_attention" in layer_types else None
    if getattr(text_config, "model_type", None) == "mistral":
        return int(window)
    return int(window) if getattr(text_config, "use_sliding_window", False) else None


def eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """EOS ids as ``generate`` uses them: the generation config's, else the config's/tokenizer's."""
    for source in (getattr(model, "generation_config", None), model.config.get_text_config(), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}
    return set()
