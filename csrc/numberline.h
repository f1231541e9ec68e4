/* NumberLine (RL4VLM gym_cards NumberLine-v0): move "Current" to "Target" with "-" and "+".
 * Reward +1 and terminate on reaching the target, -1 when the distance did not shrink (a wrong
 * way move or a no-op at the boundary), 0 otherwise; truncate after 2*max_position steps. */
#ifndef FASTVLMRL_NUMBERLINE_H
#define FASTVLMRL_NUMBERLINE_H
#include <stdlib.h>
#include "draw.h"
#include "rng.h"

#define NUMBERLINE_MAX_POSITION 5
#define NUMBERLINE_NUM_ACTIONS 2

typedef struct {
    int target, current, steps;
} NumberLine;

static void numberline_reset(NumberLine *g, Rng *rng) {
    int start = rng_below(rng, NUMBERLINE_MAX_POSITION + 1);
    int goal = rng_below(rng, NUMBERLINE_MAX_POSITION + 1);
    /* RL4VLM's rule, kept as is: a goal equal to the start moves to (goal + 1) % max_position. */
    if (goal == start) goal = (goal + 1) % NUMBERLINE_MAX_POSITION;
    g->target = goal;
    g->current = start;
    g->steps = 0;
}

static void numberline_step(NumberLine *g, int action, float *reward, int *terminated, int *truncated) {
    g->steps++;
    int before = abs(g->current - g->target);
    if (action == 0 && g->current > 0) g->current--;
    else if (action == 1 && g->current < NUMBERLINE_MAX_POSITION) g->current++;
    int after = abs(g->current - g->target);
    *terminated = after == 0;
    *reward = after == 0 ? 1.0f : (after >= before ? -1.0f : 0.0f);
    *truncated = !*terminated && g->steps >= 2 * NUMBERLINE_MAX_POSITION;
}

/* Layout at 300x300: "Target: g" at (30, 60) and "Current: p" at (30, 180), black on white. */
static void numberline_render(const NumberLine *g, Canvas *c) {
    fill_canvas(c, COLOR_WHITE);
    int s = layout_scale(c, 4);
    char text[16] = "Target: 0";
    text[8] = (char)('0' + g->target);
    draw_text(c, layout_x(c, 30), layout_y(c, 60), text, s, COLOR_BLACK);
    char text2[16] = "Current: 0";
    text2[9] = (char)('0' + g->current);
    draw_text(c, layout_x(c, 30), layout_y(c, 180), text2, s, COLOR_BLACK);
}

/* After a step only the current digit can change: redraw that glyph cell alone. */
static void numberline_render_step(const NumberLine *g, Canvas *c) {
    int s = layout_scale(c, 4);
    int x = layout_x(c, 30) + 9 * GLYPH_ADVANCE * s, y = layout_y(c, 180); /* after "Current: " */
    fill_rect(c, x, y, GLYPH_W * s, GLYPH_H * s, COLOR_WHITE);
    draw_char(c, x, y, (char)('0' + g->current), s, COLOR_BLACK);
}

/* A new episode over a NumberLine frame: only the two digits change. */
static void numberline_render_reset(const NumberLine *g, Canvas *c) {
    int s = layout_scale(c, 4);
    int x = layout_x(c, 30) + 8 * GLYPH_ADVANCE * s, y = layout_y(c, 60); /* after "Target: " */
    fill_rect(c, x, y, GLYPH_W * s, GLYPH_H * s, COLOR_WHITE);
    draw_char(c, x, y, (char)('0' + g->target), s, COLOR_BLACK);
    numberline_render_step(g, c);
}

/* State row: target, current, steps. */
static void numberline_state(const NumberLine *g, int32_t *out) {
    out[0] = g->target;
    out[1] = g->current;
    out[2] = g->steps;
}

#endif
