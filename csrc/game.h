/* What every game provides to the batch: its operations over a struct it owns, and the layout of
 * the state row it writes (int32 [STATE_DIM], zero-filled before each write) for Python to read.
 * A game is one header in csrc/games/ that fills a GameOps; csrc/games.h lists them. */
#ifndef FASTVLMRL_GAME_H
#define FASTVLMRL_GAME_H
#include <stddef.h>
#include <stdint.h>
#include "draw.h"
#include "rng.h"

#define STATE_DIM 48
#define MAX_STEPS_RESTORED (1 << 20) /* a restored episode's step counter is at most this */

/* A named run of state-row columns: Python reads a field of length 1 as one column. */
typedef struct {
    const char *name;
    int start, length;
} StateField;

typedef struct {
    int face_cards_as_10; /* Points24: J/Q/K count 10 (else 11/12/13) */
} GameOptions;

/* `g` points to the game's own struct inside the env. */
typedef struct {
    const char *name; /* the game's name as Python spells it */
    size_t size;      /* sizeof its struct: a snapshot records it, so another layout is refused */
    /* The game's settings, once per env before the first reset; may be NULL. */
    void (*init)(void *g, const GameOptions *options);
    int (*num_actions)(const void *g);
    void (*reset)(void *g, Rng *rng);
    /* One step; returns what changed on screen, for render_step. */
    int (*step)(void *g, Rng *rng, int action, float *reward, int *terminated, int *truncated);
    void (*render)(const void *g, Canvas *c);                          /* the frame in full */
    void (*render_step)(const void *g, Canvas *c, int changed);        /* over the previous step's frame */
    void (*render_reset)(const void *old, const void *g, Canvas *c);   /* a new episode over old's frame */
    void (*state)(const void *g, int32_t *out);
    /* Whether a restored struct holds values the game can index with safely. */
    int (*valid)(const void *g);
    /* A restored struct takes its settings from the live one (they are not read from the file);
     * may be NULL. */
    void (*keep_settings)(void *restored, const void *live);
    const StateField *layout; /* ends with a NULL name */
} GameOps;

static inline int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

#endif
