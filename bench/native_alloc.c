/* Native allocation workload for the benchmark suite (bench/run.py).
 *
 * Each worker thread keeps 256 live slots and, per iteration, frees one slot and
 * refills it with malloc (sizes 16..2063 B; every 16th iteration realloc instead and
 * every 64th calloc), touching the first byte.  So every iteration is one allocation
 * and (after warm-up) one free; nothing is elided by the compiler.
 *
 * Built twice by run.py from this one file (cc -O2 -pthread):
 *   - a shared library, called from bench/workloads/w_native.py through ctypes, so every
 *     tool (memray included, which only runs Python) traces the same native code;
 *   - an executable:  native_alloc THREADS ITERS_PER_THREAD
 * THREADS=2 is the heavy two-thread workload; THREADS=1 does the same per-thread work on
 * one thread, for the 2-vs-1-thread scaling target.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 256

struct job {
    long iters;
    uint64_t seed;
    uint64_t sink;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    void *slot[SLOTS];
    uint64_t x = j->seed | 1, sink = 0;
    memset(slot, 0, sizeof slot);
    for (long i = 0; i < j->iters; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;          /* xorshift64 */
        unsigned k = (unsigned)(x & (SLOTS - 1));
        size_t size = 16 + (size_t)((x >> 8) % 2048);
        char *p;
        if ((i & 15) == 15 && slot[k]) {
            p = realloc(slot[k], size);
        } else {
            free(slot[k]);
            p = (i & 63) == 0 ? calloc(1, size) : malloc(size);
        }
        if (!p) abort();
        p[0] = (char)i;
        sink += (unsigned char)p[size - 1];
        slot[k] = p;
    }
    for (int k = 0; k < SLOTS; k++) free(slot[k]);
    j->sink = sink;
    return NULL;
}

/* Runs THREADS workers of ITERS iterations each and waits for them. */
int native_alloc_run(int threads, long iters)
{
    pthread_t tid[64];
    struct job job[64];
    if (threads < 1 || threads > 64) return -1;
    for (int t = 0; t < threads; t++) {
        job[t].iters = iters;
        job[t].seed = 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1);
        if (pthread_create(&tid[t], NULL, worker, &job[t])) return -1;
    }
    uint64_t s = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        s += job[t].sink;
    }
    return (int)(s & 1);
}

#ifndef NATIVE_ALLOC_LIBRARY
int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    long iters = argc > 2 ? atol(argv[2]) : 4000000;
    if (native_alloc_run(threads, iters) < 0) {
        fprintf(stderr, "native_alloc: bad thread count %d\n", threads);
        return 1;
    }
    return 0;
}
#endif
