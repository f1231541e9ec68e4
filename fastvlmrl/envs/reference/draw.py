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
        self.clip = (0, 0, width, height)  # drawing stays inside [x0, x1) x [y0, y1)

    def x(self, v: int) -> int:
        return v * self.w // 300

    def y(self, v: int) -> int:
        return v * self.h // 300

    def scale(self, s: int) -> int:
        return max(1, s * min(self.w, self.h) // 300)

    def fill(self, color) -> None:
        self.px[:] = color

    def _clipped(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        cx0, cy0, cx1, cy1 = self.clip
        return max(x, cx0), max(y, cy0), min(x + w, cx1), min(y + h, cy1)

    def rect(self, x: int, y: int, w: int, h: int, color) -> None:
        x0, y0, x1, y1 = self._clipped(x, y, w, h)
        if x0 < x1 and y0 < y1:
            self.px[y0:y1, x0:x1] = color

    def bitmap(self, x: int, y: int, mask: np.ndarray, s: int, color) -> None:
        big = np.repeat(np.repeat(mask, s, axis=0), s, axis=1)
        x0, y0, x1, y1 = self._clipped(x, y, big.shape[1], big.shape[0])
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
        """A face-up card; nothing is drawn outside it."""
        saved = self.clip
        self.clip = self._clipped(x, y, w, h)
        self._card_face(x, y, w, h, rank, suit)
        self.clip = saved

    def _card_face(self, x: int, y: int, w: int, h: int, rank: int, suit: int) -> None:
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
        self.text(x + _c_half(w - text_width(len(label), big)), y + _c_half(h - font.GLYPH_H * big), label, big, color)

    def card_back(self, x: int, y: int, w: int, h: int) -> None:
        self.rect(x, y, w, h, CARD_EDGE)
        self.rect(x + 1, y + 1, w - 2, h - 2, BACK)
        if w <= 2 or h <= 2:
            return
        i = np.arange(1, w - 1)[None, :]
        j = np.arange(1, h - 1)[:, None]
        stripes = (i + j) % 8 < 2
        x0, y0, x1, y1 = self._clipped(x + 1, y + 1, w - 2, h - 2)
        if x0 < x1 and y0 < y1:
            region = self.px[y0:y1, x0:x1]
            region[stripes[y0 - y - 1 : y1 - y - 1, x0 - x - 1 : x1 - x - 1]] = BACK_STRIPE


def _c_half(v: int) -> int:
    """v / 2 rounded toward zero, as C's integer division (Python's // floors negatives)."""
    return -((-v) // 2) if v < 0 else v // 2


def text_width(n_chars: int, s: int) -> int:
    return (n_chars * font.ADVANCE - 1) * s if n_chars > 0 else 0
