/* Unit test for the capture format (src/writer.c, src/reader.c; the bytes
 * are specified in docs/format.md):
 *  - round trip: every record tag with edge values (addresses 0 and
 *    2^64-1, deltas of 2^63, sizes 2^64-1, negative firstlineno, empty and
 *    4 KiB strings, 32 segments, every allocator value the tag can hold),
 *    frees referring to allocations blocks back, in and out of order,
 *    double and unknown frees (which the writer drops), many blocks made by
 *    mt_writer_flush and by filling more than MT_BLOCK_MAX_RAW; compared
 *    field by field with a model of what the format keeps;
 *  - an independent walk of the file's bytes as docs/format.md describes
 *    them (header, block headers, CRC-32s, lz4 blocks);
 *  - the file cut at every offset (the small capture) and around every
 *    block boundary (the large one): the records before the cut come back
 *    exactly, then MT_E_TRUNCATED, never a wrong record;
 *  - every byte flipped: an error at that block, never a wrong record;
 *  - the reader's refusals: newer version, unknown header flags, empty
 *    file, not a capture; the writer's O_EXCL refusal.
 * Exit 0 on success; prints each failure. Run it under ASan/valgrind to
 * see that nothing is read out of bounds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lz4.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/capture.h"
#include "../../src/codec.h"
#include "../../src/dictionary.h"

static int failures;

static void fail(const char *file, int line, const char *fmt, ...)
{
    failures++;
    if (failures > 60)
        return;  /* one bug can fail thousands of cuts: show the first */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

#define CHECK(cond, ...) \
    do { if (!(cond)) fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define CHECK_RC(got, want, what) \
    CHECK((got) == (want), "%s: got %d (%s), want %d (%s)", what, (int)(got), \
          mt_strerror(got), (int)(want), mt_strerror(want))

/* ---- helpers ------------------------------------------------------------ */

static char tmpdir[PATH_MAX];

static void *pool_dup(const void *s, size_t n);

/* A path in the test's directory; freed with the pool. */
static char *tmp_path(const char *name)
{
    char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return pool_dup(buf, strlen(buf));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Everything the expected records point to, freed at the end. */
static void **pool;
static size_t npool, cap_pool;

static void *pooled(void *p)
{
    if (npool == cap_pool) {
        cap_pool = cap_pool ? 2 * cap_pool : 256;
        pool = realloc(pool, cap_pool * sizeof *pool);
        if (!pool)
            exit(2);
    }
    return pool[npool++] = p;
}

static void *pool_dup(const void *s, size_t n)
{
    void *d = pooled(xmalloc(n + 1));
    if (n)
        memcpy(d, s, n);
    ((char *)d)[n] = 0;
    return d;
}

static void pool_free(void)
{
    for (size_t i = 0; i < npool; i++)
        free(pool[i]);
    free(pool);
    pool = NULL;
    npool = cap_pool = 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open '%s': %s\n", path, strerror(errno));
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = xmalloc((size_t)size);
    if (fread(b, 1, (size_t)size, f) != (size_t)size)
        exit(2);
    fclose(f);
    *n = (size_t)size;
    return b;
}

static void spit(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(b, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "cannot write '%s': %s\n", path, strerror(errno));
        exit(2);
    }
}

/* ---- records: building, copying, comparing ----------------------------- */

struct stream {
    struct mt_record *r;
    uint64_t *block_end;   /* read streams: file offset where its block ends */
    size_t n, cap;
};

static void stream_push(struct stream *s, const struct mt_record *r)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->r = realloc(s->r, s->cap * sizeof *s->r);
        s->block_end = realloc(s->block_end, s->cap * sizeof *s->block_end);
        if (!s->r || !s->block_end)
            exit(2);
    }
    s->block_end[s->n] = 0;
    s->r[s->n++] = *r;
}

static void stream_free(struct stream *s)
{
    free(s->r);
    free(s->block_end);
    memset(s, 0, sizeof *s);
}

/* A copy of rec whose pointers stay valid (the reader's do not). */
static struct mt_record deep_copy(const struct mt_record *rec)
{
    struct mt_record r = *rec;
    switch (r.tag) {
    case MT_T_THREAD:
        r.u.thread.name = pool_dup(r.u.thread.name, strlen(r.u.thread.name));
        break;
    case MT_T_CODE:
        r.u.code.name = pool_dup(r.u.code.name, strlen(r.u.code.name));
        r.u.code.qualname = pool_dup(r.u.code.qualname, strlen(r.u.code.qualname));
        r.u.code.filename = pool_dup(r.u.code.filename, strlen(r.u.code.filename));
        break;
    case MT_T_OBJECT:
        r.u.object.path = pool_dup(r.u.object.path, strlen(r.u.object.path));
        r.u.object.build_id = pool_dup(r.u.object.build_id, r.u.object.build_id_len);
        r.u.object.seg = pool_dup(r.u.object.seg, 16 * (size_t)r.u.object.nseg);
        break;
    case MT_T_PROGRAM:
        r.u.program.python_version = pool_dup(r.u.program.python_version,
                                              strlen(r.u.program.python_version));
        break;
    case MT_T_TOTALS:
        r.u.totals = pool_dup(r.u.totals, sizeof *r.u.totals);
        break;
    default:
        break;
    }
    return r;
}

static int is_event(enum mt_tag t)
{
    return t == MT_T_ALLOC || t == MT_T_FREE || t == MT_T_REALLOC ||
           t == MT_T_MUNMAP || t == MT_T_MREMAP;
}

#define DIFF(cond, ...) \
    do { if (cond) { snprintf(why, nwhy, __VA_ARGS__); return 0; } } while (0)
#define DIFF_U(field) \
    DIFF(a->field != b->field, #field ": want %" PRIu64 ", got %" PRIu64, \
         (uint64_t)a->field, (uint64_t)b->field)
#define DIFF_S(field) \
    DIFF(strcmp(a->field, b->field) != 0, #field ": want \"%.40s\"(%zu), got \"%.40s\"(%zu)", \
         a->field, strlen(a->field), b->field, strlen(b->field))

/* 1 when b (decoded) equals a (expected) in every field the format stores.
 * Fields it does not store must decode as 0 (the reader clears records):
 * expected records are built with them 0. */
static int rec_equal(const struct mt_record *a, const struct mt_record *b,
                     int compare_thread, char *why, size_t nwhy)
{
    DIFF(a->tag != b->tag, "tag: want 0x%02x, got 0x%02x", a->tag, b->tag);
    if (is_event(a->tag) || (compare_thread && a->tag == MT_T_THREAD_SWITCH))
        DIFF_U(thread);
    switch (a->tag) {
    case MT_T_ALLOC: case MT_T_FREE: case MT_T_REALLOC:
    case MT_T_MUNMAP: case MT_T_MREMAP:
        DIFF_U(u.ev.allocator);
        DIFF_U(u.ev.addr);
        DIFF_U(u.ev.size);
        DIFF_U(u.ev.old_addr);
        DIFF_U(u.ev.old_size);
        DIFF_U(u.ev.py_stack);
        DIFF_U(u.ev.native_stack);
        break;
    case MT_T_THREAD:
        DIFF_U(u.thread.index);
        DIFF_U(u.thread.tid);
        DIFF_S(u.thread.name);
        break;
    case MT_T_CODE:
        DIFF_U(u.code.id);
        DIFF(a->u.code.firstlineno != b->u.code.firstlineno,
             "firstlineno: want %d, got %d", a->u.code.firstlineno, b->u.code.firstlineno);
        DIFF_S(u.code.name);
        DIFF_S(u.code.qualname);
        DIFF_S(u.code.filename);
        break;
    case MT_T_PYNODE:
    case MT_T_NATIVENODE:
        DIFF_U(u.node.id);
        DIFF_U(u.node.parent);
        DIFF_U(u.node.a);
        DIFF_U(u.node.b);
        DIFF_U(u.node.flags);
        break;
    case MT_T_OBJECT:
        DIFF_S(u.object.path);
        DIFF_U(u.object.base);
        DIFF_U(u.object.build_id_len);
        DIFF(a->u.object.build_id_len &&
             memcmp(a->u.object.build_id, b->u.object.build_id, a->u.object.build_id_len),
             "build-id bytes differ");
        DIFF_U(u.object.nseg);
        for (uint32_t i = 0; i < 2 * a->u.object.nseg; i++)
            DIFF(a->u.object.seg[i] != b->u.object.seg[i],
                 "seg[%u]: want %" PRIu64 ", got %" PRIu64, i, a->u.object.seg[i],
                 b->u.object.seg[i]);
        DIFF_U(u.object.unload);
        break;
    case MT_T_SAMPLE:
        DIFF_U(u.sample.time_us);
        DIFF_U(u.sample.rss_bytes);
        DIFF_U(u.sample.heap_bytes);
        break;
    case MT_T_GROUP:
        DIFF_U(u.group.py_stack);
        DIFF_U(u.group.native_stack);
        DIFF_U(u.group.thread);
        DIFF_U(u.group.allocators);
        DIFF_U(u.group.total_bytes);
        DIFF_U(u.group.total_count);
        DIFF_U(u.group.peak_bytes);
        DIFF_U(u.group.peak_count);
        DIFF_U(u.group.end_bytes);
        DIFF_U(u.group.end_count);
        break;
    case MT_T_TOTALS:
        DIFF_U(u.totals->allocations);
        DIFF_U(u.totals->frees);
        DIFF_U(u.totals->allocated_bytes);
        DIFF_U(u.totals->peak_bytes);
        DIFF_U(u.totals->peak_time_us);
        DIFF_U(u.totals->end_bytes);
        DIFF_U(u.totals->peak_rss_bytes);
        DIFF_U(u.totals->end_marked);
        for (unsigned i = 0; i < MT_A_COUNT; i++) {
            DIFF_U(u.totals->allocator_count[i]);
            DIFF_U(u.totals->allocator_bytes[i]);
        }
        for (unsigned i = 0; i < 64; i++)
            DIFF_U(u.totals->histogram[i]);
        break;
    case MT_T_PROGRAM:
        DIFF_S(u.program.python_version);
        break;
    case MT_T_TRAILER:
        DIFF(a->u.trailer.exit.code != b->u.trailer.exit.code,
             "exit.code: want %d, got %d", a->u.trailer.exit.code, b->u.trailer.exit.code);
        DIFF(a->u.trailer.exit.signal != b->u.trailer.exit.signal,
             "exit.signal: want %d, got %d", a->u.trailer.exit.signal, b->u.trailer.exit.signal);
        DIFF_U(u.trailer.duration_us);
        DIFF_U(u.trailer.events);
        DIFF_U(u.trailer.lost_events);
        break;
    default:  /* THREAD_SWITCH, END: no fields */
        break;
    }
    return 1;
}

/* ---- writing a capture and its expected records ----------------------- */

struct cap {
    struct mt_writer *w;
    struct stream want;   /* what was written, THREAD_SWITCH included */
    unsigned flushes;
    int addresses;        /* the header asks for heap addresses */
};

