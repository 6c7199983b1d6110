/* A fast path for native stacks on x86-64: each frame is stepped with a
 * layout (where the caller's frame and return address are) read once per
 * return address from the object's .eh_frame and kept in one table shared
 * by all threads. Frames it cannot describe exactly (signal frames, CFA
 * expressions, code without unwind tables) make it give up, and the caller
 * takes libunwind's answer for the whole stack instead; both give the same
 * addresses. Runs inside allocation hooks: no malloc, no locks of its own
 * (the loader's lock, through dl_iterate_phdr, on a table miss only). */
#ifndef MT_UNWIND_H
#define MT_UNWIND_H

#include <stdint.h>

/* Return addresses of the calling thread, innermost first, as
 * unw_backtrace() gives them: the pc inside the caller of
 * mt_unwind_backtrace, then its callers', less the first `skip` of these;
 * the innermost max when the stack is deeper. May be called from any thread.
 * @return the number written to ips[0..max), or -1 when a frame needs the
 * general unwinder (ips then holds nothing usable). Nothing beyond the end
 * of the calling thread's stack is read: a frame there (unwind tables that
 * are wrong or stale) ends the stack. */
int mt_unwind_backtrace(uintptr_t *ips, int max, int skip);

/* As mt_unwind_backtrace, but nothing at or above top is read (0: no
 * bound), where mt_unwind_backtrace finds the end of the calling thread's
 * stack itself: a frame that would be read there ends the stack. */
int mt_unwind_backtrace_below(uintptr_t *ips, int max, int skip, uintptr_t top);

/* A dlclose was called: the next walk checks whether an object was
 * unloaded, and if so forgets the layouts read before (code loaded later
 * at the same addresses may have other ones). Async-signal-safe. */
void mt_unwind_forget(void);

/* CPython's perf trampoline template (libpython's _Py_trampoline_func_start
 * and _end, 3.12+; NULLs: none): return addresses in copies of it step over
 * them, leaving them out. Call at setup, not from a hook. */
void mt_unwind_know_trampolines(const void *start, const void *end);

#endif
