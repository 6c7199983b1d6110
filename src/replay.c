/* See replay.h. The peak is found in the same single pass: each group
 * keeps its value at the latest peak lazily — a group untouched since the
 * latest peak still holds its peak value, so its snapshot is taken only
 * when it next changes (or at the end). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "map.h"
#include "replay.h"

#define MAX_SAMPLES 4096

struct group_state {
    uint64_t cur_bytes, cur_count;
    uint64_t peak_version;  /* the peak its peak_* fields belong to */
};

struct block {
    uint64_t size;
    uint64_t thread_seq;    /* the thread's allocation count at allocation */
    uint32_t group, thread;
    uint8_t allocator;
    uint8_t live;           /* in the number window: not yet ended */
    uint32_t tick;          /* sample clock at allocation, in T_TICK_US
                               (fits the padding: the block stays 32 bytes) */
};

/* Live heap blocks by allocation number, when keyed by number. Numbers are
 * dense and most blocks die young, so the recent ones sit in a ring indexed
 * by number: no hashing, no probing. A block that outlives WINDOW_MAX later
 * allocations moves to the hash map (`live`), so memory follows live
 * blocks, not events. */
#define WINDOW_MAX (1u << 16)
struct window {
    struct block *e;        /* number n at e[n & (cap - 1)] */
    uint64_t base, next;    /* [base, next): the numbers the ring covers */
    uint32_t cap;
};

struct mapping {
    uint64_t start, end;
    struct block b;
    int counted;            /* the piece that carries the count */
    int split;              /* munmap cut a hole in it: it has siblings */
    uint64_t mapped;        /* which mmap: its pieces share it */
    uint64_t allocated;     /* the size it was mapped with, for all its pieces */
};

struct temporal;

/* The per-event path of the replay: inlined into it, where the calls'
 * saved registers cost as much as their bodies. */
#define HOT static inline __attribute__((always_inline))

struct group_cache { uint32_t py, native, thread, group; /* group + 1 */ };

struct mt_replay {
    struct mt_analysis *a;
    struct temporal *t;         /* --temporal; NULL otherwise */
    uint32_t tick;              /* last_time_us / T_TICK_US */
    struct mt_analysis_opts opts_copy;
    const struct mt_analysis_opts *opts;
    struct mt_imap group_ids;
    struct group_state *gs;
    uint32_t gcap;
    struct mt_amap live;        /* heap address (or number) -> index in blocks */
    struct window win;          /* by number: the recent blocks */
    struct block *blocks;
    uint32_t *free_blocks;
    size_t nblocks, cap_blocks, nfree, cap_free;
    struct mapping *maps;
    size_t nmaps, cap_maps, maps_base;  /* maps_base: unused slots first */
    uint64_t nmapped;           /* mmaps seen: each mapping's `mapped` */
    uint64_t *thread_allocs;    /* by thread index */
    uint32_t cap_threads;
    uint64_t heap, peak_version, last_time_us;
    uint32_t sample_stride, sample_skip;
    int ended;
    int by_number;              /* heap blocks keyed by allocation number */
    int not_live;               /* by number: a free of a block not live */
    int detail;                 /* groups' peak, end and temporary counts
                                   are kept (not opts->totals_only) */
    uint64_t nrecords;          /* records added: bounds every id */
    struct group_cache group_cache[1024];
    unsigned temporary_n;
    size_t cap_threadinfo, cap_codes, cap_pynodes, cap_nativenodes, cap_objects;
};

static void temporal_add(struct mt_replay *s, const struct block *b);
static void temporal_sub(struct mt_replay *s, const struct block *b,
                         uint64_t bytes, uint64_t count);

static void (*oom_handler)(void);

void mt_set_oom_handler(void (*fn)(void))
{
    oom_handler = fn;
}

static void out_of_memory(void)
{
    if (oom_handler)
        oom_handler();
    abort();
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * size);
    if (!q)
        out_of_memory();
    memset((char *)q + *cap * size, 0, (n - *cap) * size);
    *cap = n;
    return q;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        out_of_memory();
    return d;
}

HOT uint32_t group_of(struct mt_replay *s, uint32_t py, uint32_t native,
                         uint32_t thread)
{
    if (!s->opts->split_threads)
        thread = 0;
    /* Programs allocate from a few stacks at a time: a small cache in front
     * of the interning table spares most lookups a three-word hash. */
    struct group_cache *gc = &s->group_cache[(py * 0x9e3779b1u ^ native * 0x85ebca6bu ^
                                              thread * 0xc2b2ae35u) >> 22];
    if (gc->group && gc->py == py && gc->native == native && gc->thread == thread)
        return gc->group - 1;
    uint64_t key[3] = {py, native, thread};
    int is_new;
    uint32_t id = mt_imap_intern(&s->group_ids, key, &is_new);
    if (!id)
        out_of_memory();
    if (is_new) {
        struct mt_analysis *a = s->a;
        if (id > s->gcap) {
            size_t cap = s->gcap, cap2 = s->gcap;
            a->groups = grow(a->groups, &cap, id, sizeof *a->groups);
            s->gs = grow(s->gs, &cap2, id, sizeof *s->gs);
            s->gcap = (uint32_t)cap;
        }
        a->ngroups = id;
        struct mt_group *g = &a->groups[id - 1];
        g->py_stack = py;
        g->native_stack = native;
        g->thread = thread;
        s->gs[id - 1].peak_version = s->peak_version;
    }
    *gc = (struct group_cache){py, native, thread, id};
    return id - 1;
}

/* Brings a group's peak snapshot up to date before it changes. */
HOT void touch(struct mt_replay *s, uint32_t g)
{
    struct group_state *st = &s->gs[g];
    if (st->peak_version != s->peak_version) {
        s->a->groups[g].peak_bytes = st->cur_bytes;
        s->a->groups[g].peak_count = st->cur_count;
        st->peak_version = s->peak_version;
    }
}

