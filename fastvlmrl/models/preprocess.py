"""Frames -> pixel values on the device, for a whole batch at once.

The Hugging Face image processors work one image at a time on the CPU (PIL or torchvision). A
rollout has N frames of one size, so ``frames_to_pixel_values`` does the same steps as a CLIP-style
processor (resize, center crop, rescale, normalise) as a few tensor ops over ``[N, 3, H, W]`` on
the device, reading every setting from the processor itself. Tested equal to the processor's
output (to one grey level, see ``_resize``) in tests/models/test_preprocess.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import is_torchvision_available

# PIL resample codes (PILImageResampling) -> torch interpolate modes with the same kernel.
_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
# Processors that tile, split or patchify images: their pixel values are not [N, 3, S, S].
_UNSUPPORTED = ("image_grid_pinpoints", "do_image_splitting", "temporal_patch_size", "merge_size")


def clip_image_processor(size: int, *, invert: bool = True, resample: int = 3):
    """A CLIP image processor: shortest edge -> ``size``, center crop ``size``, rescale, normalise.

    ``invert=True`` normalises to ``1 - x/255`` (mean 1, std -1): a white background becomes 0, which
    the tiny VLM needs to see dark glyphs (notes/tiny-vlm.md); False = CLIP's usual ``(x/255 - .5)/.5``.
    The PIL flavour is used where torchvision is missing (both give the same pixels to one grey level).
    """
    import transformers

    # Naming CLIPImageProcessor without torchvision logs a fallback warning: pick by name.
    cls = getattr(transformers, "CLIPImageProcessor" if is_torchvision_available() else "CLIPImageProcessorPil")
    mean, std = ([1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]) if invert else ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    return cls(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=resample,
        image_mean=mean,
        image_std=std,
    )


def frames_to_pixel_values(
    frames: np.ndarray | torch.Tensor,
    image_processor: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` frames -> ``pixel_values [N, 3, S, S]`` on ``device`` in ``dtype``.

    Same steps and settings as ``image_processor`` (a CLIP-style one: resize by shortest edge or to
    height x width, optional center crop, rescale, normalise). Processors that tile or patchify
    images (LLaVA-NeXT, Qwen2-VL, Idefics3) are refused with a ValueError: use the processor itself.
    """
    ip = image_processor
    for attr in _UNSUPPORTED:
        if getattr(ip, attr, None):
            raise ValueError(
                f"frames_to_pixel_values supports CLIP-style image processors; {type(ip).__name__} sets {attr!r} "
                "(tiles or patches images): call the model's processor instead"
            )
    if getattr(ip, "do_pad", False):
        raise ValueError(f"frames_to_pixel_values does not support padding ({type(ip).__name__}.do_pad=True)")
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {x.dtype} {list(x.shape)}")
    # Move the uint8 frames (4x smaller than floats), then work in float32 on the device.
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if ip.do_resize:
        x = _resize(x, _output_size(x.shape[-2:], ip.size), ip.resample)
    if getattr(ip, "do_center_crop", False):
        x = _center_crop(x, ip.crop_size["height"], ip.crop_size["width"])
    if ip.do_rescale:
        x = x * ip.rescale_factor
    if ip.do_normalize:
        mean = torch.tensor(_per_channel(ip.image_mean), device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_per_channel(ip.image_std), device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(dtype).contiguous()


def _per_channel(v) -> list[float]:
    return [float(v)] * 3 if isinstance(v, (int, float)) else [float(c) for c in v]


def _output_size(hw: tuple[int, int], size) -> tuple[int, int]:
    """The processor's target size: shortest edge (long edge scaled and truncated) or height x width."""
    h, w = int(hw[0]), int(hw[1])
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
    if shortest and not longest:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(shortest * long / short)  # int(), as transformers' get_resize_output_image_size
        return (new_long, shortest) if w <= h else (shortest, new_long)
    if size.get("height") and size.get("width") and not longest:
        return int(size["height"]), int(size["width"])
    raise ValueError(f"frames_to_pixel_values supports size {{shortest_edge}} or {{height, width}}, got {dict(size)}")


def _resize(x: torch.Tensor, out_hw: tuple[int, int], resample) -> torch.Tensor:
    """Resize like PIL on uint8 images (what both the PIL and torchvision processors do).

    PIL resamples width then height, rounding (half up) and clamping to 8 bits after each pass,
    with an antialiasing filter whose support grows with the downscale factor (torch's
    ``antialias=True`` is the same filter). The one difference left is PIL's fixed-point weights:
    a value within ~1e-6 of a rounding boundary can land one grey level off (<1% of values).
    """
    code = int(resample) if resample is not None else 2
    if code not in _MODES:
        raise ValueError(
            f"frames_to_pixel_values supports nearest, bilinear and bicubic resampling, got resample={resample}"
        )
    mode = _MODES[code]
    kw = {} if mode.startswith("nearest") else {"antialias": True, "align_corners": False}
    h, w = x.shape[-2:]
    oh, ow = out_hw
    if ow != w:
        x = F.interpolate(x, size=(h, ow), mode=mode, **kw).add_(0.5).floor_().clamp_(0, 255)
    if oh != h:
        x = F.interpolate(x, size=(oh, ow), mode=mode, **kw).add_(0.5).floor_().clamp_(0, 255)
    return x


def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """Center crop as the processors do (offsets floored; zero padding first if the image is smaller)."""
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        top_pad, left_pad = math.ceil(ph / 2), math.ceil(pw / 2)
        x = F.pad(x, (left_pad, pw - left_pad, top_pad, ph - top_pad))
        top, left = (h - ch) // 2 + top_pad, (w - cw) // 2 + left_pad
    else:
        top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]
