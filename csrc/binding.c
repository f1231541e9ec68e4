/* The one binding: `fastvlmrl.envs._cards.Batch` steps and renders N envs of one game per call.
 *
 * Python owns every buffer (observations uint8 [N,H,W,3], actions int64 [N], rewards float32 [N],
 * terminated/truncated bool [N], state int32 [N,STATE_DIM]) and passes them to each call; they
 * are checked through the buffer protocol (no numpy headers), then the GIL is released and the
 * batch is stepped, optionally over a pool of threads. Each env draws from its own RNG, so the
 * result does not depend on the thread count. Frames are redrawn incrementally (only what a step
 * changed) into the buffer that holds the previous frames; when Python passes a different buffer,
 * every frame is redrawn in full. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include <structmember.h>

#include "blackjack.h"
#include "ezpoints.h"
#include "numberline.h"
#include "points24.h"
#include "pool.h"

enum { GAME_NUMBERLINE = 0, GAME_EZPOINTS = 1, GAME_POINTS24 = 2, GAME_BLACKJACK = 3 };
enum { AUTORESET_NEXT_STEP = 0, AUTORESET_SAME_STEP = 1, AUTORESET_DISABLED = 2 };
#define STATE_DIM 48
#define MIN_SIDE 32
#define MAX_SIDE 4096

typedef struct {
    Rng rng;
    int needs_reset; /* the episode ended: the next step (or reset) starts a new one */
    int stale;       /* the frame in the buffer is not this env's current frame */
    union {
        NumberLine nl;
        Formula fm;
        Blackjack bj;
    } g;
} Env;

typedef struct {
    PyObject_HEAD int game, num_envs, height, width, num_threads, num_actions, closed;
    int busy; /* a call is running with the GIL released: refuse a second one on this batch */
    Env *envs;
    Pool *pool;
    PyObject *frames_obj; /* the array the frames were last drawn into (a strong reference, so its
                           * memory cannot be freed and reused by another array unnoticed) */
    const void *frames;   /* ... and its data pointer */
} Batch;

/* ---------------- per-env game dispatch (no Python API: runs without the GIL) ---------------- */

static void env_reset(Batch *b, Env *e);
static void env_render(Batch *b, Env *e, Canvas *c);

/* Start a new episode and draw it: over the env's previous frame only what changed, else in full. */
static void env_reset_and_render(Batch *b, Env *e, Canvas *c) {
    Env old = *e;
    env_reset(b, e);
    if (e->stale) {
        env_render(b, e, c);
        return;
    }
    switch (b->game) {
        case GAME_NUMBERLINE: numberline_render_reset(&e->g.nl, c); break;
        case GAME_EZPOINTS: ezpoints_render_reset(&old.g.fm, &e->g.fm, c); break;
        case GAME_POINTS24: points24_render_reset(&old.g.fm, &e->g.fm, c); break;
        default: blackjack_render_reset(&old.g.bj, &e->g.bj, c); break;
    }
}

static void env_reset(Batch *b, Env *e) {
    switch (b->game) {
        case GAME_NUMBERLINE: numberline_reset(&e->g.nl, &e->rng); break;
        case GAME_EZPOINTS: ezpoints_reset(&e->g.fm, &e->rng); break;
        case GAME_POINTS24: points24_reset(&e->g.fm, &e->rng); break;
        default: blackjack_reset(&e->g.bj, &e->rng); break;
    }
    e->needs_reset = 0;
}

static void env_render(Batch *b, Env *e, Canvas *c) {
    switch (b->game) {
        case GAME_NUMBERLINE: numberline_render(&e->g.nl, c); break;
        case GAME_EZPOINTS: ezpoints_render(&e->g.fm, c); break;
        case GAME_POINTS24: points24_render(&e->g.fm, c); break;
        default: blackjack_render(&e->g.bj, c); break;
    }
    e->stale = 0;
}