static void add(struct cap *c, const struct mt_record *r)
{
    int rc = mt_writer_add(c->w, r);
    CHECK_RC(rc, MT_OK, "mt_writer_add");
    stream_push(&c->want, r);
}

static void flush(struct cap *c)
{
    CHECK_RC(mt_writer_flush(c->w), MT_OK, "mt_writer_flush");
    c->flushes++;
}

/* The live heap blocks as the writer sees them (an independent model:
 * linear probing with tombstones, plus a list to pick from). A free names
 * its block by allocation number, so the format keeps a free only when the
 * capture saw the block allocated, and a realloc's old address only then. */
struct live {
    uint64_t *key;
    uint32_t *idx;    /* position in vec */
    uint8_t *st;      /* 0 empty, 1 used, 2 deleted */
    size_t cap;
    uint64_t *vec;
    size_t n;
};

static struct live live;

static void live_reset(void)
{
    free(live.key), free(live.idx), free(live.st), free(live.vec);
    live.cap = 1u << 20;
    live.key = xmalloc(live.cap * sizeof *live.key);
    live.idx = xmalloc(live.cap * sizeof *live.idx);
    live.st = calloc(live.cap, 1);
    live.vec = xmalloc(live.cap * sizeof *live.vec);
    live.n = 0;
}

static size_t live_slot(uint64_t a, int *found)
{
    size_t j = (size_t)((a * 0x9e3779b97f4a7c15ull) >> 44), tomb = SIZE_MAX;
    for (;; j = (j + 1) & (live.cap - 1)) {
        if (live.st[j] == 0) {
            *found = 0;
            return tomb != SIZE_MAX ? tomb : j;
        }
        if (live.st[j] == 2 && tomb == SIZE_MAX)
            tomb = j;
        if (live.st[j] == 1 && live.key[j] == a) {
            *found = 1;
            return j;
        }
    }
}

static void live_add(uint64_t a)
{
    int found;
    size_t j = live_slot(a, &found);
    if (found)
        return;
    live.st[j] = 1;
    live.key[j] = a;
    live.idx[j] = (uint32_t)live.n;
    live.vec[live.n++] = a;
}

/* Removes a; @return whether it was live. */
static int live_take(uint64_t a)
{
    int found;
    size_t j = live_slot(a, &found);
    if (!found)
        return 0;
    live.st[j] = 2;
    uint32_t i = live.idx[j];
    uint64_t last = live.vec[--live.n];
    if (i < live.n) {
        live.vec[i] = last;
        size_t k = live_slot(last, &found);
        live.idx[k] = i;
    }
    return 1;
}

static int is_mapping(unsigned a)
{
    return a == MT_A_MMAP || a == MT_A_MMAP_FILE || a == MT_A_MMAP_RESERVE;
}

/* Pushes an expected event: without MT_HF_ADDRESSES, heap blocks read
 * back without their addresses. */
static void want_event(struct cap *c, struct mt_record r)
{
    if (!c->addresses && r.tag != MT_T_MUNMAP && r.tag != MT_T_MREMAP &&
        !(r.tag == MT_T_ALLOC && is_mapping(r.u.ev.allocator)))
        r.u.ev.addr = r.u.ev.old_addr = 0;
    stream_push(&c->want, &r);
}

/* Writes one event and pushes what the reader must give back for it. */
static void ev(struct cap *c, enum mt_tag tag, uint32_t thread, uint8_t allocator,
               uint64_t addr, uint64_t size, uint64_t old_addr, uint64_t old_size,
               uint32_t py, uint32_t nat)
{
    struct mt_record r = {.tag = tag, .thread = thread};
    r.u.ev = (__typeof__(r.u.ev)){allocator, addr, size, old_addr, old_size, py, nat, 0, 0};
    int rc = mt_writer_add(c->w, &r);
    CHECK_RC(rc, MT_OK, "mt_writer_add (event)");

    struct mt_record want = {.tag = tag, .thread = thread};
    /* An allocation at an address still alive (its free was never seen)
     * first ends the old block: the writer writes that FREE itself. */
    if (((tag == MT_T_ALLOC && !is_mapping(allocator)) ||
         (tag == MT_T_REALLOC && addr != old_addr)) && addr && live_take(addr)) {
        struct mt_record end = {.tag = MT_T_FREE, .thread = thread};
        end.u.ev.addr = addr;
        want_event(c, end);
    }
    switch (tag) {
    case MT_T_ALLOC:
        want.u.ev = r.u.ev;
        want.u.ev.old_addr = want.u.ev.old_size = 0;
        if (!is_mapping(allocator) && addr)
            live_add(addr);
        break;
    case MT_T_FREE:
        if (!addr || !live_take(addr))
            return;  /* the writer drops it */
        want.u.ev.addr = addr;
        break;
    case MT_T_REALLOC:
        want.u.ev = r.u.ev;
        want.u.ev.old_addr = old_addr && live_take(old_addr) ? old_addr : 0;
        want.u.ev.old_size = 0;
        if (addr)
            live_add(addr);
        break;
    case MT_T_MREMAP:
        want.u.ev = r.u.ev;
        break;
    case MT_T_MUNMAP:
        want.u.ev.addr = addr;
        want.u.ev.size = size;
        break;
    default:
        CHECK(0, "ev: not an event tag 0x%02x", tag);
        return;
    }
    want_event(c, want);
}

static void thread_rec(struct cap *c, uint32_t index, uint32_t tid, const char *name)
{
    struct mt_record r = {.tag = MT_T_THREAD};
    r.u.thread.index = index;
    r.u.thread.tid = tid;
    r.u.thread.name = name;
    add(c, &r);
}

static void code_rec(struct cap *c, uint32_t id, int32_t first,
                     const char *name, const char *qual, const char *file)
{
    struct mt_record r = {.tag = MT_T_CODE};
    r.u.code.id = id;
    r.u.code.firstlineno = first;
    r.u.code.name = name;
    r.u.code.qualname = qual;
    r.u.code.filename = file;
    CHECK_RC(mt_writer_add(c->w, &r), MT_OK, "mt_writer_add CODE");
    if (!strcmp(qual, name))
        r.u.code.qualname = "";  /* stored as "same as name" */
    stream_push(&c->want, &r);
}

static void node_rec(struct cap *c, enum mt_tag tag, uint32_t id, uint32_t parent,
                     uint64_t a, uint32_t b, uint32_t flags)
{
    struct mt_record r = {.tag = tag};
    r.u.node.id = id;
    r.u.node.parent = parent;
    r.u.node.a = a;
    if (tag == MT_T_PYNODE) {  /* NATIVENODE stores neither */
        r.u.node.b = b;
        r.u.node.flags = flags;
    }
    add(c, &r);
}

static void object_rec(struct cap *c, const char *path, uint64_t base,
                       const uint8_t *bid, uint32_t bidlen, uint32_t nseg,
                       const uint64_t *seg, uint32_t unload)
{
    struct mt_record r = {.tag = MT_T_OBJECT};
    r.u.object.path = path;
    r.u.object.base = base;
    r.u.object.build_id = bid;
    r.u.object.build_id_len = bidlen;
    r.u.object.nseg = nseg;
    r.u.object.seg = seg;
    r.u.object.unload = unload;
    add(c, &r);
}

static void simple_rec(struct cap *c, enum mt_tag tag, uint32_t thread,
                       uint64_t x, uint64_t y, const char *s)
{
    struct mt_record r = {.tag = tag, .thread = thread};
    if (tag == MT_T_SAMPLE) {
        r.u.sample.time_us = x;
        r.u.sample.rss_bytes = y;
        r.u.sample.heap_bytes = x ^ y;
    } else if (tag == MT_T_PROGRAM) {
        r.u.program.python_version = s;
    }
    add(c, &r);
}

static void cap_open(struct cap *c, const char *path, const struct mt_header *h)
{
    memset(c, 0, sizeof *c);
    live_reset();
    unlink(path);
    c->addresses = (h->flags & MT_HF_ADDRESSES) != 0;
    int rc = mt_writer_open(path, 0, h, &c->w);
    CHECK_RC(rc, MT_OK, "mt_writer_open");
    if (rc != MT_OK)
        exit(1);
}

static void cap_close(struct cap *c, const struct mt_trailer *t)
{
    CHECK_RC(mt_writer_close(c->w, t), MT_OK, "mt_writer_close");
    if (t) {
        struct mt_record r = {.tag = MT_T_TRAILER};
        r.u.trailer = *t;
        stream_push(&c->want, &r);
    }
}

/* ---- reading ------------------------------------------------------------ */

/* Reads every record of path into *got (deep copies), each with the offset
 * where its block ends. @return the last mt_reader_next code (0 or < 0),
 * or the mt_reader_open error. */
static int read_all(const char *path, struct stream *got, struct mt_header *hdr)
{
    struct mt_reader *r;
    uint32_t found = 0;
    int rc = mt_reader_open(path, &r, &found);
    if (rc != MT_OK)
        return rc;
    if (hdr)
        *hdr = *mt_reader_header(r);
    struct mt_record rec;
    size_t first_of_block = 0;
    uint64_t block = 0;
    for (;;) {
        rc = mt_reader_next(r, &rec);
        if (rc != 1)
            break;
        uint64_t off = mt_reader_offset(r);
        if (got->n == 0 || off != block) {
            /* a new block: the previous one ended where this one starts */
            for (size_t i = first_of_block; i < got->n; i++)
                got->block_end[i] = off;
            first_of_block = got->n;
            block = off;
        }
        stream_push(got, (struct mt_record[]){deep_copy(&rec)});
    }
    /* the last block read ends where the reader stopped reading */
    struct stat st;
    uint64_t end = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    for (size_t i = first_of_block; i < got->n; i++)
        got->block_end[i] = end;
    if (hdr)  /* the command string belongs to the reader */
        hdr->command = pool_dup(hdr->command, strlen(hdr->command));
    mt_reader_close(r);
    return rc;
}

/* Compares a decoded stream with what was written. THREAD_SWITCH records
 * are skipped on both sides (the writer adds its own); the thread of every
 * event is compared instead. */
static void compare_streams(const char *what, const struct stream *want,
                            const struct stream *got)
{
    size_t i = 0, j = 0;
    char why[256];
    for (;;) {
        while (i < want->n && want->r[i].tag == MT_T_THREAD_SWITCH)
            i++;
        while (j < got->n && got->r[j].tag == MT_T_THREAD_SWITCH)
            j++;
        if (i == want->n || j == got->n)
            break;
        if (!rec_equal(&want->r[i], &got->r[j], 0, why, sizeof why)) {
            CHECK(0, "%s: record %zu (decoded %zu, tag 0x%02x): %s", what, i, j,
                  want->r[i].tag, why);
            return;
        }
        i++, j++;
    }
    CHECK(i == want->n && j == got->n,
          "%s: %zu records written, %zu decoded (stopped at %zu/%zu)", what,
          want->n, got->n, i, j);
}

/* ---- an independent walk of the bytes (docs/format.md) ----------------- */

struct layout {
    size_t header_end;     /* first byte after the header's CRC */
    size_t nblocks;
    size_t block_start[4096];
    uint32_t raw[4096], comp[4096];
    unsigned dictionary[4096];
    uint32_t max_raw;
};

