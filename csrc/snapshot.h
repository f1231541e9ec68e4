/* The env snapshot format (get_state/set_state: a resumed training run continues the same
 * episodes): a header, then each env's bytes as the batch holds them. A game's settings are not
 * read from the file: a restored env takes them from the live batch (GameOps.keep_settings). No
 * Python API here; the binding wraps these in bytes and buffers. */
#ifndef FASTVLMRL_SNAPSHOT_H
#define FASTVLMRL_SNAPSHOT_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "env.h"

#define SNAPSHOT_MAGIC 0x53455646u /* "FVES" */
#define SNAPSHOT_VERSION 2u        /* 2: one table of games; formula operators stored inline */

typedef struct {
    uint32_t magic, version, game, num_envs, env_size, num_actions;
    uint32_t layout[3]; /* sizeof(Rng), offsetof(Env, g), sizeof(the game's struct): another layout is refused */
} SnapshotHeader;

static SnapshotHeader snapshot_header(int game, int num_envs, int num_actions) {
    SnapshotHeader h = {SNAPSHOT_MAGIC, SNAPSHOT_VERSION, (uint32_t)game, (uint32_t)num_envs, (uint32_t)sizeof(Env),
                        (uint32_t)num_actions,
                        {(uint32_t)sizeof(Rng), (uint32_t)offsetof(Env, g), (uint32_t)GAMES[game]->size}};
    return h;
}

static size_t snapshot_size(int num_envs) { return sizeof(SnapshotHeader) + (size_t)num_envs * sizeof(Env); }

/* Write the snapshot of envs[0..num_envs) into out (snapshot_size bytes). */
static void snapshot_write(char *out, int game, int num_actions, const Env *envs, int num_envs) {
    SnapshotHeader h = snapshot_header(game, num_envs, num_actions);
    memcpy(out, &h, sizeof h);
    memcpy(out + sizeof h, envs, (size_t)num_envs * sizeof(Env));
}

/* Why the blob cannot be restored into this batch, or NULL if it can; *h gets its header (zeros
 * when the blob is too short to hold one). */
static const char *snapshot_check(const char *blob, size_t len, int game, int num_envs, int num_actions,
                                  SnapshotHeader *h) {
    SnapshotHeader want = snapshot_header(game, num_envs, num_actions);
    memset(h, 0, sizeof *h);
    if (len < sizeof *h) return "not an env snapshot (too short)";
    memcpy(h, blob, sizeof *h);
    if (h->magic != SNAPSHOT_MAGIC) return "not an env snapshot";
    if (h->version != want.version || h->env_size != want.env_size || memcmp(h->layout, want.layout, sizeof h->layout))
        return "a snapshot from another version of fastvlmrl";
    if (h->game != want.game || h->num_actions != want.num_actions)
        return "a snapshot of another game (or other game options)";
    if (h->num_envs != want.num_envs) return "a snapshot of a batch with another number of envs";
    if (len != snapshot_size(num_envs)) return "a truncated snapshot";
    return NULL;
}

/* Decode a checked blob into restored[0..num_envs), every frame stale, the settings of live.
 * Returns the index of the first env whose values the game cannot use safely (a damaged file),
 * or -1. */
static int snapshot_read(const char *blob, const GameOps *ops, const Env *live, Env *restored, int num_envs) {
    for (int i = 0; i < num_envs; i++) {
        Env *e = &restored[i];
        memcpy(e, blob + sizeof(SnapshotHeader) + (size_t)i * sizeof(Env), sizeof *e);
        if (ops->keep_settings) ops->keep_settings(&e->g, &live[i].g);
        e->stale = 1;
        if (!(e->rng.inc & 1u) || !in_range(e->needs_reset, 0, 1) || !ops->valid(&e->g)) return i;
    }
    return -1;
}

#endif
