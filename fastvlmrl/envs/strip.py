"""An episode as pictures: each frame with the model's (or oracle's) reply written under it, as a
PNG strip or an animated GIF (`fastvlmrl render`)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_TEXT_LINES = 12
_LINE_PX = 12


def _panel(frame: np.ndarray, text: str) -> Image.Image:
    h, w, _ = frame.shape
    font = ImageFont.load_default()
    chars_per_line = max(8, w // 6)
    lines = textwrap.wrap(text, chars_per_line)[:_TEXT_LINES]
    panel = Image.new("RGB", (w, h + 8 + _TEXT_LINES * _LINE_PX), "white")
    panel.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(panel)
    for k, line in enumerate(lines):
        draw.text((4, h + 4 + k * _LINE_PX), line, fill="black", font=font)
    return panel


def episode_strip(frames: list[np.ndarray], texts: list[str], path: str) -> None:
    """Write frames[i] above texts[i] (missing texts are blank), side by side (.png) or animated (.gif)."""
    if not frames:
        raise ValueError("an episode strip needs at least one frame")
    panels = [_panel(f, texts[i] if i < len(texts) else "") for i, f in enumerate(frames)]
    if path.lower().endswith(".gif"):
        panels[0].save(path, save_all=True, append_images=panels[1:], duration=1200, loop=0)
        return
    if not path.lower().endswith(".png"):
        raise ValueError(f"the output must end in .png or .gif, got {path!r}")
    strip = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        strip.paste(p, (x, 0))
        x += p.width
    strip.save(path)
