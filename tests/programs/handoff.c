/* Threads that free each other's blocks, for the ordering tests
 * (tests/integration/test_thread_order.py).
 *
 * THREADS workers share one queue of blocks. Each iteration a worker makes
 * a block (malloc, realloc(NULL, n) or, every 64th, an anonymous mapping;
 * every 16th malloc'd block is grown by realloc), puts it in the queue and
 * frees or unmaps the oldest block there when the queue is full, so most
 * blocks end in another thread than the one that made them, and glibc
 * hands their addresses out again at once, often to yet another thread.
 * Every worker then keeps one last block of 1000 + its index bytes: after
 * the queue is emptied, those THREADS blocks are all the program leaves of
 * its own. Prints nothing. argv: [threads [iterations]].
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define QUEUE 64
#define MAX_THREADS 16

struct block { void *p; size_t mapped; };

static struct block queue[QUEUE];
static int queued;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *kept[MAX_THREADS];
static void *volatile none;  /* compilers turn realloc(NULL, n) into malloc(n) */
static long iterations = 100000;

static void block_end(struct block b)
{
    if (b.mapped)
        munmap(b.p, b.mapped);
    else
        free(b.p);
}

static void *worker(void *arg)
{
    long id = (long)arg;
    uint32_t x = (uint32_t)id * 2654435761u + 1;
    for (long i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        size_t n = 16 + x % 1000;
        struct block b = {NULL, 0};
        if (i % 64 == 0) {
            b.mapped = (size_t)sysconf(_SC_PAGESIZE);
            b.p = mmap(NULL, b.mapped, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (b.p == MAP_FAILED)
                abort();
        } else {
            b.p = i % 8 == 1 ? realloc(none, n) : malloc(n);
            if (!b.p)
                abort();
            if (i % 16 == 3 && !(b.p = realloc(b.p, n + 100)))
                abort();
        }
        *(char *)b.p = 1;
        struct block old = {NULL, 0};
        pthread_mutex_lock(&lock);
        if (queued == QUEUE) {
            old = queue[0];
            for (int k = 1; k < QUEUE; k++)
                queue[k - 1] = queue[k];
            queued--;
        }
        queue[queued++] = b;
        pthread_mutex_unlock(&lock);
        if (old.p)
            block_end(old);
    }
    kept[id] = malloc(1000 + (size_t)id);  /* @kept */
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        iterations = atol(argv[2]);
    if (threads < 1 || threads > MAX_THREADS)
        return 2;
    pthread_t tid[MAX_THREADS];
    for (long k = 0; k < threads; k++)
        if (pthread_create(&tid[k], NULL, worker, (void *)k) != 0)
            return 1;
    for (int k = 0; k < threads; k++)
        pthread_join(tid[k], NULL);
    for (int k = 0; k < queued; k++)
        block_end(queue[k]);
    for (int k = 0; k < threads; k++)
        if (!kept[k])
            return 3;
    return 0;
}
