/* Loads plugin A, then B, then A again, each where the last one was unloaded
 * (dlclose), and allocates through each from the main thread and from one
 * worker thread that lives across the unloads. Used by
 * tests/integration/test_native_program.py (test_unloaded_objects).
 *
 *   plugins PLUGIN_A PLUGIN_B
 *
 * Each plugin's entry(n) allocates n bytes in its own alloc_in_* function.
 * Round i (1, 2, 3) asks for 1000 * i bytes on the main thread and 100 * i
 * on the worker. Prints where each round's entry was, one line per round. */
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>

typedef void *(*entry_fn)(size_t);

static entry_fn current;
static size_t want;
static sem_t go, done;

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        sem_wait(&go);
        if (!current)
            return NULL;
        current(want);
        sem_post(&done);
    }
}

static void on_worker(entry_fn f, size_t n)
{
    current = f;
    want = n;
    sem_post(&go);
    sem_wait(&done);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: plugins PLUGIN_A PLUGIN_B\n");
        return 2;
    }
    pthread_t t;
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 2;
    const char *order[] = {argv[1], argv[2], argv[1]};
    for (int i = 0; i < 3; i++) {
        void *h = dlopen(order[i], RTLD_NOW);
        if (!h) {
            fprintf(stderr, "%s\n", dlerror());
            return 2;
        }
        entry_fn f;
        *(void **)&f = dlsym(h, "entry");
        f(1000 * (size_t)(i + 1));
        on_worker(f, 100 * (size_t)(i + 1));
        printf("%p\n", *(void **)&f);
        dlclose(h);
    }
    current = NULL;
    sem_post(&go);
    pthread_join(t, NULL);
    return 0;
}
