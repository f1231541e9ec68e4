"""Episodes as pictures: each frame with a header (step, action, legality, reward) and the reply's
thought wrapped under it, as a contact sheet (.png: one row per episode) or an animated GIF (every
panel in turn), for `fastvlmrl render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_PX = 13
_BODY_LINES = 9


@dataclass
class Panel:
    frame: np.ndarray  # uint8 [H, W, 3]
    header: str  # one line: "step 2: '+' legal, reward 0"
    body: str = ""  # wrapped under the header: the thought (or the whole reply)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than the line is cut."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:
            cut = max(1, int(len(word) * width / font.getlength(word)))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def draw_panel(panel: Panel, width: int | None = None) -> Image.Image:
    """The frame (scaled to `width` if given) with its header and body underneath."""
    frame = Image.fromarray(panel.frame)
    if width is not None and frame.width != width:
        frame = frame.resize((width, round(frame.height * width / frame.width)), Image.NEAREST)
    font = _font(_FONT_PX)
    line_px = _FONT_PX + 3
    header = _wrap(panel.header, font, frame.width - 8)[:2]
    body = _wrap(panel.body, font, frame.width - 8)
    if len(body) > _BODY_LINES:
        body = body[:_BODY_LINES - 1] + [body[_BODY_LINES - 1] + " ..."]
    image = Image.new("RGB", (frame.width, frame.height + 10 + (2 + _BODY_LINES) * line_px), "white")
    image.paste(frame, (0, 0))
    draw = ImageDraw.Draw(image)
    y = frame.height + 4
    for line in header:
        draw.text((4, y), line, fill=(0, 0, 160), font=font)
        y += line_px
    y = frame.height + 4 + 2 * line_px
    for line in body:
        draw.text((4, y), line, fill="black", font=font)
        y += line_px
    return image


def check_picture_path(path: str) -> None:
    """A clear error before any work for an output that is neither .png nor .gif."""
    if not str(path).lower().endswith((".png", ".gif")):
        raise ValueError(f"--out must end in .png or .gif, got {str(path)!r}")


def write_episodes(episodes: list[list[Panel]], path: str, width: int | None = None) -> None:
    """.png: a contact sheet, one row per episode; .gif: every panel in turn, episode by episode."""
    check_picture_path(path)
    rows = [[draw_panel(p, width) for p in episode] for episode in episodes if episode]
    if not rows:
        raise ValueError("nothing to draw: no episode has a frame")
    if str(path).lower().endswith(".gif"):
        panels = [p for row in rows for p in row]
        size = (max(p.width for p in panels), max(p.height for p in panels))
        frames = []
        for p in panels:
            canvas = Image.new("RGB", size, "white")
            canvas.paste(p, (0, 0))
            frames.append(canvas)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1500, loop=0)
        return
    cell_w = max(p.width for row in rows for p in row)
    cell_h = max(p.height for row in rows for p in row)
    sheet = Image.new("RGB", (cell_w * max(len(r) for r in rows), cell_h * len(rows)), (235, 235, 235))
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            sheet.paste(p, (c * cell_w, r * cell_h))
    sheet.save(path)


def episode_strip(frames: list[np.ndarray], texts: list[str], path: str) -> None:
    """One episode: frames[i] above texts[i] (missing texts are blank), as a one-row sheet or a GIF."""
    if not frames:
        raise ValueError("an episode strip needs at least one frame")
    write_episodes([[Panel(f, f"step {i}", texts[i] if i < len(texts) else "") for i, f in enumerate(frames)]], path)
