/* Wrappers around CPython's MEM and OBJ allocator domains. Like the libc
 * hooks, each forwards to the allocator it replaced and reports to the
 * tracker; the re-entry guard set around the real call keeps pymalloc's
 * own malloc (for blocks over 512 bytes) and arena mmaps from being
 * counted twice. Installed before Py_Initialize, so every block of these
 * domains passes through them. PYTHONMALLOC and -X dev replace them when
 * the interpreter pre-initializes (before it allocates in these domains):
 * the tracker then sees a domain that is no longer ours and wraps it
 * anew, on top of the allocator (and debug hooks) the user chose. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

#include "../src/format.h"
#include "pyalloc.h"
#include "tracker.h"

/* The layout of PyMemAllocatorEx, stable since 3.5. */
struct py_allocator {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t n, size_t size);
    void *(*realloc)(void *ctx, void *ptr, size_t size);
    void (*free)(void *ctx, void *ptr);
};

enum { PY_DOMAIN_RAW = 0, PY_DOMAIN_MEM = 1, PY_DOMAIN_OBJ = 2 };

/* What each wrapper forwards to: a fresh slot for every wrapper put in a
 * domain, so that one already in a chain (under a hook another tool put
 * on top of it) never has its target changed under it. */
#define MAX_WRAPS 4
static struct py_allocator slots[3][MAX_WRAPS];
static int nwraps[3];
/* Our wrapper is in the domain's chain: put there, and not taken out (a
 * hook another tool set on top of it, tracemalloc's, keeps it inside). */
static int installed[3];
/* This recording asked for Python's allocators: a wrapper left in a chain
 * after an earlier one forwards without recording. */
static int on;

int mt_pyalloc_watch;

typedef void (*allocator_fn)(int, struct py_allocator *);
static allocator_fn get_allocator, set_allocator;
static int (*is_initialized)(void);

static void *wrap_malloc(void *ctx, size_t size)
{
    const struct py_allocator *o = ctx;
    if (!__atomic_load_n(&on, __ATOMIC_RELAXED))
        return o->malloc(o->ctx, size);
    struct mt_thread *t = mt_enter();
    void *p = o->malloc(o->ctx, size);
    mt_record_alloc(t, MT_A_PYMALLOC, p, size);
    return p;
}

static void *wrap_calloc(void *ctx, size_t n, size_t size)
{
    const struct py_allocator *o = ctx;
    if (!__atomic_load_n(&on, __ATOMIC_RELAXED))
        return o->calloc(o->ctx, n, size);
    struct mt_thread *t = mt_enter();
    void *p = o->calloc(o->ctx, n, size);
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        bytes = 0;
    mt_record_alloc(t, MT_A_PYMALLOC, p, bytes);
    return p;
}

static void *wrap_realloc(void *ctx, void *old, size_t size)
{
    const struct py_allocator *o = ctx;
    if (!__atomic_load_n(&on, __ATOMIC_RELAXED))
        return o->realloc(o->ctx, old, size);
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    void *p = o->realloc(o->ctx, old, size);
    mt_record_realloc(t, seq, MT_A_PYMALLOC, old, p, size);
    return p;
}

static void wrap_free(void *ctx, void *ptr)
{
    const struct py_allocator *o = ctx;
    if (!ptr || !__atomic_load_n(&on, __ATOMIC_RELAXED)) {
        o->free(o->ctx, ptr);
        return;
    }
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    o->free(o->ctx, ptr);
    mt_record_free(t, seq, ptr);
}

static int allocator_api(void)
{
    if (!get_allocator) {
        get_allocator = (allocator_fn)dlsym(RTLD_DEFAULT, "PyMem_GetAllocator");
        set_allocator = (allocator_fn)dlsym(RTLD_DEFAULT, "PyMem_SetAllocator");
        is_initialized = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    }
    return get_allocator && set_allocator ? 0 : -1;
}

/* Puts a wrapper of domain d's allocator on top of it. -1: no slot left. */
static int wrap_domain(int d)
{
    if (nwraps[d] == MAX_WRAPS)
        return -1;
    struct py_allocator *to = &slots[d][nwraps[d]++];
    get_allocator(d, to);
    struct py_allocator w = {to, wrap_malloc, wrap_calloc, wrap_realloc, wrap_free};
    set_allocator(d, &w);
    installed[d] = 1;
    return 0;
}

void mt_pyalloc_recheck(void)
{
    /* Initialized: the pre-initialization is long past (this is the last
     * look; the first code object usually ends the watch sooner). */
    if (is_initialized && is_initialized())
        mt_pyalloc_watch = 0;
    for (int d = PY_DOMAIN_MEM; d <= PY_DOMAIN_OBJ; d++) {
        struct py_allocator cur;
        get_allocator(d, &cur);
        /* Replaced, or wrapped by a hook: a wrapper on top either way (one
         * under a hook forwards, its thread being inside ours already). */
        if (cur.malloc != wrap_malloc && wrap_domain(d) < 0)
            mt_pyalloc_watch = 0;
    }
}

void mt_pyalloc_settled(void)
{
    mt_pyalloc_watch = 0;
}

int mt_pyalloc_setup(void)
{
    if (allocator_api() < 0)
        return -1;
    for (int d = PY_DOMAIN_MEM; d <= PY_DOMAIN_OBJ; d++) {
        /* Ours already in the chain (a start after a start): wrapping it
         * again would call itself; it records again once recording is on. */
        if (installed[d])
            continue;
        wrap_domain(d);
    }
    /* Before the interpreter starts: its pre-initialization may put other
     * allocators in (watched until it runs Python code). */
    mt_pyalloc_watch = is_initialized && !is_initialized();
    __atomic_store_n(&on, 1, __ATOMIC_RELAXED);
    return 0;
}

void mt_pyalloc_teardown(void)
{
    __atomic_store_n(&on, 0, __ATOMIC_RELAXED);
    mt_pyalloc_watch = 0;
    if (allocator_api() < 0)
        return;
    for (int d = PY_DOMAIN_MEM; d <= PY_DOMAIN_OBJ; d++) {
        struct py_allocator cur;
        get_allocator(d, &cur);
        /* Blocks the wrapper handed out are the replaced allocator's:
         * freeing them there is right. One that replaced ours stays. */
        if (installed[d] && cur.malloc == wrap_malloc) {
            for (int k = 0; k < nwraps[d]; k++)
                if (cur.ctx == &slots[d][k]) {
                    set_allocator(d, &slots[d][k]);
                    installed[d] = 0;
                    nwraps[d] = k;  /* its slot and those above are free again */
                    break;
                }
        }
    }
}