/* Walks the file as the spec describes it; a check fails on any mismatch. */
static void walk(const char *what, const uint8_t *b, size_t n, struct layout *l)
{
    memset(l, 0, sizeof *l);
    CHECK(n >= 20 && !memcmp(b, "MEMTAPv\x01", 8), "%s: magic", what);
    if (n < 20)
        return;
    CHECK(mt_get_u32le(b + 8) == MT_FORMAT_VERSION, "%s: version field", what);
    uint32_t hlen = mt_get_u32le(b + 12);
    CHECK(16 + (size_t)hlen + 4 <= n, "%s: header length %u", what, hlen);
    if (16 + (size_t)hlen + 4 > n)
        return;
    CHECK(mt_crc32(0, b, 16 + hlen) == mt_get_u32le(b + 16 + hlen),
          "%s: header CRC-32", what);
    size_t p = 16 + (size_t)hlen + 4;
    l->header_end = p;
    uint8_t *raw = xmalloc(MT_BLOCK_MAX_RAW);
    while (p < n && l->nblocks < 4096) {
        CHECK(n - p >= 16, "%s: block header at %zu cut", what, p);
        if (n - p < 16)
            break;
        uint32_t magic = mt_get_u32le(b + p), rawn = mt_get_u32le(b + p + 4),
                 comp = mt_get_u32le(b + p + 8), crc = mt_get_u32le(b + p + 12);
        CHECK(magic == 0x4b4c424du && !memcmp(b + p, "MBLK", 4), "%s: block magic at %zu", what, p);
        /* version 4: the top byte of raw_length names the dictionary */
        struct mt_dictionary dict = {0};
        CHECK(!(rawn >> 24) || mt_dictionary_get(rawn >> 24, &dict),
              "%s: dictionary %u at %zu", what, rawn >> 24, p);
        rawn &= 0xffffff;
        l->dictionary[l->nblocks] = dict.id;
        CHECK(rawn > 0 && rawn <= MT_BLOCK_MAX_RAW, "%s: raw length %u at %zu", what, rawn, p);
        CHECK(comp <= n - p - 16, "%s: compressed length %u at %zu", what, comp, p);
        if (comp > n - p - 16)
            break;
        CHECK(mt_crc32(mt_crc32(0, b + p + 4, 4), b + p + 16, comp) == crc,
              "%s: block CRC-32 at %zu", what, p);
        int k = dict.id ?
            LZ4_decompress_safe_usingDict((const char *)b + p + 16, (char *)raw, (int)comp,
                                          MT_BLOCK_MAX_RAW, dict.data, (int)dict.size) :
            LZ4_decompress_safe((const char *)b + p + 16, (char *)raw, (int)comp,
                                MT_BLOCK_MAX_RAW);
        CHECK(k >= 0 && (uint32_t)k == rawn, "%s: lz4 block at %zu decodes to %d, not %u",
              what, p, k, rawn);
        /* every block starts with its own delta state: a record tag, and
         * an event's thread is 0 until a THREAD_SWITCH says otherwise */
        CHECK(k > 0 && (raw[0] == MT_T_THREAD_SWITCH || raw[0] < 0x80),
              "%s: block at %zu starts with 0x%02x", what, p, raw[0]);
        l->block_start[l->nblocks] = p;
        l->comp[l->nblocks] = comp;
        l->raw[l->nblocks++] = rawn;
        if (rawn > l->max_raw)
            l->max_raw = rawn;
        p += 16 + comp;
    }
    free(raw);
    CHECK(p == n, "%s: the blocks end at %zu, the file at %zu", what, p, n);
}

/* ---- cutting and flipping ---------------------------------------------- */

/* Reads a damaged copy: the records must be a prefix of the full stream
 * `full`, at least `min_good` of them, and the end must be `want_rc` (or
 * either error when want_rc is 1). Read in runs of mt_reader_next_many
 * of varying length (1 is mt_reader_next): every record of a run is
 * compared only after the run, so a record pointing into the reader's
 * buffers anywhere but last would show. */
static void check_damaged(const char *what, size_t at, const char *path,
                          const struct stream *full, size_t min_good,
                          size_t max_good, int want_rc)
{
    struct mt_reader *r;
    uint32_t found = 0;
    int rc = mt_reader_open(path, &r, &found);
    if (rc != MT_OK) {
        CHECK(min_good == 0 && rc < 0, "%s at %zu: open: %s", what, at, mt_strerror(rc));
        return;
    }
    static struct mt_record run[700];
    static const int runs[] = {1, 2, 700, 3, 64, 1, 333};
    struct mt_record rec;
    size_t k = 0, nrun = 0;
    char why[256];
    int wrong = 0;
    while (!wrong && (rc = mt_reader_next_many(r, run, runs[nrun++ % 7])) > 0) {
        CHECK(rc <= runs[(nrun - 1) % 7], "%s at %zu: a run of %d", what, at, rc);
        for (int i = 0; i < rc && !wrong; i++, k++)
            if (k >= full->n || !rec_equal(&full->r[k], &run[i], 1, why, sizeof why)) {
                CHECK(0, "%s at %zu: record %zu is wrong: %s", what, at, k,
                      k >= full->n ? "one too many" : why);
                wrong = 1;
            }
    }
    if (!wrong) {
        CHECK(k >= min_good && k <= max_good,
              "%s at %zu: %zu records, want %zu..%zu", what, at, k, min_good, max_good);
        if (want_rc == 1)
            CHECK(rc == MT_E_CORRUPT || rc == MT_E_TRUNCATED,
                  "%s at %zu: ended with %d (%s)", what, at, rc, mt_strerror(rc));
        else
            CHECK(rc == want_rc, "%s at %zu: ended with %d (%s), want %s", what, at, rc,
                  mt_strerror(rc), mt_strerror(want_rc));
        /* and it stays ended */
        CHECK(mt_reader_next(r, &rec) <= 0, "%s at %zu: a record after the end", what, at);
    }
    mt_reader_close(r);
}

/* Records of `full` whose block lies wholly in the first `cut` bytes. */
static size_t records_before(const struct stream *full, uint64_t cut)
{
    size_t k = 0;
    while (k < full->n && full->block_end[k] <= cut)
        k++;
    return k;
}

/* The damaged copy is changed in place (cuts go from the end down, a
 * flipped byte is put back), so each check costs one read of the file. */
static int damaged_fd = -1;

