/* A small persistent thread pool: run fn(arg, begin, end) over [0, n) split into one contiguous
 * chunk per thread, the caller's thread taking the first chunk. Threads sleep on a condition
 * variable between calls, so a step costs two wake-ups, not thread creation. */
#ifndef FASTVLMRL_POOL_H
#define FASTVLMRL_POOL_H
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

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
    unsigned long generation;
    int pending, stop, n;
    pid_t owner; /* after fork() the child has no workers: pool_usable() is false there */
    PoolFn fn;
    void *arg;
};

static void pool_chunk(const Pool *p, int index, int *begin, int *end) {
    *begin = (int)((long long)p->n * index / p->num_threads);
    *end = (int)((long long)p->n * (index + 1) / p->num_threads);
}

static void *pool_worker_main(void *arg) {
    PoolWorker *w = (PoolWorker *)arg;
    Pool *p = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        int begin, end;
        pool_chunk(p, w->index, &begin, &end);
        pthread_mutex_unlock(&p->mu);
        if (begin < end) p->fn(p->arg, begin, end);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
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
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < num_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].index = i;
        if (pthread_create(&p->threads[i], NULL, pool_worker_main, &p->workers[i]) != 0) {
            /* stop the ones already started */
            pthread_mutex_lock(&p->mu);
            p->stop = 1;
            pthread_cond_broadcast(&p->start);
            pthread_mutex_unlock(&p->mu);
            for (int k = 1; k < i; k++) pthread_join(p->threads[k], NULL);
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->pending = p->num_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    int begin, end;
    pool_chunk(p, 0, &begin, &end);
    if (begin < end) fn(arg, begin, end);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void pool_destroy(Pool *p) {
    if (!p) return;
    if (!pool_usable(p)) return; /* a forked child: the workers are not ours; leave the copy */
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->num_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->workers);
    free(p);
}

#endif
