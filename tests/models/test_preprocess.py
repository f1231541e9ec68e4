"""frames_to_pixel_values against the Hugging Face image processor on the same frames.

Not bit-exact on purpose: PIL resamples with fixed-point weights, so a value within ~1e-6 of a
rounding boundary may land one grey level away from the float computation (under 2% of values,
never more than one level). Everything after the resize (crop, rescale, normalise) is exact.
"""

import numpy as np
import pytest
import torch
import transformers

from fastvlmrl.models import clip_image_processor, frames_to_pixel_values


def _processor_reference(ip, frames: np.ndarray) -> torch.Tensor:
    return ip(images=list(frames), return_tensors="pt")["pixel_values"]


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, ip) -> None:
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    level = ip.rescale_factor / min(abs(s) for s in ip.image_std)  # one grey level after normalising
    diff = (ours - ref).abs()
    assert diff.max() <= level * 1.001, diff.max()
    assert (diff > 1e-5).float().mean() < 0.02


@pytest.mark.parametrize(
    "h, w, size",
    [(300, 300, 112), (300, 300, 336), (300, 400, 112), (97, 131, 112), (28, 28, 112), (301, 257, 56)],
)
@pytest.mark.parametrize("resample", [3, 2])  # bicubic (CLIP), bilinear
def test_clip_style_equals_processor(h, w, size, resample, helpers):
    ip = clip_image_processor(size, invert=True, resample=resample)
    frames = helpers.frames(3, h, w, seed=h * w + size)
    ours = frames_to_pixel_values(frames, ip, "cpu", torch.float32)
    assert ours.shape == (3, 3, size, size)
    _assert_close(ours, _processor_reference(ip, frames), ip)


@pytest.mark.parametrize("h, w", [(300, 300), (240, 320)])
def test_plain_resize_equals_processor(h, w, helpers):
    """SigLIP-style: resize to height x width, no crop, mean/std 0.5."""
    ip = transformers.CLIPImageProcessorPil(
        size={"height": 96, "width": 80}, do_center_crop=False, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    frames = helpers.frames(2, h, w, seed=1)
    ours = frames_to_pixel_values(frames, ip)
    assert ours.shape == (2, 3, 96, 80)
    _assert_close(ours, _processor_reference(ip, frames), ip)


def test_real_game_frames_torch_input_and_dtype(helpers):
    from fastvlmrl.envs import NumberLineVectorEnv

    env = NumberLineVectorEnv(4)
    obs, _ = env.reset(seed=0)
    env.close()
    ip = clip_image_processor(112)
    ref = _processor_reference(ip, obs)
    ours = frames_to_pixel_values(torch.from_numpy(np.ascontiguousarray(obs)), ip, "cpu", torch.float32)
    _assert_close(ours, ref, ip)
    assert ref.min() >= -1e-6 and ref.max() <= 1 + 1e-6  # 1 - x/255: white background is 0
    half = frames_to_pixel_values(obs, ip, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), ours, atol=1e-2)


def test_errors(helpers):
    ip = clip_image_processor(112)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_pixel_values(helpers.frames(2).astype(np.float32), ip)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        frames_to_pixel_values(helpers.frames(1)[0], ip)
    qwen = transformers.Qwen2VLImageProcessorPil()
    with pytest.raises(ValueError, match="CLIP-style"):
        frames_to_pixel_values(helpers.frames(1), qwen)