static void env_step(Batch *b, Env *e, int action, Canvas *c, float *reward, int *terminated, int *truncated) {
    int added;
    switch (b->game) {
        case GAME_NUMBERLINE:
            numberline_step(&e->g.nl, action, reward, terminated, truncated);
            if (!e->stale) numberline_render_step(&e->g.nl, c);
            break;
        case GAME_EZPOINTS:
            added = formula_step(&e->g.fm, action, reward, terminated, truncated);
            if (!e->stale) ezpoints_render_step(&e->g.fm, c, added);
            break;
        case GAME_POINTS24:
            added = formula_step(&e->g.fm, action, reward, terminated, truncated);
            if (!e->stale) points24_render_step(&e->g.fm, c, added);
            break;
        default:
            blackjack_step(&e->g.bj, &e->rng, action, reward, terminated, truncated);
            if (!e->stale) blackjack_render_step(&e->g.bj, c, action);
            break;
    }
    if (e->stale) env_render(b, e, c);
}

static void env_state(Batch *b, Env *e, int32_t *out) {
    memset(out, 0, STATE_DIM * sizeof(int32_t));
    switch (b->game) {
        case GAME_NUMBERLINE: numberline_state(&e->g.nl, out); break;
        case GAME_EZPOINTS:
        case GAME_POINTS24: formula_state(&e->g.fm, out); break;
        default: blackjack_state(&e->g.bj, out); break;
    }
}

/* ---------------- batched work ---------------- */

typedef struct {
    Batch *b;
    const int64_t *actions;
    const uint8_t *mask;
    uint8_t *obs, *final_obs;
    float *rewards;
    uint8_t *terminated, *truncated;
    int32_t *state, *final_state;
    int mode;
    int only_stale; /* render: redraw only the envs whose frame is stale */
} Work;

static Canvas canvas_of(Batch *b, uint8_t *frames, int i) {
    return canvas_make(frames + (size_t)i * b->height * b->width * 3, b->width, b->height);
}

static void reset_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    for (int i = begin; i < end; i++) {
        Env *e = &w->b->envs[i];
        if (w->mask && !w->mask[i]) continue;
        Canvas c = canvas_of(w->b, w->obs, i);
        env_reset_and_render(w->b, e, &c);
        env_state(w->b, e, w->state + (size_t)i * STATE_DIM);
    }
}

static void step_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    Batch *b = w->b;
    size_t frame_bytes = (size_t)b->height * b->width * 3;
    for (int i = begin; i < end; i++) {
        Env *e = &b->envs[i];
        Canvas c = canvas_of(b, w->obs, i);
        int32_t *state = w->state + (size_t)i * STATE_DIM;
        if (e->needs_reset) { /* next-step autoreset: this step only starts the new episode */
            env_reset_and_render(b, e, &c);
            w->rewards[i] = 0.0f;
            w->terminated[i] = w->truncated[i] = 0;
            env_state(b, e, state);
            continue;
        }
        float reward;
        int terminated, truncated;
        env_step(b, e, (int)w->actions[i], &c, &reward, &terminated, &truncated);
        w->rewards[i] = reward;
        w->terminated[i] = (uint8_t)terminated;
        w->truncated[i] = (uint8_t)truncated;
        if (terminated || truncated) {
            if (w->mode == AUTORESET_SAME_STEP) {
                memcpy(w->final_obs + (size_t)i * frame_bytes, c.px, frame_bytes);
                env_state(b, e, w->final_state + (size_t)i * STATE_DIM);
                env_reset_and_render(b, e, &c);
            } else {
                e->needs_reset = 1;
            }
        }
        env_state(b, e, state);
    }
}

static void render_range(void *arg, int begin, int end) {
    Work *w = (Work *)arg;
    for (int i = begin; i < end; i++) {
        if (w->only_stale && !w->b->envs[i].stale) continue;
        Canvas c = canvas_of(w->b, w->obs, i);
        env_render(w->b, &w->b->envs[i], &c);
    }
}

