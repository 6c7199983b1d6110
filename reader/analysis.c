/* See analysis.h: reading a capture through a replay (src/replay.h), and
 * resolving stacks for display. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "analysis.h"
#include "util.h"

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reading and replaying are pipelined: one thread reads, checks,
 * decompresses and decodes blocks into batches of records while the
 * caller's thread replays the previous batch. Each half is about half the
 * work, so a report reads a capture in about half the time on two cores.
 * A batch owns copies of what its records point to, and knows each one's
 * block (a replay error names it). Batches are big: with small ones the
 * reading thread keeps writing into cache lines the replaying core has
 * just read, and both slow down (measured: 2,048 records per batch took
 * twice as long as 32,768; spinning instead of sleeping between batches
 * did not help). */
#define BATCH_RECORDS 32768
#define BATCHES 3                /* in flight: bounds the memory */
#define CHUNK (64u * 1024)
#define SPANS 64

/* Records [first, next span's first) come from the block at offset. */
struct span { uint32_t first; uint64_t offset; };

struct chunk { struct chunk *next; size_t used, cap; char data[]; };

struct batch {
    struct mt_record rec[BATCH_RECORDS];
    uint32_t n;
    struct span spans[SPANS];
    uint32_t nspans;
    int last;                   /* the reader's end: rc follows the records */
    int rc;
    uint64_t end_offset;        /* last: the block the reader stopped in */
    struct chunk *chunks;       /* copies of strings and tables */
    struct batch *next;
};

struct pipeline {
    struct mt_reader *rd;
    const struct mt_analysis_opts *opts;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct batch *full_head, *full_tail, *empty;
    int stop;                   /* the replay wants no more */
};

/* A copy of n bytes that lives as long as the batch. NULL: no memory. */
static void *batch_keep(struct batch *b, const void *p, size_t n)
{
    struct chunk *c = b->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK ? n : CHUNK;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = b->chunks;
        b->chunks = c;
    }
    void *d = c->data + c->used;
    memcpy(d, p, n);
    c->used += (n + 7) & ~(size_t)7;
    if (c->used > c->cap)
        c->used = c->cap;
    return d;
}

static const char *batch_keep_str(struct batch *b, const char *s, int *failed)
{
    const char *d = batch_keep(b, s, strlen(s) + 1);
    if (!d)
        *failed = 1;
    return d ? d : "";
}

/* Makes what rec points to (in the reader's buffers, valid only until the
 * reader's next call) the batch's own. @return 0, or -1 out of memory. */
static int batch_own(struct batch *b, struct mt_record *rec)
{
    int failed = 0;
    switch (rec->tag) {
    case MT_T_THREAD:
        rec->u.thread.name = batch_keep_str(b, rec->u.thread.name, &failed);
        break;
    case MT_T_CODE:
        rec->u.code.name = batch_keep_str(b, rec->u.code.name, &failed);
        rec->u.code.qualname = batch_keep_str(b, rec->u.code.qualname, &failed);
        rec->u.code.filename = batch_keep_str(b, rec->u.code.filename, &failed);
        break;
    case MT_T_OBJECT:
        rec->u.object.path = batch_keep_str(b, rec->u.object.path, &failed);
        if (rec->u.object.build_id_len &&
            !(rec->u.object.build_id = batch_keep(b, rec->u.object.build_id,
                                                  rec->u.object.build_id_len)))
            failed = 1;
        if (rec->u.object.nseg &&
            !(rec->u.object.seg = batch_keep(b, rec->u.object.seg,
                                             2 * rec->u.object.nseg * sizeof(uint64_t))))
            failed = 1;
        break;
    case MT_T_TOTALS:
        if (!(rec->u.totals = batch_keep(b, rec->u.totals, sizeof *rec->u.totals)))
            failed = 1;
        break;
    case MT_T_PROGRAM:
        rec->u.program.python_version =
            batch_keep_str(b, rec->u.program.python_version, &failed);
        break;
    default:
        break;
    }
    return failed ? -1 : 0;
}

