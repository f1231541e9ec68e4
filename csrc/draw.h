/* The shared drawer: filled rectangles, the bitmap font scaled by whole pixels, suit symbols and
 * procedural playing cards, all clipped to the canvas. Layout numbers are given for a 300x300
 * frame (RL4VLM's size) and scaled to the canvas with layout_x/layout_y/layout_scale, so any
 * image size keeps the same picture. fastvlmrl/envs/reference/draw.py draws the same pixels. */
#ifndef FASTVLMRL_DRAW_H
#define FASTVLMRL_DRAW_H
#include <stdint.h>
#include <string.h>
#include "font.h"

typedef struct {
    uint8_t r, g, b;
} Color;

static const Color COLOR_WHITE = {255, 255, 255};
static const Color COLOR_BLACK = {0, 0, 0};
static const Color COLOR_FELT = {53, 101, 77}; /* #35654d, RL4VLM's table */
static const Color COLOR_RED = {200, 30, 30};
static const Color COLOR_CARD_EDGE = {40, 40, 40};
static const Color COLOR_BACK = {30, 60, 150};
static const Color COLOR_BACK_STRIPE = {90, 120, 200};

typedef struct {
    uint8_t *px; /* H x W x 3, row-major */
    int w, h;
    int clip_x0, clip_y0, clip_x1, clip_y1; /* drawing stays inside [x0, x1) x [y0, y1) */
} Canvas;

static inline Canvas canvas_make(uint8_t *px, int w, int h) {
    Canvas c = {px, w, h, 0, 0, w, h};
    return c;
}

static inline int layout_x(const Canvas *c, int x) { return x * c->w / 300; }
static inline int layout_y(const Canvas *c, int y) { return y * c->h / 300; }
static inline int layout_scale(const Canvas *c, int s) {
    int m = c->w < c->h ? c->w : c->h;
    int v = s * m / 300;
    return v < 1 ? 1 : v;
}

static void fill_rect(Canvas *c, int x, int y, int w, int h, Color col) {
    int x0 = x < c->clip_x0 ? c->clip_x0 : x, y0 = y < c->clip_y0 ? c->clip_y0 : y;
    int x1 = x + w > c->clip_x1 ? c->clip_x1 : x + w, y1 = y + h > c->clip_y1 ? c->clip_y1 : y + h;
    if (x0 >= x1 || y0 >= y1) return;
    uint8_t *first = c->px + ((size_t)y0 * c->w + x0) * 3;
    for (int i = 0; i < x1 - x0; i++) {
        first[3 * i] = col.r;
        first[3 * i + 1] = col.g;
        first[3 * i + 2] = col.b;
    }
    size_t row_bytes = (size_t)(x1 - x0) * 3;
    for (int yy = y0 + 1; yy < y1; yy++) memcpy(c->px + ((size_t)yy * c->w + x0) * 3, first, row_bytes);
}

static void fill_canvas(Canvas *c, Color col) { fill_rect(c, 0, 0, c->w, c->h, col); }

/* Draw a bitmap whose rows are `width` bits wide (leftmost pixel = high bit), each bit as an
 * s x s block. */
static void draw_bitmap(Canvas *c, int x, int y, const uint8_t *rows, int width, int height, int s, Color col) {
    for (int r = 0; r < height; r++) {
        for (int k = 0; k < width; k++) {
            if (rows[r] & (1u << (width - 1 - k))) fill_rect(c, x + k * s, y + r * s, s, s, col);
        }
    }
}

static void draw_char(Canvas *c, int x, int y, char ch, int s, Color col) {
    unsigned code = (unsigned char)ch;
    if (code >= 128 || !glyph_present[code]) code = '?';
    draw_bitmap(c, x, y, glyph_rows[code], GLYPH_W, GLYPH_H, s, col);
}

static void draw_text(Canvas *c, int x, int y, const char *text, int s, Color col) {
    for (int i = 0; text[i]; i++) draw_char(c, x + i * GLYPH_ADVANCE * s, y, text[i], s, col);
}

/* Characters [from, to) of a text that wraps every `per_line` characters (at least 1). */
static void draw_wrapped(Canvas *c, int x, int y, const char *text, int from, int to, int per_line, int s, Color col) {
    if (per_line < 1) per_line = 1;
    for (int i = from; i < to; i++) {
        int line = i / per_line, column = i % per_line;
        draw_char(c, x + column * GLYPH_ADVANCE * s, y + line * GLYPH_LINE_HEIGHT * s, text[i], s, col);
    }
}