static void run_batch(Batch *b, PoolFn fn, Work *w) {
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS;
    if (pool_usable(b->pool) && b->num_envs > 1) pool_run(b->pool, fn, w, b->num_envs);
    else fn(w, 0, b->num_envs);
    Py_END_ALLOW_THREADS;
    b->busy = 0;
}

/* ---------------- buffer checks ---------------- */

/* Get a C-contiguous buffer and check its element kind, item size and shape. `kinds` lists the
 * acceptable struct format characters. Raises ValueError naming the argument on mismatch. */
static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, const char *kinds, Py_ssize_t itemsize,
                      int writable, int ndim, const Py_ssize_t *shape) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s array, got %R", name,
                     writable ? " writable" : "", (PyObject *)Py_TYPE(obj));
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '@' || *fmt == '=' || *fmt == '<') fmt++;
    if (view->itemsize != itemsize || strlen(fmt) != 1 || !strchr(kinds, fmt[0])) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong dtype (buffer format '%s', item size %zd)", name,
                     view->format ? view->format : "B", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    for (int d = 0; d < ndim; d++) {
        if (view->shape[d] != shape[d]) {
            PyErr_Format(PyExc_ValueError, "%s has shape[%d] = %zd, expected %zd", name, d, view->shape[d], shape[d]);
            PyBuffer_Release(view);
            return -1;
        }
    }
    return 0;
}

static int check_open(Batch *b) {
    if (!b->envs && !b->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this env batch was not initialised");
        return -1;
    }
    if (b->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this env batch is closed");
        return -1;
    }
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this env batch is being stepped by another thread");
        return -1;
    }
    return 0;
}

/* Whether `obj` (whose data is at buf) is the array the frames were last drawn into. */
static int same_frames(Batch *b, PyObject *obj, const void *buf) { return obj == b->frames_obj && buf == b->frames; }

static void remember_frames(Batch *b, PyObject *obj, const void *buf) {
    Py_INCREF(obj);
    Py_XSETREF(b->frames_obj, obj);
    b->frames = buf;
}

/* ---------------- Python methods ---------------- */

static int Batch_init(Batch *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"game", "num_envs", "height", "width", "num_threads", "face_cards_as_10", NULL};
    int game, num_envs, height, width, num_threads = 1, face10 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiii|ip", kwlist, &game, &num_envs, &height, &width,
                                     &num_threads, &face10))
        return -1;
    if (game < GAME_NUMBERLINE || game > GAME_BLACKJACK) {
        PyErr_Format(PyExc_ValueError, "unknown game id %d", game);
        return -1;
    }
    if (num_envs < 1) {
        PyErr_Format(PyExc_ValueError, "num_envs must be at least 1, got %d", num_envs);
        return -1;
    }
    if (height < MIN_SIDE || width < MIN_SIDE || height > MAX_SIDE || width > MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "image size must be between %d and %d pixels a side, got %dx%d", MIN_SIDE,
                     MAX_SIDE, height, width);
        return -1;
    }
    if (num_threads < 1) {
        PyErr_Format(PyExc_ValueError, "num_threads must be at least 1, got %d", num_threads);
        return -1;
    }
    if (self->envs || self->closed) { /* __init__ called twice, or on a closed batch */
        PyErr_SetString(PyExc_RuntimeError, "Batch is already initialised");
        return -1;
    }
    self->game = game;
    self->num_envs = num_envs;
    self->height = height;
    self->width = width;
    self->num_threads = num_threads < num_envs ? num_threads : num_envs;
    self->envs = (Env *)PyMem_Calloc((size_t)num_envs, sizeof(Env));
    if (!self->envs) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < num_envs; i++) {
        Env *e = &self->envs[i];
        e->stale = 1;
        e->needs_reset = 1;
        rng_seed(&e->rng, (uint64_t)i);
        if (game == GAME_EZPOINTS) ezpoints_init(&e->g.fm);
        if (game == GAME_POINTS24) points24_init(&e->g.fm, face10);
    }
    switch (game) {
        case GAME_NUMBERLINE: self->num_actions = NUMBERLINE_NUM_ACTIONS; break;
        case GAME_BLACKJACK: self->num_actions = 2; break;
        default: self->num_actions = formula_num_actions(&self->envs[0].g.fm); break;
    }
    if (self->num_threads > 1) {
        self->pool = pool_create(self->num_threads);
        if (!self->pool) {
            PyErr_SetString(PyExc_RuntimeError, "could not start the env threads");
            return -1;
        }
    }
    return 0;
}