static void damaged_reset(const uint8_t *b, size_t n)
{
    if (damaged_fd >= 0)
        close(damaged_fd);
    damaged_fd = open(tmp_path("damaged.bin"), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (damaged_fd < 0 || write(damaged_fd, b, n) != (ssize_t)n) {
        fprintf(stderr, "cannot write the damaged copy: %s\n", strerror(errno));
        exit(2);
    }
}

static int cmp_size_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Call with decreasing cuts after damaged_reset(). */
static void cut_at(const char *what, size_t n, size_t cut,
                   const struct stream *full, const struct layout *l)
{
    const char *path = tmp_path("damaged.bin");
    if (ftruncate(damaged_fd, (off_t)cut) != 0)
        exit(2);
    if (cut == n) {
        check_damaged(what, cut, path, full, full->n, full->n, 0);
        return;
    }
    if (cut < l->header_end) {
        struct mt_reader *r;
        int rc = mt_reader_open(path, &r, NULL);
        int want = cut == 0 ? MT_E_EMPTY : MT_E_TRUNCATED;
        CHECK(rc == want, "%s: header cut at %zu: %d (%s), want %s", what, cut, rc,
              mt_strerror(rc), mt_strerror(want));
        if (rc == MT_OK)
            mt_reader_close(r);
        return;
    }
    size_t good = records_before(full, cut);
    check_damaged(what, cut, path, full, good, good, MT_E_TRUNCATED);
}

static void flip_at(const char *what, const uint8_t *b, size_t at, uint8_t mask,
                    const struct stream *full, const struct layout *l)
{
    const char *path = tmp_path("damaged.bin");
    uint8_t x = b[at] ^ mask;
    if (pwrite(damaged_fd, &x, 1, (off_t)at) != 1)
        exit(2);
    if (at < l->header_end) {
        struct mt_reader *r;
        int rc = mt_reader_open(path, &r, NULL);
        CHECK(rc < 0, "%s: header byte %zu ^ 0x%02x accepted", what, at, mask);
        if (rc == MT_OK)
            mt_reader_close(r);
    } else {
        /* the records of the blocks before the damaged one, then an error */
        size_t block = 0;
        while (block + 1 < l->nblocks && l->block_start[block + 1] <= at)
            block++;
        size_t good = records_before(full, l->block_start[block]);
        check_damaged(what, at, path, full, good, good, 1);
    }
    if (pwrite(damaged_fd, b + at, 1, (off_t)at) != 1)
        exit(2);
}

/* ---- the tests ---------------------------------------------------------- */

static const uint64_t edge_addrs[] = {
    0, UINT64_MAX, 1ull << 63, (1ull << 63) - 1, 1, UINT64_MAX - 1,
    0x7f0000001000ull, 0x7f0000001010ull, 0x7f0000000ff0ull, 0x55555555a000ull,
};
#define NEDGE (sizeof edge_addrs / sizeof *edge_addrs)

/* The longest build-id an OBJECT record may carry (the writer keeps room
 * for a record's fixed part in every block). */
static uint32_t largest_build_id(void)
{
    static uint8_t bid[MT_BLOCK_MAX_RAW];
    struct mt_header h = {0};
    struct mt_record r = {.tag = MT_T_OBJECT};
    r.u.object.path = "";
    r.u.object.build_id = bid;
    uint32_t lo = 0, hi = MT_BLOCK_MAX_RAW;  /* lo accepted, hi refused */
    while (hi - lo > 1) {
        struct mt_writer *w;
        if (mt_writer_open(tmp_path("probe.bin"), 1, &h, &w) != MT_OK)
            exit(2);
        r.u.object.build_id_len = lo + (hi - lo) / 2;
        if (mt_writer_add(w, &r) == MT_OK)
            lo = r.u.object.build_id_len;
        else
            hi = r.u.object.build_id_len;
        mt_writer_close(w, NULL);
    }
    return lo;
}

/* flags: every header flag, with or without MT_HF_ADDRESSES (heap events
 * are written differently without it). */
static void test_edges(uint32_t flags)
{
    static char big[4097], path[4097];
    static uint8_t bid[MT_BLOCK_MAX_RAW];
    static uint64_t seg[64];
    for (size_t i = 0; i < 4096; i++) {
        big[i] = (char)(' ' + rnd() % 95);
        path[i] = (char)('a' + rnd() % 26);
    }
    path[0] = '/';
    for (size_t i = 0; i < 64; i++)
        bid[i] = (uint8_t)(i * 37);  /* NULs included */
    for (size_t i = 0; i < 64; i++)
        seg[i] = i & 1 ? UINT64_MAX - i : (i ? i << 40 : 0);

    struct mt_header h = {.flags = flags, .pid = INT32_MAX,
                          .start_time_us = UINT64_MAX,
                          .command = "python3 -c 'print(\"h\\u00e9\")' \t\x01 end"};
    const char *file = tmp_path(flags & MT_HF_ADDRESSES ? "edges.bin" : "edges-noaddr.bin");
    struct cap c;
    cap_open(&c, file, &h);

    simple_rec(&c, MT_T_PROGRAM, 0, 0, 0, "3.13.0");
    thread_rec(&c, 1, 1234, "MainThread");
    thread_rec(&c, 0, 0, "");
    thread_rec(&c, UINT32_MAX, UINT32_MAX, big);
    flush(&c);
    /* file names: new, repeated, repeated after others, cut at 4096 */
    code_rec(&c, 1, 1, "<module>", "", "/tmp/x.py");
    code_rec(&c, 2, -1, "", "", "");
    code_rec(&c, UINT32_MAX, INT32_MIN, big, big, big);
    code_rec(&c, 3, INT32_MAX, "f", "C.f", "x.py");
    code_rec(&c, 4, 5, "g", "g", "/tmp/x.py");
    code_rec(&c, 5, 6, "h", "<lambda>", big);
    code_rec(&c, 6, 7, "<module>", "<module>", "");
    code_rec(&c, 7, 8, "i", "C.i", "x.py");
    /* parents before, after and far; lines and the entry flag at their edges */
    node_rec(&c, MT_T_PYNODE, 1, 0, 1, 0, 0);
    node_rec(&c, MT_T_PYNODE, 2, 1, UINT64_MAX, 7, 1);
    node_rec(&c, MT_T_PYNODE, 3, UINT32_MAX, UINT64_MAX, UINT32_MAX, 1);
    node_rec(&c, MT_T_PYNODE, 4, 9, 0, UINT32_MAX, 0);
    node_rec(&c, MT_T_PYNODE, 5, 0, 3, 1, 1);
    node_rec(&c, MT_T_NATIVENODE, 1, 0, 0x7f0000001234ull, 0, 0);
    node_rec(&c, MT_T_NATIVENODE, 2, 1, 0, 0, 0);
    node_rec(&c, MT_T_NATIVENODE, 3, UINT32_MAX, UINT64_MAX, 0, 0);
    node_rec(&c, MT_T_NATIVENODE, 4, 2, 1ull << 63, 0, 0);
    /* ids are implicit: a node out of order, or a flag the format does not
     * store, is refused and the writer goes on */
    struct mt_record bad = {.tag = MT_T_PYNODE};
    bad.u.node.id = 7;
    CHECK_RC(mt_writer_add(c.w, &bad), MT_E_CORRUPT, "a PYNODE id skipping one");
    bad.u.node.id = 5;
    CHECK_RC(mt_writer_add(c.w, &bad), MT_E_CORRUPT, "a PYNODE id again");
    bad.u.node.id = 6;
    bad.u.node.flags = 2;
    CHECK_RC(mt_writer_add(c.w, &bad), MT_E_CORRUPT, "a PYNODE flag other than ENTRY");
    bad.tag = MT_T_NATIVENODE;
    bad.u.node.id = 4;
    bad.u.node.flags = 0;
    CHECK_RC(mt_writer_add(c.w, &bad), MT_E_CORRUPT, "a NATIVENODE id again");
    node_rec(&c, MT_T_PYNODE, 6, 5, 2, 3, 0);
    object_rec(&c, "", 0, NULL, 0, 0, NULL, 0);
    object_rec(&c, path, UINT64_MAX, bid, 20, 32, seg, 1);
    object_rec(&c, "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x7f0000000000ull, bid, 64, 1,
               seg + 2, 0);
    flush(&c);
    flush(&c);  /* nothing buffered: no empty block */
    c.flushes--;
    /* a new block spells its file names out again */
    code_rec(&c, 8, 1, "j", "", "x.py");
    code_rec(&c, 9, 1, "k", "", "x.py");
    node_rec(&c, MT_T_PYNODE, 7, 6, 8, 2, 1);
    node_rec(&c, MT_T_NATIVENODE, 5, 4, 0x1000, 0, 0);

    /* every event tag, every address edge, on changing threads */
    uint32_t threads[] = {0, 1, 1, 2, UINT32_MAX, 0, 7};
    size_t nt = sizeof threads / sizeof *threads;
    for (size_t i = 0; i < 3 * NEDGE; i++) {
        uint64_t a = edge_addrs[i % NEDGE], o = edge_addrs[(i * 7 + 3) % NEDGE];
        uint32_t t = threads[i % nt], t2 = threads[(i + 1) % nt];
        uint8_t alloc = (uint8_t)(i % 16);  /* 0..15: all the tag holds */
        uint32_t py = i % 3 ? (uint32_t)i : UINT32_MAX, nat = i % 2 ? UINT32_MAX - (uint32_t)i : 0;
        ev(&c, MT_T_ALLOC, t, alloc, a, i % 3 ? i : UINT64_MAX, 0, 0, py, nat);
        ev(&c, MT_T_FREE, t, 0, a, 0, 0, 0, 0, 0);
        ev(&c, MT_T_FREE, t2, 0, a, 0, 0, 0, 0, 0);          /* a double free */
        ev(&c, MT_T_ALLOC, t2, MT_A_MALLOC, a, 1, 0, 0, 0, 1);
        ev(&c, MT_T_REALLOC, t2, MT_A_REALLOC, o, UINT64_MAX, a, 99, 1, 0);
        ev(&c, MT_T_REALLOC, t, MT_A_REALLOCARRAY, 0, 0, o, 0, 0, 0); /* realloc(p, 0) */
        ev(&c, MT_T_REALLOC, t, MT_A_REALLOC, a, 5, 0, 0, UINT32_MAX, UINT32_MAX); /* (NULL, n) */
        ev(&c, MT_T_FREE, t, 0, 0x1234567, 0, 0, 0, 0, 0);  /* never allocated */
        ev(&c, MT_T_ALLOC, t, MT_A_MMAP, o, 4096, 0, 0, 2, 0);
        ev(&c, MT_T_MUNMAP, t, 0, a, UINT64_MAX - 4095, 0, 0, 0, 0);
        ev(&c, MT_T_MREMAP, t2, MT_A_MMAP, o, 8192, a, UINT64_MAX, 3, 4);
        ev(&c, MT_T_FREE, t, 0, a, 0, 0, 0, 0, 0);
        /* an MREMAP's new range is a mapping whatever its allocator says */
        ev(&c, MT_T_MREMAP, t, MT_A_MALLOC, a, 1, o, 2, 0, 0);
        ev(&c, MT_T_FREE, t, 0, a, 0, 0, 0, 0, 0);  /* not a heap block: dropped */
        if (i == NEDGE)
            flush(&c);  /* a block that starts with an event of thread 0 */
        if (i % 5 == 0) {
            struct mt_record sw = {.tag = MT_T_THREAD_SWITCH, .thread = (uint32_t)i};
            add(&c, &sw);  /* an explicit switch, then an event of another thread */
        }
    }
    /* frees far from their allocations: forwards, backwards, a block later */
    for (uint64_t k = 0; k < 300; k++)
        ev(&c, MT_T_ALLOC, 1, MT_A_CALLOC, 0x10000 + 16 * k, k, 0, 0, 0, 0);
    for (uint64_t k = 0; k < 300; k += 2)
        ev(&c, MT_T_FREE, 1, 0, 0x10000 + 16 * k, 0, 0, 0, 0, 0);
    flush(&c);
    for (uint64_t k = 299; k < 300; k -= 2)
        ev(&c, MT_T_FREE, 2, 0, 0x10000 + 16 * k, 0, 0, 0, 0, 0);
    ev(&c, MT_T_ALLOC, 0, MT_A_PYMALLOC, 77, 1, 0, 0, 0, 0);
    simple_rec(&c, MT_T_SAMPLE, 0, 0, 0, NULL);
    simple_rec(&c, MT_T_SAMPLE, 0, UINT64_MAX, UINT64_MAX, NULL);
    simple_rec(&c, MT_T_END, 3, 0, 0, NULL);
    /* aggregate records */
    /* every GROUP shape: peak and end as the totals, zero, equal, apart */
    struct mt_record g = {.tag = MT_T_GROUP};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){UINT32_MAX, 1, UINT32_MAX, 0x3fff, UINT64_MAX, 1,
                                        UINT64_MAX - 1, 2, UINT64_MAX, UINT64_MAX};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){3, 0, 1, 0x2, 100, 2, 100, 2, 100, 2};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){2, UINT32_MAX, 0, UINT32_MAX, 100, 2, 0, 0, 0, 0};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x4, 100, 2, 50, 1, 50, 1};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x4, 100, 2, 100, 2, 50, 1};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x4, 100, 2, 0, 0, 50, 1};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x4, 100, 2, 100, 0, 100, 0};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x4, 100, 2, 50, 1, 50, 2};
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x2, 100, 5, 0, 2, 0, 2};  /* malloc(0)s */
    add(&c, &g);
    g.u.group = (__typeof__(g.u.group)){1, 0, 1, 0x2, 100, 5, 0, 0, 0, 2};
    add(&c, &g);
    static struct mt_totals tot0, tot;
    struct mt_record tr0 = {.tag = MT_T_TOTALS};
    tr0.u.totals = &tot0;
    add(&c, &tr0);
    tot = (struct mt_totals){UINT64_MAX, 1, 2, UINT64_MAX, 3, 4, UINT64_MAX, 1, {0}, {0}, {0}};
    for (unsigned i = 0; i < MT_A_COUNT; i++) {
        tot.allocator_count[i] = i ? UINT64_MAX - i : 0;
        tot.allocator_bytes[i] = (uint64_t)i << 60;
    }
    for (unsigned i = 0; i < 64; i++)
        tot.histogram[i] = i % 2 ? 1ull << i : UINT64_MAX;
    tr0.u.totals = &tot;
    add(&c, &tr0);
    flush(&c);
    simple_rec(&c, MT_T_PROGRAM, 0, 0, 0, "");
    ev(&c, MT_T_FREE, 9, 0, 77, 0, 0, 0, 0, 0);

    /* a record that cannot fit a block is refused, and the writer goes on */
    struct mt_record huge = {.tag = MT_T_OBJECT};
    huge.u.object.path = "";
    huge.u.object.build_id = bid;
    huge.u.object.build_id_len = MT_BLOCK_MAX_RAW;
    CHECK(mt_writer_add(c.w, &huge) != MT_OK, "a record larger than a block was accepted");
    /* the largest record the writer takes fills a block of its own */
    uint32_t largest = largest_build_id();
    CHECK(largest > MT_BLOCK_MAX_RAW - 4096, "the largest record: %u bytes", largest);
    huge.u.object.build_id_len = largest;
    add(&c, &huge);
    ev(&c, MT_T_ALLOC, 0, MT_A_MALLOC, 0, 0, 0, 0, 0, 0);

    struct mt_trailer tr = {.exit = {INT_MIN, 0}, .duration_us = UINT64_MAX,
                            .events = UINT64_MAX, .lost_events = 0};
    cap_close(&c, &tr);

    struct stream got = {0};
    struct mt_header gh;
    int before = failures;
    int rc = read_all(file, &got, &gh);
    CHECK_RC(rc, 0, "edges: end of the complete capture");
    CHECK(gh.format_version == MT_FORMAT_VERSION && gh.flags == flags &&
          gh.pid == INT32_MAX && gh.start_time_us == UINT64_MAX &&
          !strcmp(gh.command, h.command), "edges: header fields");
    compare_streams("edges", &c.want, &got);
    if (failures != before) {  /* the damage checks need the whole stream */
        stream_free(&got);
        stream_free(&c.want);
        return;
    }

    size_t n;
    uint8_t *b = slurp(file, &n);
    struct layout *l = xmalloc(sizeof *l);
    walk("edges", b, n, l);
    CHECK(l->nblocks >= c.flushes + 1, "edges: %zu blocks, %u flushes", l->nblocks, c.flushes);
    for (size_t i = 0; i < l->nblocks; i++)  /* 3.13's from the first PROGRAM on */
        CHECK(l->dictionary[i] == 10, "edges: block %zu: dictionary %u", i, l->dictionary[i]);
    /* tag, empty path, base, a 3-byte length, nseg, unload; then the
     * allocation after it, which still fits (an event needs room for two
     * events, not for the largest record): its tag and size, and with
     * addresses the address's change */
    uint32_t alloc_len = (flags & MT_HF_ADDRESSES) ? 3 : 2;
    CHECK(l->max_raw == largest + 8 + alloc_len,
          "edges: the largest block holds %u bytes", l->max_raw);

    /* every cut, every byte flipped */
    damaged_reset(b, n);
    for (size_t cut = n + 1; cut-- > 0;)
        cut_at("edges: cut", n, cut, &got, l);
    damaged_reset(b, n);
    for (size_t at = 0; at < n; at++)
        flip_at("edges: flip", b, at, at & 1 ? 0x01 : 0xff, &got, l);
    free(l);
    free(b);
    stream_free(&got);
    stream_free(&c.want);
}

