/* A small persistent thread pool: run fn(arg, begin, end) over [0, n) split into one contiguous
 * chunk per thread, the caller's thread taking the first chunk.
 *
 * Waking a sleeping thread costs tens of microseconds on a VM, as much as stepping a hundred
 * envs, so both sides spin briefly (POOL_SPINS pauses, well under a millisecond) before they
 * sleep on a condition variable: back-to-back steps never sleep, and an idle pool burns nothing. */
#ifndef FASTVLMRL_POOL_H
#define FASTVLMRL_POOL_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define POOL_SPINS 8192

typedef void (*PoolFn)(void *arg, int begin, int end);

typedef struct Pool Pool;
typedef struct {
    Pool *pool;
    int index;
} PoolWorker;

struct Pool {
    int num_threads; /* including the caller */
    pthread_t *threads;
    PoolWorker *workers;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    atomic_ulong generation; /* bumped (release) once fn/arg/n of a new job are written */
    atomic_int pending;      /* workers still running the current job */
    atomic_int stop;
    int n;
    PoolFn fn;
    void *arg;
    pid_t owner; /* after fork() the child has no workers: pool_usable() is false there */
};

static void pool_chunk(const Pool *p, int index, int *begin, int *end) {
    *begin = (int)((long long)p->n * index / p->num_threads);
    *end = (int)((long long)p->n * (index + 1) / p->num_threads);
}

static void *pool_worker_main(void *arg) {
    PoolWorker *w = (PoolWorker *)arg;
    Pool *p = w->pool;
    unsigned long seen = 0;
    for (;;) {
        for (int k = 0; k < POOL_SPINS && atomic_load_explicit(&p->generation, memory_order_acquire) == seen &&
                        !atomic_load(&p->stop);
             k++)
            cpu_relax();
        if (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->start, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        int begin, end;
        pool_chunk(p, w->index, &begin, &end);
        if (begin < end) p->fn(p->arg, begin, end);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static void pool_stop_workers(Pool *p, int started) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int k = 1; k < started; k++) pthread_join(p->threads[k], NULL);
}

/* Returns NULL on failure (the caller raises). num_threads >= 2. */
static Pool *pool_create(int num_threads) {
    Pool *p = (Pool *)calloc(1, sizeof(Pool));
    if (!p) return NULL;
    p->num_threads = num_threads;
    p->threads = (pthread_t *)calloc((size_t)num_threads, sizeof(pthread_t));
    p->workers = (PoolWorker *)calloc((size_t)num_threads, sizeof(PoolWorker));
    if (!p->threads || !p->workers) goto fail;
    p->owner = getpid();
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < num_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].index = i;
        if (pthread_create(&p->threads[i], NULL, pool_worker_main, &p->workers[i]) != 0) {
            pool_stop_workers(p, i);
            pthread_mutex_destroy(&p->mu);
            pthread_cond_destroy(&p->start);
            pthread_cond_destroy(&p->done);
            goto fail;
        }
    }
    return p;
fail:
    free(p->threads);
    free(p->workers);
    free(p);
    return NULL;
}

static int pool_usable(const Pool *p) { return p && p->owner == getpid(); }

static void pool_run(Pool *p, PoolFn fn, void *arg, int n) {
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store(&p->pending, p->num_threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    int begin, end;
    pool_chunk(p, 0, &begin, &end);
    if (begin < end) fn(arg, begin, end);
    for (int k = 0; k < POOL_SPINS && atomic_load_explicit(&p->pending, memory_order_acquire) > 0; k++) cpu_relax();
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

static void pool_destroy(Pool *p) {
    if (!p) return;
    if (!pool_usable(p)) return; /* a forked child: the workers are not ours; leave the copy */
    pool_stop_workers(p, p->num_threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->workers);
    free(p);
}

#endif
