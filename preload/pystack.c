/* Python frame walking from inside the traced process (preload/pystack.h).
 *
 * Version independent: no Python headers. The layout comes from
 *   - 3.13+: _Py_DebugOffsets at the start of _PyRuntime (cookie
 *     "xdebugpy", version == Py_Version), read with the 3.13 layout of that
 *     struct and accepted only if self-consistent, so a later release with
 *     the same debug-offsets layout needs no new code;
 *   - else preload/pyoffsets.h, generated from each version's headers.
 * The few things the debug offsets do not give are taken from the table
 * when the version is in it, else handled without them (see walk_iframes).
 *
 * Units of mt_pyframe.instr: the byte offset of the executing instruction
 * in co_code (3.9: f_lasti; 3.10: f_lasti * 2; 3.11/3.12: (prev_instr -
 * co_code_adaptive) in bytes; 3.13+: (instr_ptr - co_code_adaptive) in
 * bytes). That is the `addrq` PyCode_Addr2Line takes, and what
 * mt_linetable_line expects for every format.
 *
 * Calling thread's state: PyGILState_GetThisThreadState() on every
 * version. It is pthread_getspecific on the GIL-state TSS key (checked in
 * the 3.9-3.13 and Debian 3.11 binaries: no allocation, no lock), is NULL
 * before initialization and for threads Python never saw, and, unlike
 * _PyThreadState_GET() (3.9-3.11: the GIL holder) or 3.12+'s
 * _Py_tss_tstate (NULL while the thread has released the GIL), it is this
 * thread's own state whether or not it holds the GIL. We also check
 * tstate->thread_id == pthread_self().
 */
#define _GNU_SOURCE
#include "pystack.h"
#include "pyoffsets.h"
#include "../src/linetable.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

enum walk_kind {
    WALK_FRAMEOBJ = 1,  /* 3.9/3.10: PyFrameObject via tstate->frame */
    WALK_CFRAME = 2,    /* 3.11/3.12: _PyInterpreterFrame via tstate->cframe */
    WALK_TSTATE = 3,    /* 3.13+: _PyInterpreterFrame via tstate->current_frame */
};

/* The resolved layout; written once by mt_py_setup, then read-only. */
static struct {
    int enabled;
    enum walk_kind kind;
    int row;                    /* mt_pyoffsets_table's row the layout is, or -1 */
    unsigned minor;
    uint8_t lt_format;
    uint8_t lasti_mul;          /* 3.10: f_lasti is in code units */
    uintptr_t runtime;          /* &_PyRuntime */
    uintptr_t code_type, str_type, bytes_type, none;
    void *(*this_tstate)(void);
    int32_t ob_type, finalizing;
    int32_t ts_thread_id, ts_frame, ts_cframe, cf_current, ts_current;
    int32_t fr_back, fr_code, fr_lasti;
    int32_t if_previous, if_code, if_instr, if_owner, if_is_entry;
    int32_t owned_by_gen, owned_by_cstack;   /* -1: unknown */
    int32_t co_name, co_qualname, co_filename, co_firstlineno, co_linetable;
    int32_t co_code, co_adaptive, co_firsttraceable;
    int32_t by_size, by_sval;
    int32_t st_length, st_state, st_ascii_size, st_compact_size;
    int32_t st_utf8_length, st_utf8;
    uint32_t st_kind_mask, st_compact_mask, st_ascii_mask;
    char version[24];
} L;

/* What walk_iframes reads of a frame and a code object (3.11+). */
struct iframe_layout {
    int32_t prev, owner, code, instr, entry, type, adaptive, first;
    int32_t cstack, gen;   /* owner values; -1: unknown */
    int tstate;            /* 3.13+ (WALK_TSTATE) */
};

static inline __attribute__((always_inline)) struct iframe_layout
layout_of_row(const struct mt_pyoffsets *t)
{
    return (struct iframe_layout){
        t->iframe_previous, t->iframe_owner, t->iframe_code, t->iframe_instr,
        t->iframe_is_entry, t->ob_type, t->code_adaptive, t->code_firsttraceable,
        t->owned_by_cstack, t->owned_by_generator, t->minor >= 13};
}

static struct iframe_layout layout_of_L(void)
{
    return (struct iframe_layout){
        L.if_previous, L.if_owner, L.if_code, L.if_instr, L.if_is_entry, L.ob_type,
        L.co_adaptive, L.co_firsttraceable, L.owned_by_cstack, L.owned_by_gen,
        L.kind == WALK_TSTATE};
}

/* ---- small helpers: no libc beyond write/memcpy, no allocation ---- */

