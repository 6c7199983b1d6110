/* See symbols-ahead.h. */
#define _GNU_SOURCE
#include "symbols-ahead.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../src/map.h"

/* One thing for the thread to do, in the capture's order: declare an
 * object (object set; the thread frees it), or resolve a return address.
 * Every address a stack names is queued, not only the first of each
 * object: the first address in a compile unit decodes the unit's line
 * table and lists its functions, which costs a hundred times what the
 * next address in it does, and summary and flamegraph show every stack. */
struct item {
    struct mt_object_info *object;
    uint64_t ip;
    uint32_t objects;  /* OBJECT records before ip's node */
};

struct mt_ahead {
    /* the reading thread's alone */
    uint32_t objects;          /* OBJECT records seen */
    /* (address, objects) pairs queued (queued_key): nodes name the same
     * return addresses over and over (ten nodes an address in a Python
     * program), and each is queued once */
    struct mt_amap queued;

    pthread_mutex_t lock;
    pthread_cond_t more;
    struct item *items;
    size_t n, cap, taken;
    int ended;                 /* the analysis read everything */
    int stop;                  /* the report wants the symbolizer */
    int started, running, failed;
    pthread_t thread;
    struct mt_symbolizer *sym; /* the thread's until it is joined */
    uint32_t nobjects;         /* objects the symbolizer was given */
};

/* Declares an object as the capture recorded it. */
static void add_object(struct mt_symbolizer *sym, const struct mt_object_info *ob)
{
    struct mt_segment segs[64];
    size_t ns = ob->nseg < 64 ? ob->nseg : 64;
    for (size_t s = 0; s < ns; s++)
        segs[s] = (struct mt_segment){ob->seg[2 * s], ob->seg[2 * s + 1], 0};
    mt_symbolizer_add_object(sym, ob->path ? ob->path : "", ob->base,
                             ob->build_id, ob->build_id_len, segs, ns);
}

/* A copy of r's object in one block (free() frees it). NULL: out of memory. */
static struct mt_object_info *object_copy(const struct mt_record *r)
{
    size_t path = strlen(r->u.object.path) + 1;
    size_t segs = (size_t)r->u.object.nseg * 2 * sizeof(uint64_t);
    struct mt_object_info *ob = malloc(sizeof *ob + segs + path + r->u.object.build_id_len);
    if (!ob)
        return NULL;
    ob->seg = (uint64_t *)(ob + 1);
    ob->path = (char *)ob->seg + segs;
    ob->build_id = (uint8_t *)ob->path + path;
    memcpy(ob->seg, r->u.object.seg, segs);
    memcpy(ob->path, r->u.object.path, path);
    memcpy(ob->build_id, r->u.object.build_id, r->u.object.build_id_len);
    ob->base = r->u.object.base;
    ob->build_id_len = r->u.object.build_id_len;
    ob->nseg = r->u.object.nseg;
    return ob;
}

static void *run(void *arg)
{
    struct mt_ahead *w = arg;
    /* Behind the replay, which the report waits for, on a busy machine. */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->taken == w->n && !w->ended && !w->stop)
            pthread_cond_wait(&w->more, &w->lock);
        if (w->taken == w->n)
            break;
        struct item it = w->items[w->taken++];
        if (w->taken == w->n)
            w->taken = w->n = 0;  /* caught up: the queue starts again */
        if (w->stop && !it.object)
            continue;  /* the report resolves what it shows itself */
        pthread_mutex_unlock(&w->lock);
        if (it.object) {
            add_object(w->sym, it.object);
            free(it.object);
            w->nobjects++;
        } else {
            mt_symbolizer_resolve(w->sym, it.ip, it.objects, NULL, 0);
        }
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

struct mt_ahead *mt_ahead_new(void)
{
    struct mt_ahead *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->more, NULL);
    return w;
}

static uint64_t queued_key(uint64_t ip, uint32_t objects)
{
    uint64_t k = ip ^ ((uint64_t)objects << 48);
    return k ? k : 1;  /* the map takes no 0 */
}

/* The thread and its symbolizer, at the first return address queued. */
static void start(struct mt_ahead *w)
{
    w->started = 1;
    if (!(w->sym = mt_symbolizer_new()) ||
        pthread_create(&w->thread, NULL, run, w) != 0)
        w->failed = 1;
    else
        w->running = 1;
}

void mt_ahead_record(const struct mt_record *r, void *ahead)
{
    struct mt_ahead *w = ahead;
    if (w->failed)
        return;
    if (r && r->tag == MT_T_OBJECT)
        w->objects++;
    if (r && r->tag == MT_T_NATIVENODE) {
        int before;
        if (!mt_amap_upsert(&w->queued, queued_key(r->u.node.a, w->objects), &before)) {
            w->failed = 1;
            return;
        }
        if (before)
            return;
    }
    if (!r) {
        pthread_mutex_lock(&w->lock);
        w->ended = 1;
        pthread_cond_signal(&w->more);
        pthread_mutex_unlock(&w->lock);
        return;
    }
    struct item it = {NULL, 0, w->objects};
    if (r->tag == MT_T_OBJECT && !(it.object = object_copy(r))) {
        w->failed = 1;
        return;
    }
    if (r->tag == MT_T_NATIVENODE)
        it.ip = r->u.node.a;
    if (r->tag == MT_T_NATIVENODE && !w->started) {
        start(w);
        if (w->failed)
            return;
    }
    pthread_mutex_lock(&w->lock);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 4096;
        struct item *items = realloc(w->items, cap * sizeof *items);
        if (!items) {
            w->failed = 1;
            pthread_mutex_unlock(&w->lock);
            free(it.object);
            return;
        }
        w->items = items;
        w->cap = cap;
    }
    w->items[w->n++] = it;
    pthread_cond_signal(&w->more);
    pthread_mutex_unlock(&w->lock);
}

struct mt_symbolizer *mt_ahead_finish(struct mt_ahead *w, const struct mt_analysis *a)
{
    struct mt_symbolizer *sym = NULL;
    if (w) {
        pthread_mutex_lock(&w->lock);
        w->stop = 1;
        pthread_cond_signal(&w->more);
        pthread_mutex_unlock(&w->lock);
        if (w->running)
            pthread_join(w->thread, NULL);
        sym = w->sym;
        /* Given other objects than the analysis kept (it ran out of memory
         * on the way): built again below. */
        if (sym && (!a || w->failed || w->nobjects != a->nobjects)) {
            mt_symbolizer_free(sym);
            sym = NULL;
        }
        for (size_t i = w->taken; i < w->n; i++)
            free(w->items[i].object);
        free(w->items);
        mt_amap_release(&w->queued);
        pthread_cond_destroy(&w->more);
        pthread_mutex_destroy(&w->lock);
        free(w);
    }
    if (sym || !a || a->nnativenodes <= 1)
        return sym;
    if (!(sym = mt_symbolizer_new()))
        return NULL;
    for (uint32_t i = 0; i < a->nobjects; i++)
        add_object(sym, &a->objects[i]);
    return sym;
}