HOT void heap_add(struct mt_replay *s, const struct block *b)
{
    if (!mt_allocator_counts(b->allocator))
        return;
    if (s->detail) {
        touch(s, b->group);
        s->gs[b->group].cur_bytes += b->size;
        s->gs[b->group].cur_count++;
        if (s->t)
            temporal_add(s, b);
    }
    s->heap += b->size;
    if (s->heap >= s->a->peak_bytes) {  /* ties: the latest */
        s->a->peak_bytes = s->heap;
        s->a->peak_time_us = s->last_time_us;
        s->peak_version++;
    }
}

HOT void heap_sub(struct mt_replay *s, const struct block *b, uint64_t bytes,
                     int count)
{
    if (!mt_allocator_counts(b->allocator))
        return;
    if (s->detail) {
        touch(s, b->group);
        s->gs[b->group].cur_bytes -= bytes;
        s->gs[b->group].cur_count -= (uint64_t)count;
        if (s->t)
            temporal_sub(s, b, bytes, (uint64_t)count);
    }
    s->heap -= bytes;
}

/* Fills *b with a new block and counts it in the totals. */
HOT void new_block(struct mt_replay *s, uint32_t t, unsigned allocator, uint32_t py,
                   uint32_t native, uint64_t size, struct block *b)
{
    struct mt_analysis *a = s->a;
    if (t >= s->cap_threads) {
        size_t cap = s->cap_threads;
        s->thread_allocs = grow(s->thread_allocs, &cap, (size_t)t + 1, sizeof(uint64_t));
        s->cap_threads = (uint32_t)cap;
    }
    *b = (struct block){
        .size = size,
        .thread_seq = ++s->thread_allocs[t],
        .group = group_of(s, py, native, t),
        .thread = t,
        .allocator = allocator < MT_A_COUNT ? (uint8_t)allocator : 0,
        .tick = s->tick,
    };
    struct mt_group *g = &a->groups[b->group];
    g->allocators |= 1u << b->allocator;
    a->allocators[b->allocator].count++;
    a->allocators[b->allocator].bytes += size;
    /* File mappings and reservations are listed by allocator only: the
     * totals and the histogram are of the memory the heap counts. */
    if (mt_allocator_counts(b->allocator)) {
        g->total_bytes += size;
        g->total_count++;
        a->total_allocations++;
        a->total_allocated_bytes += size;
        a->histogram[size ? 63 - __builtin_clzll(size) : 0]++;
    }
}

/* A block ends: temporary when its own thread made fewer than N other
 * allocations since, before the program's end (what the interpreter's
 * teardown frees was alive at the end: a leak, not churn). b->size is what
 * is left of it, allocated what it was made with (a mapping unmapped in
 * pieces ends with its last one). */
HOT void block_end(struct mt_replay *s, const struct block *b, uint64_t allocated,
                   uint32_t thread)
{
    s->a->total_frees += mt_allocator_counts(b->allocator);
    heap_sub(s, b, b->size, 1);
    if (s->detail && !s->ended && thread == b->thread && mt_allocator_counts(b->allocator) &&
        s->thread_allocs[thread] - b->thread_seq < s->temporary_n) {
        s->a->groups[b->group].temp_bytes += allocated;
        s->a->groups[b->group].temp_count++;
    }
}

/* Keeps b in the hash map under key; an address may be live already. */
static void live_put(struct mt_replay *s, uint64_t key, const struct block *b)
{
    uint32_t idx;
    if (s->nfree) {
        idx = s->free_blocks[--s->nfree];
    } else {
        s->blocks = grow(s->blocks, &s->cap_blocks, s->nblocks + 1, sizeof *s->blocks);
        idx = (uint32_t)s->nblocks++;
    }
    s->blocks[idx] = *b;
    int found;
    uint64_t *slot = mt_amap_upsert(&s->live, key, &found);
    if (!slot)
        out_of_memory();
    if (found && !s->by_number) {
        /* A block we never saw end (its free came from an untracked
         * thread): the new one replaces it. */
        uint64_t old = *slot;
        heap_sub(s, &s->blocks[old], s->blocks[old].size, 1);
        s->free_blocks = grow(s->free_blocks, &s->cap_free, s->nfree + 1, sizeof(uint32_t));
        s->free_blocks[s->nfree++] = (uint32_t)old;
    }
    *slot = idx;
}

static int live_take(struct mt_replay *s, uint64_t key, struct block *b)
{
    uint64_t idx;
    if (!mt_amap_take(&s->live, key, &idx))
        return 0;
    *b = s->blocks[idx];
    s->free_blocks = grow(s->free_blocks, &s->cap_free, s->nfree + 1, sizeof(uint32_t));
    s->free_blocks[s->nfree++] = (uint32_t)idx;
    return 1;
}

/* Moves the window's base past ended blocks. */
static void window_advance(struct window *w)
{
    while (w->base < w->next && !w->e[w->base & (w->cap - 1)].live)
        w->base++;
    if (w->base == w->next)
        w->base = w->next = 0;  /* empty: the next number starts it */
}

/* window_room's slow path: the ring doubles up to WINDOW_MAX, then its
 * oldest quarter's survivors move to the hash map. */
static void window_grow(struct mt_replay *s, uint64_t n)
{
    struct window *w = &s->win;
    while (w->next && n - w->base >= w->cap) {
        if (w->cap < WINDOW_MAX) {
            uint32_t cap = w->cap ? w->cap * 2 : 1024;
            struct block *e = malloc((size_t)cap * sizeof *e);
            if (!e)
                out_of_memory();
            for (uint64_t i = w->base; i < w->next; i++)
                e[i & (cap - 1)] = w->e[i & (w->cap - 1)];
            free(w->e);
            w->e = e;
            w->cap = cap;
            continue;
        }
        uint64_t stop = w->base + w->cap / 4 < w->next ? w->base + w->cap / 4 : w->next;
        for (; w->base < stop; w->base++) {
            struct block *b = &w->e[w->base & (w->cap - 1)];
            if (b->live)
                live_put(s, w->base, b);
        }
        window_advance(w);
    }
    if (!w->cap) {
        w->e = malloc(1024 * sizeof *w->e);
        if (!w->e)
            out_of_memory();
        w->cap = 1024;
    }
}