static uintptr_t ld_ptr(uintptr_t base, int32_t off)
{
    uintptr_t v;
    memcpy(&v, (const void *)(base + (uintptr_t)off), sizeof v);
    return v;
}

static int64_t ld_i64(uintptr_t base, int32_t off)
{
    int64_t v;
    memcpy(&v, (const void *)(base + (uintptr_t)off), sizeof v);
    return v;
}

static int32_t ld_i32(uintptr_t base, int32_t off)
{
    int32_t v;
    memcpy(&v, (const void *)(base + (uintptr_t)off), sizeof v);
    return v;
}

static uint32_t ld_u32(uintptr_t base, int32_t off)
{
    uint32_t v;
    memcpy(&v, (const void *)(base + (uintptr_t)off), sizeof v);
    return v;
}

static uint8_t ld_u8(uintptr_t base, int32_t off)
{
    return *(const uint8_t *)(base + (uintptr_t)off);
}

/* Objects and frames are at least 8-byte aligned; anything else (or a
 * pointer into the first page) is garbage and ends the walk. */
static int plausible(uintptr_t p)
{
    return p >= 4096 && (p & 7) == 0;
}

static char *put_str(char *p, char *end, const char *s)
{
    while (*s && p < end)
        *p++ = *s++;
    return p;
}

static char *put_uint(char *p, char *end, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < (int)sizeof tmp);
    while (n && p < end)
        *p++ = tmp[--n];
    return p;
}

/* The one "memtap: ..." line of mt_py_setup's -1 contract. */
static int refuse(const char *why)
{
    char buf[200];
    char *p = buf, *end = buf + sizeof buf - 1;
    p = put_str(p, end, "memtap: python ");
    p = put_str(p, end, L.version[0] ? L.version : "(unknown version)");
    p = put_str(p, end, ": ");
    p = put_str(p, end, why);
    p = put_str(p, end, "; recording native stacks only");
    *p++ = '\n';
    ssize_t r = write(2, buf, (size_t)(p - buf));
    (void)r;
    L.enabled = 0;
    return -1;
}

/* ---- setup ---- */

static void set_version(unsigned major, unsigned minor, unsigned micro)
{
    char *p = L.version, *end = L.version + sizeof L.version - 1;
    p = put_uint(p, end, major);
    p = put_str(p, end, ".");
    p = put_uint(p, end, minor);
    p = put_str(p, end, ".");
    p = put_uint(p, end, micro);
    *p = 0;
}

/* "3.9.18 (main, ...)" -> 3, 9, 18. Py_GetVersion formats into a static
 * buffer with PyOS_snprintf ("%.80s"): no allocation. */
static int parse_version(const char *s, unsigned v[3])
{
    for (int i = 0; i < 3; i++) {
        if (*s < '0' || *s > '9')
            return -1;
        v[i] = 0;
        while (*s >= '0' && *s <= '9')
            v[i] = v[i] * 10 + (unsigned)(*s++ - '0');
        if (i < 2 && *s++ != '.')
            return i == 1 ? 0 : -1;  /* "3.9a1"-style: micro 0 */
    }
    return 0;
}

static void from_table(const struct mt_pyoffsets *t)
{
    L.ob_type = t->ob_type;
    L.finalizing = t->runtime_finalizing;
    L.ts_thread_id = t->tstate_thread_id;
    L.ts_frame = t->tstate_frame;
    L.ts_cframe = t->tstate_cframe;
    L.cf_current = t->cframe_current_frame;
    L.ts_current = t->tstate_current_frame;
    L.fr_back = t->frame_back;
    L.fr_code = t->frame_code;
    L.fr_lasti = t->frame_lasti;
    L.if_previous = t->iframe_previous;
    L.if_code = t->iframe_code;
    L.if_instr = t->iframe_instr;
    L.if_owner = t->iframe_owner;
    L.if_is_entry = t->iframe_is_entry;
    L.owned_by_gen = t->owned_by_generator;
    L.owned_by_cstack = t->owned_by_cstack;
    L.co_name = t->code_name;
    L.co_qualname = t->code_qualname;
    L.co_filename = t->code_filename;
    L.co_firstlineno = t->code_firstlineno;
    L.co_linetable = t->code_linetable;
    L.co_code = t->code_code;
    L.co_adaptive = t->code_adaptive;
    L.co_firsttraceable = t->code_firsttraceable;
    L.by_size = t->bytes_size;
    L.by_sval = t->bytes_sval;
    L.st_length = t->str_length;
    L.st_state = t->str_state;
    L.st_ascii_size = t->str_ascii_size;
    L.st_compact_size = t->str_compact_size;
    L.st_utf8_length = t->str_utf8_length;
    L.st_utf8 = t->str_utf8;
    L.st_kind_mask = (uint32_t)t->str_kind_mask;
    L.st_compact_mask = (uint32_t)t->str_compact_mask;
    L.st_ascii_mask = (uint32_t)t->str_ascii_mask;
}