static void Batch_release(Batch *self) {
    Py_CLEAR(self->frames_obj);
    self->frames = NULL;
    pool_destroy(self->pool);
    self->pool = NULL;
    PyMem_Free(self->envs);
    self->envs = NULL;
    self->closed = 1;
}

static void Batch_dealloc(Batch *self) {
    Batch_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Batch_close(Batch *self, PyObject *unused) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close the env batch while another thread steps it");
        return NULL;
    }
    Batch_release(self);
    Py_RETURN_NONE;
}

/* seed(seeds: uint64 [N], mask: bool [N] or None): restart the random stream of each env
 * (where mask is true) from its seed. */
static PyObject *Batch_seed(Batch *self, PyObject *args) {
    PyObject *seeds_obj, *mask_obj = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &seeds_obj, &mask_obj) || check_open(self)) return NULL;
    Py_buffer seeds, mask;
    Py_ssize_t shape[1] = {self->num_envs};
    if (get_buffer(seeds_obj, &seeds, "seeds", "LQ", 8, 0, 1, shape)) return NULL;
    int has_mask = mask_obj != Py_None;
    if (has_mask && get_buffer(mask_obj, &mask, "reset_mask", "?", 1, 0, 1, shape)) {
        PyBuffer_Release(&seeds);
        return NULL;
    }
    const uint64_t *s = (const uint64_t *)seeds.buf;
    for (int i = 0; i < self->num_envs; i++)
        if (!has_mask || ((const uint8_t *)mask.buf)[i]) rng_seed(&self->envs[i].rng, s[i]);
    PyBuffer_Release(&seeds);
    if (has_mask) PyBuffer_Release(&mask);
    Py_RETURN_NONE;
}

/* reset(mask or None, obs, state): start new episodes (where mask is true) and draw them. */
static PyObject *Batch_reset(Batch *self, PyObject *args) {
    PyObject *mask_obj, *obs_obj, *state_obj;
    if (!PyArg_ParseTuple(args, "OOO", &mask_obj, &obs_obj, &state_obj) || check_open(self)) return NULL;
    Py_ssize_t n = self->num_envs;
    Py_ssize_t obs_shape[4] = {n, self->height, self->width, 3}, state_shape[2] = {n, STATE_DIM}, mask_shape[1] = {n};
    Py_buffer obs, state, mask;
    int has_mask = mask_obj != Py_None;
    if (get_buffer(obs_obj, &obs, "obs", "B", 1, 1, 4, obs_shape)) return NULL;
    if (get_buffer(state_obj, &state, "state", "i", 4, 1, 2, state_shape)) {
        PyBuffer_Release(&obs);
        return NULL;
    }
    if (has_mask && get_buffer(mask_obj, &mask, "reset_mask", "?", 1, 0, 1, mask_shape)) {
        PyBuffer_Release(&obs);
        PyBuffer_Release(&state);
        return NULL;
    }
    if (!same_frames(self, obs_obj, obs.buf)) { /* the other envs' frames live elsewhere: redraw */
        for (int i = 0; i < self->num_envs; i++) self->envs[i].stale = 1;
    }
    Work w = {.b = self, .mask = has_mask ? (const uint8_t *)mask.buf : NULL, .obs = (uint8_t *)obs.buf,
              .state = (int32_t *)state.buf, .only_stale = 1};
    run_batch(self, reset_range, &w);
    int any_stale = 0;
    for (int i = 0; i < self->num_envs; i++) any_stale |= self->envs[i].stale;
    if (any_stale) run_batch(self, render_range, &w);
    remember_frames(self, obs_obj, obs.buf);
    PyBuffer_Release(&obs);
    PyBuffer_Release(&state);
    if (has_mask) PyBuffer_Release(&mask);
    Py_RETURN_NONE;
}