/* More than MT_BLOCK_MAX_RAW of events: the writer starts blocks itself. */
/* The table-driven CRC against the definition, one bit at a time, at
 * every length and alignment the 8-byte steps can meet. */
static uint32_t crc32_bitwise(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? 0xedb88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
}

static void test_crc32(void)
{
    CHECK(mt_crc32(0, "123456789", 9) == 0xcbf43926u, "crc32: check value");
    CHECK(mt_crc32(0, "", 0) == 0, "crc32: empty");
    uint8_t buf[600];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rnd();
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n + off <= 300; n++)
            CHECK(mt_crc32(0, buf + off, n) == crc32_bitwise(0, buf + off, n),
                  "crc32: %zu bytes at offset %zu", n, off);
    uint32_t part = mt_crc32(0, buf, 77);
    CHECK(mt_crc32(part, buf + 77, 500) == mt_crc32(0, buf, 577), "crc32: continued");
    CHECK(mt_crc32(part, buf + 77, 20) == crc32_bitwise(0, buf, 97), "crc32: continued, short");
    /* many folding steps (64 bytes each, where the CPU has them), and the
     * block sizes the format uses */
    size_t big = 263190 + 7;
    uint8_t *b = malloc(big);
    if (!b)
        abort();
    for (size_t i = 0; i < big; i++)
        b[i] = (uint8_t)rnd();
    static const size_t lens[] = {64, 127, 128, 4096, 4096 + 13, 65536 + 63, 263190};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
        for (size_t off = 0; off < 8; off += 7)
            CHECK(mt_crc32(0xdeadbeefu, b + off, lens[i]) ==
                      crc32_bitwise(0xdeadbeefu, b + off, lens[i]),
                  "crc32: %zu bytes at offset %zu", lens[i], off);
    free(b);
}

/* A capture of format version (without addresses from 3 on): its header,
 * then one block made by hand from raw record bytes (docs/format.md,
 * Blocks). @return the file. */
static const char *hand_block_all(const uint8_t *raw, int n, uint32_t version,
                                  unsigned dict_id, uint32_t flags)
{
    const char *file = tmp_path("hand.bin");
    unlink(file);
    struct mt_header h = {.pid = 1, .command = "hand", .flags = flags};
    struct mt_writer *w;
    if (mt_writer_open(file, 0, &h, &w) != MT_OK || mt_writer_close(w, NULL) != MT_OK)
        exit(2);
    size_t hn;
    uint8_t *hdr = slurp(file, &hn);
    uint32_t len = mt_get_u32le(hdr + 12);
    mt_put_u32le(hdr + 8, version);
    mt_put_u32le(hdr + 16 + len, mt_crc32(0, hdr, 16 + (size_t)len));
    FILE *hf = fopen(file, "wb");
    if (!hf || fwrite(hdr, 1, hn, hf) != hn)
        exit(2);
    fclose(hf);
    free(hdr);
    uint8_t block[16 + 256];
    struct mt_dictionary dict;
    int comp;
    if (mt_dictionary_get(dict_id, &dict)) {
        LZ4_stream_t s;
        LZ4_initStream(&s, sizeof s);
        LZ4_loadDict(&s, dict.data, (int)dict.size);
        comp = LZ4_compress_fast_continue(&s, (const char *)raw, (char *)block + 16, n, 256, 1);
    } else {
        comp = LZ4_compress_default((const char *)raw, (char *)block + 16, n, 256);
    }
    mt_put_u32le(block, MT_BLOCK_MAGIC);
    mt_put_u32le(block + 4, (uint32_t)n | dict_id << 24);
    mt_put_u32le(block + 8, (uint32_t)comp);
    /* the CRC-32 covers raw_length from version 4 on */
    mt_put_u32le(block + 12, mt_crc32(version >= 4 ? mt_crc32(0, block + 4, 4) : 0,
                                      block + 16, (size_t)comp));
    FILE *f = fopen(file, "ab");
    if (!f || comp <= 0 || fwrite(block, 1, 16 + (size_t)comp, f) != 16 + (size_t)comp)
        exit(2);
    fclose(f);
    return file;
}

static const char *hand_block_dict(const uint8_t *raw, int n, uint32_t version,
                                   unsigned dict_id)
{
    return hand_block_all(raw, n, version, dict_id, 0);
}

static const char *hand_block(const uint8_t *raw, int n, uint32_t version)
{
    return hand_block_dict(raw, n, version, 0);
}

static const char *hand_block_flags(const uint8_t *raw, int n, uint32_t version, uint32_t flags)
{
    return hand_block_all(raw, n, version, 0, flags);
}

/* Without addresses a REALLOC says by one byte whether it made a block:
 * 0 and 1 decode, anything else is corrupt. */
static void test_realloc_made(void)
{
    for (uint8_t made = 0; made < 4; made++) {
        /* ALLOC malloc (no addr) size 8 py 0; REALLOC of block 1 */
        const uint8_t raw[] = {0x21, 8, 0, MT_T_REALLOC, MT_A_REALLOC, 3, made, 9, 0, 0};
        struct mt_reader *r;
        CHECK_RC(mt_reader_open(hand_block(raw, sizeof raw, MT_FORMAT_VERSION), &r, NULL),
                 MT_OK, "made: open");
        struct mt_record a, re;
        CHECK(mt_reader_next(r, &a) == 1 && a.tag == MT_T_ALLOC && a.u.ev.number == 1 &&
              a.u.ev.addr == 0 && a.u.ev.size == 8, "made %u: the ALLOC", made);
        int rc = mt_reader_next(r, &re);
        if (made > 1) {
            CHECK_RC(rc, MT_E_CORRUPT, "made byte 2 or more");
        } else {
            CHECK(rc == 1 && re.tag == MT_T_REALLOC && re.u.ev.old_number == 1 &&
                  re.u.ev.number == (made ? 2u : 0u) && re.u.ev.size == 9 &&
                  !re.u.ev.addr && !re.u.ev.old_addr,
                  "made %u: REALLOC read as number %" PRIu64 " ending %" PRIu64, made,
                  re.u.ev.number, re.u.ev.old_number);
        }
        mt_reader_close(r);
    }
}

/* The short forms of formats 3 and 5 (src/codec.h): the writer takes the
 * shortest form at each bound, checked by the exact size of the block; the
 * reader gives the records back; version 2 readers' files never hold them,
 * nor version 5's a sized ALLOC with nothing to be made like. */
