/* NumberLine (RL4VLM gym_cards NumberLine-v0): move "Current" to "Target" with "-" and "+".
 * Reward +1 and terminate on reaching the target, -1 when the distance did not shrink (a wrong
 * way move or a no-op at the boundary), 0 otherwise; truncate after 2*max_position steps. */
#ifndef FASTVLMRL_NUMBERLINE_H
#define FASTVLMRL_NUMBERLINE_H
#include <stdlib.h>
#include "game.h"

#define NUMBERLINE_MAX_POSITION 5
#define NUMBERLINE_NUM_ACTIONS 2

typedef struct {
    int target, current, steps;
} NumberLine;

/* State row: target, current, steps. */
enum { NUMBERLINE_TARGET, NUMBERLINE_CURRENT, NUMBERLINE_STEPS, NUMBERLINE_STATE_LEN };
_Static_assert(NUMBERLINE_STATE_LEN <= STATE_DIM, "the NumberLine state row must fit STATE_DIM");

static const StateField NUMBERLINE_LAYOUT[] = {
    {"target", NUMBERLINE_TARGET, 1},
    {"current", NUMBERLINE_CURRENT, 1},
    {"steps", NUMBERLINE_STEPS, 1},
    {NULL, 0, 0},
};

static int numberline_num_actions(const void *g) { return NUMBERLINE_NUM_ACTIONS; }

static void numberline_reset(void *gv, Rng *rng) {
    NumberLine *g = gv;
    int start = rng_below(rng, NUMBERLINE_MAX_POSITION + 1);
    int goal = rng_below(rng, NUMBERLINE_MAX_POSITION + 1);
    /* RL4VLM's rule, kept as is: a goal equal to the start moves to (goal + 1) % max_position. */
    if (goal == start) goal = (goal + 1) % NUMBERLINE_MAX_POSITION;
    g->target = goal;
    g->current = start;
    g->steps = 0;
}

static int numberline_step(void *gv, Rng *rng, int action, float *reward, int *terminated, int *truncated) {
    NumberLine *g = gv;
    g->steps++;
    int before = abs(g->current - g->target);
    if (action == 0 && g->current > 0) g->current--;
    else if (action == 1 && g->current < NUMBERLINE_MAX_POSITION) g->current++;
    int after = abs(g->current - g->target);
    *terminated = after == 0;
    *reward = after == 0 ? 1.0f : (after >= before ? -1.0f : 0.0f);
    *truncated = !*terminated && g->steps >= 2 * NUMBERLINE_MAX_POSITION;
    return 1;
}

/* Layout at 300x300: "Target: g" at (30, 60) and "Current: p" at (30, 180), black on white. */
static void numberline_render(const void *gv, Canvas *c) {
    const NumberLine *g = gv;
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
static void numberline_render_step(const void *gv, Canvas *c, int changed) {
    const NumberLine *g = gv;
    int s = layout_scale(c, 4);
    int x = layout_x(c, 30) + 9 * GLYPH_ADVANCE * s, y = layout_y(c, 180); /* after "Current: " */
    fill_rect(c, x, y, GLYPH_W * s, GLYPH_H * s, COLOR_WHITE);
    draw_char(c, x, y, (char)('0' + g->current), s, COLOR_BLACK);
}

/* A new episode over a NumberLine frame: only the two digits change. */
static void numberline_render_reset(const void *old, const void *gv, Canvas *c) {
    const NumberLine *g = gv;
    int s = layout_scale(c, 4);
    int x = layout_x(c, 30) + 8 * GLYPH_ADVANCE * s, y = layout_y(c, 60); /* after "Target: " */
    fill_rect(c, x, y, GLYPH_W * s, GLYPH_H * s, COLOR_WHITE);
    draw_char(c, x, y, (char)('0' + g->target), s, COLOR_BLACK);
    numberline_render_step(g, c, 1);
}

static void numberline_state(const void *gv, int32_t *out) {
    const NumberLine *g = gv;
    out[NUMBERLINE_TARGET] = g->target;
    out[NUMBERLINE_CURRENT] = g->current;
    out[NUMBERLINE_STEPS] = g->steps;
}

static int numberline_valid(const void *gv) {
    const NumberLine *g = gv;
    return in_range(g->target, 0, NUMBERLINE_MAX_POSITION) && in_range(g->current, 0, NUMBERLINE_MAX_POSITION) &&
           in_range(g->steps, 0, MAX_STEPS_RESTORED);
}

static const GameOps NUMBERLINE_OPS = {
    .name = "NumberLine",
    .size = sizeof(NumberLine),
    .num_actions = numberline_num_actions,
    .reset = numberline_reset,
    .step = numberline_step,
    .render = numberline_render,
    .render_step = numberline_render_step,
    .render_reset = numberline_render_reset,
    .state = numberline_state,
    .valid = numberline_valid,
    .layout = NUMBERLINE_LAYOUT,
};

#endif