/* One field of _Py_DebugOffsets (3.13 layout), checked to lie inside the
 * struct it describes. @return the offset, or -1. */
static int32_t dbg_field(uintptr_t dbg, int32_t field, uint64_t size)
{
    uint64_t v;
    memcpy(&v, (const void *)(dbg + (uintptr_t)field), sizeof v);
    return v < size && v < 65536 ? (int32_t)v : -1;
}

static uint64_t dbg_u64(uintptr_t dbg, int32_t field)
{
    uint64_t v;
    memcpy(&v, (const void *)(dbg + (uintptr_t)field), sizeof v);
    return v;
}

/* Reads _Py_DebugOffsets (3.13+). @return 1 used, 0 absent, -1 present but
 * not usable (message written). */
static int from_debug_offsets(unsigned long hexversion)
{
    const struct mt_pydbg_layout *d = &mt_pydbg_layout_313;
    uintptr_t dbg = L.runtime;  /* first member of _PyRuntimeState */
    if (memcmp((const void *)dbg, "xdebugpy", 8) != 0)
        return 0;
    if (dbg_u64(dbg, d->version) != hexversion)
        return refuse("_Py_DebugOffsets version differs from Py_Version");
    if (dbg_u64(dbg, d->free_threaded) != 0)
        return refuse("free-threaded builds are not supported");
    uint64_t rt = dbg_u64(dbg, d->runtime_state_size);
    uint64_t ts = dbg_u64(dbg, d->thread_state_size);
    uint64_t fr = dbg_u64(dbg, d->interpreter_frame_size);
    uint64_t co = dbg_u64(dbg, d->code_object_size);
    uint64_t ob = dbg_u64(dbg, d->pyobject_size);
    uint64_t by = dbg_u64(dbg, d->bytes_object_size);
    uint64_t st = dbg_u64(dbg, d->unicode_object_size);
    int32_t ascii = dbg_field(dbg, d->unicode_object_asciiobject_size, st + 1);
    int32_t f[] = {
        L.finalizing = dbg_field(dbg, d->runtime_state_finalizing, rt),
        L.ts_current = dbg_field(dbg, d->thread_state_current_frame, ts),
        L.ts_thread_id = dbg_field(dbg, d->thread_state_thread_id, ts),
        L.if_previous = dbg_field(dbg, d->interpreter_frame_previous, fr),
        L.if_code = dbg_field(dbg, d->interpreter_frame_executable, fr),
        L.if_instr = dbg_field(dbg, d->interpreter_frame_instr_ptr, fr),
        L.if_owner = dbg_field(dbg, d->interpreter_frame_owner, fr),
        L.co_filename = dbg_field(dbg, d->code_object_filename, co),
        L.co_name = dbg_field(dbg, d->code_object_name, co),
        L.co_qualname = dbg_field(dbg, d->code_object_qualname, co),
        L.co_linetable = dbg_field(dbg, d->code_object_linetable, co),
        L.co_firstlineno = dbg_field(dbg, d->code_object_firstlineno, co),
        L.co_adaptive = dbg_field(dbg, d->code_object_co_code_adaptive, co + 1),
        L.ob_type = dbg_field(dbg, d->pyobject_ob_type, ob),
        L.by_size = dbg_field(dbg, d->bytes_object_ob_size, by),
        L.by_sval = dbg_field(dbg, d->bytes_object_ob_sval, by),
        L.st_state = dbg_field(dbg, d->unicode_object_state, st),
        L.st_length = dbg_field(dbg, d->unicode_object_length, st),
        L.st_ascii_size = ascii,
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i] < 0)
            return refuse("_Py_DebugOffsets has a layout memtap does not know");
    /* A plausibility check of the whole struct's layout: these have not
     * changed since 3.0 and would be off if the layout of
     * _Py_DebugOffsets itself had changed. */
    if (L.ob_type != 8 || ob != 16 || L.st_length != 16 || L.by_size != 16)
        return refuse("_Py_DebugOffsets has a layout memtap does not know");
    /* Not in the debug offsets: PyCompactUnicodeObject appends utf8_length
     * and utf8 to PyASCIIObject, and the state bits are stable. */
    L.st_utf8_length = ascii;
    L.st_utf8 = ascii + 8;
    L.st_compact_size = ascii + 16;
    L.st_kind_mask = 0x1c;
    L.st_compact_mask = 0x20;
    L.st_ascii_mask = 0x40;
    return 1;
}