/* Makes room for number n in the ring. */
HOT void window_room(struct mt_replay *s, uint64_t n)
{
    const struct window *w = &s->win;
    if (!w->cap || (w->next && n - w->base >= w->cap))
        window_grow(s, n);
}

/* The slot for number n, in the ring; the caller fills it and marks it live. */
HOT struct block *window_slot(struct mt_replay *s, uint64_t n)
{
    struct window *w = &s->win;
    window_room(s, n);
    if (!w->next)
        w->base = w->next = n;
    for (; w->next < n; w->next++)  /* numbers of mappings: never heap */
        w->e[w->next & (w->cap - 1)].live = 0;
    w->next = n + 1;
    return &w->e[n & (w->cap - 1)];
}

HOT int window_take(struct mt_replay *s, uint64_t n, struct block *b)
{
    struct window *w = &s->win;
    if (n < w->base || n >= w->next)
        return live_take(s, n, b);
    struct block *e = &w->e[n & (w->cap - 1)];
    if (!e->live)
        return 0;
    *b = *e;
    e->live = 0;
    if (n == w->base)
        window_advance(w);
    return 1;
}

/* key: the block's number when keyed by number, else its address. */
HOT void heap_alloc(struct mt_replay *s, uint64_t key, uint32_t thread,
                    unsigned allocator, uint32_t py, uint32_t native, uint64_t size)
{
    struct block local, *b = &local;
    /* Numbers only grow (the reader counts them): a smaller one would be
     * a replay fed by hand, kept exact through the hash map. */
    int in_window = s->by_number && (!s->win.next || key >= s->win.next);
    if (in_window)
        b = window_slot(s, key);
    new_block(s, thread, allocator, py, native, size, b);
    if (in_window)
        b->live = 1;
    else
        live_put(s, key, b);
    heap_add(s, b);
}

/* An ALLOC or REALLOC record's new block. */
HOT void heap_alloc_record(struct mt_replay *s, const struct mt_record *r)
{
    heap_alloc(s, s->by_number ? r->u.ev.number : r->u.ev.addr, r->thread,
               r->u.ev.allocator, r->u.ev.py_stack, r->u.ev.native_stack, r->u.ev.size);
}

/* key: the block's address, or its number when keyed by number. */
HOT void heap_free(struct mt_replay *s, uint64_t key, uint32_t thread)
{
    struct block b;
    if (!key)
        return;  /* no block: realloc(NULL, n) */
    if (s->by_number) {
        /* A capture ends only blocks it numbered, each once: a number that
         * is not live is damage the checksums did not catch. */
        if (!window_take(s, key, &b)) {
            s->not_live = 1;
            return;
        }
    } else if (!live_take(s, key, &b)) {
        return;  /* allocated before tracking began, or not by a hook */
    }
    block_end(s, &b, b.size, thread);
}

/* Index of the first mapping ending after addr. */
/* The mappings, by address, are kept back to front in s->maps from
 * maps_base on: mmap hands out addresses downwards, so the lowest, where a
 * new mapping goes, is the array's end, and the oldest, which a program
 * often unmaps first, its start, where a removal moves nothing either
 * (maps_base steps over it). Mapping i (0 = the lowest) is map_at(s, i). */
static struct mapping *map_at(const struct mt_replay *s, size_t i)
{
    return &s->maps[s->maps_base + s->nmaps - 1 - i];
}

/* Room for a mapping at i (the ones from i on move up one). */
static struct mapping *map_insert(struct mt_replay *s, size_t i)
{
    if (s->maps_base && s->maps_base + s->nmaps == s->cap_maps) {
        memmove(s->maps, s->maps + s->maps_base, s->nmaps * sizeof *s->maps);
        s->maps_base = 0;
    }
    s->maps = grow(s->maps, &s->cap_maps, s->maps_base + s->nmaps + 1, sizeof *s->maps);
    size_t at = s->maps_base + s->nmaps - i;
    memmove(&s->maps[at + 1], &s->maps[at], i * sizeof *s->maps);
    s->nmaps++;
    return &s->maps[at];
}

/* Takes mapping i out, moving the fewer of those on either side. */
static void map_delete(struct mt_replay *s, size_t i)
{
    size_t at = s->maps_base + s->nmaps - 1 - i, above = s->nmaps - 1 - i;
    if (i <= above) {
        memmove(&s->maps[at], &s->maps[at + 1], i * sizeof *s->maps);
    } else {
        memmove(&s->maps[s->maps_base + 1], &s->maps[s->maps_base], above * sizeof *s->maps);
        s->maps_base++;
    }
    s->nmaps--;
}