static void batch_reset(struct batch *b)
{
    while (b->chunks) {
        struct chunk *c = b->chunks;
        b->chunks = c->next;
        free(c);
    }
    b->n = 0;
    b->nspans = 0;
    b->last = 0;
    b->rc = 0;
    b->next = NULL;
}

/* Hands the OBJECT and NATIVENODE records of rec[0..n) to opts->on_native. */
static void pass_native(const struct mt_analysis_opts *o, const struct mt_record *rec, int n)
{
    for (int i = 0; i < n; i++)
        if (rec[i].tag == MT_T_NATIVENODE || rec[i].tag == MT_T_OBJECT)
            o->on_native(&rec[i], o->on_native_arg);
}

/* Fills b with the next records. */
static void batch_fill(struct pipeline *pl, struct batch *b)
{
    while (b->n < BATCH_RECORDS && b->nspans < SPANS) {
        int rc = mt_reader_next_many(pl->rd, &b->rec[b->n], (int)(BATCH_RECORDS - b->n));
        if (rc <= 0) {
            b->last = 1;
            b->rc = rc;
            b->end_offset = mt_reader_offset(pl->rd);
            if (pl->opts->on_native)
                pl->opts->on_native(NULL, pl->opts->on_native_arg);
            return;
        }
        if (pl->opts->on_native)
            pass_native(pl->opts, &b->rec[b->n], rc);
        uint64_t offset = mt_reader_offset(pl->rd);
        if (!b->nspans || b->spans[b->nspans - 1].offset != offset)
            b->spans[b->nspans++] = (struct span){b->n, offset};
        b->n += (uint32_t)rc;
        if (batch_own(b, &b->rec[b->n - 1]) < 0) {  /* only the last points */
            b->n--;
            b->last = 1;
            b->rc = MT_E_NOMEM;
            b->end_offset = offset;
            return;
        }
    }
}

static void *read_batches(void *arg)
{
    struct pipeline *pl = arg;
    for (;;) {
        pthread_mutex_lock(&pl->lock);
        while (!pl->empty && !pl->stop)
            pthread_cond_wait(&pl->changed, &pl->lock);
        if (pl->stop) {
            pthread_mutex_unlock(&pl->lock);
            return NULL;
        }
        struct batch *b = pl->empty;
        pl->empty = b->next;
        pthread_mutex_unlock(&pl->lock);

        batch_reset(b);
        batch_fill(pl, b);

        pthread_mutex_lock(&pl->lock);
        if (pl->full_tail)
            pl->full_tail->next = b;
        else
            pl->full_head = b;
        pl->full_tail = b;
        pthread_cond_broadcast(&pl->changed);
        pthread_mutex_unlock(&pl->lock);
        if (b->last)
            return NULL;
    }
}

static struct batch *take_full(struct pipeline *pl)
{
    pthread_mutex_lock(&pl->lock);
    while (!pl->full_head)
        pthread_cond_wait(&pl->changed, &pl->lock);
    struct batch *b = pl->full_head;
    pl->full_head = b->next;
    if (!pl->full_head)
        pl->full_tail = NULL;
    pthread_mutex_unlock(&pl->lock);
    return b;
}

static void give_empty(struct pipeline *pl, struct batch *b)
{
    pthread_mutex_lock(&pl->lock);
    b->next = pl->empty;
    pl->empty = b;
    pthread_cond_broadcast(&pl->changed);
    pthread_mutex_unlock(&pl->lock);
}

struct progress { const char *path; uint64_t file_size; int show, shown; double start; };

/* offset: of the block replayed last (the reader may be further on). */
static void progress_update(struct progress *p, uint64_t offset)
{
    if (!p->show || seconds() - p->start <= 1.0)
        return;
    fputs("\rmemtap: reading '", stderr);
    mt_put_printable(stderr, p->path, 0);
    fprintf(stderr, "': %3d%%", (int)(100.0 * (double)offset / (double)(p->file_size + 1)));
    p->shown = 1;
}

/* Replays b. @return 1 to go on, else the code reading stopped with (0 at
 * a clean end), *offset its block. */