/* Fill the cells of the first n characters of a wrapped text with a colour (erase it). */
static void clear_wrapped(Canvas *c, int x, int y, int n, int per_line, int s, Color col) {
    if (n <= 0) return;
    if (per_line < 1) per_line = 1;
    int lines = (n + per_line - 1) / per_line;
    int cols = n < per_line ? n : per_line;
    fill_rect(c, x, y, cols * GLYPH_ADVANCE * s, lines * GLYPH_LINE_HEIGHT * s, col);
}

static inline int text_width(int n_chars, int s) { return n_chars > 0 ? (n_chars * GLYPH_ADVANCE - 1) * s : 0; }

/* Suits are indexed C, D, H, S. */
static inline Color suit_color(int suit) { return (suit == 1 || suit == 2) ? COLOR_RED : COLOR_BLACK; }

static void rank_text(int rank, char out[3]) {
    static const char *names[14] = {"?", "A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"};
    const char *n = (rank >= 1 && rank <= 13) ? names[rank] : "?";
    out[0] = n[0];
    out[1] = n[1];
    out[2] = n[1] ? n[2] : 0;
}

/* Restrict drawing to a rectangle (within the current clip); returns the previous clip. */
static Canvas clip_to(Canvas *c, int x, int y, int w, int h) {
    Canvas saved = *c;
    if (x > c->clip_x0) c->clip_x0 = x;
    if (y > c->clip_y0) c->clip_y0 = y;
    if (x + w < c->clip_x1) c->clip_x1 = x + w;
    if (y + h < c->clip_y1) c->clip_y1 = y + h;
    return saved;
}

/* A face-up card: edge, white face, rank and suit in the top-left corner, suit in the
 * bottom-right corner, and the rank large in the middle. Nothing is drawn outside the card, so
 * a new card always covers all of an old one (tiny frames included). */
static void draw_card(Canvas *c, int x, int y, int w, int h, int rank, int suit) {
    Canvas saved = clip_to(c, x, y, w, h);
    fill_rect(c, x, y, w, h, COLOR_CARD_EDGE);
    fill_rect(c, x + 1, y + 1, w - 2, h - 2, COLOR_WHITE);
    char label[3];
    rank_text(rank, label);
    int n = (int)strlen(label);
    Color col = suit_color(suit);
    int corner = (w + 10) / 40;
    if (corner < 1) corner = 1;
    int pad = w / 20;
    if (pad < 2) pad = 2;
    draw_text(c, x + pad, y + pad, label, corner, col);
    draw_bitmap(c, x + pad, y + pad + (GLYPH_H + 2) * corner, suit_rows[suit], SUIT_W, SUIT_H, corner, col);
    draw_bitmap(c, x + w - pad - SUIT_W * corner, y + h - pad - SUIT_H * corner, suit_rows[suit], SUIT_W, SUIT_H,
                corner, col);
    int big = w / 14;
    if (big < 1) big = 1;
    while (big > 1 && text_width(n, big) > w - 2 * pad) big--;
    draw_text(c, x + (w - text_width(n, big)) / 2, y + (h - GLYPH_H * big) / 2, label, big, col);
    *c = saved;
}

/* The back of a card: edge, blue face with light diagonal stripes. */
static void draw_card_back(Canvas *c, int x, int y, int w, int h) {
    fill_rect(c, x, y, w, h, COLOR_CARD_EDGE);
    fill_rect(c, x + 1, y + 1, w - 2, h - 2, COLOR_BACK);
    for (int j = 1; j < h - 1; j++) {
        int yy = y + j;
        if (yy < c->clip_y0 || yy >= c->clip_y1) continue;
        for (int i = 1; i < w - 1; i++) {
            int xx = x + i;
            if (xx < c->clip_x0 || xx >= c->clip_x1 || (i + j) % 8 >= 2) continue;
            uint8_t *p = c->px + ((size_t)yy * c->w + xx) * 3;
            p[0] = COLOR_BACK_STRIPE.r;
            p[1] = COLOR_BACK_STRIPE.g;
            p[2] = COLOR_BACK_STRIPE.b;
        }
    }
}

#endif