/* step(actions, obs, rewards, terminated, truncated, state, autoreset_mode, final_obs, final_state) */
static PyObject *Batch_step(Batch *self, PyObject *args) {
    PyObject *objs[9];
    int mode;
    if (!PyArg_ParseTuple(args, "OOOOOOiOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &mode,
                          &objs[7], &objs[8]) ||
        check_open(self))
        return NULL;
    if (mode < AUTORESET_NEXT_STEP || mode > AUTORESET_DISABLED) {
        PyErr_Format(PyExc_ValueError, "unknown autoreset mode %d", mode);
        return NULL;
    }
    Py_ssize_t n = self->num_envs;
    Py_ssize_t vec[1] = {n}, frames[4] = {n, self->height, self->width, 3}, states[2] = {n, STATE_DIM};
    Py_buffer views[9];
    int got = 0, fail = 0;
    const char *names[9] = {"actions", "obs", "rewards", "terminated", "truncated", "state", "", "final_obs",
                            "final_state"};
    for (int k = 0; k < 9 && !fail; k++) {
        if (k == 6) continue;
        if ((k == 7 || k == 8) && mode != AUTORESET_SAME_STEP) continue;
        const char *kinds = k == 0 ? "lq" : (k == 1 || k == 7) ? "B" : k == 2 ? "f" : (k == 3 || k == 4) ? "?" : "i";
        Py_ssize_t itemsize = k == 0 ? 8 : k == 2 ? 4 : (k == 5 || k == 8) ? 4 : 1;
        const Py_ssize_t *shape = (k == 1 || k == 7) ? frames : (k == 5 || k == 8) ? states : vec;
        int ndim = (k == 1 || k == 7) ? 4 : (k == 5 || k == 8) ? 2 : 1;
        if (get_buffer(objs[k], &views[k], names[k], kinds, itemsize, k != 0, ndim, shape)) fail = 1;
        else got |= 1 << k;
    }
    if (!fail) {
        const int64_t *actions = (const int64_t *)views[0].buf;
        for (int i = 0; i < self->num_envs; i++) {
            if (actions[i] < 0 || actions[i] >= self->num_actions) {
                PyErr_Format(PyExc_ValueError, "action %lld for env %d is out of range: this game has %d actions (0..%d)",
                             (long long)actions[i], i, self->num_actions, self->num_actions - 1);
                fail = 1;
                break;
            }
            if (mode == AUTORESET_DISABLED && self->envs[i].needs_reset) {
                PyErr_Format(PyExc_RuntimeError,
                             "env %d has ended (or was never reset); with autoreset disabled, call "
                             "reset(options={'reset_mask': mask}) before stepping it",
                             i);
                fail = 1;
                break;
            }
        }
    }
    if (!fail) {
        if (!same_frames(self, objs[1], views[1].buf)) {
            for (int i = 0; i < self->num_envs; i++) self->envs[i].stale = 1;
        }
        Work w = {.b = self,
                  .actions = (const int64_t *)views[0].buf,
                  .obs = (uint8_t *)views[1].buf,
                  .final_obs = mode == AUTORESET_SAME_STEP ? (uint8_t *)views[7].buf : NULL,
                  .rewards = (float *)views[2].buf,
                  .terminated = (uint8_t *)views[3].buf,
                  .truncated = (uint8_t *)views[4].buf,
                  .state = (int32_t *)views[5].buf,
                  .final_state = mode == AUTORESET_SAME_STEP ? (int32_t *)views[8].buf : NULL,
                  .mode = mode};
        run_batch(self, step_range, &w);
        remember_frames(self, objs[1], views[1].buf);
    }
    for (int k = 0; k < 9; k++)
        if (got & (1 << k)) PyBuffer_Release(&views[k]);
    if (fail) return NULL;
    Py_RETURN_NONE;
}

