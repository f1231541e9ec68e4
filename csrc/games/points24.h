/* Points24 (RL4VLM gym_cards Points24-v0): make 24 from four cards with + - * / ( ).
 * Ranks 1..13 drawn with replacement; by default J/Q/K count as 10 and A as 1 (17 actions:
 * numbers 1..10 then + - * / ( ) =); with face_cards_as_10 off they keep 11/12/13 (20 actions).
 * Not every hand is solvable (73.1% are with the defaults). Formula length limit 20. */
#ifndef FASTVLMRL_POINTS24_H
#define FASTVLMRL_POINTS24_H
#include "formula.h"

static const int POINTS24_OPERATORS[7] = {TOK_PLUS, TOK_MINUS, TOK_TIMES, TOK_DIVIDE, TOK_LPAREN, TOK_RPAREN,
                                          TOK_EQUALS};

static void points24_init(void *f, const GameOptions *options) {
    formula_settings(f, 24, 20, options->face_cards_as_10 ? 10 : 13, POINTS24_OPERATORS, 7);
}

static void points24_reset(void *fv, Rng *rng) {
    Formula *f = fv;
    formula_clear(f);
    f->ncards = 4;
    for (int i = 0; i < 4; i++) {
        f->rank[i] = 1 + rng_below(rng, 13);
        f->suit[i] = rng_below(rng, 4);
        f->value[i] = (f->num_numbers == 10 && f->rank[i] > 10) ? 10 : f->rank[i];
    }
}

/* Layout at 300x300: cards 67x93 at x = 5, 78, 152, 226, y = 103; "Formula:" at (10, 210) and
 * the formula at (10, 240), white. */
static const int POINTS24_CARD_X[4] = {5, 78, 152, 226};

static void points24_draw_text(const Formula *f, Canvas *c, int from, int to) {
    char text[128];
    formula_text(f, text, (int)sizeof(text));
    int s = layout_scale(c, 2), x = layout_x(c, 10);
    draw_wrapped(c, x, layout_y(c, 240), text, from, to, (c->w - x) / (GLYPH_ADVANCE * s), s, COLOR_WHITE);
}

static void points24_render(const void *fv, Canvas *c) {
    const Formula *f = fv;
    fill_canvas(c, COLOR_FELT);
    for (int i = 0; i < 4; i++)
        draw_card(c, layout_x(c, POINTS24_CARD_X[i]), layout_y(c, 103), layout_x(c, 67), layout_y(c, 93), f->rank[i],
                  f->suit[i]);
    draw_text(c, layout_x(c, 10), layout_y(c, 210), "Formula:", layout_scale(c, 2), COLOR_WHITE);
    points24_draw_text(f, c, 0, f->text_len);
}

/* A new hand over a Points24 frame: erase the old formula, redraw cards, label and text, in the
 * full render's order. */
static void points24_render_reset(const void *oldv, const void *fv, Canvas *c) {
    const Formula *old = oldv, *f = fv;
    int s = layout_scale(c, 2), x = layout_x(c, 10);
    clear_wrapped(c, x, layout_y(c, 240), old->text_len, (c->w - x) / (GLYPH_ADVANCE * s), s, COLOR_FELT);
    for (int i = 0; i < 4; i++)
        draw_card(c, layout_x(c, POINTS24_CARD_X[i]), layout_y(c, 103), layout_x(c, 67), layout_y(c, 93), f->rank[i],
                  f->suit[i]);
    draw_text(c, x, layout_y(c, 210), "Formula:", s, COLOR_WHITE);
    points24_draw_text(f, c, 0, f->text_len);
}

static void points24_render_step(const void *fv, Canvas *c, int added) {
    const Formula *f = fv;
    if (added > 0) points24_draw_text(f, c, f->text_len - added, f->text_len);
}

static const GameOps POINTS24_OPS = {
    .name = "Points24",
    .size = sizeof(Formula),
    .init = points24_init,
    .num_actions = formula_num_actions,
    .reset = points24_reset,
    .step = formula_step,
    .render = points24_render,
    .render_step = points24_render_step,
    .render_reset = points24_render_reset,
    .state = formula_state,
    .valid = formula_valid,
    .keep_settings = formula_keep_settings,
    .layout = FORMULA_LAYOUT,
};

#endif