static void test_short_forms(void)
{
    struct mt_header h = {.pid = 2, .command = "short"};
    const char *file = tmp_path("short.bin");
    struct cap c;
    cap_open(&c, file, &h);
    size_t want = 0;
    for (uint64_t i = 0; i < 3000; i++) {  /* numbers 1..3000, stacks unchanged */
        ev(&c, MT_T_ALLOC, 5, MT_A_MALLOC, 0x1000 + 16 * i, 8, 0, 0, 0, 0);
        want += 2;                /* ALLOC_SAME | malloc, size; then ALLOC_SIZED */
    }
    want += 1;                    /* the short switch to thread 5, before the first */
    /* sizes at ALLOC_SIZED's bound, and allocators that change the kind */
    static const struct { unsigned allocator; uint64_t size; unsigned bytes; } sized[] = {
        {MT_A_MALLOC, 16383, 2},  /* the largest two-byte form */
        {MT_A_MALLOC, 16384, 4},  /* ALLOC_SAME, a 3-byte varint */
        {MT_A_MALLOC, 300, 2},    /* ALLOC_SIZED again */
        {MT_A_CALLOC, 300, 3},    /* another allocator: ALLOC_SAME */
        {MT_A_CALLOC, 0, 2},      /* like it */
        {MT_A_MALLOC, 200, 3},
    };
    for (size_t i = 0; i < sizeof sized / sizeof *sized; i++) {
        ev(&c, MT_T_ALLOC, 5, sized[i].allocator, 0x900000 + 16 * i, sized[i].size, 0, 0, 0, 0);
        want += sized[i].bytes;
    }
    /* frees, each by its change from the last one's number (the first's
     * from 0): the forms' bounds, no block freed twice */
    static const struct { int64_t change; unsigned bytes; } steps[] = {
        {+1000, 2},               /* zigzag 2000: the two-byte form */
        {+1056, 3},               /* 2112: tag and a 2-byte varint */
        {+32, 2},                 /* 64: the smallest two-byte form */
        {-31, 1},                 /* 61 */
        {-32, 1},                 /* 63: the largest one-byte form */
        {-1056, 2},               /* 2111: the largest two-byte form */
        {-33, 2},                 /* 65 */
    };
    uint64_t n = 0;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        n += (uint64_t)steps[i].change;
        ev(&c, MT_T_FREE, 5, 0, 0x1000 + 16 * (n - 1), 0, 0, 0, 0, 0);
        want += steps[i].bytes;
    }
    ev(&c, MT_T_FREE, 30, 0, 0x1000 + 16 * n, 0, 0, 0, 0, 0);   /* n + 1 */
    want += 1 + 1;                /* short switch to 30; change +1 */
    ev(&c, MT_T_FREE, 31, 0, 0x1000 + 16 * (n + 1), 0, 0, 0, 0, 0);
    want += 2 + 1;                /* thread 31 takes the long switch */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x100000, 8, 0, 0, 7, 0);
    want += 3;                    /* a new stack: BASE tag, size, py delta */
    /* version 5: back to a recent stack in one byte (blocks 3008 ...; the
     * last free was 938) */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200000, 8, 0, 0, 9, 0);
    want += 3;                    /* BASE tag, size, py delta */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200010, 8, 0, 0, 7, 0);
    want += 1 + 2;                /* STACKS 1, ALLOC_SIZED */
    ev(&c, MT_T_REALLOC, 31, MT_A_REALLOC, 0x200100, 40, 0x200000, 8, 9, 0);
    want += 8;                    /* REALLOC spells its stacks out: (9, 0) is the latest */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200200, 8, 0, 0, 7, 0);
    want += 1 + 2;                /* STACKS 1, ALLOC_SIZED */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200400, 8, 0, 0, 11, 0);
    want += 3;                    /* a stack not seen: BASE */
    /* native stacks: the native bit is part of the kind, and a pair is
     * (py, native) */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200500, 300, 0, 0, 11, 40);
    want += 1 + 2 + 1 + 1;        /* BASE | native, size, py delta 0, native delta */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200600, 300, 0, 0, 11, 40);
    want += 2;                    /* ALLOC_SIZED, native stack 40 */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200700, 300, 0, 0, 11, 0);
    want += 3;                    /* no native stack: another kind, ALLOC_SAME */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200800, 300, 0, 0, 11, 41);
    want += 1 + 2 + 1 + 1;        /* BASE | native, size, py delta 0, native delta */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200900, 300, 0, 0, 11, 40);
    want += 1 + 2;                /* STACKS 1 (11, 40), ALLOC_SIZED like (11, 41)'s */
    ev(&c, MT_T_ALLOC, 31, MT_A_MALLOC, 0x200a00, 300, 0, 0, 11, 40);
    want += 2;                    /* ALLOC_SIZED */
    flush(&c);
    cap_close(&c, NULL);
    size_t fn;
    uint8_t *b = slurp(file, &fn);
    struct layout *l = xmalloc(sizeof *l);
    walk("short forms", b, fn, l);
    CHECK(l->nblocks == 1 && l->raw[0] == want, "short forms: %zu blocks, %u raw bytes, want %zu",
          l->nblocks, l->nblocks ? l->raw[0] : 0, want);
    struct stream got = {0};
    read_all(file, &got, NULL);
    compare_streams("short forms", &c.want, &got);
    stream_free(&got);
    stream_free(&c.want);
    free(l);
    free(b);

    /* in a version 2 file each of them is a reserved tag (after a
     * version 2 ALLOC, which the FREEs could otherwise end) */
    static const uint8_t v3_only[][8] = {
        {3, 0x41, 0, 8}, {5, 0x21, 0x20, 8, 0, 0x82}, {6, 0x21, 0x20, 8, 0, 0x08, 0},
        {1, 0x65}};
    for (size_t i = 0; i < 4; i++) {
        struct mt_reader *r;
        struct mt_record rec;
        CHECK_RC(mt_reader_open(hand_block(v3_only[i] + 1, v3_only[i][0], 2), &r, NULL),
                 MT_OK, "version 2: open");
        int rc;
        while ((rc = mt_reader_next(r, &rec)) == 1 && rec.tag == MT_T_ALLOC)
            ;
        CHECK(rc == MT_E_CORRUPT, "version 2, format 3 tag 0x%02x: got %d",
              v3_only[i][v3_only[i][0] > 3 ? 5 : 1], rc);
        mt_reader_close(r);
    }
    /* version 5: ALLOC_SIZED first in its block, after a REALLOC (not an
     * ALLOC), and after an mmap (whose address it would lack); STACKS k
     * naming a pair the block has not had */
    static const uint8_t unlike[][12] = {
        {2, 0xc0, 8},
        {9, 0x03, MT_A_REALLOC, 0, 1, 8, 0, 0, 0xc0, 8},
        {10, 0x41, 8, 0x2a, 0x80, 0x40, 0x80, 0x20, 0, 0xc1, 0},
        /* STACKS 1 with one pair known, two STACKS in a row, a STACKS
         * that ends the block */
        {6, 0x21, 8, 2, 0x1b, 0x41, 8},
        {9, 0x21, 8, 2, 0x21, 8, 4, 0x1b, 0x1b, 0x41},
        {7, 0x21, 8, 2, 0x21, 8, 4, 0x1b},
    };
    for (size_t i = 0; i < sizeof unlike / sizeof *unlike; i++) {
        struct mt_reader *r;
        struct mt_record rec;
        CHECK_RC(mt_reader_open(hand_block(unlike[i] + 1, unlike[i][0], 5), &r, NULL),
                 MT_OK, "version 5: open");
        int rc, n = 0;
        while ((rc = mt_reader_next(r, &rec)) == 1 && rec.tag != MT_T_TRAILER)
            n++;
        CHECK(rc == MT_E_CORRUPT, "version 5, case %zu: got %d after %d", i, rc, n);
        mt_reader_close(r);
    }
    /* with heap addresses (ADDRESSES) every ALLOC spells its address out:
     * ALLOC_SAME, address delta (2 bytes, then 1), size */
    struct mt_header ha = {.pid = 3, .command = "addressed", .flags = MT_HF_ADDRESSES};
    struct cap ca;
    cap_open(&ca, tmp_path("addressed.bin"), &ha);
    for (uint64_t i = 0; i < 100; i++)
        ev(&ca, MT_T_ALLOC, 0, MT_A_MALLOC, 0x1000 + 16 * i, 300, 0, 0, 0, 0);
    flush(&ca);
    cap_close(&ca, NULL);
    size_t an;
    uint8_t *ab = slurp(tmp_path("addressed.bin"), &an);
    struct layout *al = xmalloc(sizeof *al);
    walk("addressed", ab, an, al);
    CHECK(al->nblocks == 1 && al->raw[0] == 5 + 99 * 4, "addressed: %zu blocks, %u raw bytes",
          al->nblocks, al->nblocks ? al->raw[0] : 0);
    struct stream agot = {0};
    read_all(tmp_path("addressed.bin"), &agot, NULL);
    compare_streams("addressed", &ca.want, &agot);
    stream_free(&agot);
    stream_free(&ca.want);
    free(al);
    free(ab);
    /* ... and a two-byte ALLOC there is corrupt: it has no address */
    {
        const uint8_t raw[] = {0x41, 0x80, 0x40, 8, 0xc0, 8};  /* ALLOC_SAME addr 0x1000 */
        struct mt_reader *r;
        struct mt_record rec;
        CHECK_RC(mt_reader_open(hand_block_flags(raw, sizeof raw, 5, MT_HF_ADDRESSES), &r, NULL),
                 MT_OK, "addresses: open");
        CHECK(mt_reader_next(r, &rec) == 1 && rec.tag == MT_T_ALLOC && rec.u.ev.addr == 0x1000,
              "addresses: the ALLOC");
        CHECK_RC(mt_reader_next(r, &rec), MT_E_CORRUPT, "addresses: ALLOC_SIZED");
        mt_reader_close(r);
    }
    /* reserved tags, after two allocations that would make STACKS 1 valid
     * in version 5 */
    static const uint8_t reserved4[] = {0x00, 0x01, 0x06, 0x07, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};
    for (uint32_t version = 4; version <= 5; version++) {
        for (size_t i = 0; i < sizeof reserved4; i++) {
            uint8_t tag = reserved4[i];
            if (version == 5 && tag >= 0x1b)
                continue;
            const uint8_t raw[] = {0x21, 8, 2, 0x21, 8, 4, tag, 3, 8, 0x41, 8};
            struct mt_reader *r;
            struct mt_record rec;
            CHECK_RC(mt_reader_open(hand_block(raw, sizeof raw, version), &r, NULL), MT_OK,
                     "reserved: open");
            int rc, n = 0;
            while ((rc = mt_reader_next(r, &rec)) == 1 && rec.tag != MT_T_TRAILER)
                n++;
            CHECK(rc == MT_E_CORRUPT && n == 2, "version %u, tag 0x%02x: got %d after %d",
                  version, tag, rc, n);
            mt_reader_close(r);
        }
    }
    /* ... which version 5 reads: STACKS 1 then ALLOC_SAME */
    const uint8_t valid[] = {0x21, 8, 2, 0x21, 8, 4, 0x1b, 0x41, 9};
    struct mt_reader *r;
    struct mt_record rec;
    CHECK_RC(mt_reader_open(hand_block(valid, sizeof valid, 5), &r, NULL), MT_OK, "valid: open");
    int last = 0, read = 0;
    while (read < 3 && (last = mt_reader_next(r, &rec)) == 1)
        read++;
    CHECK(read == 3 && rec.tag == MT_T_ALLOC && rec.u.ev.py_stack == 1 &&
              rec.u.ev.size == 9 && rec.u.ev.number == 3,
          "version 5, STACKS: got %d after %d, py %u", last, read, rec.u.ev.py_stack);
    mt_reader_close(r);
}

/* python: the PROGRAM record's version after the first 1000 events (its
 * dictionary is used from the block it is in on, for blocks LZ4 can halve:
 * a stretch of such blocks in each compression mode), NULL for none. */
