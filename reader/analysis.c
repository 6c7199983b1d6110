/* See analysis.h. The peak is found in the same single pass: each group
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

#include "../src/map.h"
#include "analysis.h"

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
};

struct mapping {
    uint64_t start, end;
    struct block b;
    int counted;            /* the piece that carries the count */
};

struct state {
    struct mt_analysis *a;
    const struct mt_analysis_opts *opts;
    struct mt_imap group_ids;
    struct group_state *gs;
    uint32_t gcap;
    struct mt_amap live;        /* heap address -> index in blocks */
    struct block *blocks;
    uint32_t *free_blocks;
    size_t nblocks, cap_blocks, nfree, cap_free;
    struct mapping *maps;
    size_t nmaps, cap_maps;
    uint64_t *thread_allocs;    /* by thread index */
    uint32_t cap_threads;
    uint64_t heap, peak_version, last_time_us;
    uint32_t sample_stride, sample_skip;
    int ended;
    unsigned temporary_n;
    size_t cap_threadinfo, cap_codes, cap_pynodes, cap_nativenodes, cap_objects;
};

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * size);
    if (!q) {
        fprintf(stderr, "memtap: out of memory while reading the capture\n");
        exit(1);
    }
    memset((char *)q + *cap * size, 0, (n - *cap) * size);
    *cap = n;
    return q;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) {
        fprintf(stderr, "memtap: out of memory while reading the capture\n");
        exit(1);
    }
    return d;
}

static uint32_t group_of(struct state *s, uint32_t py, uint32_t native,
                         uint32_t thread)
{
    uint64_t key[3] = {py, native, s->opts->split_threads ? thread : 0};
    int is_new;
    uint32_t id = mt_imap_intern(&s->group_ids, key, &is_new);
    if (!id) {
        fprintf(stderr, "memtap: out of memory while reading the capture\n");
        exit(1);
    }
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
        g->thread = s->opts->split_threads ? thread : 0;
        s->gs[id - 1].peak_version = s->peak_version;
    }
    return id - 1;
}

/* Brings a group's peak snapshot up to date before it changes. */
static void touch(struct state *s, uint32_t g)
{
    struct group_state *st = &s->gs[g];
    if (st->peak_version != s->peak_version) {
        s->a->groups[g].peak_bytes = st->cur_bytes;
        s->a->groups[g].peak_count = st->cur_count;
        st->peak_version = s->peak_version;
    }
}

static void heap_add(struct state *s, const struct block *b)
{
    if (!mt_allocator_counts(b->allocator))
        return;
    touch(s, b->group);
    s->gs[b->group].cur_bytes += b->size;
    s->gs[b->group].cur_count++;
    s->heap += b->size;
    if (s->heap >= s->a->peak_bytes) {  /* ties: the latest */
        s->a->peak_bytes = s->heap;
        s->a->peak_time_us = s->last_time_us;
        s->peak_version++;
    }
}

static void heap_sub(struct state *s, const struct block *b, uint64_t bytes,
                     int count)
{
    if (!mt_allocator_counts(b->allocator))
        return;
    touch(s, b->group);
    s->gs[b->group].cur_bytes -= bytes;
    s->gs[b->group].cur_count -= (uint64_t)count;
    s->heap -= bytes;
}

static struct block new_block(struct state *s, const struct mt_record *r,
                              uint64_t size)
{
    struct mt_analysis *a = s->a;
    uint32_t t = r->thread;
    size_t cap = s->cap_threads;
    s->thread_allocs = grow(s->thread_allocs, &cap, (size_t)t + 1, sizeof(uint64_t));
    s->cap_threads = (uint32_t)cap;
    struct block b = {
        .size = size,
        .thread_seq = ++s->thread_allocs[t],
        .group = group_of(s, r->u.ev.py_stack, r->u.ev.native_stack, t),
        .thread = t,
        .allocator = r->u.ev.allocator < MT_A_COUNT ? r->u.ev.allocator : 0,
    };
    struct mt_group *g = &a->groups[b.group];
    g->allocators |= 1u << b.allocator;
    a->total_allocations++;
    a->allocators[b.allocator].count++;
    a->allocators[b.allocator].bytes += size;
    if (mt_allocator_counts(b.allocator)) {
        g->total_bytes += size;
        g->total_count++;
        a->total_allocated_bytes += size;
    }
    a->histogram[size ? 63 - __builtin_clzll(size) : 0]++;
    return b;
}

/* A block ends: temporary when its own thread made fewer than N other
 * allocations since. */
static void block_end(struct state *s, const struct block *b, uint32_t thread)
{
    s->a->total_frees++;
    heap_sub(s, b, b->size, 1);
    if (thread == b->thread && mt_allocator_counts(b->allocator) &&
        s->thread_allocs[thread] - b->thread_seq < s->temporary_n) {
        s->a->groups[b->group].temp_bytes += b->size;
        s->a->groups[b->group].temp_count++;
    }
}