/* render(obs): redraw every env's current frame in full into obs. */
static PyObject *Batch_render(Batch *self, PyObject *args) {
    PyObject *obs_obj;
    if (!PyArg_ParseTuple(args, "O", &obs_obj) || check_open(self)) return NULL;
    Py_ssize_t frames[4] = {self->num_envs, self->height, self->width, 3};
    Py_buffer obs;
    if (get_buffer(obs_obj, &obs, "obs", "B", 1, 1, 4, frames)) return NULL;
    Work w = {.b = self, .obs = (uint8_t *)obs.buf};
    run_batch(self, render_range, &w);
    remember_frames(self, obs_obj, obs.buf);
    PyBuffer_Release(&obs);
    Py_RETURN_NONE;
}

/* ---------------- snapshots: a resumed training run continues the same episodes ---------------- */

#define SNAPSHOT_MAGIC 0x53455646u /* "FVES" */
#define SNAPSHOT_VERSION 1u

typedef struct {
    uint32_t magic, version, game, num_envs, env_size, num_actions;
    uint32_t layout[3]; /* sizes of the game structs: a build with another layout is refused */
} SnapshotHeader;

static int is_formula_game(int game) { return game == GAME_EZPOINTS || game == GAME_POINTS24; }

static int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

/* Whether a restored env holds values the game code can index with safely (a damaged checkpoint
 * file must give an error, not out-of-bounds writes). */
static int snapshot_env_ok(const Batch *b, const Env *e) {
    if (!(e->rng.inc & 1u) || !in_range(e->needs_reset, 0, 1)) return 0;
    switch (b->game) {
        case GAME_NUMBERLINE:
            return in_range(e->g.nl.target, 0, NUMBERLINE_MAX_POSITION) &&
                   in_range(e->g.nl.current, 0, NUMBERLINE_MAX_POSITION) && in_range(e->g.nl.steps, 0, 1 << 20);
        case GAME_BLACKJACK: {
            const Blackjack *g = &e->g.bj;
            if (!in_range(g->ndealer, 0, BLACKJACK_MAX_DEALER) || !in_range(g->nplayer, 0, BLACKJACK_MAX_PLAYER) ||
                !in_range(g->steps, 0, 1 << 20))
                return 0;
            for (int i = 0; i < g->ndealer; i++)
                if (!in_range(g->dealer[i], 0, 51)) return 0;
            for (int i = 0; i < g->nplayer; i++)
                if (!in_range(g->player[i], 0, 51)) return 0;
            return 1;
        }
        default: {
            const Formula *f = &e->g.fm;
            if (!in_range(f->ncards, 0, MAX_CARDS) || !in_range(f->flen, 0, MAX_FORMULA) ||
                !in_range(f->used, 0, f->ncards) || !in_range(f->text_len, 0, 4 * MAX_FORMULA) ||
                !in_range(f->steps, 0, 1 << 20))
                return 0;
            for (int i = 0; i < f->ncards; i++)
                if (!in_range(f->rank[i], 1, 13) || !in_range(f->suit[i], 0, 3) || !in_range(f->value[i], 1, 13))
                    return 0;
            for (int i = 0; i < f->flen; i++)
                if (!in_range(f->tokens[i], TOK_EQUALS, 13) || f->tokens[i] == 0) return 0;
            return 1;
        }
    }
}