static const struct mt_pyoffsets *find_row(unsigned major, unsigned minor)
{
    for (size_t i = 0; i < sizeof mt_pyoffsets_table / sizeof mt_pyoffsets_table[0]; i++)
        if (mt_pyoffsets_table[i].major == major && mt_pyoffsets_table[i].minor == minor)
            return &mt_pyoffsets_table[i];
    return NULL;
}

/* Code objects that died, for the threads' caches (see mt_py_code_deaths):
 * slot n % MT_GRAVEYARD holds the n-th (0-based) death, valid while its
 * seq is n + 1. The dealloc runs under a GIL, but 3.12's subinterpreters
 * each have their own: a death claims its number atomically. */
#define MT_GRAVEYARD 1024
_Atomic uint64_t mt_py_code_deaths;
static struct { _Atomic uint64_t seq; _Atomic uintptr_t code; } graveyard[MT_GRAVEYARD];
static void (*code_dealloc)(void *);

/* A slot is written as a sequence lock: its seq is 0 while the address
 * changes, then the death's number + 1. */
static void code_dealloc_seen(void *code)
{
    uint64_t n = atomic_fetch_add_explicit(&mt_py_code_deaths, 1, memory_order_relaxed);
    atomic_store_explicit(&graveyard[n % MT_GRAVEYARD].seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&graveyard[n % MT_GRAVEYARD].code, (uintptr_t)code,
                          memory_order_relaxed);
    atomic_store_explicit(&graveyard[n % MT_GRAVEYARD].seq, n + 1, memory_order_release);
    code_dealloc(code);
}

