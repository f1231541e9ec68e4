/* Per-env random numbers: PCG32 (O'Neill's permuted congruential generator, XSH-RR output),
 * seeded through splitmix64. Every env owns one, so a batch is reproducible from its seeds and
 * safe to step from several threads. fastvlmrl/envs/reference/rng.py is the same generator in
 * Python; both must give the same stream for the same seed. */
#ifndef FASTVLMRL_RNG_H
#define FASTVLMRL_RNG_H
#include <stdint.h>

typedef struct {
    uint64_t state;
    uint64_t inc;
} Rng;

static inline uint64_t splitmix64_next(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint32_t rng_next(Rng *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ULL + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

static inline void rng_seed(Rng *r, uint64_t seed) {
    uint64_t s = seed;
    uint64_t init_state = splitmix64_next(&s);
    uint64_t stream = splitmix64_next(&s);
    r->state = 0;
    r->inc = (stream << 1) | 1u;
    rng_next(r);
    r->state += init_state;
    rng_next(r);
}

/* Uniform integer in [0, n), n >= 1, without modulo bias (rejection of the short tail). */
static inline int rng_below(Rng *r, uint32_t n) {
    uint32_t threshold = (uint32_t)(0u - n) % n;
    for (;;) {
        uint32_t x = rng_next(r);
        if (x >= threshold) return (int)(x % n);
    }
}

#endif