static PyObject *Batch_get_state(Batch *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    SnapshotHeader h = {SNAPSHOT_MAGIC, SNAPSHOT_VERSION, (uint32_t)self->game, (uint32_t)self->num_envs,
                        (uint32_t)sizeof(Env), (uint32_t)self->num_actions,
                        {(uint32_t)sizeof(NumberLine), (uint32_t)sizeof(Formula), (uint32_t)sizeof(Blackjack)}};
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(sizeof h + (size_t)self->num_envs * sizeof(Env)));
    if (!out) return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, &h, sizeof h);
    for (int i = 0; i < self->num_envs; i++) {
        Env e;
        memset(&e, 0, sizeof e);
        e = self->envs[i];
        if (is_formula_game(self->game)) e.g.fm.operators = NULL; /* an address: restored from the live batch */
        memcpy(p + sizeof h + (size_t)i * sizeof(Env), &e, sizeof e);
    }
    return out;
}

static PyObject *Batch_set_state(Batch *self, PyObject *args) {
    Py_buffer blob;
    PyObject *obs_obj, *state_obj;
    if (!PyArg_ParseTuple(args, "y*OO", &blob, &obs_obj, &state_obj)) return NULL;
    if (check_open(self)) {
        PyBuffer_Release(&blob);
        return NULL;
    }
    SnapshotHeader h;
    size_t want = sizeof h + (size_t)self->num_envs * sizeof(Env);
    if ((size_t)blob.len < sizeof h) {
        PyBuffer_Release(&blob);
        PyErr_SetString(PyExc_ValueError, "not an env snapshot (too short)");
        return NULL;
    }
    memcpy(&h, blob.buf, sizeof h);
    const char *why = NULL;
    if (h.magic != SNAPSHOT_MAGIC) why = "not an env snapshot";
    else if (h.version != SNAPSHOT_VERSION || h.env_size != sizeof(Env) || h.layout[0] != sizeof(NumberLine) ||
             h.layout[1] != sizeof(Formula) || h.layout[2] != sizeof(Blackjack))
        why = "a snapshot from another version of fastvlmrl";
    else if (h.game != (uint32_t)self->game || h.num_actions != (uint32_t)self->num_actions)
        why = "a snapshot of another game (or other game options)";
    else if (h.num_envs != (uint32_t)self->num_envs) why = "a snapshot of a batch with another number of envs";
    else if ((size_t)blob.len != want) why = "a truncated snapshot";
    if (why) {
        PyErr_Format(PyExc_ValueError, "cannot restore the envs: %s (snapshot: game %u, %u envs; this batch: game %d, %d envs)",
                     why, h.game, h.num_envs, self->game, self->num_envs);
        PyBuffer_Release(&blob);
        return NULL;
    }
    Py_ssize_t n = self->num_envs;
    Py_ssize_t obs_shape[4] = {n, self->height, self->width, 3}, state_shape[2] = {n, STATE_DIM};
    Py_buffer obs, state;
    if (get_buffer(obs_obj, &obs, "obs", "B", 1, 1, 4, obs_shape)) {
        PyBuffer_Release(&blob);
        return NULL;
    }
    if (get_buffer(state_obj, &state, "state", "i", 4, 1, 2, state_shape)) {
        PyBuffer_Release(&blob);
        PyBuffer_Release(&obs);
        return NULL;
    }
    Env *restored = (Env *)PyMem_Malloc((size_t)n * sizeof(Env));
    if (!restored) {
        PyBuffer_Release(&blob);
        PyBuffer_Release(&obs);
        PyBuffer_Release(&state);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < self->num_envs; i++) { /* all checked before any is replaced */
        Env *e = &restored[i];
        memcpy(e, (const char *)blob.buf + sizeof h + (size_t)i * sizeof(Env), sizeof *e);
        if (is_formula_game(self->game)) { /* the game's settings come from this batch, not the file */
            const Formula *live = &self->envs[i].g.fm;
            e->g.fm.operators = live->operators;
            e->g.fm.num_operators = live->num_operators;
            e->g.fm.num_numbers = live->num_numbers;
            e->g.fm.target = live->target;
            e->g.fm.max_len = live->max_len;
        }
        e->stale = 1;
        if (!snapshot_env_ok(self, e)) {
            PyErr_Format(PyExc_ValueError, "cannot restore the envs: env %d of the snapshot holds impossible values "
                         "(a damaged checkpoint?)", i);
            PyMem_Free(restored);
            PyBuffer_Release(&blob);
            PyBuffer_Release(&obs);
            PyBuffer_Release(&state);
            return NULL;
        }
    }
    for (int i = 0; i < self->num_envs; i++) {
        self->envs[i] = restored[i];
        env_state(self, &self->envs[i], (int32_t *)state.buf + (size_t)i * STATE_DIM);
    }
    PyMem_Free(restored);
    Work w = {.b = self, .obs = (uint8_t *)obs.buf};
    run_batch(self, render_range, &w);
    remember_frames(self, obs_obj, obs.buf);
    PyBuffer_Release(&blob);
    PyBuffer_Release(&obs);
    PyBuffer_Release(&state);
    Py_RETURN_NONE;
}