static void test_large(const char *python)
{
    struct mt_header h = {.flags = MT_HF_NATIVE, .pid = 4242, .start_time_us = 1,
                          .command = "large"};
    const char *file = tmp_path("large.bin");
    struct cap c;
    cap_open(&c, file, &h);
    thread_rec(&c, 1, 100, "main");
    struct mt_dictionary dict = {0};
    if (python)
        mt_dictionary_for_python(python, &dict);
    uint64_t near = 0x555555550000ull;
    uint32_t nodes[2] = {0, 0};  /* the last NATIVENODE and PYNODE ids */
    for (unsigned i = 0; i < 150000; i++) {
        if (i % 30000 == 0)  /* blocks of both compression modes */
            mt_writer_set_fast(c.w, (i / 30000) & 1);
        if (python && i == 1000) {
            flush(&c);
            simple_rec(&c, MT_T_PROGRAM, 0, 0, 0, python);
        }
        if (python && (i == 30001 || i == 60001)) {
            static char name[4001];
            memset(name, 'x', 4000);
            for (int k = 0; k < 140; k++)
                thread_rec(&c, 1, 100, name);
        }
        uint32_t t = 1 + (uint32_t)(rnd() % 3 == 0);
        uint64_t r = rnd();
        near += (r & 0xffff) - 0x8000;
        uint32_t py = (uint32_t)(r >> 8) & 0xffff, nat = r & 0x100 ? (uint32_t)(r >> 24) & 0xfff : 0;
        switch (r >> 60) {
        case 0: case 1: case 2: case 3: case 4:  /* free a live block */
            if (live.n) {
                ev(&c, MT_T_FREE, t, 0, live.vec[r % live.n], 0, 0, 0, 0, 0);
                break;
            }
            /* fall through */
        case 5: case 6: case 7: case 8: case 9: case 10:
            ev(&c, MT_T_ALLOC, t, (uint8_t)(1 + (r >> 32) % 13), near, r >> 40, 0, 0, py, nat);
            break;
        case 11:
            ev(&c, MT_T_REALLOC, t, MT_A_REALLOC, near + 8, (r >> 20) & 0xffff,
               live.n ? live.vec[r % live.n] : 0, 0, py, nat);
            break;
        case 12:
            ev(&c, MT_T_FREE, t, 0, rnd(), 0, 0, 0, 0, 0);  /* unknown: dropped */
            break;
        case 13:
            ev(&c, MT_T_MUNMAP, t, 0, near & ~0xfffull, 4096 << (r & 7), 0, 0, 0, 0);
            break;
        case 14:
            ev(&c, MT_T_MREMAP, t, MT_A_MMAP, near, 4096, near + 0x100000, 8192, py, nat);
            break;
        default:
            if (i % 1000 == 0)
                simple_rec(&c, MT_T_SAMPLE, 0, i, r, NULL);
            else
                node_rec(&c, r & 1 ? MT_T_PYNODE : MT_T_NATIVENODE, ++nodes[r & 1],
                         (uint32_t)(r % (i + 1)), r & 1 ? (r >> 40) : near,
                         (uint32_t)(r >> 50), (uint32_t)r & 1);
        }
    }
    struct mt_trailer tr = {.exit = {0, 9}, .duration_us = 5, .events = 150000};
    cap_close(&c, &tr);

    struct stream got = {0};
    int before = failures;
    CHECK_RC(read_all(file, &got, NULL), 0, "large: end");
    compare_streams("large", &c.want, &got);
    if (failures != before) {
        stream_free(&got);
        stream_free(&c.want);
        return;
    }

    size_t n;
    uint8_t *b = slurp(file, &n);
    struct layout *l = xmalloc(sizeof *l);
    walk("large", b, n, l);
    CHECK(l->nblocks >= 4, "large: %zu blocks", l->nblocks);
    /* a big block the fast mode cannot halve stays as it is */
    size_t with_dictionary = 0;
    for (size_t i = 0; i < l->nblocks; i++) {
        int futile = l->raw[i] >= MT_BLOCK_MAX_RAW / 4 && l->comp[i] * 2 > l->raw[i];
        CHECK(l->dictionary[i] == (i && !futile ? dict.id : 0),
              "large %s: block %zu (%u -> %u bytes): dictionary %u", python ? python : "",
              i, l->raw[i], l->comp[i], l->dictionary[i]);
        with_dictionary += l->dictionary[i] != 0;
    }
    CHECK(with_dictionary >= (python ? 2u : 0u), "large: %zu blocks with a dictionary",
          with_dictionary);
    /* full blocks, but for room left before a 4 kB THREAD record */
    uint32_t slack = python ? 8192 : 4096;
    for (size_t i = python ? 1 : 0; i + 1 < l->nblocks; i++)
        CHECK(l->raw[i] > MT_BLOCK_MAX_RAW - slack, "large: block %zu holds only %u bytes",
              i, l->raw[i]);

    /* cuts: the header, ±40 bytes around every block boundary, the end, a
     * sample; then a flipped byte in every block header and somewhere in
     * every block's data */
    size_t *cuts = xmalloc((l->nblocks * 81 + 300 + l->header_end) * sizeof *cuts), ncut = 0;
    for (size_t cut = 0; cut < l->header_end + 40; cut++)
        cuts[ncut++] = cut;
    for (size_t k = 1; k < l->nblocks; k++)
        for (size_t d = 0; d <= 80; d++)
            cuts[ncut++] = l->block_start[k] + d - 40;
    for (size_t d = 0; d <= 40; d++)
        cuts[ncut++] = n - d;
    for (int k = 0; k < 100; k++)
        cuts[ncut++] = (size_t)(rnd() % n);
    qsort(cuts, ncut, sizeof *cuts, cmp_size_desc);
    damaged_reset(b, n);
    for (size_t k = 0; k < ncut; k++)
        if (k == 0 || cuts[k] != cuts[k - 1])
            cut_at("large: cut", n, cuts[k], &got, l);
    free(cuts);
    damaged_reset(b, n);
    for (size_t k = 0; k < l->nblocks; k++) {
        for (size_t d = 0; d < 16; d++)
            flip_at("large: flip", b, l->block_start[k] + d, 0x80, &got, l);
        flip_at("large: flip", b, l->block_start[k] + 16 + rnd() % 1000, 0x10, &got, l);
    }
    free(l);
    free(b);
    stream_free(&got);
    stream_free(&c.want);
}

/* Dictionaries: which one a Python version gets, and what a reader does
 * with a block that names one. */