/* The first mapping that ends after addr. */
static size_t map_find(const struct mt_replay *s, uint64_t addr)
{
    size_t lo = 0, hi = s->nmaps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (map_at(s, mid)->end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Removes [start, end) from the tracked mappings, splitting at the edges. */
static void map_remove(struct mt_replay *s, uint64_t start, uint64_t end,
                       uint32_t thread)
{
    size_t i = map_find(s, start);
    while (i < s->nmaps && map_at(s, i)->start < end) {
        struct mapping *m = map_at(s, i);
        uint64_t cut_lo = m->start > start ? m->start : start;
        uint64_t cut_hi = m->end < end ? m->end : end;
        uint64_t cut = cut_hi - cut_lo;
        if (cut_lo == m->start && cut_hi == m->end) {
            struct block b = m->b;
            b.size = cut;
            /* The piece that carried the mapping's count goes: another
             * piece still mapped carries it on. */
            struct mapping *heir = NULL;
            for (size_t k = 0; m->counted && m->split && k < s->nmaps && !heir; k++)
                if (k != i && map_at(s, k)->mapped == m->mapped)
                    heir = map_at(s, k);
            if (m->counted && !heir) {
                block_end(s, &b, m->allocated, thread);
            } else {
                heap_sub(s, &b, cut, 0);
                if (heir)
                    heir->counted = 1;
            }
            map_delete(s, i);
            continue;
        }
        heap_sub(s, &m->b, cut, 0);
        if (cut_lo > m->start && cut_hi < m->end) {  /* a hole: split */
            struct mapping *upper = map_insert(s, i + 1);
            m = map_at(s, i);  /* moved */
            m->split = 1;
            *upper = *m;
            m->end = cut_lo;
            upper->start = cut_hi;
            upper->counted = 0;
            m->b.size = m->end - m->start;
            upper->b.size = upper->end - upper->start;
            i += 2;
            continue;
        }
        if (cut_lo == m->start)
            m->start = cut_hi;
        else
            m->end = cut_lo;
        m->b.size = m->end - m->start;
        i++;
    }
}

static void map_add(struct mt_replay *s, const struct mt_record *r, uint64_t addr,
                    uint64_t size)
{
    if (!size)
        return;
    map_remove(s, addr, addr + size, r->thread);  /* MAP_FIXED replaces */
    struct block b;
    new_block(s, r->thread, r->u.ev.allocator, r->u.ev.py_stack, r->u.ev.native_stack,
              size, &b);
    *map_insert(s, map_find(s, addr)) =
        (struct mapping){addr, addr + size, b, 1, 0, ++s->nmapped, size};
    heap_add(s, &b);
}

/* ---- --temporal: allocations by time bucket ---------------------------
 * Per group, two kinds of cells: "alive" cells (group, a) hold what is
 * alive now of what was allocated in bucket a, with its value at the
 * latest peak kept lazily like the groups' (a cell untouched since the
 * peak still holds it); "freed" cells (group, a, f) what was allocated in
 * a and freed in f. A free moves bytes from the alive cell to a freed one.
 * Buckets are ticks >> shift; when the current bucket would pass
 * MT_TBUCKETS, or the cells pass their budget, shift grows and the cells
 * of each pair of buckets merge. Blocks keep their tick, not their bucket,
 * so merging never touches them. */

#define T_TICK_US 10000u          /* a tick: the sampling period */
#define T_MIN_BUDGET (1u << 18)   /* cells; or 4 per group when more */

struct talive {
    uint64_t bytes, count, peak_bytes, peak_count, peak_version;
    uint32_t group;
    uint16_t a;
};

struct temporal {
    unsigned shift;                /* bucket = tick >> shift */
    struct mt_amap alive_ids;      /* (group + 1) << 16 | a -> index + 1 */
    struct mt_amap freed_ids;      /* (group + 1) << 32 | a << 16 | f -> index + 1 */
    struct talive *alive; size_t nalive, cap_alive;
    struct mt_tcell *freed; size_t nfreed, cap_freed;
    struct mt_tcell *end; size_t nend;  /* the cells at the end (END marker) */
    unsigned end_shift;
    int has_end;
};

static uint64_t alive_key(uint32_t g, unsigned a)
{
    return ((uint64_t)g + 1) << 16 | a;
}

static uint64_t freed_key(uint32_t g, unsigned a, unsigned f)
{
    return ((uint64_t)g + 1) << 32 | (uint64_t)a << 16 | f;
}

/* Brings an alive cell's peak value up to date before it changes. */
static void tcell_touch(struct mt_replay *s, struct talive *c)
{
    if (c->peak_version != s->peak_version) {
        c->peak_bytes = c->bytes;
        c->peak_count = c->count;
        c->peak_version = s->peak_version;
    }
}

static struct talive *alive_cell(struct mt_replay *s, uint32_t g, unsigned a)
{
    struct temporal *t = s->t;
    uint64_t k = alive_key(g, a), idx;
    if (mt_amap_get(&t->alive_ids, k, &idx))
        return &t->alive[idx - 1];
    t->alive = grow(t->alive, &t->cap_alive, t->nalive + 1, sizeof *t->alive);
    struct talive *c = &t->alive[t->nalive++];
    *c = (struct talive){.group = g, .a = (uint16_t)a, .peak_version = s->peak_version};
    if (mt_amap_put(&t->alive_ids, k, t->nalive))
        out_of_memory();
    return c;
}

static struct mt_tcell *freed_cell(struct temporal *t, uint32_t g, unsigned a,
                                   unsigned f)
{
    uint64_t k = freed_key(g, a, f), idx;
    if (mt_amap_get(&t->freed_ids, k, &idx))
        return &t->freed[idx - 1];
    t->freed = grow(t->freed, &t->cap_freed, t->nfreed + 1, sizeof *t->freed);
    struct mt_tcell *c = &t->freed[t->nfreed++];
    *c = (struct mt_tcell){.group = g, .a = (uint16_t)a, .f = (uint16_t)f};
    if (mt_amap_put(&t->freed_ids, k, t->nfreed))
        out_of_memory();
    return c;
}

/* Merges each pair of buckets: shift + 1. O(cells). */
static void temporal_thin(struct mt_replay *s)
{
    struct temporal *t = s->t;
    struct talive *alive = t->alive;
    struct mt_tcell *freed = t->freed;
    size_t nalive = t->nalive, nfreed = t->nfreed;
    mt_amap_release(&t->alive_ids);
    mt_amap_release(&t->freed_ids);
    t->alive = NULL, t->nalive = t->cap_alive = 0;
    t->freed = NULL, t->nfreed = t->cap_freed = 0;
    t->shift++;
    for (size_t i = 0; i < nalive; i++) {
        tcell_touch(s, &alive[i]);
        struct talive *c = alive_cell(s, alive[i].group, alive[i].a >> 1);
        tcell_touch(s, c);
        c->bytes += alive[i].bytes;
        c->count += alive[i].count;
        c->peak_bytes += alive[i].peak_bytes;
        c->peak_count += alive[i].peak_count;
    }
    for (size_t i = 0; i < nfreed; i++) {
        struct mt_tcell *c = freed_cell(t, freed[i].group, freed[i].a >> 1,
                                        freed[i].f >> 1);
        c->bytes += freed[i].bytes;
        c->count += freed[i].count;
    }
    free(alive);
    free(freed);
}

/* Thins while the cells are over budget and there is more than one bucket. */
static void temporal_budget(struct mt_replay *s)
{
    struct temporal *t = s->t;
    size_t budget = (size_t)s->a->ngroups * 4;
    if (budget < T_MIN_BUDGET)
        budget = T_MIN_BUDGET;
    while (t->nalive + t->nfreed > budget && (s->tick >> t->shift) > 0)
        temporal_thin(s);
}

static void temporal_add(struct mt_replay *s, const struct block *b)
{
    size_t n = s->t->nalive;
    struct talive *c = alive_cell(s, b->group, b->tick >> s->t->shift);
    tcell_touch(s, c);
    c->bytes += b->size;
    c->count++;
    if (s->t->nalive != n)
        temporal_budget(s);
}

static void temporal_sub(struct mt_replay *s, const struct block *b,
                         uint64_t bytes, uint64_t count)
{
    struct temporal *t = s->t;
    unsigned a = b->tick >> t->shift;
    struct talive *c = alive_cell(s, b->group, a);
    tcell_touch(s, c);
    c->bytes -= bytes;
    c->count -= count;
    size_t n = t->nfreed;
    struct mt_tcell *f = freed_cell(t, b->group, a, s->tick >> t->shift);
    f->bytes += bytes;
    f->count += count;
    if (t->nfreed != n)
        temporal_budget(s);
}

/* The sample clock moved on: thin when it passes the last bucket. */
static void temporal_tick(struct mt_replay *s)
{
    while ((s->tick >> s->t->shift) >= MT_TBUCKETS)
        temporal_thin(s);
}

/* The end: a copy of every cell as it is now (what follows is left out). */
static void temporal_end(struct mt_replay *s)
{
    struct temporal *t = s->t;
    t->end = malloc((t->nfreed + t->nalive + 1) * sizeof *t->end);
    if (!t->end)
        out_of_memory();
    memcpy(t->end, t->freed, t->nfreed * sizeof *t->end);
    t->nend = t->nfreed;
    for (size_t i = 0; i < t->nalive; i++)
        if (t->alive[i].bytes || t->alive[i].count)
            t->end[t->nend++] = (struct mt_tcell){t->alive[i].group, t->alive[i].a,
                                                  MT_TALIVE, t->alive[i].bytes,
                                                  t->alive[i].count};
    t->end_shift = t->shift;
    t->has_end = 1;
}

/* Into the analysis; frees the state. */
static void temporal_finish(struct mt_replay *s)
{
    struct temporal *t = s->t;
    struct mt_temporal *out = calloc(1, sizeof *out);
    if (!out)
        out_of_memory();
    out->bucket_us = (uint64_t)T_TICK_US << t->shift;
    out->nbuckets = (s->tick >> t->shift) + 1;
    uint64_t peak_tick = s->a->peak_time_us / T_TICK_US;
    out->peak_bucket = (uint32_t)(peak_tick >> t->shift);
    /* the end's cells, in today's buckets (a thinning may have come since) */
    unsigned d = t->shift - t->end_shift;
    for (size_t i = 0; i < t->nend; i++) {
        t->end[i].a >>= d;
        if (t->end[i].f != MT_TALIVE)
            t->end[i].f >>= d;
    }
    out->cells = t->end;
    out->ncells = (uint32_t)t->nend;
    t->end = NULL;
    out->peak = malloc((t->nalive + 1) * sizeof *out->peak);
    if (!out->peak)
        out_of_memory();
    for (size_t i = 0; i < t->nalive; i++) {
        struct talive *c = &t->alive[i];
        tcell_touch(s, c);
        if (c->peak_bytes || c->peak_count)
            out->peak[out->npeak++] = (struct mt_tcell){c->group, c->a, MT_TALIVE,
                                                        c->peak_bytes, c->peak_count};
    }
    s->a->temporal = out;
}

static void temporal_release(struct temporal *t)
{
    if (!t)
        return;
    mt_amap_release(&t->alive_ids);
    mt_amap_release(&t->freed_ids);
    free(t->alive), free(t->freed), free(t->end);
    free(t);
}

static void end_snapshot(struct mt_replay *s)
{
    struct mt_analysis *a = s->a;
    for (uint32_t g = 0; g < a->ngroups; g++) {
        a->groups[g].end_bytes = s->gs[g].cur_bytes;
        a->groups[g].end_count = s->gs[g].cur_count;
    }
    a->end_bytes = s->heap;
    s->ended = 1;
    if (s->t)
        temporal_end(s);
}

static void add_sample(struct mt_replay *s, uint64_t time_us, uint64_t rss,
                       uint64_t heap)
{
    struct mt_analysis *a = s->a;
    s->last_time_us = time_us;
    s->tick = time_us / T_TICK_US > UINT32_MAX ? UINT32_MAX
                                               : (uint32_t)(time_us / T_TICK_US);
    if (s->t)
        temporal_tick(s);
    if (rss > a->peak_rss_bytes)
        a->peak_rss_bytes = rss;
    if (s->sample_skip++ % s->sample_stride)
        return;
    if (a->nsamples == MAX_SAMPLES) {  /* thin: keep every other one */
        for (uint32_t i = 0; i < MAX_SAMPLES / 2; i++)
            a->samples[i] = a->samples[2 * i];
        a->nsamples = MAX_SAMPLES / 2;
        s->sample_stride *= 2;
    }
    a->samples[a->nsamples++] = (struct mt_sample){time_us, rss, heap};
}

static void node_set(struct mt_node_info **arr, uint32_t *n, size_t *cap,
                     uint32_t id, const struct mt_record *r, uint32_t objects)
{
    *arr = grow(*arr, cap, (size_t)id + 1, sizeof **arr);
    if (id >= *n)
        *n = id + 1;
    (*arr)[id] = (struct mt_node_info){r->u.node.parent < id ? r->u.node.parent : 0,
                                       objects, r->u.node.a, r->u.node.b,
                                       r->u.node.flags};
}

static void on_definition(struct mt_replay *s, const struct mt_record *r)
{
    struct mt_analysis *a = s->a;
    switch (r->tag) {
    case MT_T_THREAD: {
        uint32_t i = r->u.thread.index;
        a->threads = grow(a->threads, &s->cap_threadinfo, (size_t)i + 1,
                          sizeof *a->threads);
        if (i >= a->nthreads)
            a->nthreads = i + 1;
        free(a->threads[i].name);
        a->threads[i] = (struct mt_thread_info){i, r->u.thread.tid,
                                                xstrdup(r->u.thread.name)};
        break;
    }
    case MT_T_CODE: {
        uint32_t id = r->u.code.id;
        a->codes = grow(a->codes, &s->cap_codes, (size_t)id + 1, sizeof *a->codes);
        if (id >= a->ncodes)
            a->ncodes = id + 1;
        struct mt_code_info *c = &a->codes[id];
        free(c->name), free(c->qualname), free(c->filename);
        c->name = xstrdup(r->u.code.name);
        c->qualname = xstrdup(*r->u.code.qualname ? r->u.code.qualname : r->u.code.name);
        c->filename = xstrdup(r->u.code.filename);
        c->firstlineno = r->u.code.firstlineno;
        break;
    }
    case MT_T_PYNODE:
        node_set(&a->pynodes, &a->npynodes, &s->cap_pynodes, r->u.node.id, r, 0);
        break;
    case MT_T_NATIVENODE:
        node_set(&a->nativenodes, &a->nnativenodes, &s->cap_nativenodes, r->u.node.id, r,
                 a->nobjects);
        break;
    case MT_T_OBJECT: {
        a->objects = grow(a->objects, &s->cap_objects, (size_t)a->nobjects + 1,
                          sizeof *a->objects);
        struct mt_object_info *o = &a->objects[a->nobjects++];
        o->path = xstrdup(r->u.object.path);
        o->base = r->u.object.base;
        o->build_id_len = r->u.object.build_id_len;
        o->build_id = malloc(o->build_id_len + 1);
        memcpy(o->build_id, r->u.object.build_id, o->build_id_len);
        o->nseg = r->u.object.nseg;
        o->seg = malloc(sizeof(uint64_t) * 2 * (o->nseg + 1));
        memcpy(o->seg, r->u.object.seg, sizeof(uint64_t) * 2 * o->nseg);
        break;
    }
    case MT_T_PROGRAM:
        free(a->python_version);
        a->python_version = *r->u.program.python_version
                                ? xstrdup(r->u.program.python_version) : NULL;
        break;
    default:
        break;
    }
}

/* An aggregate capture's group: its values are final, not replayed. */
static void group_load(struct mt_replay *s, const struct mt_record *r)
{
    uint32_t g = group_of(s, r->u.group.py_stack, r->u.group.native_stack,
                          r->u.group.thread);
    struct mt_group *d = &s->a->groups[g];
    d->allocators |= r->u.group.allocators;
    d->total_bytes += r->u.group.total_bytes;
    d->total_count += r->u.group.total_count;
    d->peak_bytes += r->u.group.peak_bytes;
    d->peak_count += r->u.group.peak_count;
    d->end_bytes += r->u.group.end_bytes;
    d->end_count += r->u.group.end_count;
    s->gs[g].peak_version = s->peak_version;
    s->ended = 1;  /* the end values came with the groups */
}

static void totals_load(struct mt_replay *s, const struct mt_totals *t)
{
    struct mt_analysis *a = s->a;
    a->total_allocations = t->allocations;
    a->total_frees = t->frees;
    a->total_allocated_bytes = t->allocated_bytes;
    a->peak_bytes = t->peak_bytes;
    a->peak_time_us = t->peak_time_us;
    a->end_bytes = t->end_bytes;
    a->end_marked = (int)t->end_marked;
    if (t->peak_rss_bytes > a->peak_rss_bytes)
        a->peak_rss_bytes = t->peak_rss_bytes;
    for (unsigned i = 0; i < MT_A_COUNT; i++) {
        a->allocators[i].count = t->allocator_count[i];
        a->allocators[i].bytes = t->allocator_bytes[i];
    }
    memcpy(a->histogram, t->histogram, sizeof a->histogram);
    s->ended = 1;
}

static void on_record(struct mt_replay *s, const struct mt_record *r)
{
    switch (r->tag) {
    case MT_T_ALLOC:
        if (mt_allocator_is_mapping(r->u.ev.allocator))
            map_add(s, r, r->u.ev.addr, r->u.ev.size);
        else
            heap_alloc_record(s, r);
        break;
    case MT_T_FREE:
        heap_free(s, s->by_number ? r->u.ev.number : r->u.ev.addr, r->thread);
        break;
    case MT_T_REALLOC:
        heap_free(s, s->by_number ? r->u.ev.old_number : r->u.ev.old_addr,
                  r->thread);
        /* not a failed realloc, nor a damaged one (mt_replay_add_many) */
        if ((s->by_number ? r->u.ev.number : r->u.ev.addr) && !s->not_live)
            heap_alloc_record(s, r);
        break;
    case MT_T_MUNMAP:
        map_remove(s, r->u.ev.addr, r->u.ev.addr + r->u.ev.size, r->thread);
        break;
    case MT_T_MREMAP:
        map_remove(s, r->u.ev.old_addr, r->u.ev.old_addr + r->u.ev.old_size,
                   r->thread);
        map_add(s, r, r->u.ev.addr, r->u.ev.size);
        break;
    case MT_T_SAMPLE:
        add_sample(s, r->u.sample.time_us, r->u.sample.rss_bytes,
                   r->u.sample.heap_bytes ? r->u.sample.heap_bytes - 1 : s->heap);
        break;
    case MT_T_GROUP:
        group_load(s, r);
        break;
    case MT_T_TOTALS:
        totals_load(s, r->u.totals);
        break;
    case MT_T_END:
        if (!s->ended) {
            s->a->end_marked = 1;
            end_snapshot(s);
        }
        break;
    case MT_T_TRAILER:
        s->a->trailer = r->u.trailer;
        s->a->complete = 1;
        break;
    default:
        on_definition(s, r);
    }
}

void mt_analysis_free(struct mt_analysis *a)
{
    if (!a)
        return;
    free((char *)a->header.command);
    free(a->python_version);
    free(a->groups);
    for (uint32_t i = 0; i < a->nthreads; i++)
        free(a->threads[i].name);
    free(a->threads);
    for (uint32_t i = 0; i < a->ncodes; i++) {
        free(a->codes[i].name), free(a->codes[i].qualname);
        free(a->codes[i].filename);
    }
    free(a->codes);
    free(a->pynodes);
    free(a->nativenodes);
    for (uint32_t i = 0; i < a->nobjects; i++) {
        free(a->objects[i].path), free(a->objects[i].build_id);
        free(a->objects[i].seg);
    }
    free(a->objects);
    free(a->samples);
    if (a->temporal) {
        free(a->temporal->cells);
        free(a->temporal->peak);
        free(a->temporal);
    }
    free(a);
}


struct mt_replay *mt_replay_new(const struct mt_analysis_opts *opts)
{
    struct mt_replay *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->opts_copy = *opts;
    s->opts = &s->opts_copy;
    s->sample_stride = 1;
    s->temporary_n = opts->temporary_n ? opts->temporary_n : 1;
    s->a = calloc(1, sizeof *s->a);
    if (s->a)
        s->a->samples = calloc(MAX_SAMPLES, sizeof *s->a->samples);
    s->detail = !opts->totals_only;
    int temporal = opts->temporal && s->detail;
    if (temporal)
        s->t = calloc(1, sizeof *s->t);
    if (!s->a || !s->a->samples || (temporal && !s->t)) {
        if (s->a)
            free(s->a->samples), free(s->a);
        free(s->t);
        free(s);
        return NULL;
    }
    return s;
}

/* Frees a replay nobody wants the result of. */
static void replay_discard(struct mt_replay *s)
{
    mt_analysis_free(mt_replay_finish(s, &(struct mt_header){0}));
}

int mt_replay_restart(struct mt_replay *s)
{
    struct mt_replay *fresh = mt_replay_new(&s->opts_copy);
    struct mt_replay *old = malloc(sizeof *old);
    if (!fresh || !old) {
        free(old);
        if (fresh)
            replay_discard(fresh);
        return MT_E_NOMEM;
    }
    /* The state moves to old, to be freed as a replay is; s takes the
     * fresh one's. opts points into the struct that holds it. */
    *old = *s;
    old->opts = &old->opts_copy;
    fresh->by_number = s->by_number;
    *s = *fresh;
    s->opts = &s->opts_copy;
    free(fresh);
    replay_discard(old);
    return MT_OK;
}

void mt_replay_key_by_number(struct mt_replay *s)
{
    s->by_number = 1;
}

/* Ids and thread indices are handed out in order, one per definition (or
 * first event), so none can exceed the records seen so far: tables sized
 * by ids then stay bounded by the file's own size, whatever a damaged or
 * crafted capture claims. */
static int ids_plausible(const struct mt_replay *s, const struct mt_record *r)
{
    uint64_t limit = s->nrecords;
    if (r->thread > limit)
        return 0;
    switch (r->tag) {
    case MT_T_THREAD: return r->u.thread.index <= limit;
    case MT_T_CODE: return r->u.code.id <= limit;
    case MT_T_PYNODE:
    case MT_T_NATIVENODE: return r->u.node.id <= limit;
    case MT_T_GROUP: return r->u.group.thread <= limit;
    default: return 1;
    }
}

int mt_replay_add(struct mt_replay *s, const struct mt_record *rec)
{
    uint32_t done;
    return mt_replay_add_many(s, rec, 1, &done);
}

/* Counts a heap event's record; whether its thread can be right (as
 * ids_plausible). */
static int heap_event_plausible(struct mt_replay *s, uint32_t thread)
{
    return !s->by_number && thread <= ++s->nrecords;
}

int mt_replay_alloc(struct mt_replay *s, uint32_t thread, unsigned allocator,
                    uint64_t addr, uint64_t size, uint32_t py_stack, uint32_t native_stack)
{
    if (!s->by_number && mt_allocator_is_mapping(allocator)) {
        struct mt_record r = {.tag = MT_T_ALLOC, .thread = thread};
        r.u.ev.allocator = (uint8_t)allocator;
        r.u.ev.addr = addr;
        r.u.ev.size = size;
        r.u.ev.py_stack = py_stack;
        r.u.ev.native_stack = native_stack;
        return mt_replay_add(s, &r);
    }
    if (!heap_event_plausible(s, thread))
        return MT_E_CORRUPT;
    heap_alloc(s, addr, thread, allocator, py_stack, native_stack, size);
    return MT_OK;
}

int mt_replay_free(struct mt_replay *s, uint32_t thread, uint64_t addr)
{
    if (!heap_event_plausible(s, thread))
        return MT_E_CORRUPT;
    heap_free(s, addr, thread);
    return MT_OK;
}

int mt_replay_add_many(struct mt_replay *s, const struct mt_record *recs, uint32_t n,
                       uint32_t *done)
{
    for (uint32_t i = 0; i < n; i++) {
        s->nrecords++;
        if (!ids_plausible(s, &recs[i])) {
            *done = i;
            return MT_E_CORRUPT;
        }
        on_record(s, &recs[i]);
        if (__builtin_expect(s->not_live, 0)) {
            *done = i;
            return MT_E_CORRUPT;
        }
    }
    *done = n;
    return MT_OK;
}

static void replay_release(struct mt_replay *s)
{
    mt_imap_release(&s->group_ids);
    mt_amap_release(&s->live);
    free(s->win.e);
    free(s->gs), free(s->blocks), free(s->free_blocks), free(s->maps);
    free(s->thread_allocs);
    temporal_release(s->t);
    free(s);
}

struct mt_analysis *mt_replay_finish(struct mt_replay *s,
                                     const struct mt_header *header)
{
    struct mt_analysis *a = s->a;
    a->header = *header;
    a->header.command = xstrdup(header->command);
    /* Groups untouched since the last peak still hold their peak value. */
    for (uint32_t g = 0; g < a->ngroups; g++)
        touch(s, g);
    if (!s->ended)
        end_snapshot(s);
    if (s->t)
        temporal_finish(s);
    if (a->nthreads == 0) {
        a->threads = calloc(1, sizeof *a->threads);
        a->nthreads = 1;
    }
    replay_release(s);
    return a;
}

/* ---- saving an aggregate capture ------------------------------------ */

static int put_object(struct mt_writer *w, const struct mt_object_info *o)
{
    struct mt_record r = {.tag = MT_T_OBJECT};
    r.u.object.path = o->path;
    r.u.object.base = o->base;
    r.u.object.build_id = o->build_id;
    r.u.object.build_id_len = o->build_id_len;
    r.u.object.nseg = o->nseg;
    r.u.object.seg = o->seg;
    return mt_writer_add(w, &r);
}

static int save_definitions(struct mt_writer *w, const struct mt_analysis *a)
{
    int rc = MT_OK;
    struct mt_record r = {.tag = MT_T_PROGRAM};
    r.u.program.python_version = a->python_version ? a->python_version : "";
    rc |= mt_writer_add(w, &r);
    for (uint32_t i = 1; i < a->nthreads; i++) {
        r = (struct mt_record){.tag = MT_T_THREAD};
        r.u.thread.index = i;
        r.u.thread.tid = a->threads[i].tid;
        r.u.thread.name = a->threads[i].name ? a->threads[i].name : "";
        rc |= mt_writer_add(w, &r);
    }
    for (uint32_t i = 1; i < a->ncodes; i++) {
        const struct mt_code_info *c = &a->codes[i];
        if (!c->name)
            continue;
        r = (struct mt_record){.tag = MT_T_CODE};
        r.u.code.id = i;
        r.u.code.firstlineno = c->firstlineno;
        r.u.code.name = c->name;
        r.u.code.qualname = c->qualname;
        r.u.code.filename = c->filename;
        rc |= mt_writer_add(w, &r);
    }
    uint32_t objects = 0;  /* written so far */
    for (int py = 1; py >= 0; py--) {
        const struct mt_node_info *nodes = py ? a->pynodes : a->nativenodes;
        uint32_t n = py ? a->npynodes : a->nnativenodes;
        for (uint32_t i = 1; i < n; i++) {
            /* A native node after the objects it came after: which object
             * held its address depends on it. */
            for (; !py && objects < nodes[i].objects && objects < a->nobjects; objects++)
                rc |= put_object(w, &a->objects[objects]);
            r = (struct mt_record){.tag = py ? MT_T_PYNODE : MT_T_NATIVENODE};
            r.u.node.id = i;
            r.u.node.parent = nodes[i].parent;
            r.u.node.a = nodes[i].a;
            r.u.node.b = nodes[i].b;
            r.u.node.flags = nodes[i].flags;
            rc |= mt_writer_add(w, &r);
        }
    }
    for (; objects < a->nobjects; objects++)
        rc |= put_object(w, &a->objects[objects]);
    return rc ? MT_E_IO : MT_OK;
}

/* The state as it would be if the run ended now, without changing it. */
static int save_state(struct mt_writer *w, const struct mt_replay *s)
{
    const struct mt_analysis *a = s->a;
    int rc = MT_OK;
    struct mt_record r;
    for (uint32_t i = 0; i < a->nsamples; i++) {
        r = (struct mt_record){.tag = MT_T_SAMPLE};
        r.u.sample.time_us = a->samples[i].time_us;
        r.u.sample.rss_bytes = a->samples[i].rss_bytes;
        r.u.sample.heap_bytes = a->samples[i].heap_bytes + 1;
        rc |= mt_writer_add(w, &r);
    }
    for (uint32_t i = 0; i < a->ngroups; i++) {
        const struct mt_group *g = &a->groups[i];
        const struct group_state *st = &s->gs[i];
        int at_peak = st->peak_version == s->peak_version;
        r = (struct mt_record){.tag = MT_T_GROUP};
        r.u.group.py_stack = g->py_stack;
        r.u.group.native_stack = g->native_stack;
        r.u.group.thread = g->thread;
        r.u.group.allocators = g->allocators;
        r.u.group.total_bytes = g->total_bytes;
        r.u.group.total_count = g->total_count;
        r.u.group.peak_bytes = at_peak ? g->peak_bytes : st->cur_bytes;
        r.u.group.peak_count = at_peak ? g->peak_count : st->cur_count;
        r.u.group.end_bytes = s->ended ? g->end_bytes : st->cur_bytes;
        r.u.group.end_count = s->ended ? g->end_count : st->cur_count;
        rc |= mt_writer_add(w, &r);
    }
    struct mt_totals *t = calloc(1, sizeof *t);
    if (!t)
        return MT_E_NOMEM;
    *t = (struct mt_totals){
        .allocations = a->total_allocations, .frees = a->total_frees,
        .allocated_bytes = a->total_allocated_bytes, .peak_bytes = a->peak_bytes,
        .peak_time_us = a->peak_time_us,
        .end_bytes = s->ended ? a->end_bytes : s->heap,
        .peak_rss_bytes = a->peak_rss_bytes, .end_marked = (uint32_t)a->end_marked,
    };
    for (unsigned i = 0; i < MT_A_COUNT; i++) {
        t->allocator_count[i] = a->allocators[i].count;
        t->allocator_bytes[i] = a->allocators[i].bytes;
    }
    memcpy(t->histogram, a->histogram, sizeof t->histogram);
    r = (struct mt_record){.tag = MT_T_TOTALS};
    r.u.totals = t;
    rc |= mt_writer_add(w, &r);
    free(t);
    return rc ? MT_E_IO : MT_OK;
}

int mt_replay_save(struct mt_replay *s, const char *path,
                   const struct mt_header *header,
                   const struct mt_trailer *trailer)
{
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    if (!tmp)
        return MT_E_NOMEM;
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    struct mt_writer *w;
    int rc = mt_writer_open(tmp, 1, header, &w);
    if (rc == MT_OK) {
        rc = save_definitions(w, s->a);
        if (rc == MT_OK)
            rc = save_state(w, s);
        int closed = mt_writer_close(w, rc == MT_OK ? trailer : NULL);
        if (rc == MT_OK)
            rc = closed;
        if (rc == MT_OK && rename(tmp, path) != 0)
            rc = MT_E_IO;
        if (rc != MT_OK)
            unlink(tmp);
    }
    free(tmp);
    return rc;
}
