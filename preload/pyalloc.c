/* Wrappers around CPython's MEM and OBJ allocator domains. Like the libc
 * hooks, each forwards to the allocator it replaced and reports to the
 * tracker; the re-entry guard set around the real call keeps pymalloc's
 * own malloc (for blocks over 512 bytes) and arena mmaps from being
 * counted twice. Installed before Py_Initialize, so every block of these
 * domains passes through them; PYTHONMALLOC, when set, replaces them
 * during start-up and is respected. */
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

static struct py_allocator orig[3];

static void *wrap_malloc(void *ctx, size_t size)
{
    const struct py_allocator *o = ctx;
    struct mt_thread *t = mt_enter();
    void *p = o->malloc(o->ctx, size);
    mt_record_alloc(t, MT_A_PYMALLOC, p, size);
    return p;
}

static void *wrap_calloc(void *ctx, size_t n, size_t size)
{
    const struct py_allocator *o = ctx;
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
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    void *p = o->realloc(o->ctx, old, size);
    mt_record_realloc(t, seq, MT_A_PYMALLOC, old, p, size);
    return p;
}

static void wrap_free(void *ctx, void *ptr)
{
    const struct py_allocator *o = ctx;
    if (!ptr) {
        o->free(o->ctx, ptr);
        return;
    }
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    o->free(o->ctx, ptr);
    mt_record_free(t, seq, ptr);
}

int mt_pyalloc_setup(void)
{
    void (*get)(int, struct py_allocator *) =
        (void (*)(int, struct py_allocator *))dlsym(RTLD_DEFAULT, "PyMem_GetAllocator");
    void (*set)(int, struct py_allocator *) =
        (void (*)(int, struct py_allocator *))dlsym(RTLD_DEFAULT, "PyMem_SetAllocator");
    if (!get || !set)
        return -1;
    for (int d = PY_DOMAIN_MEM; d <= PY_DOMAIN_OBJ; d++) {
        get(d, &orig[d]);
        struct py_allocator w = {&orig[d], wrap_malloc, wrap_calloc,
                                 wrap_realloc, wrap_free};
        set(d, &w);
    }
    return 0;
}
