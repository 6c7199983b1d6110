/* The shim's core: per-thread state, stack tries, the rings it fills.
 * Runs inside allocation hooks: no malloc, no stdio, no lock shared with
 * other threads on the hot path. See preload/tracker.h for the protocol. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "../src/format.h"
#include "../src/linetable.h"
#include "../src/transport.h"
#include "native.h"
#include "pyalloc.h"
#include "pystack.h"
#include "pythread.h"
#include "real.h"
#include "environ.h"
#include "limits.h"
#include "tracker.h"

#define MT_MAX_PY 2048
/* Of a Python stack deeper than MT_MAX_PY, the outermost frames kept (the
 * rest is its innermost): the program's entry and first calls keep their
 * totals, and a marker frame stands for what is left out between. Only up
 * to MT_PY_DEEP frames: walking further for every allocation would make a
 * deep recursion's cost grow with its depth; deeper stacks end in the
 * marker (python_stack). */
#define MT_PY_ROOT 64
#define MT_PY_DEEP (2 * MT_MAX_PY)
#define MT_MAX_NATIVE 512
#define MT_SELF_FRAMES 8   /* room for the shim's frames above the program's */
#define MT_STARTING ((struct mt_thread *)1)  /* mt_self while it is built */
#define MT_GONE ((struct mt_thread *)2)      /* the thread ended, or no slot */
#define MT_SHARED ((struct mt_thread *)3)    /* a thread of the shared slot */

/* One entry of a thread's last stack, outermost first. */
struct cached_frame {
    uint64_t a;       /* code object address or return address */
    uint32_t b;       /* instruction offset (Python) */
    uint32_t flags;
    uint32_t node;    /* trie node of the stack up to and including it */
};

/* A thread's last native stack, outermost first. */
struct native_cache { uint32_t n; struct cached_frame f[MT_MAX_NATIVE]; };

/* Open-addressing tables in the tracker's own mappings. */
struct node_entry { uint64_t a; uint32_t parent, b, flags, id; };
struct node_table { struct node_entry *e; uint32_t cap, used, next_id; };
struct code_entry { uint64_t addr, fingerprint; uint32_t id, pad; };
struct code_table { struct code_entry *e; uint32_t cap, used, next_id; };

struct mt_thread {
    int busy;                       /* the re-entry guard */
    int shared;                     /* the state of the threads beyond
                                       MT_SLOTS - 1, used under shared_lock */
    unsigned epoch;                 /* the start it belongs to */
    unsigned slot;
    uint8_t *ring;
    uint64_t head, tail_seen;
    struct node_table pynodes, nativenodes;
    struct code_table codes;
    uint32_t cut_code;              /* the marker's code id, 0 until used */
    enum { DEEP_NO, DEEP_ROOTED, DEEP_ROOTLESS } deep;  /* the last stack's:
                                       python_stack_deep */
    uint32_t npy;
    uint64_t code_deaths;           /* code objects' deaths it has seen */
    struct cached_frame py[MT_MAX_PY];
    /* The last two different native stacks, [native_mru] the latest: an
     * interpreter loop allocating on two paths in turn (bytes here, a str
     * there) finds each whole in one, instead of looking up the frames
     * past where the two part in the trie at every allocation. */
    struct native_cache native[2];
    unsigned native_mru;
    unsigned long long unloads;     /* the count of unloads its native
                                       nodes were recorded under */
    unsigned end_rounds;            /* thread_end calls so far */
    struct mt_pyframe walk[MT_MAX_PY];
    /* + MT_SELF_FRAMES: the shim's own, left out; + 1: is it deeper? */
    uintptr_t ips[MT_SELF_FRAMES + MT_MAX_NATIVE + 1];
    char scratch[3 * MT_PY_STR_MAX];  /* a code object's three names */
};

static __thread struct mt_thread *mt_self
    __attribute__((tls_model("initial-exec")));

static struct mt_shm *shm;
static int active;              /* recording; 0 in forked children */
static int python;              /* the frame walker is usable */
static int python_threads;      /* threading.Thread names can be read */
static int native;              /* record native stacks */
static unsigned long long unloads; /* objects the loader unloaded, as last
                                      seen after a dlclose */
static int ended;               /* the END marker was written */
static unsigned epoch;          /* bumped at every start: threads re-attach */
static pthread_key_t thread_key;
static char fork_name[MT_FORK_NAME_MAX];  /* --follow-fork: where children announce */
static uintptr_t self_lo, self_hi;  /* the shim's own code, cut from stacks */

/* ---- failure --------------------------------------------------------- */

static void say(const char *msg)
{
    ssize_t rc = write(2, msg, strlen(msg));
    (void)rc;
}

static void stop_tracking(const char *why)
{
    if (__atomic_exchange_n(&active, 0, __ATOMIC_RELAXED)) {
        say("memtap: ");
        say(why);
        say("; tracking stopped, the program continues\n");
        if (shm)
            atomic_store(&shm->disabled, 1);
    }
}

/* ---- rings ----------------------------------------------------------- */

/* Writes n in decimal at p (no stdio in the shim). @return the end. */
static char *put_decimal(char *p, unsigned long n)
{
    char digits[24];
    int k = 0;
    do
        digits[k++] = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    while (k)
        *p++ = digits[--k];
    return p;
}

/* Whether memtap's collector still runs. Not getppid() alone (a followed
 * child's parent is the program) nor kill(pid, 0) alone (a killed memtap
 * its parent has not reaped yet is a zombie: kill succeeds). Runs only
 * while a ring is full, so reading /proc costs nothing on the hot path. */
