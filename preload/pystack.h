/* Python frame walking inside the traced process.
 *
 * Reads the calling thread's own interpreter frame chain straight from
 * memory (design.md §3): no per-call hook, no Python C API, no allocation.
 * Everything here may run inside an allocation hook, with the loader lock
 * possibly held, in any thread, with or without the GIL.
 */
#ifndef MT_PYSTACK_H
#define MT_PYSTACK_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../src/format.h"  /* MT_PYF_ENTRY: 3.11 is_entry; 3.12+ the frame
                               below is a C-stack shim frame; always set
                               before 3.11 */

struct mt_pyframe {
    const void *code;  /* the code object's address */
    uint32_t instr;    /* byte offset of the current instruction in co_code,
                          in the unit the line table of this version uses */
    uint32_t flags;    /* MT_PYF_* */
};

/* Line-table encodings; stored in the capture with each code definition. */
enum mt_linetable_format {
    MT_LT_NONE = 0,      /* no table: every instruction is on firstlineno */
    MT_LT_LNOTAB = 1,    /* 3.8/3.9 co_lnotab */
    MT_LT_LINETABLE310 = 2, /* 3.10 co_linetable */
    MT_LT_LOCATIONS311 = 3, /* 3.11+ co_linetable (location table) */
};

/* A code object's description, pointing into the object itself or into
 * `scratch` (non-ASCII names converted to UTF-8). Valid until the code
 * object dies; copy it before returning from the hook. */
struct mt_code_view {
    const char *name;      size_t name_len;
    const char *qualname;  size_t qualname_len;  /* == name before 3.11 */
    const char *filename;  size_t filename_len;
    const uint8_t *linetable; size_t linetable_len;
    int32_t firstlineno;
    uint8_t linetable_format;  /* enum mt_linetable_format */
};

/* Finds the interpreter in this process (if any) and its memory layout.
 * Call once, from the shim's constructor, outside any hook.
 * @return 1: a Python interpreter with a known layout; walking is enabled.
 *         0: not a Python process (walking disabled, silently).
 *        -1: Python, but a layout we do not know; walking disabled and one
 *            "memtap: ..." line has been written to stderr.
 * Not thread-safe: call before the program starts threads. */
int mt_py_setup(void);

/* The interpreter's version as "3.11.7", or NULL when not Python. Static. */
const char *mt_py_version(void);

/* Walks the calling thread's Python frames, innermost first, into out[0..max).
 * Skips incomplete / shim / non-code frames. @return the number written:
 * 0 when this thread runs no Python code, the interpreter is not initialized
 * yet, or it is finalizing. Frames beyond max are dropped (outermost ones).
 * Thread-safe; reads only this thread's state. Never allocates. */
int mt_py_walk(struct mt_pyframe *out, int max);

/* Whether walks keep an innermost frame that has not run an instruction
 * yet (3.11+: a generator or closure made when C code calls a function),
 * at its def line: with native stacks, whose evaluation of it the merge
 * must pair with a Python frame. Python's own stacks leave it out. */
void mt_py_keep_unstarted(int keep);

/* mt_py_walk that goes on past max: the frames after the innermost max go
 * round ring[0..keep) (keep a power of two; frame max + k in slot
 * k % keep), so that it ends
 * with the outermost keep of them; *depth gets the stack's depth, or -1
 * when it is deeper than limit frames (the walk stops about there, the
 * ring then holds no outermost frames). For stacks deeper than max only. */
int mt_py_walk_deep(struct mt_pyframe *out, int max, struct mt_pyframe *ring,
                    int keep, long limit, long *depth);

/* How many code objects have died since the shim started watching (from
 * mt_py_setup on): a thread whose count is behind asks mt_py_code_death
 * for each death it has not seen. */
extern _Atomic uint64_t mt_py_code_deaths;
/* The address of the n-th code object that died (n from 0), or 0 when
 * that is no longer known (too many died since) or not yet written:
 * the caller then forgets every code object it knows. */
uintptr_t mt_py_code_death(uint64_t n);

/* A cheap identity check for a code object found at a cached address,
 * so that a new code object reusing the address is noticed: combines
 * fields that differ between code objects (line table, name, first line...).
 * Never 0. */
uint64_t mt_py_code_fingerprint(const void *code);

/* The most of a name, qualified name or file name mt_py_code_view
 * encodes into scratch (each of the three; reports keep 4,096 bytes). */
#define MT_PY_STR_MAX 4096

/* Describes a code object seen by mt_py_walk in this hook invocation.
 * scratch/cap: buffer for strings that are not stored as UTF-8 (>= 1 KiB
 * recommended); strings that do not fit are cut.
 * @return 0 on success, -1 if the object does not look like a code object. */
int mt_py_code_view(const void *code, struct mt_code_view *out,
                    char *scratch, size_t cap);

/* 1 once the interpreter has started its own teardown (after the main
 * script/module finished, threads were joined and atexit handlers ran,
 * but before module globals are cleared); 0 before, or when not Python.
 * One load; cheap enough for every event. */
int mt_py_finalizing(void);

#endif
