/* Native stacks and loaded objects inside the traced process (--native).
 * Runs inside allocation hooks: no malloc, no stdio; may be called from any
 * thread, with the caller's re-entry guard set. */
#ifndef MT_NATIVE_H
#define MT_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* Prepares unwinding (libunwind, started once, its pipe kept out of the
 * program's low descriptors) and lists the objects anew. Call at every
 * start of recording, outside any hook. @return 0, or -1 when unwinding is
 * not available (the caller then records no native stacks). */
int mt_native_setup(void);

/* Return addresses of the calling thread, innermost first, starting at the
 * caller of the hook (`skip` innermost frames are dropped: the shim's own).
 * When the fallback unwinder's buffer cuts a stack short of max, the last
 * entry is MT_NATIVE_CUT. @return the number written to ips[0..max).
 * Never allocates. */
int mt_native_backtrace(uintptr_t *ips, int max, int skip);

/* One loaded object, as needed to symbolize later with libdw. */
struct mt_object_view {
    const char *path;  size_t path_len;  /* "" for the main program: use
                                            /proc/self/exe's target instead */
    uint64_t base;                        /* load bias (dlpi_addr) */
    const uint8_t *build_id; size_t build_id_len; /* GNU build-id, may be 0 */
    uint32_t nsegments;
    struct { uint64_t vaddr, memsz; uint32_t flags; } seg[16]; /* PT_LOAD */
};

/* 1 when objects were loaded or unloaded since the last call of
 * mt_native_objects_each (cheap: compares the loader's counters). */
int mt_native_objects_changed(void);

/* Makes mt_native_objects_changed say yes until objects are listed again:
 * a new capture (a Tracker after another, a forked child's) lists them
 * all. */
void mt_native_objects_forget(void);

/* The loader's count of objects unloaded so far (0 when it keeps none). */
unsigned long long mt_native_unloads(void);

/* A dlclose was called: the fast unwinder forgets the layouts it read of
 * objects since unloaded (mt_unwind_forget). libunwind, which takes over
 * once the fast path gives up after many unloads, never forgets
 * (unw_backtrace's cache has no flush). */
void mt_native_forget_unloaded(void);

/* Calls fn(view, arg) for every loaded object (also remembers the loader's
 * counters for mt_native_objects_changed). Holds the loader's list lock while
 * it runs: fn must not allocate or call into the loader. */
void mt_native_objects_each(void (*fn)(const struct mt_object_view *, void *),
                            void *arg);

#endif