static int collector_alive(void)
{
    if (getppid() == shm->collector_pid)
        return 1;
    char path[40] = "/proc/";
    char *p = put_decimal(path + 6, (unsigned)shm->collector_pid);
    memcpy(p, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[256];
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0)
        return 0;
    buf[got] = 0;
    const char *end = strrchr(buf, ')');  /* the name may hold spaces */
    return end && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

/* Room for len contiguous bytes in the thread's ring; waits for the
 * collector when the ring is full (design.md §1: never drop silently).
 * @return NULL when the collector is gone. */
static void *ring_reserve(struct mt_thread *t, uint32_t len)
{
    struct mt_slot *s = &shm->slots[t->slot];
    uint64_t pos = t->head & (MT_RING_BYTES - 1);
    uint64_t pad = MT_RING_BYTES - pos < len ? MT_RING_BYTES - pos : 0;
    unsigned spins = 0;
    while (t->head + pad + len - t->tail_seen > MT_RING_BYTES) {
        t->tail_seen = atomic_load_explicit(&s->tail, memory_order_acquire);
        if (t->head + pad + len - t->tail_seen <= MT_RING_BYTES)
            break;
        if (spins == 0)  /* the collector paces its compression by this */
            atomic_fetch_add_explicit(&shm->ring_waits, 1, memory_order_relaxed);
        if (++spins < 64) {
            sched_yield();
            continue;
        }
        if ((spins & 1023) == 0 && !collector_alive()) {
            stop_tracking("the collector is gone");
            return NULL;
        }
        struct timespec ts = {0, 50 * 1000};
        nanosleep(&ts, NULL);
    }
    if (pad) {
        struct mt_rhdr *h = (struct mt_rhdr *)(t->ring + pos);
        h->type = MT_R_PAD;
        h->kind = 0;
        h->len = (uint32_t)pad;
        t->head += pad;
    }
    return t->ring + (t->head & (MT_RING_BYTES - 1));
}

static void ring_commit(struct mt_thread *t, uint32_t len)
{
    t->head += len;
    atomic_store_explicit(&shm->slots[t->slot].head, t->head,
                          memory_order_release);
}

static uint32_t align8(size_t n)
{
    return (uint32_t)((n + 7) & ~(size_t)7);
}

/* ---- tables ---------------------------------------------------------- */

static void *table_map(size_t bytes)
{
    void *p = mt_raw_mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int node_table_grow(struct node_table *t)
{
    uint32_t cap = t->cap ? t->cap * 2 : 4096;
    struct node_entry *e = table_map((size_t)cap * sizeof *e);
    if (!e)
        return -1;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct node_entry *o = &t->e[i];
        if (!o->id)
            continue;
        uint64_t j = mix(o->a ^ ((uint64_t)o->parent << 32) ^ o->b) & (cap - 1);
        while (e[j].id)
            j = (j + 1) & (cap - 1);
        e[j] = *o;
    }
    if (t->e)
        mt_raw_munmap(t->e, (size_t)t->cap * sizeof *t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

/* The node's entry in t (cap > 0), or the empty slot where it would go. */
static struct node_entry *node_probe(struct node_table *t, uint32_t parent,
                                     uint64_t a, uint32_t b, uint32_t flags)
{
    uint64_t j = mix(a ^ ((uint64_t)parent << 32) ^ b) & (t->cap - 1);
    for (; t->e[j].id; j = (j + 1) & (t->cap - 1)) {
        struct node_entry *e = &t->e[j];
        if (e->a == a && e->parent == parent && e->b == b && e->flags == flags)
            break;
    }
    return &t->e[j];
}

/* The node's id, or 0 when this thread has not announced it. */
static uint32_t node_find(struct node_table *t, uint32_t parent, uint64_t a,
                          uint32_t b, uint32_t flags)
{
    return t->cap ? node_probe(t, parent, a, b, flags)->id : 0;
}

/* The id of node (parent, a, b, flags) in this thread's trie; a new id is
 * announced to the collector with a node record first. 0 on failure. */
static uint32_t node_intern(struct mt_thread *th, struct node_table *t,
                            uint16_t type, uint32_t parent, uint64_t a,
                            uint32_t b, uint32_t flags)
{
    if (t->used * 2 >= t->cap && node_table_grow(t) < 0)
        return 0;
    struct node_entry *e = node_probe(t, parent, a, b, flags);
    if (e->id)
        return e->id;
    struct mt_rnode *r = ring_reserve(th, sizeof *r);
    if (!r)
        return 0;
    uint32_t id = ++t->next_id;
    *e = (struct node_entry){a, parent, b, flags, id};
    t->used++;
    *r = (struct mt_rnode){{type, 0, sizeof *r}, id, parent, a, b, flags};
    ring_commit(th, sizeof *r);
    return id;
}

static int code_table_grow(struct code_table *t)
{
    uint32_t cap = t->cap ? t->cap * 2 : 1024;
    struct code_entry *e = table_map((size_t)cap * sizeof *e);
    if (!e)
        return -1;
    for (uint32_t i = 0; i < t->cap; i++) {
        if (!t->e[i].id)
            continue;
        uint64_t j = mix(t->e[i].addr) & (cap - 1);
        while (e[j].id)
            j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
    }
    if (t->e)
        mt_raw_munmap(t->e, (size_t)t->cap * sizeof *t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

static int code_write(struct mt_thread *th, uint32_t id, struct mt_code_view v)
{
    /* A record must fit the ring with room to spare: a line table bigger
     * than that (a generated module of ~20,000 lines, on 3.11+) goes as
     * its lines alone, which take a few bytes a line (MT_LINETABLE_RANGES);
     * when even those do not fit, names are kept and lines are not. */
    size_t names = v.name_len + v.qualname_len + v.filename_len;
    /* Half a ring at most, alignment included: a longer record may never
     * fit between the ring's head and its end, however much it drains. */
    const size_t most = MT_RING_BYTES / 2, head = sizeof(struct mt_rcode) + names + 8;
    const size_t room = most > head ? most - head : 0;
    int ranges = v.linetable_len > room;
    size_t table = ranges ? room : v.linetable_len;
    struct mt_rcode *r = ring_reserve(th, align8(sizeof *r + names + table));
    if (!r)
        return -1;
    uint8_t *p = (uint8_t *)(r + 1);
    memcpy(p, v.name, v.name_len), p += v.name_len;
    memcpy(p, v.qualname, v.qualname_len), p += v.qualname_len;
    memcpy(p, v.filename, v.filename_len), p += v.filename_len;
    uint8_t format = v.linetable_format;
    if (ranges) {
        table = mt_linetable_ranges(format, v.linetable, v.linetable_len, v.firstlineno, p,
                                    room);
        format = table ? MT_LINETABLE_RANGES : MT_LT_NONE;
    } else {
        memcpy(p, v.linetable, table);
    }
    uint32_t total = align8(sizeof *r + names + table);
    *r = (struct mt_rcode){{MT_R_CODE, 0, total}, id, v.firstlineno,
                           (uint32_t)v.name_len, (uint32_t)v.qualname_len,
                           (uint32_t)v.filename_len, (uint32_t)table, format, {0}};
    ring_commit(th, total);
    return 0;
}

static int code_announce(struct mt_thread *th, uint32_t id, const void *code)
{
    struct mt_code_view v;
    if (mt_py_code_view(code, &v, th->scratch, sizeof th->scratch) < 0)
        memset(&v, 0, sizeof v);
    return code_write(th, id, v);
}

/* Stands for the frames of a deep stack that are not recorded: an address
 * no code object has. */
static const char cut_marker;
#define MT_PY_CUT ((const void *)&cut_marker)

static uint32_t cut_code(struct mt_thread *th)
{
    static const char name[] = MT_CUT_NAME;
    if (!th->cut_code) {
        struct mt_code_view v = {.name = name, .name_len = sizeof name - 1,
                                 .qualname = name, .qualname_len = sizeof name - 1,
                                 .filename = "", .linetable = (const uint8_t *)""};
        uint32_t id = th->codes.next_id + 1;
        if (code_write(th, id, v) == 0)
            th->cut_code = th->codes.next_id = id;
    }
    return th->cut_code;
}

/* This thread's id for a code object; announces new (or reused-address)
 * objects. 0 on failure. */
static uint32_t code_intern(struct mt_thread *th, const void *code)
{
    struct code_table *t = &th->codes;
    if (t->used * 2 >= t->cap && code_table_grow(t) < 0)
        return 0;
    uint64_t fp = mt_py_code_fingerprint(code);
    uint64_t j = mix((uintptr_t)code) & (t->cap - 1);
    for (; t->e[j].id; j = (j + 1) & (t->cap - 1))
        if (t->e[j].addr == (uintptr_t)code)
            break;
    struct code_entry *e = &t->e[j];
    if (e->id && e->fingerprint == fp)
        return e->id;
    uint32_t id = ++t->next_id;
    if (__builtin_expect(mt_pyalloc_watch, 0))
        mt_pyalloc_settled();
    if (code_announce(th, id, code) < 0)
        return 0;
    if (!e->id)
        t->used++;
    *e = (struct code_entry){(uintptr_t)code, fp, id, 0};
    return id;
}

/* Forgets the code objects that died since th last looked (up to deaths):
 * another may be born at the same address. Their entries stay, with a
 * fingerprint no code object has, so that the next one there is announced
 * anew; the cached stack drops from the first frame that ran one. */
static void codes_forget_dead(struct mt_thread *th, uint64_t deaths)
{
    struct code_table *t = &th->codes;
    int all = deaths - th->code_deaths > 512;  /* the graveyard keeps 1024 */
    for (uint64_t n = th->code_deaths; n < deaths && !all; n++) {
        uintptr_t code = mt_py_code_death(n);
        if (!code) {
            all = 1;
            break;
        }
        for (uint32_t k = 0; k < th->npy; k++)
            if (th->py[k].a == code) {
                th->npy = k;
                break;
            }
        if (!t->cap)
            continue;
        for (uint64_t j = mix(code) & (t->cap - 1); t->e[j].id; j = (j + 1) & (t->cap - 1))
            if (t->e[j].addr == code) {
                t->e[j].fingerprint = 0;
                break;
            }
    }
    if (all) {
        for (uint32_t j = 0; j < t->cap; j++)
            t->e[j].fingerprint = 0;
        th->npy = 0;
    }
    th->code_deaths = deaths;
}

/* ---- stacks ---------------------------------------------------------- */

/* A stack deeper than MT_MAX_PY, walked up to limit frames: into t->walk
 * go its innermost frames, then the marker, then its outermost MT_PY_ROOT
 * frames when the walk reached them. Sets t->deep for the next stack.
 * @return the frames in t->walk. */
static int python_stack_deep(struct mt_thread *t, long limit)
{
    struct mt_pyframe ring[MT_PY_ROOT];
    long depth;
    int n = mt_py_walk_deep(t->walk, MT_MAX_PY, ring, MT_PY_ROOT, limit, &depth);
    if (depth >= 0 && depth <= MT_MAX_PY) {
        /* Exactly MT_MAX_PY: this walk again (mt_py_walk could not tell). */
        t->deep = depth < MT_MAX_PY ? DEEP_NO : DEEP_ROOTED;
        return n;
    }
    if (depth < 0) {  /* its root is beyond the walk */
        t->deep = DEEP_ROOTLESS;
        t->walk[MT_MAX_PY - 1] = (struct mt_pyframe){MT_PY_CUT, 0, 0};
        return MT_MAX_PY;
    }
    t->deep = DEEP_ROOTED;
    /* The outermost MT_PY_ROOT frames: the last of t->walk's, then the
     * ring's, oldest (innermost) first. */
    struct mt_pyframe outer[MT_PY_ROOT];
    long past = depth - MT_MAX_PY;  /* frames that went into the ring */
    int from_ring = past < MT_PY_ROOT ? (int)past : MT_PY_ROOT;
    int from_walk = MT_PY_ROOT - from_ring;
    memcpy(outer, &t->walk[MT_MAX_PY - from_walk], (size_t)from_walk * sizeof *outer);
    for (int i = 0; i < from_ring; i++)
        outer[from_walk + i] = ring[(past - from_ring + i) & (MT_PY_ROOT - 1)];
    int inner = MT_MAX_PY - 1 - MT_PY_ROOT;
    t->walk[inner] = (struct mt_pyframe){MT_PY_CUT, 0, 0};
    memcpy(&t->walk[inner + 1], outer, sizeof outer);
    return MT_MAX_PY;
}

/* Brings the cached stack up to date with the frames just walked
 * (frames[0] innermost) and returns the leaf node. Only frames that differ
 * from the previous stack, counted from the outermost, cost a lookup. */
static uint32_t python_stack(struct mt_thread *t)
{
    int n;
    switch (t->deep) {
    case DEEP_NO:
        n = mt_py_walk(t->walk, MT_MAX_PY);
        if (__builtin_expect(n == MT_MAX_PY, 0))
            n = python_stack_deep(t, MT_PY_DEEP);
        break;
    case DEEP_ROOTED:
        n = python_stack_deep(t, MT_PY_DEEP);
        break;
    default:
        /* Deeper than MT_PY_DEEP last time: walking that far again for
         * every allocation would double a deep recursion's cost. Its root
         * is looked for again once the stack is back under MT_MAX_PY. */
        n = python_stack_deep(t, MT_MAX_PY + 1);
    }
    uint64_t deaths = atomic_load_explicit(&mt_py_code_deaths, memory_order_acquire);
    if (__builtin_expect(deaths != t->code_deaths, 0))
        codes_forget_dead(t, deaths);
    uint32_t k = 0, lim = (uint32_t)n < t->npy ? (uint32_t)n : t->npy;
    const struct mt_pyframe *f = t->walk + n;  /* walk is innermost first */
    for (const struct cached_frame *c = t->py; k < lim; k++, c++) {
        --f;
        if (c->a != (uintptr_t)f->code || c->b != f->instr || c->flags != f->flags)
            break;
    }
    for (uint32_t i = k; i < (uint32_t)n; i++) {
        const struct mt_pyframe *f = &t->walk[n - 1 - i];
        uint32_t code = f->code == MT_PY_CUT ? cut_code(t) : code_intern(t, f->code);
        uint32_t node = code ? node_intern(t, &t->pynodes, MT_R_PYNODE,
                                           i ? t->py[i - 1].node : 0, code,
                                           f->instr, f->flags)
                             : 0;
        if (!node) {
            t->npy = i;
            return i ? t->py[i - 1].node : 0;
        }
        t->py[i] = (struct cached_frame){(uintptr_t)f->code, f->instr,
                                         f->flags, node};
    }
    t->npy = (uint32_t)n;
    return n ? t->py[n - 1].node : 0;
}

/* The main program's path, read at start: the loader names it "", and a
 * short program may be gone before the collector could look it up. */
static char exe_path[4096];
static size_t exe_path_len;

static void object_announce(const struct mt_object_view *v, void *arg)
{
    struct mt_thread *t = arg;
    const char *path = v->path_len ? v->path : exe_path;
    size_t path_len = v->path_len ? v->path_len : exe_path_len;
    /* dlopen("./plugin.so") names it as given: relative to the current
     * directory, which a report run elsewhere does not share. */
    if (path_len && path[0] != '/' && path[0] != '[') {
        long cwd = syscall(SYS_getcwd, t->scratch, sizeof t->scratch);
        size_t rel = path_len - (path_len > 2 && !memcmp(path, "./", 2) ? 2 : 0);
        if (cwd > 1 && t->scratch[0] == '/' && (size_t)cwd + rel < sizeof t->scratch) {
            t->scratch[cwd - 1] = '/';  /* over getcwd's NUL */
            memcpy(t->scratch + cwd, path + (path_len - rel), rel);
            path = t->scratch;
            path_len = (size_t)cwd + rel;
        }
    }
    size_t len = sizeof(struct mt_robject) + path_len + v->build_id_len +
                 (size_t)v->nsegments * 16;
    uint32_t total = align8(len);
    struct mt_robject *r = ring_reserve(t, total);
    if (!r)
        return;
    *r = (struct mt_robject){{MT_R_OBJECT, 0, total}, v->base,
                             (uint32_t)path_len, (uint32_t)v->build_id_len,
                             v->nsegments, 0};
    uint8_t *p = (uint8_t *)(r + 1);
    memcpy(p, path, path_len), p += path_len;
    memcpy(p, v->build_id, v->build_id_len), p += v->build_id_len;
    for (uint32_t i = 0; i < v->nsegments; i++) {
        memcpy(p, &v->seg[i].vaddr, 8);
        memcpy(p + 8, &v->seg[i].memsz, 8);
        p += 16;
    }
    ring_commit(t, total);
}

/* How many frames, from the outermost, ips[0..n) (innermost first) shares
 * with the cached stack c. */
static uint32_t native_common(const struct native_cache *c, const uintptr_t *ips,
                              uint32_t n)
{
    uint32_t k = 0, lim = n < c->n ? n : c->n;
    while (k < lim && c->f[k].a == ips[n - 1 - k])
        k++;
    return k;
}

static void objects_forget(struct mt_thread *t, unsigned long long now);

static uint32_t native_stack(struct mt_thread *t)
{
    unsigned long long now = __atomic_load_n(&unloads, __ATOMIC_ACQUIRE);
    if (__builtin_expect(now != t->unloads, 0))
        objects_forget(t, now);
    int got = mt_native_backtrace(t->ips, MT_SELF_FRAMES + MT_MAX_NATIVE + 1, 0);
    int skip = 0;
    while (skip < got && t->ips[skip] >= self_lo && t->ips[skip] < self_hi)
        skip++;
    if (got - skip > MT_MAX_NATIVE) {  /* its outer frames are left out */
        got = skip + MT_MAX_NATIVE;
        t->ips[got - 1] = MT_NATIVE_CUT;
    }
    uint32_t n = (uint32_t)(got - skip);
    const uintptr_t *ips = t->ips + skip;
    struct native_cache *c = &t->native[t->native_mru];
    uint32_t k = native_common(c, ips, n);
    if (k == n && c->n == n)
        return n ? c->f[n - 1].node : 0;
    /* The other cached stack is brought up to date and becomes the latest.
     * Where it shares less than the latest, the frames in between are
     * copied from the latest (the two agree up to the lesser share): a
     * recursion's stacks, a frame or two apart, copy a frame or two. */
    struct native_cache *other = &t->native[!t->native_mru];
    uint32_t k_other = native_common(other, ips, n);
    if (k_other < k)
        memcpy(other->f + k_other, c->f + k_other, (k - k_other) * sizeof *c->f);
    else
        k = k_other;
    c = other;
    t->native_mru ^= 1;
    int checked = 0;
    for (uint32_t i = k; i < n; i++) {
        uint32_t parent = i ? c->f[i - 1].node : 0;
        uint32_t node = checked ? 0 : node_find(&t->nativenodes, parent, ips[n - 1 - i], 0, 0);
        if (!node) {
            /* A frame this thread never announced may lie in a newly
             * loaded object: only then ask the loader (its lock, which
             * all threads share) whether objects changed, once. */
            if (!checked && mt_native_objects_changed())
                mt_native_objects_each(object_announce, t);
            checked = 1;
            node = node_intern(t, &t->nativenodes, MT_R_NATIVENODE, parent,
                               ips[n - 1 - i], 0, 0);
        }
        if (!node) {
            c->n = i;
            return i ? c->f[i - 1].node : 0;
        }
        c->f[i] = (struct cached_frame){ips[n - 1 - i], 0, 0, node};
    }
    c->n = n;
    return n ? c->f[n - 1].node : 0;
}

/* ---- threads --------------------------------------------------------- */

static void thread_announce(struct mt_thread *t, const char *name)
{
    size_t nlen = strnlen(name, 64);
    uint32_t total = align8(sizeof(struct mt_rthread) + nlen);
    struct mt_rthread *r = ring_reserve(t, total);
    if (!r)
        return;
    /* The shared state is many threads: no one tid. */
    *r = (struct mt_rthread){{MT_R_THREAD, 0, total}, t->shared ? 0 : (uint32_t)gettid(),
                             (uint32_t)nlen};
    memcpy(r + 1, name, nlen);
    ring_commit(t, total);
}

/* The calling thread's name as the kernel has it (prctl: no allocation). */
static void thread_announce_own(struct mt_thread *t)
{
    char name[17] = {0};
    if (syscall(SYS_prctl, PR_GET_NAME, name, 0, 0, 0) != 0)
        name[0] = 0;
    thread_announce(t, name);
}

static void thread_free(struct mt_thread *t)
{
    if (t->pynodes.e)
        mt_raw_munmap(t->pynodes.e, (size_t)t->pynodes.cap * sizeof(struct node_entry));
    if (t->nativenodes.e)
        mt_raw_munmap(t->nativenodes.e, (size_t)t->nativenodes.cap * sizeof(struct node_entry));
    if (t->codes.e)
        mt_raw_munmap(t->codes.e, (size_t)t->codes.cap * sizeof(struct code_entry));
    mt_raw_munmap(t, sizeof *t);
}

static void thread_end(void *arg)
{
    struct mt_thread *t = arg;
    /* Other keys' destructors may run after ours (in key order) and free
     * or allocate: asking to be called again, we stay until the last of
     * the rounds the C library runs while values are left. */
    if (++t->end_rounds < PTHREAD_DESTRUCTOR_ITERATIONS &&
        pthread_setspecific(thread_key, t) == 0)
        return;
    /* What the thread does after the last round (a main thread that left
     * by pthread_exit runs the program's atexit handlers when the last
     * thread ends) goes through the shared state. */
    mt_self = MT_SHARED;
    atomic_store_explicit(&shm->slots[t->slot].state, MT_SLOT_CLOSED,
                          memory_order_release);
    thread_free(t);
}

/* The last slot is the shared one's (shared_enter). */
#define MT_SHARED_SLOT (MT_SLOTS - 1)
#define MT_SHARED_SLOT_COUNT 255  /* MT_SHARED_SLOT as a literal, for messages */
_Static_assert(MT_SHARED_SLOT_COUNT == MT_SHARED_SLOT, "MT_SHARED_SLOT_COUNT");
#define MT_STR_(x) #x
#define MT_STR(x) MT_STR_(x)

static int slot_claim(void)
{
    unsigned start = (unsigned)gettid() % MT_SHARED_SLOT;
    for (unsigned i = 0; i < MT_SHARED_SLOT; i++) {
        unsigned s = (start + i) % MT_SHARED_SLOT;
        uint32_t want = MT_SLOT_FREE;
        if (atomic_compare_exchange_strong(&shm->slots[s].state, &want,
                                           MT_SLOT_OWNED))
            return (int)s;
    }
    return -1;
}

static struct mt_thread *shared_enter(void);

static struct mt_thread *thread_start(void)
{
    mt_self = MT_STARTING;  /* our own calls below are not recorded */
    struct mt_thread *t = table_map(sizeof *t);
    if (!t) {
        static int told;
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
            say("memtap: out of memory for a thread's state; a thread is not recorded\n");
        mt_self = MT_GONE;
        return NULL;
    }
    int slot = slot_claim();
    if (slot < 0) {
        static int told;
        mt_raw_munmap(t, sizeof *t);
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
            say("memtap: more than " MT_STR(MT_SHARED_SLOT_COUNT) " threads at once; "
                "the others are recorded together, as one thread\n");
        mt_self = MT_SHARED;
        return shared_enter();
    }
    t->slot = (unsigned)slot;
    t->epoch = epoch;
    t->unloads = __atomic_load_n(&unloads, __ATOMIC_ACQUIRE);
    t->ring = mt_shm_ring(shm, (unsigned)slot);
    t->head = t->tail_seen = atomic_load(&shm->slots[slot].head);
    shm->slots[slot].tid = (uint32_t)gettid();
    t->busy = 1;
    pthread_setspecific(thread_key, t);
    thread_announce_own(t);
    mt_self = t;
    return t;
}

/* The threads beyond the slots share one: one state (ids, caches, ring)
 * that one of them at a time uses, from mt_enter to the end of its
 * record, so that its ring stays in event order and its ids stay one
 * thread's. The lock is held across the real call: those threads'
 * allocations take turns. */
static struct mt_thread *shared_thread;
static int shared_lock;
static __thread int shared_busy  /* this thread holds it: our own calls */
    __attribute__((tls_model("initial-exec")));

static void shared_leave(void)
{
    __atomic_store_n(&shared_lock, 0, __ATOMIC_RELEASE);
    shared_busy = 0;
}

static struct mt_thread *shared_enter(void)
{
    if (shared_busy)
        return NULL;
    shared_busy = 1;
    for (unsigned n = 0; __atomic_exchange_n(&shared_lock, 1, __ATOMIC_ACQUIRE); n++)
        if (n > 64)
            sched_yield();
    struct mt_thread *t = shared_thread;
    if (!t || t->epoch != epoch) {
        /* The first, or recording restarted into a new transport. */
        uint32_t free_slot = MT_SLOT_FREE;
        struct mt_thread *n = table_map(sizeof *n);
        if (!n || !atomic_compare_exchange_strong(&shm->slots[MT_SHARED_SLOT].state,
                                                  &free_slot, MT_SLOT_OWNED)) {
            if (n)
                mt_raw_munmap(n, sizeof *n);
            shared_leave();
            return NULL;
        }
        if (t)
            thread_free(t);
        n->shared = 1;
        n->slot = MT_SHARED_SLOT;
        n->epoch = epoch;
        n->unloads = __atomic_load_n(&unloads, __ATOMIC_ACQUIRE);
        n->ring = mt_shm_ring(shm, MT_SHARED_SLOT);
        n->head = n->tail_seen = atomic_load(&shm->slots[MT_SHARED_SLOT].head);
        shm->slots[MT_SHARED_SLOT].tid = (uint32_t)gettid();
        /* also what threads do after their state has gone (thread_end) */
        thread_announce(n, "[threads beyond " MT_STR(MT_SHARED_SLOT_COUNT) ", or ended]");
        shared_thread = t = n;
    }
    t->busy = 1;
    return t;
}

/* A record is written: the thread leaves the tracker. */
static inline void record_done(struct mt_thread *t)
{
    t->busy = 0;
    if (__builtin_expect(t->shared, 0))
        shared_leave();
}

/* ---- the recording API ----------------------------------------------- */

static void event_write(struct mt_thread *t, uint16_t type, unsigned kind,
                        uint64_t seq, uint64_t addr, uint64_t size,
                        uint32_t py, uint32_t nat)
{
    uint32_t len = mt_revent_len(type);
    struct mt_revent *e = ring_reserve(t, len);
    if (!e)
        return;
    e->h = (struct mt_rhdr){type, (uint16_t)kind, len};
    e->seq = seq;
    e->addr = addr;
    if (len > offsetof(struct mt_revent, size))
        e->size = size;
    if (len == sizeof *e) {
        e->py_stack = py;
        e->native_stack = nat;
    }
    ring_commit(t, len);
}

static uint64_t seq_take(void)
{
    return atomic_fetch_add_explicit(&shm->seq, 1, memory_order_relaxed);
}

/* Objects were unloaded since t recorded its native nodes: another object
 * may now lie at one of their addresses. Told to the collector first,
 * numbered (every node recorded before the unload is written before what
 * follows), then t records its nodes anew, after listing the objects. */
static void objects_forget(struct mt_thread *t, unsigned long long now)
{
    t->unloads = now;
    event_write(t, MT_R_OBJECTS, 0, seq_take(), now, 0, 0, 0);
    if (t->nativenodes.e)
        memset(t->nativenodes.e, 0, (size_t)t->nativenodes.cap * sizeof *t->nativenodes.e);
    t->nativenodes.used = 0;  /* next_id goes on: ids stay the thread's own */
    t->native[0].n = t->native[1].n = 0;
    mt_native_objects_each(object_announce, t);
}

void mt_record_dlclose(void)
{
    if (!active || !native)
        return;
    mt_native_forget_unloaded();
    unsigned long long now = mt_native_unloads();
    if (now != __atomic_load_n(&unloads, __ATOMIC_RELAXED))
        __atomic_store_n(&unloads, now, __ATOMIC_RELEASE);
}

/* Python's teardown began: what is alive now is what the program left
 * (design.md §6). Marked once, before the event that noticed it. */
static void end_check(struct mt_thread *t)
{
    if (python && !ended && mt_py_finalizing() &&
        !__atomic_exchange_n(&ended, 1, __ATOMIC_RELAXED))
        event_write(t, MT_R_END, 0, seq_take(), 0, 0, 0, 0);
}

static void start_once(void);

struct mt_thread *mt_enter(void)
{
    if (!__builtin_expect(active, 1)) {
        start_once();  /* a library's constructor ran before ours */
        if (!active)
            return NULL;
    }
    struct mt_thread *t = mt_self;
    if ((uintptr_t)t <= (uintptr_t)MT_SHARED) {
        if (t == MT_SHARED)
            t = shared_enter();
        else if (t == NULL)
            t = thread_start();
        else
            return NULL;
        if (!t)
            return NULL;
    } else if (t->busy) {
        return NULL;
    } else if (t->epoch != epoch) {
        /* Recording restarted into a new transport (the Python API): this
         * thread's ids and slot belonged to the old one. */
        thread_free(t);
        mt_self = NULL;
        t = thread_start();
        if (!t)
            return NULL;
    } else {
        t->busy = 1;
    }
    end_check(t);
    return t;
}

void mt_leave(struct mt_thread *t)
{
    if (t)
        record_done(t);
}

uint64_t mt_order(struct mt_thread *t)
{
    return t ? seq_take() : 0;
}

static void stacks(struct mt_thread *t, uint32_t *py, uint32_t *nat)
{
    *py = python ? python_stack(t) : 0;
    *nat = native ? native_stack(t) : 0;
}

/* An allocation, numbered after the real call returned. */
static void alloc_write(struct mt_thread *t, unsigned allocator, void *ptr,
                        size_t size)
{
    uint32_t py, nat;
    stacks(t, &py, &nat);
    event_write(t, MT_R_ALLOC, allocator, seq_take(), (uintptr_t)ptr, size,
                py, nat);
}

void mt_record_alloc(struct mt_thread *t, unsigned allocator, void *ptr,
                     size_t size)
{
    if (!t)
        return;
    if (ptr)
        alloc_write(t, allocator, ptr, size);
    if (__builtin_expect(mt_pyalloc_watch, 0))
        mt_pyalloc_recheck();
    record_done(t);
}

void mt_record_free(struct mt_thread *t, uint64_t seq, void *ptr)
{
    if (!t)
        return;
    event_write(t, MT_R_FREE, 0, seq, (uintptr_t)ptr, 0, 0, 0);
    record_done(t);
}

void mt_record_realloc(struct mt_thread *t, uint64_t seq, unsigned allocator,
                       void *old, void *new_ptr, size_t size)
{
    if (!t)
        return;
    /* The old block ends at the number taken before the call, the new one
     * begins at one taken after it: another thread may have freed the
     * address realloc returns in between (design.md §2). */
    if (old && (new_ptr || size == 0))  /* NULL for size 0: old was freed */
        event_write(t, MT_R_FREE, 0, seq, (uintptr_t)old, 0, 0, 0);
    else
        event_write(t, MT_R_NOP, 0, seq, 0, 0, 0, 0);
    if (new_ptr)
        alloc_write(t, allocator, new_ptr, size);
    record_done(t);
}

static size_t page_round(size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (len + page - 1) & ~(page - 1);
}

/* Whether fd is /dev/zero, whose mappings the kernel makes anonymous
 * memory (and /proc/self/maps shows as such). */
static int is_dev_zero(int fd)
{
    struct stat st;
    return fd >= 0 && syscall(SYS_fstat, fd, &st) == 0 && S_ISCHR(st.st_mode) &&
           major(st.st_rdev) == 1 && minor(st.st_rdev) == 5;
}

static unsigned mapping_kind(int prot, int flags, int fd)
{
    if (!(flags & MAP_ANONYMOUS) && !is_dev_zero(fd))
        return MT_A_MMAP_FILE;
    if (prot == PROT_NONE || (flags & MAP_NORESERVE))
        return MT_A_MMAP_RESERVE;
    return MT_A_MMAP;
}

/* A hexadecimal or decimal number at *p, moving *p past it. */
static uint64_t maps_number(const char **p, unsigned base)
{
    uint64_t v = 0;
    for (;; (*p)++) {
        unsigned d = **p >= '0' && **p <= '9' ? (unsigned)(**p - '0')
                   : **p >= 'a' && **p <= 'f' ? (unsigned)(**p - 'a' + 10) : 99;
        if (d >= base)
            return v;
        v = v * base + d;
    }
}

/* When the /proc/self/maps line holds addr: *kind gets its kind and 1 is
 * returned. "lo-hi perms offset dev inode path". */
static int maps_line_kind(const char *line, uintptr_t addr, unsigned *kind)
{
    const char *p = line;
    uint64_t lo = maps_number(&p, 16);
    if (*p++ != '-')
        return 0;
    uint64_t hi = maps_number(&p, 16);
    if (addr < lo || addr >= hi || *p++ != ' ')
        return 0;
    const char *perms = p;
    for (int field = 0; field < 3 && *p; field++) {  /* perms, offset, dev */
        p += strcspn(p, " ");
        p += strspn(p, " ");
    }
    uint64_t inode = maps_number(&p, 10);
    p += strspn(p, " ");
    if (!strncmp(perms, "---", 3))
        *kind = MT_A_MMAP_RESERVE;
    else if (inode && strncmp(p, "/dev/zero", 9))  /* MAP_SHARED|MAP_ANONYMOUS: /dev/zero */
        *kind = MT_A_MMAP_FILE;
    else
        *kind = MT_A_MMAP;
    return 1;
}

/* The kind (enum mt_allocator) of the mapping that holds addr, from
 * /proc/self/maps: mremap keeps what the range maps (a file's pages stay
 * a file's), which only the kernel still knows. MAP_NORESERVE does not
 * show there: such a range comes back as heap. Raw calls, no allocation. */
static unsigned mapped_kind(struct mt_thread *t, uintptr_t addr)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
    unsigned kind = MT_A_MMAP;
    if (fd < 0)
        return kind;
    char *buf = t->scratch;  /* not 4 KiB of a hook's stack */
    size_t have = 0;
    int found = 0;
    while (!found) {
        ssize_t n = syscall(SYS_read, fd, buf + have, sizeof t->scratch - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = 0;
        char *line = buf, *nl;
        while (!found && (nl = memchr(line, '\n', (size_t)(buf + have - line)))) {
            *nl = 0;
            found = maps_line_kind(line, addr, &kind);
            line = nl + 1;
        }
        have = (size_t)(buf + have - line);
        memmove(buf, line, have);
        if (have == sizeof t->scratch - 1)
            have = 0;  /* a path longer than the buffer: that line is lost */
    }
    syscall(SYS_close, fd);
    return kind;
}

void mt_record_mmap(struct mt_thread *t, void *addr, size_t len, int prot,
                    int flags, int fd)
{
    if (!t)
        return;
    if (addr != MAP_FAILED)
        alloc_write(t, mapping_kind(prot, flags, fd), addr, page_round(len));
    record_done(t);
}

void mt_record_munmap(struct mt_thread *t, uint64_t seq, void *addr,
                      size_t len, int ok)
{
    if (!t)
        return;
    if (ok)
        event_write(t, MT_R_MUNMAP, 0, seq, (uintptr_t)addr, page_round(len),
                    0, 0);
    else
        event_write(t, MT_R_NOP, 0, seq, 0, 0, 0, 0);
    record_done(t);
}

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

void mt_record_mremap(struct mt_thread *t, uint64_t seq, void *old,
                      size_t old_len, void *new_addr, size_t new_len, int flags)
{
    if (!t)
        return;
    /* as realloc: two numbers; MREMAP_DONTUNMAP leaves the old range, emptied */
    if (new_addr != MAP_FAILED && !(flags & MREMAP_DONTUNMAP))
        event_write(t, MT_R_MUNMAP, 0, seq, (uintptr_t)old, page_round(old_len), 0, 0);
    else
        event_write(t, MT_R_NOP, 0, seq, 0, 0, 0, 0);
    if (new_addr != MAP_FAILED)
        alloc_write(t, mapped_kind(t, (uintptr_t)new_addr), new_addr, page_round(new_len));
    record_done(t);
}

void mt_record_thread_name(struct mt_thread *t, const char *name)
{
    if (!t)
        return;
    if (name && !t->shared)  /* the shared state keeps its own name */
        thread_announce(t, name);
    record_done(t);
}

uint64_t mt_own_address_space(void)
{
    return __atomic_load_n(&shm, __ATOMIC_RELAXED) ? MT_SHM_BYTES : 0;
}

void mt_record_exit(int status)
{
    /* A vfork child runs in our memory until it execs or _exits: its end
     * is not ours. */
    if (!active || !shm || atomic_load(&shm->producer_pid) != (int32_t)getpid())
        return;
    struct mt_thread *t = mt_enter();
    if (!t)
        return;
    event_write(t, MT_R_EXIT, 0, seq_take(), (uint32_t)status, 0, 0, 0);
    record_done(t);
}

/* What a new thread's first act records, passed from its creator. */
struct thread_birth {
    mt_start_routine fn;
    void *arg;
    char name[64];
};

static void *thread_birth_run(void *p)
{
    struct thread_birth b = *(struct thread_birth *)p;
    mt_real.free(p);
    mt_record_thread_name(mt_enter(), b.name);
    return b.fn(b.arg);
}

mt_start_routine mt_thread_create(mt_start_routine fn, void **arg)
{
    if (!active || !python_threads)
        return fn;
    char name[sizeof ((struct thread_birth *)0)->name];
    if (mt_py_starting_thread_name(name, sizeof name) == 0)
        return fn;
    struct thread_birth *b = mt_real.malloc(sizeof *b);
    if (!b)
        return fn;
    b->fn = fn;
    b->arg = *arg;
    memcpy(b->name, name, sizeof name);
    *arg = b;
    return thread_birth_run;
}

void mt_thread_create_failed(mt_start_routine fn, void *arg)
{
    if (fn == thread_birth_run)
        mt_real.free(arg);
}

/* ---- set-up ---------------------------------------------------------- */

/* Maps a transport. Left out of core dumps: a crashing program's core
 * would be 256 MiB of rings bigger. */
static void *transport_map(int fd)
{
    void *p = mt_raw_mmap(NULL, MT_SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED)
        syscall(SYS_madvise, p, MT_SHM_BYTES, MADV_DONTDUMP);
    return p;
}

/* Sends note and the transport's memfd to the collector's socket. A full
 * queue is waited for (up to ~1 s: a collector that stopped reading must not
 * hold the child up); a collector that is gone refuses at once.
 * @return 0, -1, or -2 when the collector is gone (the session is over). */
static int fork_announce(const struct mt_fork_note *note, const char *command,
                         size_t command_len, int fd)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(fork_name);
    if (len + 1 > sizeof addr.sun_path)
        return -1;
    memcpy(addr.sun_path + 1, fork_name, len);
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    struct iovec iov[2] = {{(void *)note, sizeof *note}, {(void *)command, command_len}};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg = {.msg_name = &addr,
                         .msg_namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                                    1 + len),
                         .msg_iov = iov, .msg_iovlen = 2,
                         .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    int rc = -1;
    for (int tries = 0; tries < 1000; tries++) {
        ssize_t sent = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent == (ssize_t)(sizeof *note + command_len)) {
            rc = 0;
            break;
        }
        if (sent < 0 && (errno == ECONNREFUSED || errno == ENOENT)) {
            rc = -2;
            break;
        }
        if (sent >= 0 || (errno != EAGAIN && errno != EINTR))
            break;
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    close(sock);
    return rc;
}

/* This process's command line as the kernel keeps it (arguments ended by
 * NULs), cut at cap. @return its length. */
static size_t command_line(char *buf, size_t cap)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    if (fd < 0)
        return 0;
    while (n < cap) {
        ssize_t k = read(fd, buf + n, cap - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    return n;
}

/* A transport of this process's own, with the options (flags) and
 * collector of the one it came from, announced to the collector (with our command line when we run
 * another program than the process that made from); the caller sets it
 * ready. @return it, or NULL: said on stderr, unless the collector has
 * finished (the session is over: nothing to follow). */
static struct mt_shm *transport_own(uint32_t flags, int32_t collector_pid, int own_program)
{
    struct mt_shm *s = NULL;
    int rc = -1;
    int fd = (int)syscall(SYS_memfd_create, "memtap", MFD_CLOEXEC);
    if (fd >= 0) {
        void *p = MAP_FAILED;
        if (ftruncate(fd, (off_t)MT_SHM_BYTES) == 0)
            p = transport_map(fd);
        if (p != MAP_FAILED) {
            s = p;
            mt_shm_init(s, flags, collector_pid);
            s->producer_pid = getpid();
            struct mt_fork_note note = {getpid(), getppid()};
            char command[MT_FORK_COMMAND_MAX];
            size_t len = own_program ? command_line(command, sizeof command) : 0;
            rc = fork_announce(&note, command, len, fd);
            if (rc < 0) {
                mt_raw_munmap(p, MT_SHM_BYTES);
                s = NULL;
            }
        }
        close(fd);
    }
    if (!s && rc != -2)
        say("memtap: cannot follow this child process; it is not recorded\n");
    return s;
}

/* A forked child must not write into its parent's rings (design.md §2):
 * it runs on unrecorded, or, with --follow-fork, records into a transport
 * of its own. Only the forking thread lives on in the child. */
static void fork_child(void)
{
    int recording = active;
    active = 0;
    /* The shared slot's lock may have been held by a thread the fork did
     * not copy; its state is the parent's. */
    shared_lock = 0;
    shared_busy = 0;
    if (mt_self == MT_SHARED)
        mt_self = NULL;
    if (!recording || !fork_name[0] || !shm) {
        /* Not followed (or a fork after memtap_stop or a failure): the
         * child lets go of the parent's transport, and of this thread's
         * state, whose end would otherwise close the parent's slot. */
        struct mt_thread *t = mt_self;
        if ((uintptr_t)t > (uintptr_t)MT_SHARED) {
            pthread_setspecific(thread_key, NULL);
            thread_free(t);
        }
        mt_self = NULL;
        shared_thread = NULL;  /* the parent's, left mapped */
        if (shm) {
            mt_raw_munmap(shm, MT_SHM_BYTES);
            shm = NULL;
            mt_limit_share_dropped();  /* what it execs gets the program's limit */
        }
        return;
    }
    uint32_t flags = shm->flags;
    int32_t collector = shm->collector_pid;
    char version[sizeof shm->python_version], exe[sizeof shm->program_exe];
    memcpy(version, shm->python_version, sizeof version);
    memcpy(exe, shm->program_exe, sizeof exe);
    struct mt_thread *t = mt_self;
    if ((uintptr_t)t > (uintptr_t)MT_SHARED) {
        pthread_setspecific(thread_key, NULL);
        t->slot = 0;
        thread_free(t);
    }
    mt_self = NULL;
    if (shared_thread)  /* the parent's; its other threads are not here */
        thread_free(shared_thread);
    shared_thread = NULL;
    /* First: two transports at once need room a ulimit -v may not leave. */
    mt_raw_munmap(shm, MT_SHM_BYTES);
    struct mt_shm *s = transport_own(flags, collector, 0);
    if (s) {
        memcpy(s->python_version, version, sizeof s->python_version);
        memcpy(s->program_exe, exe, sizeof s->program_exe);
        atomic_store(&s->ready, 1);
    }
    shm = s;
    if (!s)
        return;
    ended = 0;
    if (native)
        mt_native_objects_forget();  /* the child's capture lists them too */
    active = 1;
}

static int find_self(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    Dl_info *me = arg;
    if ((void *)info->dlpi_addr != me->dli_fbase &&
        !(info->dlpi_addr == 0 && me->dli_fbase == NULL))
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        if (p->p_type == PT_LOAD && (p->p_flags & PF_X)) {
            self_lo = info->dlpi_addr + p->p_vaddr;
            self_hi = self_lo + p->p_memsz;
        }
    }
    return 1;
}

/* The memfd behind descriptor fd, or -1: this process's own descriptor,
 * else (after an exec: the first program closed it once mapped) the one
 * memtap run (holder) keeps open under the same number, reached through
 * /proc. */
static int transport_fd(long fd, unsigned long long ino, long holder)
{
    struct stat st;
    if (fd < 0 || fd > INT32_MAX)
        return -1;
    if (fstat((int)fd, &st) == 0 && st.st_ino == ino)
        return (int)fd;
    char path[64] = "/proc/", *p = path + 6;
    p = put_decimal(p, (unsigned long)holder);
    memcpy(p, "/fd/", 4);
    p = put_decimal(p + 4, (unsigned long)fd);
    *p = 0;
    int again = open(path, O_RDWR | O_CLOEXEC);
    if (again >= 0 && (fstat(again, &st) != 0 || st.st_ino != ino)) {
        close(again);
        again = -1;
    }
    return again;
}

/* Maps the transport named by MEMTAP_SHM, if it is really ours: the
 * descriptor must still be the memfd memtap run created (a later exec'd
 * program may have reused the number for a file of its own). *exec_of is
 * set when this process is the one memtap recorded, now running the
 * program it exec'd; *spawned when it is another process (a child that
 * exec'd a program) and children are followed: the transport is then only
 * the model of this process's own. */
static struct mt_shm *attach(int *exec_of, int *spawned)
{
    const char *env = getenv(MT_ENV_SHM);
    if (!env)
        return NULL;
    char *end;
    long fd = strtol(env, &end, 10);
    if (*end != ':')
        return NULL;
    unsigned long long ino = strtoull(end + 1, &end, 10);
    const char *name = *end == ':' ? end + 1 : "";
    size_t prefix = strlen(MT_FORK_NAME_PREFIX);
    fork_name[0] = 0;  /* a Tracker without follow_fork after one with */
    if (!strncmp(name, MT_FORK_NAME_PREFIX, prefix) && strlen(name) < sizeof fork_name)
        memcpy(fork_name, name, strlen(name) + 1);
    /* memtap run holds the memfd: our parent, unless we are a program a
     * child exec'd; the socket's name has its pid. */
    long holder = fork_name[0] ? strtol(fork_name + prefix, NULL, 10) : (long)getppid();
    struct stat st;
    int shm_fd = transport_fd(fd, ino, holder);
    if (shm_fd < 0)
        return NULL;
    if (fstat(shm_fd, &st) != 0 || (uint64_t)st.st_size != MT_SHM_BYTES) {
        close(shm_fd);
        return NULL;
    }
    void *p = transport_map(shm_fd);
    close(shm_fd);
    if (p == MAP_FAILED) {  /* ours, but no room: a ulimit -v */
        say("memtap: cannot map memtap's rings into this program; it is not recorded\n");
        return NULL;
    }
    struct mt_shm *s = p;
    int32_t producer = 0;
    if (s->magic == MT_SHM_MAGIC && s->version == MT_SHM_VERSION) {
        if (atomic_compare_exchange_strong(&s->producer_pid, &producer, getpid()) ||
            producer == getpid()) {
            *exec_of = producer != 0;
            return s;
        }
        if ((s->flags & MT_SHMF_FOLLOW_FORK) && fork_name[0]) {
            *spawned = 1;
            return s;
        }
    }
    mt_raw_munmap(p, MT_SHM_BYTES);
    return NULL;  /* another process's: a child that exec'd */
}

/* Tells the collector that the capture starts over with this program,
 * before any event of it: no other thread records yet (active is 0). The
 * thread's name follows the marker, so that the new capture has it. */
static int exec_announce(void)
{
    struct mt_thread *t = thread_start();
    if (!t)
        return -1;
    uint64_t k = seq_take();
    event_write(t, MT_R_EXEC, 0, k, 0, 0, 0, 0);
    /* Until the collector has cut the old program's threads off, a record
     * of ours could be taken for one of theirs. It takes a few ms; after
     * 2 s (10,000 naps) something is wrong, and the program must go on. */
    for (unsigned n = 1;
         atomic_load_explicit(&shm->exec_done, memory_order_acquire) <= k; n++) {
        if (n == 10000 || atomic_load(&shm->disabled) ||
            ((n & 255) == 0 && !collector_alive()))
            return -1;
        struct timespec ts = {0, 200 * 1000};
        nanosleep(&ts, NULL);
    }
    thread_announce_own(t);
    record_done(t);
    return 0;
}

/* Registered first, so it runs after the program's own atexit handlers. */
static void exit_seen(int status, void *arg)
{
    (void)arg;
    mt_record_exit(status);
}

/* Once per process: what does not depend on the transport. */
static int setup_once(void)
{
    static int done;
    if (done)
        return done > 0 ? 0 : -1;
    if (pthread_key_create(&thread_key, thread_end) != 0 ||
        pthread_atfork(NULL, NULL, fork_child) != 0 || on_exit(exit_seen, NULL) != 0) {
        say("memtap: cannot set up thread bookkeeping; nothing is recorded\n");
        done = -1;
        return -1;
    }
    Dl_info me;
    if (dladdr((void *)setup_once, &me))
        dl_iterate_phdr(find_self, &me);
    done = 1;
    return 0;
}

/* Starts recording into the transport MEMTAP_SHM names. @return 0, or -1
 * (nothing to attach to, or set-up failed). */
static int start(void)
{
    mt_real_resolve();
    int exec_of = 0, spawned = 0;
    struct mt_shm *s = attach(&exec_of, &spawned);
    if (!s)
        return -1;  /* dormant: not a process memtap started */
    if (setup_once() < 0) {
        mt_raw_munmap(s, MT_SHM_BYTES);
        return -1;
    }
    if (spawned) {
        /* A program a child exec'd: recorded into a capture of its own, as
         * forked children are. */
        uint32_t flags = s->flags;
        int32_t collector = s->collector_pid;
        mt_raw_munmap(s, MT_SHM_BYTES);  /* first: room for one under a ulimit -v */
        s = transport_own(flags, collector, 1);
        if (!s)
            return -1;
    }
    if (exec_of) {
        /* The old program's description of itself no longer holds. */
        atomic_store_explicit(&s->ready, 0, memory_order_release);
        memset(s->python_version, 0, sizeof s->python_version);
    }
    shm = s;
    ended = 0;
    python = mt_py_setup() == 1;
    if (python && (shm->flags & MT_SHMF_PYALLOC) && mt_pyalloc_setup() < 0)
        say("memtap: cannot find CPython's allocator API; "
            "Python allocators are not traced\n");
    python_threads = python && mt_pythread_setup() == 0;
    native = (shm->flags & MT_SHMF_NATIVE) || !python;
    if (native && mt_native_setup() < 0) {
        say("memtap: cannot start libunwind (libunwind.so.8); native stacks are not "
            "recorded\n");
        native = 0;
    }
    mt_py_keep_unstarted(native);
    ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
    exe_path_len = n > 0 ? (size_t)n : 0;
    memcpy(shm->program_exe, exe_path, exe_path_len);
    shm->program_exe[exe_path_len] = 0;
    const char *version = python ? mt_py_version() : NULL;
    if (version)
        strncpy(shm->python_version, version, sizeof shm->python_version - 1);
    atomic_store_explicit(&shm->ready, 1, memory_order_release);
    epoch++;
    if (exec_of && exec_announce() < 0) {
        say("memtap: the collector did not follow the exec; this program is not recorded\n");
        return -1;
    }
    active = 1;
    return 0;
}

/* The shim starts in its constructor, or earlier, at the first call of a
 * library whose constructor the loader runs before ours (a dependency of
 * the program: they are initialised first). Once: a process that memtap
 * did not start stays dormant, and our own calls while starting are not
 * recorded. */
static int started;

static void start_once(void)
{
    /* A load first: dormant processes come here at every call. */
    if (!__atomic_load_n(&started, __ATOMIC_RELAXED) &&
        !__atomic_exchange_n(&started, 1, __ATOMIC_ACQ_REL)) {
        int saved = errno;  /* the caller's malloc leaves errno alone */
        start();
        errno = saved;
    }
}

__attribute__((constructor)) static void mt_setup(void)
{
    /* The program's main() sees errno as it would without us (0), not
     * what our start-up's calls left in it. */
    int saved = errno;
    start_once();
    /* Children that are not followed start as they would without memtap. */
    Dl_info me;
    if (active && shm && !(shm->flags & MT_SHMF_FOLLOW_FORK) &&
        dladdr((void *)mt_setup, &me) && me.dli_fname)
        mt_environ_hide(MT_ENV_SHM, me.dli_fname);
    errno = saved;
}

/* The Python API (memtap.Tracker) loads the shim at run time: these start
 * and stop recording in a process memtap run did not start. The caller
 * sets MEMTAP_SHM first. Not for concurrent use: one tracker at a time. */
__attribute__((visibility("default"))) int memtap_start(void)
{
    if (active)
        return -1;
    mt_limit_not_raised();  /* no memtap run gave this process room */
    return start();
}

/* memtap.Tracker in a process memtap run started: the block's capture is
 * cut out of the run's (memtap extract) at two marks. */

/* Marks this point of the event order. @return the mark's number, or -1
 * when nothing is being recorded. */
__attribute__((visibility("default"))) long memtap_mark(void)
{
    static uint64_t next;
    struct mt_thread *t = mt_enter();
    if (!t)
        return -1;
    uint64_t k = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    event_write(t, MT_R_MARK, 0, seq_take(), k, 0, 0, 0);
    record_done(t);
    return (long)k;
}

/* Where mark k is in the capture file: @return its offset, -2 while the
 * collector has not reached it, -1 when it cannot say (an --aggregate run
 * has no event stream; a write failed). One mark at a time. */
__attribute__((visibility("default"))) long long memtap_mark_offset(long k)
{
    if (!shm || k < 0)
        return -1;
    if (atomic_load_explicit(&shm->marks_done, memory_order_acquire) <= (uint64_t)k)
        return -2;
    uint64_t at = shm->mark_offset;
    return at == UINT64_MAX ? -1 : (long long)at;
}

/* The run's capture file (absolute), "" when not known. */
__attribute__((visibility("default"))) const char *memtap_capture_path(void)
{
    return active && shm ? shm->capture_path : "";
}

/* The collector's process id (its /proc/PID/exe is the memtap that reads
 * its captures); -1 when not recording. */
__attribute__((visibility("default"))) long memtap_collector_pid(void)
{
    return active && shm ? (long)shm->collector_pid : -1;
}

/* The recording's MT_SHMF_* options; -1 when not recording. */
__attribute__((visibility("default"))) long memtap_run_flags(void)
{
    return active && shm ? (long)shm->flags : -1;
}

__attribute__((visibility("default"))) void memtap_stop(void)
{
    if (!__atomic_exchange_n(&active, 0, __ATOMIC_RELAXED) || !shm)
        return;
    if (python && (shm->flags & MT_SHMF_PYALLOC))
        mt_pyalloc_teardown();  /* the Python API calls this with the GIL */
    /* Hooks already past mt_enter finish their records; the collector
     * drains until the shim says it stopped, then closes the capture. */
    atomic_store_explicit(&shm->stopped, 1, memory_order_release);
}