static void heap_alloc(struct state *s, const struct mt_record *r)
{
    struct block b = new_block(s, r, r->u.ev.size);
    uint32_t idx;
    if (s->nfree) {
        idx = s->free_blocks[--s->nfree];
    } else {
        s->blocks = grow(s->blocks, &s->cap_blocks, s->nblocks + 1, sizeof *s->blocks);
        idx = (uint32_t)s->nblocks++;
    }
    s->blocks[idx] = b;
    uint64_t old;
    if (mt_amap_take(&s->live, r->u.ev.addr, &old)) {
        /* A block we never saw end (its free came from an untracked
         * thread): the new one replaces it. */
        heap_sub(s, &s->blocks[old], s->blocks[old].size, 1);
        s->free_blocks = grow(s->free_blocks, &s->cap_free, s->nfree + 1, sizeof(uint32_t));
        s->free_blocks[s->nfree++] = (uint32_t)old;
    }
    mt_amap_put(&s->live, r->u.ev.addr, idx);
    heap_add(s, &b);
}

static void heap_free(struct state *s, uint64_t addr, uint32_t thread)
{
    uint64_t idx;
    if (!addr || !mt_amap_take(&s->live, addr, &idx))
        return;  /* allocated before tracking began, or not by a hook */
    block_end(s, &s->blocks[idx], thread);
    s->free_blocks = grow(s->free_blocks, &s->cap_free, s->nfree + 1, sizeof(uint32_t));
    s->free_blocks[s->nfree++] = (uint32_t)idx;
}