static PyObject *Batch_get_closed(Batch *self, void *unused) { return PyBool_FromLong(self->closed); }

static PyMethodDef Batch_methods[] = {
    {"seed", (PyCFunction)Batch_seed, METH_VARARGS, "seed(seeds, mask=None): restart each env's random stream (uint64 [N]) where mask is true."},
    {"reset", (PyCFunction)Batch_reset, METH_VARARGS,
     "reset(mask, obs, state): start new episodes where mask (bool [N] or None) is true and draw them."},
    {"step", (PyCFunction)Batch_step, METH_VARARGS,
     "step(actions, obs, rewards, terminated, truncated, state, autoreset_mode, final_obs, final_state)."},
    {"render", (PyCFunction)Batch_render, METH_VARARGS, "render(obs): redraw every frame in full."},
    {"close", (PyCFunction)Batch_close, METH_NOARGS, "close(): free the envs and stop the threads."},
    {"get_state", (PyCFunction)Batch_get_state, METH_NOARGS,
     "get_state() -> bytes: every env's episode and random stream (a snapshot for set_state)."},
    {"set_state", (PyCFunction)Batch_set_state, METH_VARARGS,
     "set_state(snapshot, obs, state): restore a get_state() snapshot of a batch of the same game and size, and draw it."},
    {NULL, NULL, 0, NULL},
};

#define INT_MEMBER(name, doc) {#name, T_INT, offsetof(Batch, name), READONLY, doc}
static PyMemberDef Batch_members[] = {
    INT_MEMBER(game, "game id"),
    INT_MEMBER(num_envs, "number of envs"),
    INT_MEMBER(height, "frame height"),
    INT_MEMBER(width, "frame width"),
    INT_MEMBER(num_threads, "threads used by step (the caller's included)"),
    INT_MEMBER(num_actions, "size of the action space"),
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"closed", (getter)Batch_get_closed, NULL, "whether close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fastvlmrl.envs._cards.Batch",
    .tp_doc = "A batch of N envs of one game, stepped and rendered in C.",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_members = Batch_members,
    .tp_getset = Batch_getset,
};

static struct PyModuleDef cards_module = {
    PyModuleDef_HEAD_INIT, "_cards", "The four card games in C, stepped as a batch.", -1, NULL,
};

PyMODINIT_FUNC PyInit__cards(void) {
    if (PyType_Ready(&BatchType) < 0) return NULL;
    PyObject *m = PyModule_Create(&cards_module);
    if (!m) return NULL;
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "STATE_DIM", STATE_DIM);
    PyModule_AddIntConstant(m, "NUMBERLINE", GAME_NUMBERLINE);
    PyModule_AddIntConstant(m, "EZPOINTS", GAME_EZPOINTS);
    PyModule_AddIntConstant(m, "POINTS24", GAME_POINTS24);
    PyModule_AddIntConstant(m, "BLACKJACK", GAME_BLACKJACK);
    return m;
}