static int batch_replay(struct mt_replay *replay, const struct batch *b,
                        uint64_t *offset)
{
    uint32_t span = 0, i;
    int rc = mt_replay_add_many(replay, b->rec, b->n, &i);
    if (rc != MT_OK) {
        while (span + 1 < b->nspans && b->spans[span + 1].first <= i)
            span++;
        *offset = b->spans[span].offset;
        return rc;  /* reported like a damaged block: what came before stands */
    }
    if (b->last) {
        *offset = b->end_offset;
        return b->rc;
    }
    *offset = b->spans[b->nspans - 1].offset;
    return 1;
}

/* Reads and replays everything; a second thread reads when it can start.
 * @return like batch_replay's end. */
static int replay_all(struct mt_reader *rd, const struct mt_analysis_opts *opts,
                      struct mt_replay *replay, struct progress *progress,
                      uint64_t *offset)
{
    struct pipeline pl = {.rd = rd, .opts = opts};
    struct batch *all[BATCHES] = {0};
    int rc = MT_E_NOMEM;
    for (int i = 0; i < BATCHES; i++) {
        if (!(all[i] = calloc(1, sizeof *all[i])))
            goto out;
        all[i]->next = pl.empty;
        pl.empty = all[i];
    }
    pthread_mutex_init(&pl.lock, NULL);
    pthread_cond_init(&pl.changed, NULL);
    pthread_t reader;
    if (pthread_create(&reader, NULL, read_batches, &pl) != 0) {
        /* No thread: read and replay in turn, with one batch. */
        do {
            batch_reset(all[0]);
            batch_fill(&pl, all[0]);
            rc = batch_replay(replay, all[0], offset);
            progress_update(progress, *offset);
        } while (rc == 1);
    } else {
        do {
            struct batch *b = take_full(&pl);
            rc = batch_replay(replay, b, offset);
            progress_update(progress, *offset);
            give_empty(&pl, b);
        } while (rc == 1);
        pthread_mutex_lock(&pl.lock);
        pl.stop = 1;
        pthread_cond_broadcast(&pl.changed);
        pthread_mutex_unlock(&pl.lock);
        pthread_join(reader, NULL);
    }
    pthread_cond_destroy(&pl.changed);
    pthread_mutex_destroy(&pl.lock);
out:
    for (int i = 0; i < BATCHES; i++) {
        if (all[i])
            batch_reset(all[i]);
        free(all[i]);
    }
    return rc;
}

int mt_analyze(const char *path, const struct mt_analysis_opts *opts,
               struct mt_analysis **out, uint32_t *found_version)
{
    struct mt_reader *rd;
    int rc = mt_reader_open(path, &rd, found_version);
    if (rc != MT_OK)
        return rc;
    struct mt_replay *replay = mt_replay_new(opts);
    if (!replay) {
        mt_reader_close(rd);
        return MT_E_NOMEM;
    }
    /* One map of live blocks, the replay's, keyed by allocation number:
     * the reader need not turn numbers back into addresses. */
    mt_reader_numbers_only(rd);
    mt_replay_key_by_number(replay);
    uint64_t size = mt_reader_file_size(rd);  /* 0 for a pipe: no progress to show */
    struct progress progress = {path, size, opts->progress && size && isatty(2), 0,
                               seconds()};
    uint64_t offset = 0;
    rc = replay_all(rd, opts, replay, &progress, &offset);
    if (progress.shown)
        fprintf(stderr, "\r\033[K");
    struct mt_analysis *a = mt_replay_finish(replay, mt_reader_header(rd));
    if (rc < 0) {
        a->stop_error = rc;
        a->stop_offset = offset;
    }
    mt_reader_close(rd);
    *out = a;
    return MT_OK;
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
        f->is_entry = (node->flags & MT_PYF_ENTRY) != 0;
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
                           uint64_t *out, uint32_t *objects, int max)
{
    int n = 0;
    for (uint32_t id = native_stack; id && id < a->nnativenodes && n < max;
         id = a->nativenodes[id].parent) {
        if (objects)
            objects[n] = a->nativenodes[id].objects;
        out[n++] = a->nativenodes[id].a;
    }
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
