/* EZPoints (RL4VLM gym_cards EZPoints-v0): make 12 from two cards with "+" and "*".
 * 13 actions: numbers 1..10, "+", "*", "=". J/Q/K count as 10. Every hand is solvable: the first
 * card is 2..K; if its value divides 12 the second card makes 12 by product with probability 1/2,
 * otherwise by sum. Formula length limit 5. Scoring in formula.h. */
#ifndef FASTVLMRL_EZPOINTS_H
#define FASTVLMRL_EZPOINTS_H
#include "formula.h"

static const int EZPOINTS_OPERATORS[3] = {TOK_PLUS, TOK_TIMES, TOK_EQUALS};

static void ezpoints_init(void *f, const GameOptions *options) {
    formula_settings(f, 12, 5, 10, EZPOINTS_OPERATORS, 3);
}

static void ezpoints_reset(void *fv, Rng *rng) {
    Formula *f = fv;
    formula_clear(f);
    f->ncards = 2;
    int rank = 2 + rng_below(rng, 12);
    f->rank[0] = rank;
    f->suit[0] = rng_below(rng, 4);
    int v = rank < 10 ? rank : 10;
    int divides = v == 2 || v == 3 || v == 4 || v == 6;
    int second = (divides && rng_below(rng, 2) == 0) ? 12 / v : 12 - v;
    f->rank[1] = second; /* a 10 is drawn as a "10", as RL4VLM draws "T" */
    f->suit[1] = rng_below(rng, 4);
    if (rng_below(rng, 2) == 0) {
        int r = f->rank[0], s = f->suit[0];
        f->rank[0] = f->rank[1];
        f->suit[0] = f->suit[1];
        f->rank[1] = r;
        f->suit[1] = s;
    }
    for (int i = 0; i < 2; i++) f->value[i] = f->rank[i] < 10 ? f->rank[i] : 10;
}

/* Layout at 300x300: cards 135x189 at x = 5 and 153, y = 55; "Formula: ..." at (10, 258), white. */
static const char EZPOINTS_LABEL[] = "Formula: ";

static void ezpoints_text_layout(const Canvas *c, int *x, int *y, int *s, int *per_line) {
    *s = layout_scale(c, 2);
    *x = layout_x(c, 10);
    *y = layout_y(c, 258);
    *per_line = (c->w - *x) / (GLYPH_ADVANCE * *s);
}

static void ezpoints_draw_text(const Formula *f, Canvas *c, int from, int to) {
    char text[128];
    int label = (int)sizeof(EZPOINTS_LABEL) - 1;
    memcpy(text, EZPOINTS_LABEL, (size_t)label);
    formula_text(f, text + label, (int)sizeof(text) - label);
    int x, y, s, per_line;
    ezpoints_text_layout(c, &x, &y, &s, &per_line);
    draw_wrapped(c, x, y, text, from, to, per_line, s, COLOR_WHITE);
}

static void ezpoints_render(const void *fv, Canvas *c) {
    const Formula *f = fv;
    fill_canvas(c, COLOR_FELT);
    for (int i = 0; i < 2; i++)
        draw_card(c, layout_x(c, i == 0 ? 5 : 153), layout_y(c, 55), layout_x(c, 135), layout_y(c, 189), f->rank[i],
                  f->suit[i]);
    int label = (int)sizeof(EZPOINTS_LABEL) - 1;
    ezpoints_draw_text(f, c, 0, label + f->text_len);
}

/* A new hand over an EZPoints frame: erase the old text, redraw the cards and the label; the
 * order (text area, cards, text) is the full render's, so overlaps at small sizes match too. */
static void ezpoints_render_reset(const void *oldv, const void *fv, Canvas *c) {
    const Formula *old = oldv, *f = fv;
    int x, y, s, per_line;
    ezpoints_text_layout(c, &x, &y, &s, &per_line);
    int label = (int)sizeof(EZPOINTS_LABEL) - 1;
    clear_wrapped(c, x, y, label + old->text_len, per_line, s, COLOR_FELT);
    for (int i = 0; i < 2; i++)
        draw_card(c, layout_x(c, i == 0 ? 5 : 153), layout_y(c, 55), layout_x(c, 135), layout_y(c, 189), f->rank[i],
                  f->suit[i]);
    ezpoints_draw_text(f, c, 0, label + f->text_len);
}

/* After a step only new formula characters appear: draw just those. */
static void ezpoints_render_step(const void *fv, Canvas *c, int added) {
    const Formula *f = fv;
    int label = (int)sizeof(EZPOINTS_LABEL) - 1;
    if (added > 0) ezpoints_draw_text(f, c, label + f->text_len - added, label + f->text_len);
}

static const GameOps EZPOINTS_OPS = {
    .name = "EZPoints",
    .size = sizeof(Formula),
    .init = ezpoints_init,
    .num_actions = formula_num_actions,
    .reset = ezpoints_reset,
    .step = formula_step,
    .render = ezpoints_render,
    .render_step = ezpoints_render_step,
    .render_reset = ezpoints_render_reset,
    .state = formula_state,
    .valid = formula_valid,
    .keep_settings = formula_keep_settings,
    .layout = FORMULA_LAYOUT,
};

#endif
