/* One env of a batch: a game's struct, its random stream and the frame bookkeeping, driven
 * through the game's GameOps (no Python API: this runs without the GIL). */
#ifndef FASTVLMRL_ENV_H
#define FASTVLMRL_ENV_H
#include <string.h>
#include "games.h"

typedef struct {
    Rng rng;
    int needs_reset; /* the episode ended: the next step (or reset) starts a new one */
    int stale;       /* the frame in the buffer is not this env's current frame */
    GameState g;
} Env;

enum { AUTORESET_NEXT_STEP = 0, AUTORESET_SAME_STEP = 1, AUTORESET_DISABLED = 2 };

static void env_reset(const GameOps *ops, Env *e) {
    ops->reset(&e->g, &e->rng);
    e->needs_reset = 0;
}

static void env_render(const GameOps *ops, Env *e, Canvas *c) {
    ops->render(&e->g, c);
    e->stale = 0;
}

/* Start a new episode and draw it: over the env's previous frame only what changed, else in full. */
static void env_reset_and_render(const GameOps *ops, Env *e, Canvas *c) {
    GameState old = e->g;
    env_reset(ops, e);
    if (e->stale) env_render(ops, e, c);
    else ops->render_reset(&old, &e->g, c);
}

static void env_step(const GameOps *ops, Env *e, int action, Canvas *c, float *reward, int *terminated,
                     int *truncated) {
    int changed = ops->step(&e->g, &e->rng, action, reward, terminated, truncated);
    if (e->stale) env_render(ops, e, c);
    else ops->render_step(&e->g, c, changed);
}

static void env_state(const GameOps *ops, const Env *e, int32_t *out) {
    memset(out, 0, STATE_DIM * sizeof(int32_t));
    ops->state(&e->g, out);
}

/* ---------------- batched work: a range of envs per call (a pool thread each) ---------------- */

typedef struct {
    const GameOps *ops;
    Env *envs;
    int height, width;
    const int64_t *actions;
    const uint8_t *mask;
    uint8_t *obs, *final_obs;
    float *rewards;
    uint8_t *terminated, *truncated;
    int32_t *state, *final_state;
    int mode;
    int only_stale; /* render: redraw only the envs whose frame is stale */
} Work;

static Canvas canvas_of(const Work *w, uint8_t *frames, int i) {
    return canvas_make(frames + (size_t)i * w->height * w->width * 3, w->width, w->height);
}

static void reset_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    for (int i = begin; i < end; i++) {
        Env *e = &w->envs[i];
        if (w->mask && !w->mask[i]) continue;
        Canvas c = canvas_of(w, w->obs, i);
        env_reset_and_render(w->ops, e, &c);
        env_state(w->ops, e, w->state + (size_t)i * STATE_DIM);
    }
}

static void step_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    size_t frame_bytes = (size_t)w->height * w->width * 3;
    for (int i = begin; i < end; i++) {
        Env *e = &w->envs[i];
        Canvas c = canvas_of(w, w->obs, i);
        int32_t *state = w->state + (size_t)i * STATE_DIM;
        if (e->needs_reset) { /* next-step autoreset: this step only starts the new episode */
            env_reset_and_render(w->ops, e, &c);
            w->rewards[i] = 0.0f;
            w->terminated[i] = w->truncated[i] = 0;
            env_state(w->ops, e, state);
            continue;
        }
        float reward;
        int terminated, truncated;
        env_step(w->ops, e, (int)w->actions[i], &c, &reward, &terminated, &truncated);
        w->rewards[i] = reward;
        w->terminated[i] = (uint8_t)terminated;
        w->truncated[i] = (uint8_t)truncated;
        if (terminated || truncated) {
            if (w->mode == AUTORESET_SAME_STEP) {
                memcpy(w->final_obs + (size_t)i * frame_bytes, c.px, frame_bytes);
                env_state(w->ops, e, w->final_state + (size_t)i * STATE_DIM);
                env_reset_and_render(w->ops, e, &c);
            } else {
                e->needs_reset = 1;
            }
        }
        env_state(w->ops, e, state);
    }
}

static void render_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    for (int i = begin; i < end; i++) {
        if (w->only_stale && !w->envs[i].stale) continue;
        Canvas c = canvas_of(w, w->obs, i);
        env_render(w->ops, &w->envs[i], &c);
    }
}

#endif
