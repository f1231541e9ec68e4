/* The one binding: `fastvlmrl.envs._cards.Batch` steps and renders N envs of one game per call.
 *
 * Python owns every buffer (observations uint8 [N,H,W,3], actions int64 [N], rewards float32 [N],
 * terminated/truncated bool [N], state int32 [N,STATE_DIM]) and passes them to each call; they
 * are checked through the buffer protocol (no numpy headers), then the GIL is released and the
 * batch is stepped, optionally over a pool of threads. Each env draws from its own RNG, so the
 * result does not depend on the thread count. Frames are redrawn incrementally (only what a step
 * changed) into the buffer that holds the previous frames; when Python passes a different buffer,
 * every frame is redrawn in full. This file is only the Python glue: the games are reached through
 * their GameOps (games.h, env.h), the snapshot format is snapshot.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <ctype.h>
#include <string.h>

#include <structmember.h>

#include "env.h"
#include "pool.h"
#include "py_glue.h"
#include "snapshot.h"

#define MIN_SIDE 32
#define MAX_SIDE 4096

typedef struct {
    PyObject_HEAD int game, num_envs, height, width, num_threads, num_actions, closed;
    int busy; /* a call is running with the GIL released: refuse a second one on this batch */
    const GameOps *ops;
    Env *envs;
    Pool *pool;
    PyObject *frames_obj; /* the array the frames were last drawn into (a strong reference, so its
                           * memory cannot be freed and reused by another array unnoticed) */
    const void *frames;   /* ... and its data pointer */
} Batch;

/* A Work over this batch's envs (env.h); the caller fills in the buffers. */
static Work work_of(Batch *b) {
    Work w = {.ops = b->ops, .envs = b->envs, .height = b->height, .width = b->width};
    return w;
}

static void run_batch(Batch *b, PoolFn fn, Work *w) {
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS;
    if (pool_usable(b->pool) && b->num_envs > 1) pool_run(b->pool, fn, w, b->num_envs);
    else fn(w, 0, b->num_envs);
    Py_END_ALLOW_THREADS;
    b->busy = 0;
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
    if (game < 0 || game >= NUM_GAMES) {
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
    self->ops = GAMES[game];
    self->num_envs = num_envs;
    self->height = height;
    self->width = width;
    self->num_threads = num_threads < num_envs ? num_threads : num_envs;
    self->envs = (Env *)PyMem_Calloc((size_t)num_envs, sizeof(Env));
    if (!self->envs) {
        PyErr_NoMemory();
        return -1;
    }
    GameOptions options = {.face_cards_as_10 = face10};
    for (int i = 0; i < num_envs; i++) {
        Env *e = &self->envs[i];
        e->stale = 1;
        e->needs_reset = 1;
        rng_seed(&e->rng, (uint64_t)i);
        if (self->ops->init) self->ops->init(&e->g, &options);
    }
    self->num_actions = self->ops->num_actions(&self->envs[0].g);
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
    Work w = work_of(self);
    w.mask = has_mask ? (const uint8_t *)mask.buf : NULL;
    w.obs = (uint8_t *)obs.buf;
    w.state = (int32_t *)state.buf;
    w.only_stale = 1;
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
        Work w = work_of(self);
        w.actions = (const int64_t *)views[0].buf;
        w.obs = (uint8_t *)views[1].buf;
        w.final_obs = mode == AUTORESET_SAME_STEP ? (uint8_t *)views[7].buf : NULL;
        w.rewards = (float *)views[2].buf;
        w.terminated = (uint8_t *)views[3].buf;
        w.truncated = (uint8_t *)views[4].buf;
        w.state = (int32_t *)views[5].buf;
        w.final_state = mode == AUTORESET_SAME_STEP ? (int32_t *)views[8].buf : NULL;
        w.mode = mode;
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
    Work w = work_of(self);
    w.obs = (uint8_t *)obs.buf;
    run_batch(self, render_range, &w);
    remember_frames(self, obs_obj, obs.buf);
    PyBuffer_Release(&obs);
    Py_RETURN_NONE;
}

/* ---------------- snapshots (format in snapshot.h) ---------------- */

static PyObject *Batch_get_state(Batch *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)snapshot_size(self->num_envs));
    if (!out) return NULL;
    snapshot_write(PyBytes_AS_STRING(out), self->game, self->num_actions, self->envs, self->num_envs);
    return out;
}

static PyObject *Batch_set_state(Batch *self, PyObject *args) {
    Py_buffer blob, obs, state;
    PyObject *obs_obj, *state_obj, *result = NULL;
    Env *restored = NULL;
    int held = 0; /* buffers got: 1 blob, 2 obs, 4 state */
    if (!PyArg_ParseTuple(args, "y*OO", &blob, &obs_obj, &state_obj)) return NULL;
    held = 1;
    if (check_open(self)) goto done;
    SnapshotHeader h;
    const char *why = snapshot_check(blob.buf, (size_t)blob.len, self->game, self->num_envs, self->num_actions, &h);
    if (why) {
        PyErr_Format(PyExc_ValueError, "cannot restore the envs: %s (snapshot: game %u, %u envs; this batch: game %d, %d envs)",
                     why, h.game, h.num_envs, self->game, self->num_envs);
        goto done;
    }
    Py_ssize_t n = self->num_envs;
    Py_ssize_t obs_shape[4] = {n, self->height, self->width, 3}, state_shape[2] = {n, STATE_DIM};
    if (get_buffer(obs_obj, &obs, "obs", "B", 1, 1, 4, obs_shape)) goto done;
    held |= 2;
    if (get_buffer(state_obj, &state, "state", "i", 4, 1, 2, state_shape)) goto done;
    held |= 4;
    restored = (Env *)PyMem_Malloc((size_t)n * sizeof(Env));
    if (!restored) {
        PyErr_NoMemory();
        goto done;
    }
    int bad = snapshot_read(blob.buf, self->ops, self->envs, restored, self->num_envs); /* all checked first */
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "cannot restore the envs: env %d of the snapshot holds impossible values "
                     "(a damaged checkpoint?)", bad);
        goto done;
    }
    for (int i = 0; i < self->num_envs; i++) {
        self->envs[i] = restored[i];
        env_state(self->ops, &self->envs[i], (int32_t *)state.buf + (size_t)i * STATE_DIM);
    }
    Work w = work_of(self);
    w.obs = (uint8_t *)obs.buf;
    run_batch(self, render_range, &w);
    remember_frames(self, obs_obj, obs.buf);
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(restored);
    if (held & 1) PyBuffer_Release(&blob);
    if (held & 2) PyBuffer_Release(&obs);
    if (held & 4) PyBuffer_Release(&state);
    return result;
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
    if (PyModule_AddIntConstant(m, "STATE_DIM", STATE_DIM) < 0 || add_games(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