static void test_dictionaries(void)
{
    static const struct { const char *version; unsigned id; } pick[] = {
        {"3.9.18", 6}, {"3.10.0", 7}, {"3.11", 8}, {"3.11.2+", 8}, {"3.12.1", 9},
        {"3.13.0rc1", 10}, {"3.1", 0}, {"3.110.1", 0}, {"3.8.18", 0}, {"2.7.18", 0},
        {"", 0}, {"3", 0}, {"13.1", 0}, {NULL, 0},
    };
    for (size_t i = 0; i < sizeof pick / sizeof *pick; i++) {
        struct mt_dictionary d = {0};
        int found = mt_dictionary_for_python(pick[i].version, &d);
        CHECK(found == (pick[i].id != 0) && d.id == pick[i].id,
              "dictionary for %s: %u, want %u", pick[i].version ? pick[i].version : "NULL",
              d.id, pick[i].id);
    }
    /* captures name dictionaries by id: their bytes never change
     * (docs/format.md lists the same sizes and CRC-32s) */
    static const struct { size_t size; uint32_t crc; } pinned[] = {
        {0, 0}, {40935, 0xdbddebc9u}, {41394, 0x450bfa13u}, {49157, 0x5536ff27u},
        {51909, 0x3d30e7c6u}, {49376, 0x13902213u}, {40218, 0x2fb76d17u},
        {40552, 0x35f40b20u}, {47073, 0x45fe24fcu}, {51101, 0x3ad97ee3u},
        {47483, 0x8c63a58au},
    };
    for (unsigned id = 0; id < 300; id++) {
        struct mt_dictionary d = {0};
        int known = id >= 1 && id <= 10;
        CHECK(mt_dictionary_get(id, &d) == known, "dictionary %u", id);
        if (known)
            CHECK(d.id == id && d.size == pinned[id].size &&
                  mt_crc32(0, d.data, d.size) == pinned[id].crc,
                  "dictionary %u: %zu bytes, CRC-32 0x%08x", id, d.size,
                  mt_crc32(0, d.data, d.size));
        if (known)  /* each encoding of the records its own */
            CHECK(d.since == (id <= 5 ? 4u : 5u), "dictionary %u: since %u", id, d.since);
    }

    /* ALLOC malloc size 8, then a FREE of it: against dictionary 3, decodes;
     * naming no dictionary this version knows, one of a later format
     * version, or a dictionary in a version 3 capture (raw_length then over
     * the bound), is corrupt; a version 5 capture may name version 4's */
    const uint8_t raw[] = {0x21, 8, 0, MT_T_FREE, 2, MT_T_PROGRAM, 4, '3', '.', '1', '1'};
    static const struct { uint32_t version; unsigned id; int rc; } cases[] = {
        {4, 3, 1}, {4, 1, 1}, {4, 6, MT_E_CORRUPT}, {4, 8, MT_E_CORRUPT}, {4, 255, MT_E_CORRUPT},
        {3, 3, MT_E_CORRUPT}, {5, 8, 1}, {5, 10, 1}, {5, 3, 1}, {5, 11, MT_E_CORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct mt_reader *r;
        CHECK_RC(mt_reader_open(hand_block_dict(raw, sizeof raw, cases[i].version, cases[i].id),
                                &r, NULL), MT_OK, "dictionary block: open");
        struct mt_record rec;
        int rc = mt_reader_next(r, &rec);
        CHECK(rc == cases[i].rc, "version %u, dictionary %u: %d, want %d", cases[i].version,
              cases[i].id, rc, cases[i].rc);
        if (rc == 1) {
            CHECK(rec.tag == MT_T_ALLOC && rec.u.ev.size == 8, "dictionary %u: the ALLOC",
                  cases[i].id);
            CHECK(mt_reader_next(r, &rec) == 1 && rec.tag == MT_T_FREE &&
                  rec.u.ev.number == 1, "dictionary %u: the FREE", cases[i].id);
            CHECK(mt_reader_next(r, &rec) == 1 && rec.tag == MT_T_PROGRAM &&
                  !strcmp(rec.u.program.python_version, "3.11"),
                  "dictionary %u: the PROGRAM", cases[i].id);
        }
        mt_reader_close(r);
    }
}

/* A writer closed without a trailer (a killed collector): every record is
 * there, then MT_E_TRUNCATED, also when the file ends between blocks. */
static void test_no_trailer(void)
{
    struct mt_header h = {.pid = 1, .command = NULL};
    const char *file = tmp_path("notrailer.bin");
    struct cap c;
    cap_open(&c, file, &h);
    ev(&c, MT_T_ALLOC, 1, MT_A_MALLOC, 4096, 10, 0, 0, 0, 0);
    flush(&c);
    simple_rec(&c, MT_T_END, 1, 0, 0, NULL);
    cap_close(&c, NULL);
    struct stream got = {0};
    struct mt_header gh;
    CHECK_RC(read_all(file, &got, &gh), MT_E_TRUNCATED, "no trailer");
    CHECK(!strcmp(gh.command, "") && gh.flags == 0, "no trailer: NULL command reads as \"\"");
    compare_streams("no trailer", &c.want, &got);
    stream_free(&got);
    stream_free(&c.want);

    /* header only */
    cap_open(&c, file, &h);
    cap_close(&c, NULL);
    CHECK_RC(read_all(file, &got, NULL), MT_E_TRUNCATED, "header only");
    CHECK(got.n == 0, "header only: %zu records", got.n);
    stream_free(&got);
    stream_free(&c.want);

    /* bytes after the trailer are not read */
    struct mt_trailer tr = {.exit = {-1, 0}};
    cap_open(&c, file, &h);
    ev(&c, MT_T_FREE, 0, 0, 1, 0, 0, 0, 0, 0);
    cap_close(&c, &tr);
    FILE *f = fopen(file, "ab");
    fputs("garbage after the trailer", f);
    fclose(f);
    CHECK_RC(read_all(file, &got, NULL), 0, "junk after the trailer");
    compare_streams("junk after the trailer", &c.want, &got);
    stream_free(&got);
    stream_free(&c.want);
}

/* What a writer writes after mt_writer_restart, the collector's answer to
 * an exec: the second program's records, read back alone, and byte for
 * byte the file a fresh writer makes of them (no id, number, delta base or
 * dictionary of the first program left behind). */
static void second_program(struct cap *c)
{
    simple_rec(c, MT_T_PROGRAM, 0, 0, 0, "3.11.4");   /* takes a dictionary */
    node_rec(c, MT_T_NATIVENODE, 1, 0, 0x7f0000401000ull, 0, 0);  /* ids anew */
    ev(c, MT_T_ALLOC, 1, MT_A_MALLOC, 0x1000, 48, 0, 0, 0, 1);  /* the first's address */
    ev(c, MT_T_FREE, 1, 0, 0x1040, 0, 0, 0, 0, 0);  /* the first's block: nothing */
    ev(c, MT_T_ALLOC, 1, MT_A_CALLOC, 0x2000, 4096, 0, 0, 0, 1);
    ev(c, MT_T_FREE, 1, 0, 0x1000, 0, 0, 0, 0, 0);
}

/* A first program's capture, then mt_writer_restart with header (NULL:
 * keep h), then the second program: the file must be byte for byte a fresh
 * writer's of the second program alone, with the header it starts over with. */
static void restart_case(const char *name, const struct mt_header *h,
                         const struct mt_header *again)
{
    const struct mt_header *want_h = again ? again : h;
    struct mt_trailer tr = {.exit = {0, 0}, .events = 4};
    char fname[64], fresh_name[64];
    snprintf(fname, sizeof fname, "%s.bin", name);
    snprintf(fresh_name, sizeof fresh_name, "%s-fresh.bin", name);
    const char *file = tmp_path(fname);
    const char *fresh = tmp_path(fresh_name);
    struct cap c;
    cap_open(&c, file, h);
    simple_rec(&c, MT_T_PROGRAM, 0, 0, 0, "3.12.1");
    node_rec(&c, MT_T_NATIVENODE, 1, 0, 0x401000, 0, 0);
    node_rec(&c, MT_T_NATIVENODE, 2, 1, 0x401234, 0, 0);
    for (uint64_t i = 0; i < 3000; i++) {
        ev(&c, MT_T_ALLOC, 2, MT_A_MALLOC, 0x1000 + 64 * i, 32 + i, 0, 0, 0, 2);
        if (i % 1000 == 999)
            flush(&c);
    }
    ev(&c, MT_T_ALLOC, 2, MT_A_MALLOC, 0x900000, 7, 0, 0, 0, 1);  /* buffered */
    CHECK_RC(mt_writer_restart(c.w, again), MT_OK, name);
    stream_free(&c.want);
    live_reset();
    second_program(&c);
    cap_close(&c, &tr);
    struct stream got = {0};
    struct mt_header gh;
    CHECK_RC(read_all(file, &got, &gh), 0, name);
    CHECK(!strcmp(gh.command, want_h->command) && gh.pid == want_h->pid &&
          gh.start_time_us == want_h->start_time_us, "%s: header '%s' pid %d", name,
          gh.command, (int)gh.pid);
    compare_streams(name, &c.want, &got);
    stream_free(&got);
    stream_free(&c.want);

    cap_open(&c, fresh, want_h);
    second_program(&c);
    cap_close(&c, &tr);
    stream_free(&c.want);
    size_t na, nb;
    uint8_t *a = slurp(file, &na), *b = slurp(fresh, &nb);
    CHECK(a && b && na == nb && !memcmp(a, b, na),
          "%s: %zu bytes, a fresh writer's %zu", name, na, nb);
    free(a);
    free(b);
}

static void test_restart(void)
{
    struct mt_header h = {.pid = 3, .start_time_us = 5, .command = "launcher"};
    /* the traced program's exec: the header stays (the command typed) */
    restart_case("restart", &h, NULL);
    /* a followed child's exec: the header names the program it runs now,
     * longer and shorter than the first */
    struct mt_header longer = {.pid = 3, .start_time_us = 9,
                               .command = "/usr/bin/python3 -c print('a longer command')"};
    restart_case("restart-longer", &h, &longer);
    struct mt_header shorter = {.pid = 3, .start_time_us = 9, .command = "ls"};
    restart_case("restart-shorter", &longer, &shorter);
}

/* A header written by hand, its CRC right: reader refusals by content. */
static int open_header(uint32_t version, uint32_t flags, uint32_t *found)
{
    uint8_t b[64];
    memcpy(b, MT_FILE_MAGIC, 8);
    mt_put_u32le(b + 8, version);
    uint8_t *p = b + 16;
    p = mt_put_varint(p, flags);
    p = mt_put_varint(p, 7);     /* pid */
    p = mt_put_varint(p, 1000);  /* start */
    p = mt_put_varint(p, 1);
    *p++ = 'x';
    mt_put_u32le(b + 12, (uint32_t)(p - b - 16));
    mt_put_u32le(p, mt_crc32(0, b, (size_t)(p - b)));
    p += 4;
    const char *path = tmp_path("header.bin");
    spit(path, b, (size_t)(p - b));
    struct mt_reader *r;
    int rc = mt_reader_open(path, &r, found);
    if (rc == MT_OK)
        mt_reader_close(r);
    return rc;
}

static int open_bytes(const void *b, size_t n)
{
    const char *path = tmp_path("bytes.bin");
    spit(path, b, n);
    struct mt_reader *r;
    int rc = mt_reader_open(path, &r, NULL);
    if (rc == MT_OK)
        mt_reader_close(r);
    return rc;
}

static void test_refusals(void)
{
    uint32_t found = 0;
    CHECK_RC(open_header(MT_FORMAT_VERSION, MT_HF_KNOWN, &found), MT_OK, "hand-made header");
    found = 0;
    CHECK_RC(open_header(MT_FORMAT_VERSION + 1, 0, &found), MT_E_VERSION, "newer version");
    CHECK(found == MT_FORMAT_VERSION + 1, "newer version: found_version %u", found);
    found = 0;
    CHECK_RC(open_header(0xffffffffu, 0, &found), MT_E_VERSION, "version 2^32-1");
    CHECK(found == 0xffffffffu, "version 2^32-1: found_version %u", found);
    CHECK_RC(open_header(0, 0, NULL), MT_E_CORRUPT, "version 0");
    for (uint32_t bit = 1; bit; bit <<= 1)
        if (!(bit & MT_HF_KNOWN))
            CHECK(open_header(MT_FORMAT_VERSION, MT_HF_KNOWN | bit, NULL) == MT_E_CORRUPT,
                  "unknown header flag 0x%x accepted", bit);
    /* ADDRESSES came with version 3: a reserved bit before */
    CHECK(open_header(2, MT_HF_ADDRESSES, NULL) == MT_E_CORRUPT, "version 2 with ADDRESSES");
    CHECK(open_header(3, MT_HF_ADDRESSES, NULL) == MT_OK, "version 3 with ADDRESSES");

    /* and the writer's own header with an unknown flag */
    struct mt_header h = {.flags = (MT_HF_KNOWN + 1) & ~MT_HF_KNOWN, .command = "x"};
    struct mt_writer *w;
    const char *file = tmp_path("flags.bin");
    unlink(file);
    CHECK_RC(mt_writer_open(file, 0, &h, &w), MT_OK, "writer, unknown flag");
    mt_writer_close(w, NULL);
    struct mt_reader *r;
    CHECK_RC(mt_reader_open(file, &r, NULL), MT_E_CORRUPT, "reader, unknown flag");

    CHECK_RC(open_bytes("", 0), MT_E_EMPTY, "empty file");
    CHECK_RC(open_bytes("hello, world\n", 13), MT_E_NOT_CAPTURE, "text file");
    CHECK_RC(open_bytes("\x7f" "ELF\2\1\1\0\0\0\0\0\0\0\0\0\3\0>\0", 20), MT_E_NOT_CAPTURE, "ELF");
    CHECK_RC(open_bytes("MEMTAPv\x02", 8), MT_E_NOT_CAPTURE, "magic of another byte");
    CHECK_RC(open_bytes("X", 1), MT_E_NOT_CAPTURE, "one byte");
    CHECK_RC(open_bytes("MEM", 3), MT_E_TRUNCATED, "a magic's prefix");
    uint8_t z[4096] = {0};
    CHECK_RC(open_bytes(z, sizeof z), MT_E_NOT_CAPTURE, "zeros");

    CHECK_RC(mt_reader_open(tmp_path("does-not-exist.bin"), &r, NULL), MT_E_IO, "missing file");
    CHECK_RC(mt_reader_open(tmpdir, &r, NULL), MT_E_IO, "a directory");

    /* O_EXCL: an existing file is never overwritten unless forced */
    h.flags = 0;
    file = tmp_path("exists.bin");
    spit(file, "precious", 8);
    w = NULL;
    CHECK_RC(mt_writer_open(file, 0, &h, &w), MT_E_EXISTS, "existing output");
    size_t n;
    uint8_t *b = slurp(file, &n);
    CHECK(n == 8 && !memcmp(b, "precious", 8), "the existing file was changed");
    free(b);
    char link[PATH_MAX];
    snprintf(link, sizeof link, "%s", tmp_path("link.bin"));
    CHECK(symlink(tmp_path("link-target.bin"), link) == 0, "symlink: %s", strerror(errno));
    CHECK_RC(mt_writer_open(link, 0, &h, &w), MT_E_EXISTS, "a dangling symlink as output");
    CHECK_RC(mt_writer_open(file, 1, &h, &w), MT_OK, "existing output, forced");
    struct mt_trailer tr = {{0, 0}, 0, 0, 0};
    CHECK_RC(mt_writer_close(w, &tr), MT_OK, "close");
    CHECK_RC(mt_reader_open(file, &r, NULL), MT_OK, "the forced file");
    struct mt_record rec;
    CHECK(mt_reader_next(r, &rec) == 1 && rec.tag == MT_T_TRAILER, "forced: the trailer");
    CHECK(mt_reader_next(r, &rec) == 0, "forced: the end");
    mt_reader_close(r);
    mt_reader_close(NULL);
    CHECK_RC(mt_writer_close(NULL, NULL), MT_OK, "mt_writer_close(NULL)");
}

int main(void)
{
    /* thousands of small rewrites: in memory when there is a tmpfs */
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/memtap-test-capture-XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 2;
    }
    test_crc32();
    test_refusals();
    test_no_trailer();
    test_edges(MT_HF_KNOWN);
    test_edges(MT_HF_KNOWN & ~MT_HF_ADDRESSES);
    test_large(NULL);
    test_large("3.11.4");
    test_dictionaries();
    test_realloc_made();
    test_short_forms();
    test_restart();

    if (damaged_fd >= 0)
        close(damaged_fd);
    free(live.key), free(live.idx), free(live.st), free(live.vec);
    const char *names[] = {"damaged.bin", "probe.bin", "edges.bin", "edges-noaddr.bin", "large.bin", "notrailer.bin",
                           "header.bin", "hand.bin", "short.bin", "bytes.bin", "flags.bin", "exists.bin", "link.bin",
                           "restart.bin", "fresh.bin", "restart-fresh.bin", "restart-longer.bin",
                           "restart-longer-fresh.bin", "restart-shorter.bin",
                           "restart-shorter-fresh.bin", "addressed.bin"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unlink(tmp_path(names[i]));
    rmdir(tmpdir);
    pool_free();
    if (failures) {
        fprintf(stderr, "test-capture: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test-capture: ok\n");
    return 0;
}