/* Index of the first mapping ending after addr. */
static size_t map_find(const struct state *s, uint64_t addr)
{
    size_t lo = 0, hi = s->nmaps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->maps[mid].end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Removes [start, end) from the tracked mappings, splitting at the edges. */
static void map_remove(struct state *s, uint64_t start, uint64_t end,
                       uint32_t thread)
{
    size_t i = map_find(s, start);
    while (i < s->nmaps && s->maps[i].start < end) {
        struct mapping *m = &s->maps[i];
        uint64_t cut_lo = m->start > start ? m->start : start;
        uint64_t cut_hi = m->end < end ? m->end : end;
        uint64_t cut = cut_hi - cut_lo;
        if (cut_lo == m->start && cut_hi == m->end) {
            struct block b = m->b;
            b.size = cut;
            if (m->counted) {
                block_end(s, &b, thread);
            } else {
                heap_sub(s, &b, cut, 0);
            }
            memmove(m, m + 1, (s->nmaps - i - 1) * sizeof *m);
            s->nmaps--;
            continue;
        }
        heap_sub(s, &m->b, cut, 0);
        if (cut_lo > m->start && cut_hi < m->end) {  /* a hole: split */
            s->maps = grow(s->maps, &s->cap_maps, s->nmaps + 1, sizeof *s->maps);
            m = &s->maps[i];
            memmove(m + 1, m, (s->nmaps - i) * sizeof *m);
            s->nmaps++;
            m[1] = m[0];
            m[0].end = cut_lo;
            m[1].start = cut_hi;
            m[1].counted = 0;
            m[0].b.size = m[0].end - m[0].start;
            m[1].b.size = m[1].end - m[1].start;
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

static void map_add(struct state *s, const struct mt_record *r, uint64_t addr,
                    uint64_t size)
{
    if (!size)
        return;
    map_remove(s, addr, addr + size, r->thread);  /* MAP_FIXED replaces */
    struct block b = new_block(s, r, size);
    size_t i = map_find(s, addr);
    s->maps = grow(s->maps, &s->cap_maps, s->nmaps + 1, sizeof *s->maps);
    memmove(&s->maps[i + 1], &s->maps[i], (s->nmaps - i) * sizeof *s->maps);
    s->nmaps++;
    s->maps[i] = (struct mapping){addr, addr + size, b, 1};
    heap_add(s, &b);
}

static void end_snapshot(struct state *s)
{
    struct mt_analysis *a = s->a;
    for (uint32_t g = 0; g < a->ngroups; g++) {
        a->groups[g].end_bytes = s->gs[g].cur_bytes;
        a->groups[g].end_count = s->gs[g].cur_count;
    }
    a->end_bytes = s->heap;
    s->ended = 1;
}

static void add_sample(struct state *s, uint64_t time_us, uint64_t rss)
{
    struct mt_analysis *a = s->a;
    s->last_time_us = time_us;
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
    a->samples[a->nsamples++] = (struct mt_sample){time_us, rss, s->heap};
}

static void node_set(struct mt_node_info **arr, uint32_t *n, size_t *cap,
                     uint32_t id, const struct mt_record *r)
{
    *arr = grow(*arr, cap, (size_t)id + 1, sizeof **arr);
    if (id >= *n)
        *n = id + 1;
    (*arr)[id] = (struct mt_node_info){r->u.node.parent < id ? r->u.node.parent : 0,
                                       r->u.node.a, r->u.node.b, r->u.node.flags};
}

static void on_definition(struct state *s, const struct mt_record *r)
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
        node_set(&a->pynodes, &a->npynodes, &s->cap_pynodes, r->u.node.id, r);
        break;
    case MT_T_NATIVENODE:
        node_set(&a->nativenodes, &a->nnativenodes, &s->cap_nativenodes, r->u.node.id, r);
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

static void on_record(struct state *s, const struct mt_record *r)
{
    switch (r->tag) {
    case MT_T_ALLOC:
        if (mt_allocator_is_mapping(r->u.ev.allocator))
            map_add(s, r, r->u.ev.addr, r->u.ev.size);
        else
            heap_alloc(s, r);
        break;
    case MT_T_FREE:
        heap_free(s, r->u.ev.addr, r->thread);
        break;
    case MT_T_REALLOC:
        heap_free(s, r->u.ev.old_addr, r->thread);
        if (r->u.ev.addr)
            heap_alloc(s, r);
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
        add_sample(s, r->u.sample.time_us, r->u.sample.rss_bytes);
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

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int mt_analyze(const char *path, const struct mt_analysis_opts *opts,
               struct mt_analysis **out, uint32_t *found_version)
{
    struct mt_reader *rd;
    int rc = mt_reader_open(path, &rd, found_version);
    if (rc != MT_OK)
        return rc;
    struct mt_analysis *a = calloc(1, sizeof *a);
    struct state s = {.a = a, .opts = opts, .sample_stride = 1,
                      .temporary_n = opts->temporary_n ? opts->temporary_n : 1};
    a->samples = calloc(MAX_SAMPLES, sizeof *a->samples);
    a->header = *mt_reader_header(rd);
    a->header.command = xstrdup(a->header.command);
    int show = opts->progress && isatty(2);
    double start = seconds();
    int shown = 0;
    struct mt_record r;
    uint64_t n = 0;
    while ((rc = mt_reader_next(rd, &r)) == 1) {
        on_record(&s, &r);
        if (show && (++n & 0xffff) == 0 && seconds() - start > 1.0) {
            fprintf(stderr, "\rmemtap: reading '%s': %3d%%", path,
                    (int)(100.0 * (double)mt_reader_offset(rd) /
                          (double)(mt_reader_file_size(rd) + 1)));
            shown = 1;
        }
    }
    if (shown)
        fprintf(stderr, "\r\033[K");
    if (rc < 0) {
        a->stop_error = rc;
        a->stop_offset = mt_reader_offset(rd);
    }
    mt_reader_close(rd);
    /* Groups untouched since the last peak still hold their peak value. */
    for (uint32_t g = 0; g < a->ngroups; g++)
        touch(&s, g);
    if (!s.ended)
        end_snapshot(&s);
    if (a->nthreads == 0) {
        a->threads = calloc(1, sizeof *a->threads);
        a->nthreads = 1;
    }
    mt_imap_release(&s.group_ids);
    mt_amap_release(&s.live);
    free(s.gs), free(s.blocks), free(s.free_blocks), free(s.maps);
    free(s.thread_allocs);
    *out = a;
    return MT_OK;
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
    free(a);
}

int mt_analysis_py_frames(const struct mt_analysis *a, uint32_t py_stack,
                          struct mt_frame *out, int max)
{
    int n = 0;
    /* Parents always have smaller ids, so the walk ends. */
    for (uint32_t id = py_stack; id && id < a->npynodes && n < max;
         id = a->pynodes[id].parent) {
        const struct mt_node_info *node = &a->pynodes[id];
        const struct mt_code_info *c =
            node->a < a->ncodes && a->codes[node->a].name ? &a->codes[node->a] : NULL;
        struct mt_frame *f = &out[n++];
        memset(f, 0, sizeof *f);
        f->is_python = 1;
        f->is_entry = (node->flags & 1) != 0;
        if (!c) {
            f->function = "<unknown>";
            f->file = "";
            continue;
        }
        f->function = c->qualname;
        f->file = c->filename;
        f->line = (int32_t)node->b;
    }
    return n;
}

int mt_analysis_native_ips(const struct mt_analysis *a, uint32_t native_stack,
                           uint64_t *out, int max)
{
    int n = 0;
    for (uint32_t id = native_stack; id && id < a->nnativenodes && n < max;
         id = a->nativenodes[id].parent)
        out[n++] = a->nativenodes[id].a;
    return n;
}

const char *mt_analysis_thread_name(const struct mt_analysis *a, uint32_t index)
{
    static char buf[64];
    if (index < a->nthreads && a->threads[index].name && *a->threads[index].name)
        return a->threads[index].name;
    snprintf(buf, sizeof buf, "thread %u",
             index < a->nthreads ? a->threads[index].tid : index);
    return buf;
}
