"""The shared drawer in numpy: the same pixels as csrc/draw.h, drawn from scratch every frame."""

from __future__ import annotations

import numpy as np

from fastvlmrl.envs import font
from fastvlmrl.envs.games import RANK_NAMES

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
FELT = (53, 101, 77)  # #35654d
RED = (200, 30, 30)
CARD_EDGE = (40, 40, 40)
BACK = (30, 60, 150)
BACK_STRIPE = (90, 120, 200)


def _mask(bits: list[int], width: int) -> np.ndarray:
    return np.array([[(row >> (width - 1 - k)) & 1 for k in range(width)] for row in bits], dtype=bool)


_GLYPH_MASKS = {ch: _mask(bits, font.GLYPH_W) for ch, bits in font.GLYPH_BITS.items()}
_SUIT_MASKS = [_mask(bits, font.SUIT_W) for bits in font.SUIT_BITS]


class Canvas:
    """An RGB frame [H, W, 3] plus the 300x300 layout scaling of csrc/draw.h."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.px = np.zeros((height, width, 3), dtype=np.uint8)

    def x(self, v: int) -> int:
        return v * self.w // 300

    def y(self, v: int) -> int:
        return v * self.h // 300

    def scale(self, s: int) -> int:
        return max(1, s * min(self.w, self.h) // 300)

    def fill(self, color) -> None:
        self.px[:] = color

    def rect(self, x: int, y: int, w: int, h: int, color) -> None:
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.w), min(y + h, self.h)
        if x0 < x1 and y0 < y1:
            self.px[y0:y1, x0:x1] = color

    def bitmap(self, x: int, y: int, mask: np.ndarray, s: int, color) -> None:
        big = np.repeat(np.repeat(mask, s, axis=0), s, axis=1)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + big.shape[1], self.w), min(y + big.shape[0], self.h)
        if x0 < x1 and y0 < y1:
            region = self.px[y0:y1, x0:x1]
            region[big[y0 - y : y1 - y, x0 - x : x1 - x]] = color

    def char(self, x: int, y: int, ch: str, s: int, color) -> None:
        self.bitmap(x, y, _GLYPH_MASKS.get(ch, _GLYPH_MASKS["?"]), s, color)

    def text(self, x: int, y: int, text: str, s: int, color) -> None:
        for i, ch in enumerate(text):
            self.char(x + i * font.ADVANCE * s, y, ch, s, color)

    def wrapped(self, x: int, y: int, text: str, per_line: int, s: int, color) -> None:
        per_line = max(per_line, 1)
        for i, ch in enumerate(text):
            line, column = divmod(i, per_line)
            self.char(x + column * font.ADVANCE * s, y + line * font.LINE_HEIGHT * s, ch, s, color)

    def card(self, x: int, y: int, w: int, h: int, rank: int, suit: int) -> None:
        self.rect(x, y, w, h, CARD_EDGE)
        self.rect(x + 1, y + 1, w - 2, h - 2, WHITE)
        label = RANK_NAMES[rank] if 1 <= rank <= 13 else "?"
        color = RED if suit in (1, 2) else BLACK
        corner = max(1, (w + 10) // 40)
        pad = max(2, w // 20)
        self.text(x + pad, y + pad, label, corner, color)
        self.bitmap(x + pad, y + pad + (font.GLYPH_H + 2) * corner, _SUIT_MASKS[suit], corner, color)
        self.bitmap(
            x + w - pad - font.SUIT_W * corner, y + h - pad - font.SUIT_H * corner, _SUIT_MASKS[suit], corner, color
        )
        big = max(1, w // 14)
        while big > 1 and text_width(len(label), big) > w - 2 * pad:
            big -= 1
        self.text(x + (w - text_width(len(label), big)) // 2, y + (h - font.GLYPH_H * big) // 2, label, big, color)

    def card_back(self, x: int, y: int, w: int, h: int) -> None:
        self.rect(x, y, w, h, CARD_EDGE)
        self.rect(x + 1, y + 1, w - 2, h - 2, BACK)
        if w <= 2 or h <= 2:
            return
        i = np.arange(1, w - 1)[None, :]
        j = np.arange(1, h - 1)[:, None]
        stripes = (i + j) % 8 < 2
        # clip to the canvas like rect()
        x0, y0, x1, y1 = max(x + 1, 0), max(y + 1, 0), min(x + w - 1, self.w), min(y + h - 1, self.h)
        if x0 < x1 and y0 < y1:
            region = self.px[y0:y1, x0:x1]
            region[stripes[y0 - y - 1 : y1 - y - 1, x0 - x - 1 : x1 - x - 1]] = BACK_STRIPE


def text_width(n_chars: int, s: int) -> int:
    return (n_chars * font.ADVANCE - 1) * s if n_chars > 0 else 0