uintptr_t mt_py_code_death(uint64_t n)
{
    uint64_t before = atomic_load_explicit(&graveyard[n % MT_GRAVEYARD].seq,
                                           memory_order_acquire);
    uintptr_t code = atomic_load_explicit(&graveyard[n % MT_GRAVEYARD].code,
                                          memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    uint64_t after = atomic_load_explicit(&graveyard[n % MT_GRAVEYARD].seq,
                                          memory_order_relaxed);
    /* the address the n-th death wrote, not one being written over it */
    return before == n + 1 && after == n + 1 ? code : 0;
}

/* Puts code_dealloc_seen in front of the code type's deallocator, once:
 * a code object's address is a thread's key for what it announced, and a
 * new code object at a dead one's address (exec of generated code in a
 * loop, IPython cells) must not inherit its names and lines. The type's
 * layout up to tp_dealloc (object header, tp_name, tp_basicsize,
 * tp_itemsize) is the same in every version; tp_name says it is right. */
static void code_deaths_watch(void)
{
    enum { TP_NAME = 24, TP_DEALLOC = 48 };
    static int watching;
    if (watching)
        return;
    const char *name = *(const char *const *)(L.code_type + TP_NAME);
    void (**dealloc)(void *) = (void (**)(void *))(L.code_type + TP_DEALLOC);
    if ((uintptr_t)name < 4096 || strcmp(name, "code") != 0 || !*dealloc)
        return;
    code_dealloc = *dealloc;
    __atomic_store_n(dealloc, code_dealloc_seen, __ATOMIC_RELEASE);
    watching = 1;
}

int mt_py_setup(void)
{
    memset(&L, 0, sizeof L);
    const char *(*get_version)(void) =
        (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
    if (!get_version)
        return 0;  /* not Python (or libpython not loaded yet) */

    unsigned v[3];
    unsigned long hexversion = 0;
    const unsigned long *py_version = dlsym(RTLD_DEFAULT, "Py_Version");
    if (py_version) {  /* 3.11+ */
        hexversion = *py_version;
        v[0] = (unsigned)(hexversion >> 24) & 0xff;
        v[1] = (unsigned)(hexversion >> 16) & 0xff;
        v[2] = (unsigned)(hexversion >> 8) & 0xff;
    } else if (parse_version(get_version(), v) < 0) {
        return refuse("cannot parse Py_GetVersion()");
    }
    set_version(v[0], v[1], v[2]);

    L.runtime = (uintptr_t)dlsym(RTLD_DEFAULT, "_PyRuntime");
    L.code_type = (uintptr_t)dlsym(RTLD_DEFAULT, "PyCode_Type");
    L.str_type = (uintptr_t)dlsym(RTLD_DEFAULT, "PyUnicode_Type");
    L.bytes_type = (uintptr_t)dlsym(RTLD_DEFAULT, "PyBytes_Type");
    L.none = (uintptr_t)dlsym(RTLD_DEFAULT, "_Py_NoneStruct");
    L.this_tstate = (void *(*)(void))dlsym(RTLD_DEFAULT,
                                           "PyGILState_GetThisThreadState");
    if (v[0] != 3 || v[1] < 9)
        return refuse("versions before 3.9 are not supported");
    if (!L.runtime || !L.code_type || !L.str_type || !L.bytes_type ||
        !L.none || !L.this_tstate)
        return refuse("interpreter symbols not found");

    L.minor = v[1];
    const struct mt_pyoffsets *row = find_row(v[0], v[1]);
    if (row)
        from_table(row);
    if (v[1] >= 13) {
        int r = from_debug_offsets(hexversion);
        if (r < 0)
            return -1;
        if (r == 0 && !row)
            return refuse("no _Py_DebugOffsets and no built-in layout");
        if (!row) {
            /* Unknown to the table: no incomplete-frame test, C-stack shim
             * frames recognized by their executable (None). */
            L.co_firsttraceable = -1;
            L.owned_by_gen = -1;
            L.owned_by_cstack = -1;
            L.if_is_entry = -1;
        }
        L.kind = WALK_TSTATE;
    } else if (!row) {
        return refuse("layout unknown to this memtap");
    } else {
        L.kind = v[1] >= 11 ? WALK_CFRAME : WALK_FRAMEOBJ;
    }
    L.lt_format = v[1] == 9 ? MT_LT_LNOTAB : v[1] == 10 ? MT_LT_LINETABLE310
                                                        : MT_LT_LOCATIONS311;
    L.lasti_mul = v[1] == 10 ? 2 : 1;
    /* Bind lazily-resolved PLT entries inside libpython
     * (PyThread_tss_get, pthread_getspecific) now, not in a hook. */
    (void)L.this_tstate();
    /* A specialised walk where the layout is a row's (not 3.13+'s
     * _Py_DebugOffsets of another build). */
    L.row = -1;
    if (row && L.kind != WALK_FRAMEOBJ) {
        struct iframe_layout a = layout_of_L(), b = layout_of_row(row);
        if (!memcmp(&a, &b, sizeof a))
            L.row = (int)(row - mt_pyoffsets_table);
    }
    code_deaths_watch();
    L.enabled = 1;
    return 1;
}

const char *mt_py_version(void)
{
    return L.version[0] ? L.version : NULL;
}

int mt_py_finalizing(void)
{
    if (!L.runtime || L.finalizing < 0)
        return 0;
    return __atomic_load_n((uintptr_t *)(L.runtime + (uintptr_t)L.finalizing),
                           __ATOMIC_RELAXED) != 0;
}

/* ---- walking ---- */

/* Bounds the frames visited, skipped ones included: a garbage or cyclic
 * chain ends here rather than looping. */
#define MAX_STEPS(max) ((long)(max) * 2 + 64)

static int is_code(uintptr_t obj)
{
    return plausible(obj) && ld_ptr(obj, L.ob_type) == L.code_type;
}

/* Whether walks keep the innermost frame that has not started (with
 * native stacks: mt_py_keep_unstarted). */
static int keep_unstarted;

void mt_py_keep_unstarted(int keep)
{
    keep_unstarted = keep;
}

static uint32_t clamp_instr(int64_t bytes)
{
    if (bytes < 0)
        return 0;
    return bytes >= (int64_t)MT_INSTR_UNSTARTED ? MT_INSTR_UNSTARTED - 1 : (uint32_t)bytes;
}

/* The walkers record the innermost frames into out[0..max); with keep > 0
 * (a power of two) they go on past max, keeping the last keep frames seen
 * in ring (slot k % keep for the k-th frame past max), up to limit steps,
 * and set *depth to the frames seen (-1 when the steps ran out first).
 * The hot path (mt_py_walk) inlines them with keep 0, where the ring folds
 * away. */
static inline __attribute__((always_inline)) int
walk_frameobjs(uintptr_t tstate, struct mt_pyframe *out, int max,
               struct mt_pyframe *ring, int keep, long limit, long *depth)
{
    uintptr_t f = ld_ptr(tstate, L.ts_frame);
    int n = 0;
    long past = 0, steps = 0;
    for (; plausible(f) && (n < max || keep) && steps < limit; steps++) {
        uintptr_t code = ld_ptr(f, L.fr_code);
        if (is_code(code)) {
            struct mt_pyframe *to = n < max ? &out[n++] : &ring[past++ & (keep - 1)];
            to->code = (const void *)code;
            int32_t lasti = ld_i32(f, L.fr_lasti);
            to->instr = lasti < 0 ? MT_INSTR_UNSTARTED
                                  : clamp_instr((int64_t)lasti * L.lasti_mul);
            to->flags = MT_PYF_ENTRY;  /* each frame has its own C eval call */
        }
        f = ld_ptr(f, L.fr_back);
    }
    if (depth)  /* -1: the step budget, not the stack, ended the walk */
        *depth = steps >= limit && plausible(f) ? -1 : n + past;
    return n;
}

/* How far from its code's start an outer frame is tested for being
 * incomplete (bytes): 3.13's __init__ shim is at 0. */
#define OUTER_INCOMPLETE_BYTES 16

static inline __attribute__((always_inline)) int
walk_iframes(struct iframe_layout lay, uintptr_t frame, struct mt_pyframe *out, int max,
             struct mt_pyframe *ring, int keep, long limit, long *depth)
{
    /* The layout in locals: stores into out[] may alias L's fields for the
     * compiler, which would reload them at every frame of the hot loop. */
    const int32_t o_prev = lay.prev, o_owner = lay.owner,
                  o_code = lay.code, o_instr = lay.instr,
                  o_entry = lay.entry, o_type = lay.type,
                  o_adaptive = lay.adaptive, o_first = lay.first;
    const int cstack = lay.cstack, gen = lay.gen;
    const int none_is_shim = cstack < 0 && lay.tstate;
    const uintptr_t none = L.none, code_type = L.code_type;
    /* Before 3.13 a frame's f_code is always a code object: the type is
     * checked when the code object is first described (code_intern), not
     * at every frame of every walk. */
    const int check_type = lay.tstate;
    int n = 0;
    long past = 0, steps = 0;  /* past: frames seen beyond max */
    for (; plausible(frame) && (n < max || keep) && steps < limit; steps++) {
        uintptr_t prev = ld_ptr(frame, o_prev);
        int owner = ld_u8(frame, o_owner);
        /* 3.13 f_executable is a PyObject *, 3.14+ a _PyStackRef whose
         * low bits are tags. */
        uintptr_t code = ld_ptr(frame, o_code) & ~(uintptr_t)3;
        if ((cstack >= 0 && owner == cstack) || (none_is_shim && code == none)) {
            /* The shim frame a C-level evaluation pushes (3.12+): the
             * frame inside it started that evaluation. */
            if (past)
                ring[(past - 1) & (keep - 1)].flags |= MT_PYF_ENTRY;
            else if (n > 0)
                out[n - 1].flags |= MT_PYF_ENTRY;
            frame = prev;
            continue;
        }
        /* 3.13+: non-code executables */
        if (!plausible(code) || (check_type && ld_ptr(code, o_type) != code_type)) {
            frame = prev;
            continue;
        }
        uintptr_t start = code + (uintptr_t)o_adaptive;
        uintptr_t instr = ld_ptr(frame, o_instr);
        /* Incomplete frames (pushed, first traceable instruction not run
         * yet): Python's own stacks leave them out. The innermost Python
         * frame can be one; a native stack has its evaluation, which the
         * merge pairs with a Python frame. An outer one runs no code of its
         * own before the call inside it returns: 3.13's __init__ shim
         * (_Py_InitCleanup), which a specialized class call pushes under
         * __init__'s frame, at its first instruction. Only frames near
         * their start have the first-traceable index loaded. */
        int64_t at = (int64_t)(instr - start);
        int unstarted = (n == 0 || (uint64_t)at < OUTER_INCOMPLETE_BYTES) &&
                        o_first >= 0 && owner != gen &&
                        at < 2 * (int64_t)ld_i32(code, o_first);
        if (unstarted && (n > 0 || !keep_unstarted)) {
            frame = prev;
            continue;
        }
        struct mt_pyframe *to = n < max ? &out[n++] : &ring[past++ & (keep - 1)];
        to->code = (const void *)code;
        to->instr = unstarted ? MT_INSTR_UNSTARTED : clamp_instr(at);
        to->flags = (o_entry >= 0 && ld_u8(frame, o_entry)) ? MT_PYF_ENTRY : 0;
        frame = prev;
    }
    if (depth)  /* -1: the step budget, not the stack, ended the walk */
        *depth = steps >= limit && plausible(frame) ? -1 : n + past;
    return n;
}

/* The calling thread's innermost frame, in the form its walker starts
 * from; 0 when the thread runs no Python code (or not ours to read). */
static uintptr_t walk_start(void)
{
    if (!L.enabled || mt_py_finalizing())
        return 0;
    uintptr_t tstate = (uintptr_t)L.this_tstate();
    if (!plausible(tstate) ||
        (unsigned long)ld_i64(tstate, L.ts_thread_id) != (unsigned long)pthread_self())
        return 0;
    switch (L.kind) {
    case WALK_FRAMEOBJ:
        return tstate;
    case WALK_CFRAME: {
        uintptr_t cframe = ld_ptr(tstate, L.ts_cframe);
        return plausible(cframe) ? ld_ptr(cframe, L.cf_current) : 0;
    }
    case WALK_TSTATE:
        return ld_ptr(tstate, L.ts_current);
    }
    return 0;
}

/* The walk of every allocation, for each layout of the table: with the
 * offsets known to the compiler the loop keeps fewer values live, and on
 * a call of its own it does not share registers with the tracker's. */
#define WALK_ROW(k)                                                           \
    static __attribute__((noinline)) int walk_row##k(uintptr_t from,          \
                                                     struct mt_pyframe *out,  \
                                                     int max)                 \
    {                                                                         \
        return walk_iframes(layout_of_row(&mt_pyoffsets_table[k]), from, out, \
                            max, NULL, 0, MAX_STEPS(max), NULL);              \
    }
_Static_assert(sizeof mt_pyoffsets_table / sizeof mt_pyoffsets_table[0] > 4,
               "WALK_ROW names rows 2-4");
WALK_ROW(2)
WALK_ROW(3)
WALK_ROW(4)

int mt_py_walk(struct mt_pyframe *out, int max)
{
    uintptr_t from = max > 0 ? walk_start() : 0;
    if (!from)
        return 0;
    switch (L.row) {
    case 2: return walk_row2(from, out, max);
    case 3: return walk_row3(from, out, max);
    case 4: return walk_row4(from, out, max);
    }
    if (L.kind == WALK_FRAMEOBJ)
        return walk_frameobjs(from, out, max, NULL, 0, MAX_STEPS(max), NULL);
    return walk_iframes(layout_of_L(), from, out, max, NULL, 0, MAX_STEPS(max), NULL);
}

int mt_py_walk_deep(struct mt_pyframe *out, int max, struct mt_pyframe *ring,
                    int keep, long limit, long *depth)
{
    *depth = 0;
    uintptr_t from = max > 0 && keep > 0 ? walk_start() : 0;
    if (!from)
        return 0;
    /* Steps as mt_py_walk allows: shim frames (3.12+) take steps too. */
    int n = L.kind == WALK_FRAMEOBJ
                ? walk_frameobjs(from, out, max, ring, keep, MAX_STEPS(limit), depth)
                : walk_iframes(layout_of_L(), from, out, max, ring, keep, MAX_STEPS(limit), depth);
    if (*depth > limit)
        *depth = -1;  /* the outermost frames are beyond the walk */
    return n;
}

/* ---- code objects ---- */

/* UTF-8 of one code point into p (< end). @return the new p, or p
 * unchanged when it does not fit (strings are cut at a character). */
static char *put_utf8(char *p, char *end, uint32_t c)
{
    /* A lone surrogate has no UTF-8. U+DC80..U+DCFF is how Python decodes
     * a file name's bytes that are not UTF-8 (surrogateescape): the byte
     * itself, as the file system has it; other ones are not text. */
    if (c >= 0xdc80 && c <= 0xdcff && end - p >= 1) {
        *p++ = (char)(c - 0xdc00);
        return p;
    }
    if (c >= 0xd800 && c <= 0xdfff)
        c = 0xfffd;
    if (c < 0x80 && end - p >= 1) {
        *p++ = (char)c;
    } else if (c < 0x800 && end - p >= 2) {
        *p++ = (char)(0xc0 | (c >> 6));
        *p++ = (char)(0x80 | (c & 0x3f));
    } else if (c >= 0x800 && c < 0x10000 && end - p >= 3) {
        *p++ = (char)(0xe0 | (c >> 12));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (char)(0x80 | (c & 0x3f));
    } else if (c >= 0x10000 && end - p >= 4) {
        *p++ = (char)(0xf0 | ((c >> 18) & 0x07));
        *p++ = (char)(0x80 | ((c >> 12) & 0x3f));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (char)(0x80 | (c & 0x3f));
    }
    return p;
}

/* A str object as UTF-8: in place when ASCII or its utf8 cache is set,
 * else encoded into scratch[*used..cap). @return 0, or -1 not a str. */
static int read_str(uintptr_t s, const char **ptr, size_t *len,
                    char *scratch, size_t cap, size_t *used)
{
    *ptr = "";
    *len = 0;
    if (!plausible(s) || ld_ptr(s, L.ob_type) != L.str_type)
        return -1;
    uint32_t state = ld_u32(s, L.st_state);
    int64_t length = ld_i64(s, L.st_length);
    if (length < 0 || !(state & L.st_compact_mask))
        return 0;  /* legacy (non-compact) str: never a code object's name */
    if (state & L.st_ascii_mask) {
        *ptr = (const char *)(s + (uintptr_t)L.st_ascii_size);
        *len = (size_t)length;
        return 0;
    }
    uintptr_t utf8 = ld_ptr(s, L.st_utf8);
    if (utf8) {
        int64_t n = ld_i64(s, L.st_utf8_length);
        *ptr = (const char *)utf8;
        *len = n > 0 ? (size_t)n : 0;
        return 0;
    }
    uint32_t kind = (state & L.st_kind_mask) / (L.st_kind_mask & -L.st_kind_mask);
    if (kind != 1 && kind != 2 && kind != 4)
        return 0;
    const uint8_t *data = (const uint8_t *)(s + (uintptr_t)L.st_compact_size);
    /* Each string its own share: a long name must not leave no room for
     * the file name (reports keep 4,096 bytes of a name). */
    char *start = scratch ? scratch + *used : NULL;
    char *p = start, *end = scratch ? scratch + (cap - *used < MT_PY_STR_MAX
                                                 ? cap : *used + MT_PY_STR_MAX) : NULL;
    for (int64_t i = 0; p && i < length; i++) {
        uint32_t c;
        if (kind == 1) {
            c = data[i];
        } else if (kind == 2) {
            uint16_t u;
            memcpy(&u, data + 2 * i, 2);
            c = u;
        } else {
            memcpy(&c, data + 4 * i, 4);
        }
        char *q = put_utf8(p, end, c);
        if (q == p)
            break;  /* scratch full: cut */
        p = q;
    }
    if (p) {
        *ptr = start;
        *len = (size_t)(p - start);
        *used += *len;
    }
    return 0;
}

int mt_py_code_view(const void *code, struct mt_code_view *out,
                    char *scratch, size_t cap)
{
    uintptr_t co = (uintptr_t)code;
    memset(out, 0, sizeof *out);
    out->name = out->qualname = out->filename = "";
    if (!L.enabled || !is_code(co))
        return -1;
    size_t used = 0;
    if (!scratch)
        cap = 0;
    read_str(ld_ptr(co, L.co_name), &out->name, &out->name_len, scratch, cap, &used);
    if (L.co_qualname >= 0)
        read_str(ld_ptr(co, L.co_qualname), &out->qualname, &out->qualname_len,
                 scratch, cap, &used);
    else {
        out->qualname = out->name;
        out->qualname_len = out->name_len;
    }
    read_str(ld_ptr(co, L.co_filename), &out->filename, &out->filename_len,
             scratch, cap, &used);
    out->firstlineno = ld_i32(co, L.co_firstlineno);
    uintptr_t lt = ld_ptr(co, L.co_linetable);
    out->linetable_format = MT_LT_NONE;
    if (plausible(lt) && ld_ptr(lt, L.ob_type) == L.bytes_type) {
        int64_t n = ld_i64(lt, L.by_size);
        if (n > 0) {
            out->linetable = (const uint8_t *)(lt + (uintptr_t)L.by_sval);
            out->linetable_len = (size_t)n;
            out->linetable_format = L.lt_format;
        } else if (n == 0) {
            /* An empty table still says "no line changes". */
            out->linetable_format = L.lt_format;
        }
    }
    return 0;
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= 0x100000001b3ull;
    return h ^ (h >> 29);
}

uint64_t mt_py_code_fingerprint(const void *code)
{
    uintptr_t co = (uintptr_t)code;
    uint64_t h = 0xcbf29ce484222325ull;
    if (!L.enabled || !is_code(co))
        return 1;
    h = mix(h, (uint64_t)(uint32_t)ld_i32(co, L.co_firstlineno));
    h = mix(h, ld_ptr(co, L.co_name));
    h = mix(h, ld_ptr(co, L.co_filename));
    uintptr_t lt = ld_ptr(co, L.co_linetable);
    h = mix(h, lt);
    if (plausible(lt) && ld_ptr(lt, L.ob_type) == L.bytes_type) {
        int64_t n = ld_i64(lt, L.by_size);
        const uint8_t *b = (const uint8_t *)(lt + (uintptr_t)L.by_sval);
        /* The objects' addresses and the table's length and first word:
         * runs on every frame that changed, so no loop over the table. */
        uint64_t w = 0;
        memcpy(&w, b, n < 8 ? (size_t)(n > 0 ? n : 0) : 8);
        h = mix(h, (uint64_t)n ^ (w << 16));
    }
    if (L.co_code >= 0)
        h = mix(h, ld_ptr(co, L.co_code));
    return h ? h : 1;
}
