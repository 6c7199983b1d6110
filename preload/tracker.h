/* The shim's one recording API: preload/hooks.c calls these and nothing
 * else. Every function here is safe inside an allocation hook: no malloc,
 * no stdio, no locks shared between threads, but for the threads beyond
 * the 255th, which share one ring under a spin lock (held across the real
 * call and the loader's dl_iterate_phdr: a dl_iterate_phdr callback that
 * allocates from another of those threads would wait for it).
 *
 * Pattern of a hook (design.md §2):
 *   t = mt_enter();                  NULL: do not record (guard, disabled)
 *   seq = mt_order(t);               frees: the number before the real call
 *   result = real call;
 *   mt_record_*(t, seq, ...);        writes the record, leaves the guard
 * An allocation takes its number inside mt_record_alloc, after the call.
 */
#ifndef MT_TRACKER_H
#define MT_TRACKER_H

#include <stddef.h>
#include <stdint.h>

struct mt_thread;

/* Enters the tracker on this thread. @return the thread's state with its
 * re-entry guard set, or NULL when this call must not be recorded (tracking
 * off, re-entered from our own code or the real allocator, or the process
 * is not the one memtap started). Pair with exactly one mt_record_* or
 * mt_leave when not NULL. */
struct mt_thread *mt_enter(void);

/* Leaves without recording (t may be NULL). */
void mt_leave(struct mt_thread *t);

/* The next event number, for calls that end a block (taken before the
 * real call). 0 when t is NULL. */
uint64_t mt_order(struct mt_thread *t);

/* A successful allocation of size bytes at ptr by allocator (enum
 * mt_allocator); ptr NULL records nothing. Leaves the guard. */
void mt_record_alloc(struct mt_thread *t, unsigned allocator, void *ptr,
                     size_t size);

/* ptr freed (by the free family); seq from mt_order. Leaves the guard. */
void mt_record_free(struct mt_thread *t, uint64_t seq, void *ptr);

/* realloc/reallocarray ended: old -> new (new NULL: failed when size > 0,
 * or freed when size == 0). Recorded as the end of old, numbered seq, and
 * an allocation numbered now. Leaves the guard. */
void mt_record_realloc(struct mt_thread *t, uint64_t seq, unsigned allocator,
                       void *old, void *new_ptr, size_t size);

/* mmap result (MAP_FAILED records nothing) of fd (-1: none). Leaves the guard. */
void mt_record_mmap(struct mt_thread *t, void *addr, size_t len, int prot,
                    int flags, int fd);

/* munmap of [addr, addr+len) returned ok (0) or failed. Leaves the guard. */
void mt_record_munmap(struct mt_thread *t, uint64_t seq, void *addr,
                      size_t len, int ok);

/* mremap result (MAP_FAILED: nothing changed); recorded as realloc is,
 * but for MREMAP_DONTUNMAP in flags, which leaves the old range mapped.
 * Leaves the guard. */
void mt_record_mremap(struct mt_thread *t, uint64_t seq, void *old,
                      size_t old_len, void *new_addr, size_t new_len, int flags);

/* dlclose returned: if objects were unloaded, every thread records its
 * native stacks anew (another object may load at their addresses). */
void mt_record_dlclose(void);

/* The calling thread was named (prctl / pthread_setname_np). */
void mt_record_thread_name(struct mt_thread *t, const char *name);

/* The process is ending with status (what _exit was given; exit is seen
 * without a hook). Told to the collector: a followed child's parent reaps
 * it, not memtap. */
void mt_record_exit(int status);

/* The address space the shim's own mappings take in this process (its
 * transport), which an RLIMIT_AS the program sets or reads leaves out:
 * the limit it asks for is for its own memory. 0 when none. */
uint64_t mt_own_address_space(void);

/* A thread start routine, as pthread_create takes it. */
typedef void *(*mt_start_routine)(void *);

/* pthread_create is about to start fn(*arg). @return the routine to start
 * in its place, with *arg replaced to match: a wrapper that records what
 * the creator knew about the thread (a Python threading.Thread's name)
 * before running fn, or fn itself when there is nothing to add. Called
 * without the guard (it may run Python C API code that allocates). */
mt_start_routine mt_thread_create(mt_start_routine fn, void **arg);

/* The real pthread_create failed: releases what mt_thread_create made. */
void mt_thread_create_failed(mt_start_routine fn, void *arg);

#endif
