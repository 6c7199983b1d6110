/* See collector.h. The rings are read in place; an event leaves its ring
 * only when its number is the next one, so the capture is in exactly the
 * order design.md §2 defines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector.h"
#include "linetable.h"
#include "map.h"
#include "replay.h"

/* Thread-local ids of one slot's owner -> capture-wide ids. */
struct idmap { uint32_t *to; uint32_t cap; };

struct slot_state {
    int listed;
    int broken;          /* a record did not parse: skip this owner */
    uint32_t thread;     /* capture-wide thread index, 0 until known */
    uint64_t tail;
    uint64_t head_seen;  /* the ring's head when last read: reading it costs
                            a cache miss, the producer writes it per event */
    struct idmap codes, pynodes, nativenodes;
};

/* A code object as the shim saw it: its line table stays here, so the
 * capture names each frame by its line and carries no line tables. */
struct code_object {
    uint32_t code;         /* the capture's code id (name, file, first line) */
    struct mt_lineindex lines;  /* its line table, walked once */
};

/* An object the capture lists, by content, and the addresses it spans. */
struct written_object { uint64_t key[3], lo, hi; };

struct mt_collector {
    struct mt_shm *shm;
    struct mt_writer *w;
    struct mt_replay *replay;  /* --aggregate: records go here instead */
    int err;
    uint64_t next_seq, events, lost;
    unsigned stuck;            /* drains in a row that waited on a gap */
    uint64_t exec_waiting;     /* an EXEC seen waiting for its turn: its number */
    uint32_t execs;            /* EXECs taken: the capture started over */
    uint64_t unloads;          /* the last OBJECTS event's count of unloads */
    uint32_t unload_epoch;     /* OBJECTS events with a new count: part of
                                  a native node's key */
    char exec_path[PATH_MAX + 1]; /* the last one's executable */
    char *exec_command;        /* and its command line, malloc'ed */
    struct mt_header header;   /* the writer's (mt_collector_attach) */
    int has_header;
    int exited;                /* an EXIT was seen: its status below */
    int exit_code;
    uint32_t threads;
    int program_written;
    unsigned nlisted;
    unsigned listed[MT_SLOTS];
    struct slot_state slots[MT_SLOTS];
    struct mt_imap codes, pynodes, nativenodes;
    struct written_object *objects;     /* written and not replaced since */
    uint32_t nobjects, cap_objects;
    struct mt_imap objects_py;          /* code objects, by content */
    struct code_object *code_objects;   /* by the id objects_py gives */
    uint32_t ncode_objects;
};

static int idmap_set(struct idmap *m, uint32_t local, uint32_t global)
{
    if (local >= m->cap) {
        uint32_t cap = m->cap ? m->cap : 1024;
        while (cap <= local)
            cap *= 2;
        uint32_t *to = realloc(m->to, (size_t)cap * sizeof *to);
        if (!to)
            return MT_E_NOMEM;
        memset(to + m->cap, 0, (size_t)(cap - m->cap) * sizeof *to);
        m->to = to;
        m->cap = cap;
    }
    m->to[local] = global;
    return MT_OK;
}

static uint32_t idmap_get(const struct idmap *m, uint32_t local)
{
    return local < m->cap ? m->to[local] : 0;
}

int mt_collector_new(uint32_t flags, int collector_pid,
                     struct mt_collector **out, int *fd_out)
{
    struct mt_collector *c = calloc(1, sizeof *c);
    if (!c)
        return MT_E_NOMEM;
    int fd = memfd_create("memtap", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)MT_SHM_BYTES) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        free(c);
        errno = e;
        return MT_E_IO;
    }
    void *p = mmap(NULL, MT_SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        close(fd);
        free(c);
        errno = e;
        return MT_E_IO;
    }
    c->shm = p;
    mt_shm_init(c->shm, flags, collector_pid);
    *out = c;
    *fd_out = fd;
    return MT_OK;
}

int mt_collector_adopt(int fd, struct mt_collector **out)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != MT_SHM_BYTES)
        return MT_E_CORRUPT;
    struct mt_collector *c = calloc(1, sizeof *c);
    if (!c)
        return MT_E_NOMEM;
    void *p = mmap(NULL, MT_SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        free(c);
        return MT_E_IO;
    }
    c->shm = p;
    if (c->shm->magic != MT_SHM_MAGIC || c->shm->version != MT_SHM_VERSION) {
        munmap(p, MT_SHM_BYTES);
        free(c);
        return MT_E_CORRUPT;
    }
    *out = c;
    return MT_OK;
}

void mt_collector_attach(struct mt_collector *c, struct mt_writer *w,
                         const struct mt_header *h)
{
    c->w = w;
    c->header = *h;
    c->has_header = 1;
}

char *mt_args_join(const char *args, size_t n)
{
    while (n && !args[n - 1])
        n--;
    char *s = n ? malloc(n + 1) : NULL;
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++)
        s[i] = args[i] ? args[i] : ' ';
    s[n] = 0;
    return s;
}

/* The traced process's command line (malloc'ed), NULL when unreadable. */
static char *program_command(const struct mt_collector *c)
{
    char proc[64], buf[4096];
    snprintf(proc, sizeof proc, "/proc/%d/cmdline", (int)atomic_load(&c->shm->producer_pid));
    int fd = open(proc, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    if (fd >= 0)
        close(fd);
    return n > 0 ? mt_args_join(buf, (size_t)n) : NULL;
}

struct mt_header mt_collector_header(const struct mt_collector *c, const struct mt_header *h)
{
    struct mt_header out = *h;
    if (c->exec_command)
        out.command = c->exec_command;
    return out;
}

void mt_collector_aggregate(struct mt_collector *c, struct mt_replay *r)
{
    c->replay = r;
}

static void put(struct mt_collector *c, const struct mt_record *r)
{
    if (c->err != MT_OK)
        return;
    c->err = c->replay ? mt_replay_add(c->replay, r) : mt_writer_add(c->w, r);
}

static uint32_t thread_of(struct mt_collector *c, struct slot_state *st)
{
    if (!st->thread)
        st->thread = ++c->threads;
    return st->thread;
}

static void on_thread(struct mt_collector *c, struct slot_state *st,
                      const struct mt_rthread *t)
{
    char name[65];
    uint32_t n = t->name_len < 64 ? t->name_len : 64;
    if (sizeof *t + n > t->h.len)
        n = 0;
    memcpy(name, t + 1, n);
    name[n] = 0;
    struct mt_record r = {.tag = MT_T_THREAD};
    r.u.thread.index = thread_of(c, st);
    r.u.thread.tid = t->tid;
    r.u.thread.name = name;
    put(c, &r);
}

static char *copy_str(const uint8_t **p, uint32_t n)
{
    char *s = malloc((size_t)n + 1);
    if (s) {
        memcpy(s, *p, n);
        s[n] = 0;
    }
    *p += n;
    return s;
}


static int on_code(struct mt_collector *c, struct slot_state *st,
                   const struct mt_rcode *k)
{
    uint64_t names = (uint64_t)k->name_len + k->qualname_len + k->filename_len;
    uint64_t total = names + k->linetable_len;
    if (sizeof *k + total > k->h.len)
        return MT_E_CORRUPT;
    const uint8_t *p = (const uint8_t *)(k + 1);
    uint64_t key[3] = {mt_hash_bytes(p, total, 1), mt_hash_bytes(p, total, 2),
                       ((uint64_t)(uint32_t)k->firstlineno << 32) |
                           (((uint64_t)k->name_len << 16) ^ k->linetable_format)};
    int is_new;
    uint32_t object = mt_imap_intern(&c->objects_py, key, &is_new);
    if (!object)
        return MT_E_NOMEM;
    if (is_new) {
        if (object >= c->ncode_objects) {
            uint32_t cap = c->ncode_objects ? c->ncode_objects * 2 : 256;
            while (cap <= object)
                cap *= 2;
            struct code_object *o = realloc(c->code_objects, cap * sizeof *o);
            if (!o)
                return MT_E_NOMEM;
            memset(o + c->ncode_objects, 0, (cap - c->ncode_objects) * sizeof *o);
            c->code_objects = o;
            c->ncode_objects = cap;
        }
        struct code_object *o = &c->code_objects[object];
        if (mt_lineindex_build(&o->lines, k->linetable_format, p + names,
                               k->linetable_len, k->firstlineno) != 0)
            return MT_E_NOMEM;
        /* Code objects that look alike (exec in a loop) share one code id. */
        uint64_t shown[3] = {mt_hash_bytes(p, names, 1), mt_hash_bytes(p, names, 2),
                             ((uint64_t)(uint32_t)k->firstlineno << 32) | k->name_len};
        o->code = mt_imap_intern(&c->codes, shown, &is_new);
        if (!o->code)
            return MT_E_NOMEM;
        if (is_new) {
            struct mt_record r = {.tag = MT_T_CODE};
            r.u.code.id = o->code;
            r.u.code.firstlineno = k->firstlineno;
            char *name = copy_str(&p, k->name_len);
            char *qual = copy_str(&p, k->qualname_len);
            char *file = copy_str(&p, k->filename_len);
            if (name && qual && file) {
                r.u.code.name = name;
                r.u.code.qualname = qual;
                r.u.code.filename = file;
                put(c, &r);
            }
            free(name);
            free(qual);
            free(file);
        }
    }
    return idmap_set(&st->codes, k->id, object);
}

static int on_node(struct mt_collector *c, struct slot_state *st,
                   const struct mt_rnode *n)
{
    int py = n->h.type == MT_R_PYNODE;
    struct idmap *m = py ? &st->pynodes : &st->nativenodes;
    uint32_t parent = idmap_get(m, n->parent);
    uint64_t a = n->a;
    uint32_t b = n->b;
    if (py) {
        uint32_t object = idmap_get(&st->codes, (uint32_t)n->a);
        const struct code_object *o =
            object && object < c->ncode_objects ? &c->code_objects[object] : NULL;
        a = o ? o->code : 0;
        b = o ? (uint32_t)mt_lineindex_line(&o->lines, n->b) : 0;
    }
    /* A native node after an unload is a new one, even where an old one
     * had the same address: the address may lie in another object now. */
    uint64_t key[3] = {parent | (py ? 0 : (uint64_t)c->unload_epoch << 32), a,
                       ((uint64_t)n->flags << 32) | b};
    int is_new;
    uint32_t id = mt_imap_intern(py ? &c->pynodes : &c->nativenodes, key, &is_new);
    if (!id)
        return MT_E_NOMEM;
    if (is_new) {
        struct mt_record r = {.tag = py ? MT_T_PYNODE : MT_T_NATIVENODE};
        r.u.node.id = id;
        r.u.node.parent = parent;
        r.u.node.a = a;
        r.u.node.b = b;
        r.u.node.flags = n->flags;
        put(c, &r);
    }
    return idmap_set(m, n->id, id);
}

/* The traced process's executable into path (PATH_MAX + 1 bytes; "" when
 * it cannot be read). */
static void program_path(const struct mt_collector *c, char *path)
{
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%d/exe", (int)atomic_load(&c->shm->producer_pid));
    ssize_t k = readlink(proc, path, PATH_MAX);
    path[k > 0 ? k : 0] = 0;
}

static int on_object(struct mt_collector *c, const struct mt_robject *o)
{
    uint64_t seg_bytes = (uint64_t)o->nseg * 16;
    if (o->nseg > 32 ||
        sizeof *o + (uint64_t)o->path_len + o->build_id_len + seg_bytes > o->h.len)
        return MT_E_CORRUPT;
    const uint8_t *p = (const uint8_t *)(o + 1);
    uint64_t seg[64];
    memcpy(seg, p + o->path_len + o->build_id_len, seg_bytes);
    struct written_object w = {{mt_hash_bytes(p, o->path_len, 3), o->base,
                                mt_hash_bytes(p + o->path_len, o->build_id_len, 4)},
                               UINT64_MAX, 0};
    for (uint32_t i = 0; i < o->nseg; i++) {
        uint64_t lo = o->base + seg[2 * i], hi = lo + seg[2 * i + 1];
        w.lo = lo < w.lo ? lo : w.lo;
        w.hi = hi > w.hi ? hi : w.hi;
    }
    /* Every thread lists the objects it sees loaded: each is written once,
     * and again only after another took its place (dlclose, dlopen). */
    for (uint32_t i = 0; i < c->nobjects; i++)
        if (!memcmp(c->objects[i].key, w.key, sizeof w.key))
            return MT_OK;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < c->nobjects; i++) {
        const struct written_object *x = &c->objects[i];
        if (x->lo >= w.hi || w.lo >= x->hi)
            c->objects[kept++] = *x;
    }
    c->nobjects = kept;
    if (c->nobjects == c->cap_objects) {
        uint32_t cap = c->cap_objects ? 2 * c->cap_objects : 64;
        struct written_object *grown = realloc(c->objects, cap * sizeof *grown);
        if (!grown)
            return MT_E_NOMEM;
        c->objects = grown;
        c->cap_objects = cap;
    }
    c->objects[c->nobjects++] = w;
    char path[PATH_MAX + 1];
    uint32_t n = o->path_len < PATH_MAX ? o->path_len : PATH_MAX;
    memcpy(path, p, n);
    path[n] = 0;
    if (n == 0)  /* the main program: name it while it still runs */
        program_path(c, path);
    struct mt_record r = {.tag = MT_T_OBJECT};
    r.u.object.path = path;
    r.u.object.base = o->base;
    r.u.object.build_id = p + o->path_len;
    r.u.object.build_id_len = o->build_id_len;
    r.u.object.nseg = o->nseg;
    r.u.object.seg = seg;
    r.u.object.unload = o->unload;
    put(c, &r);
    return MT_OK;
}

static void on_event(struct mt_collector *c, struct slot_state *st,
                     const struct mt_revent *e)
{
    uint32_t thread = thread_of(c, st);
    if (e->h.type != MT_R_END)
        c->events++;
    if (e->h.type == MT_R_FREE) {
        /* The bulk of a capture: no record built. */
        if (c->err == MT_OK)
            c->err = c->replay ? mt_replay_free(c->replay, thread, e->addr)
                               : mt_writer_free(c->w, thread, e->addr);
        return;
    }
    if (e->h.type == MT_R_ALLOC) {
        uint32_t py = idmap_get(&st->pynodes, e->py_stack);
        uint32_t native = idmap_get(&st->nativenodes, e->native_stack);
        if (c->err == MT_OK)
            c->err = c->replay
                ? mt_replay_alloc(c->replay, thread, (uint8_t)e->h.kind, e->addr, e->size,
                                  py, native)
                : mt_writer_alloc(c->w, thread, (uint8_t)e->h.kind, e->addr, e->size,
                                  py, native);
        return;
    }
    /* MUNMAP or END */
    struct mt_record r = {.tag = e->h.type == MT_R_MUNMAP ? MT_T_MUNMAP : MT_T_END};
    r.thread = thread;
    r.u.ev.allocator = (uint8_t)e->h.kind;
    r.u.ev.addr = e->addr;
    if (e->h.type == MT_R_MUNMAP)
        r.u.ev.size = e->size;
    put(c, &r);
}

#define EVENT_TYPES (1u << MT_R_ALLOC | 1u << MT_R_FREE | 1u << MT_R_MUNMAP | \
                     1u << MT_R_NOP | 1u << MT_R_END | 1u << MT_R_MARK | \
                     1u << MT_R_EXEC | 1u << MT_R_EXIT | 1u << MT_R_OBJECTS)

static int is_event(uint16_t type)
{
    return type < 32 && (EVENT_TYPES >> type & 1);
}

/* Everything before the mark goes to the file, ending a block there; the
 * program learns where (memtap extract cuts the capture at such offsets). */
static void on_mark(struct mt_collector *c, const struct mt_revent *e)
{
    uint64_t at = UINT64_MAX;
    if (c->w && mt_writer_flush(c->w) == MT_OK)
        at = mt_writer_bytes(c->w);
    c->shm->mark_offset = at;
    atomic_store_explicit(&c->shm->marks_done, e->addr + 1, memory_order_release);
}

static void idmaps_free(struct slot_state *st)
{
    free(st->codes.to);
    free(st->pynodes.to);
    free(st->nativenodes.to);
    memset(&st->codes, 0, sizeof st->codes);
    memset(&st->pynodes, 0, sizeof st->pynodes);
    memset(&st->nativenodes, 0, sizeof st->nativenodes);
}

/* Drops the capture-wide ids (code objects, stack nodes, objects). */
static void ids_forget(struct mt_collector *c)
{
    mt_imap_release(&c->codes);
    mt_imap_release(&c->pynodes);
    mt_imap_release(&c->nativenodes);
    free(c->objects);
    c->objects = NULL;
    c->nobjects = c->cap_objects = 0;
    mt_imap_release(&c->objects_py);
    for (uint32_t i = 0; i < c->ncode_objects; i++)
        mt_lineindex_free(&c->code_objects[i].lines);
    free(c->code_objects);
    c->code_objects = NULL;
    c->ncode_objects = 0;
}

static void program_check(struct mt_collector *c);
static void list_slots(struct mt_collector *c);

/* The process exec'd a program whose shim carries on (slot keep: its
 * thread): the capture starts over with it, as if memtap had started it.
 * Every other ring was the old program's, whose threads the exec ended:
 * the new program waits for this (exec_done) before it records anything
 * else. All their events came before this one (it is the next number), so
 * what is left in them is definitions no later record can use. */
static void on_exec(struct mt_collector *c, unsigned keep, uint64_t seq)
{
    c->exec_waiting = 0;
    c->execs++;
    program_path(c, c->exec_path);
    list_slots(c);  /* an old thread may have claimed a ring not listed yet */
    for (unsigned k = 0; k < c->nlisted; k++) {
        unsigned i = c->listed[k];
        struct slot_state *st = &c->slots[i];
        idmaps_free(st);
        st->thread = 0;
        if (i == keep)
            continue;
        st->tail = st->head_seen =
            atomic_load_explicit(&c->shm->slots[i].head, memory_order_acquire);
        atomic_store_explicit(&c->shm->slots[i].tail, st->tail, memory_order_release);
        atomic_store_explicit(&c->shm->slots[i].state, MT_SLOT_CLOSED,
                              memory_order_release);
    }
    ids_forget(c);
    c->unloads = 0;  /* the new program's shim counts from 0 */
    c->threads = 0;
    c->events = c->lost = 0;
    char *command = program_command(c);
    if (command) {
        free(c->exec_command);
        c->exec_command = command;
    }
    struct mt_header h = mt_collector_header(c, &c->header);
    int rc = c->replay ? mt_replay_restart(c->replay)
                       : c->w ? mt_writer_restart(c->w, c->has_header ? &h : NULL) : MT_OK;
    if (rc != MT_OK && c->err == MT_OK)
        c->err = rc;
    c->program_written = 0;
    program_check(c);
    atomic_store_explicit(&c->shm->exec_done, seq + 1, memory_order_release);
}

/* Objects were unloaded (the first thread to notice tells): a native node
 * recorded after it is a new one, even at an address an old one had. */
static void on_unload(struct mt_collector *c, const struct mt_revent *e)
{
    if (e->addr <= c->unloads)
        return;  /* told already (counts only grow) */
    c->unloads = e->addr;
    c->unload_epoch++;
}

/* The last one counts: an atexit handler may call exit again, and a
 * program an exec replaced never ends. */
static void on_exit_status(struct mt_collector *c, const struct mt_revent *e)
{
    c->exited = 1;
    c->exit_code = (int)(e->addr & 0xff);  /* what the kernel keeps of it */
}

/* A record that is not an event: a definition, or padding. */
static int on_definition(struct mt_collector *c, struct slot_state *st,
                         const struct mt_rhdr *h)
{
    switch (h->type) {
    case MT_R_PAD:
        return MT_OK;
    case MT_R_CODE:
        return h->len >= sizeof(struct mt_rcode)
                   ? on_code(c, st, (const struct mt_rcode *)h) : MT_E_CORRUPT;
    case MT_R_PYNODE:
    case MT_R_NATIVENODE:
        return h->len >= sizeof(struct mt_rnode)
                   ? on_node(c, st, (const struct mt_rnode *)h) : MT_E_CORRUPT;
    case MT_R_THREAD:
        if (h->len >= sizeof(struct mt_rthread))
            on_thread(c, st, (const struct mt_rthread *)h);
        return MT_OK;
    case MT_R_OBJECT:
        return h->len >= sizeof(struct mt_robject)
                   ? on_object(c, (const struct mt_robject *)h) : MT_E_CORRUPT;
    default:
        return MT_E_CORRUPT;
    }
}

/* Consumes records of slot i from its tail up to head, at most budget of
 * them. *blocked is set when it stopped at an event that must wait for an
 * earlier number. @return records consumed. */
static long slot_drain(struct mt_collector *c, unsigned i, uint64_t head, long budget,
                       int *blocked)
{
    struct slot_state *st = &c->slots[i];
    const uint8_t *ring = mt_shm_ring(c->shm, i);
    uint64_t tail = st->tail;  /* a local: the calls below could alias it */
    long n = 0;
    *blocked = 0;
    while (tail != head && n < budget) {
        uint64_t pos = tail & (MT_RING_BYTES - 1);
        const struct mt_rhdr *h = (const struct mt_rhdr *)(ring + pos);
        uint32_t len = h->len;  /* read once: the program's memory */
        uint16_t type = h->type;
        int event = is_event(type);
        if (st->broken || len < sizeof *h || (len & 7) || len > MT_RING_BYTES - pos ||
            len > head - tail || (event && len < mt_revent_len(type))) {
            st->broken = 1;  /* a damaged ring: drop what is left of it */
            tail = head;
            n++;
            break;
        }
        if (event) {
            const struct mt_revent *e = (const struct mt_revent *)h;
            if (e->seq > c->next_seq) {
                *blocked = 1;
                break;
            }
            /* Equal: the next one. Smaller: a number given up on (see
             * mt_collector_drain) that came after all; its event is kept,
             * out of place. */
            if (e->seq == c->next_seq)
                c->next_seq++;
            if (type == MT_R_MARK)
                on_mark(c, e);
            else if (type == MT_R_EXEC)
                on_exec(c, i, e->seq);
            else if (type == MT_R_EXIT)
                on_exit_status(c, e);
            else if (type == MT_R_OBJECTS)
                on_unload(c, e);
            else if (type != MT_R_NOP)
                on_event(c, st, e);
        } else {
            int rc = on_definition(c, st, h);
            if (rc == MT_E_NOMEM)
                c->err = rc;
            else if (rc != MT_OK)
                st->broken = 1;
        }
        tail += len;
        n++;
    }
    st->tail = tail;
    return n;
}

static void list_slots(struct mt_collector *c)
{
    for (unsigned i = 0; i < MT_SLOTS; i++) {
        if (c->slots[i].listed ||
            atomic_load_explicit(&c->shm->slots[i].state, memory_order_acquire)
                == MT_SLOT_FREE)
            continue;
        c->slots[i].listed = 1;
        c->listed[c->nlisted++] = i;
    }
}

static void slot_release(struct mt_collector *c, unsigned k)
{
    unsigned i = c->listed[k];
    struct slot_state *st = &c->slots[i];
    idmaps_free(st);
    uint64_t tail = st->tail;
    memset(st, 0, sizeof *st);
    st->tail = st->head_seen = tail;
    c->listed[k] = c->listed[--c->nlisted];
    atomic_store_explicit(&c->shm->slots[i].state, MT_SLOT_FREE,
                          memory_order_release);
}

/* Records one drain moves at most while the program keeps writing, so that
 * the caller's clock (RSS samples, flushes, pacing) keeps running. */
#define MT_DRAIN_BUDGET (1L << 16)

/* One pass of moving records, ending early once budget records moved;
 * *waiting gets the smallest number seen at a ring's head that is not the
 * next one (UINT64_MAX when none). */
static long drain_pass(struct mt_collector *c, uint64_t *waiting, long budget)
{
    long moved = 0;
    int progress = 1;
    while (progress && moved < budget) {
        progress = 0;
        *waiting = UINT64_MAX;
        for (unsigned k = 0; k < c->nlisted; k++) {
            unsigned i = c->listed[k];
            struct mt_slot *s = &c->shm->slots[i];
            struct slot_state *st = &c->slots[i];
            if (st->tail == st->head_seen)
                st->head_seen = atomic_load_explicit(&s->head, memory_order_acquire);
            uint64_t head = st->head_seen;
            int blocked;
            long n = slot_drain(c, i, head, budget - moved, &blocked);
            if (n)
                progress = 1;
            moved += n;
            if (blocked) {
                const struct mt_revent *e = (const struct mt_revent *)(
                    mt_shm_ring(c->shm, i) + (st->tail & (MT_RING_BYTES - 1)));
                if (e->seq < *waiting)
                    *waiting = e->seq;
                if (e->h.type == MT_R_EXEC)
                    c->exec_waiting = e->seq;
            }
            atomic_store_explicit(&s->tail, c->slots[i].tail, memory_order_release);
        }
    }
    for (unsigned k = 0; k < c->nlisted;) {
        unsigned i = c->listed[k];
        struct mt_slot *s = &c->shm->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) == MT_SLOT_CLOSED &&
            atomic_load_explicit(&s->head, memory_order_acquire) == c->slots[i].tail)
            slot_release(c, k);
        else
            k++;
    }
    return moved;
}

/* What the shim learnt of the program at its start, written once. */
static void program_check(struct mt_collector *c)
{
    if (c->program_written ||
        !atomic_load_explicit(&c->shm->ready, memory_order_acquire))
        return;
    char pyv[sizeof c->shm->python_version + 1];
    memcpy(pyv, c->shm->python_version, sizeof c->shm->python_version);
    pyv[sizeof c->shm->python_version] = 0;
    struct mt_record r = {.tag = MT_T_PROGRAM};
    r.u.program.python_version = pyv;
    put(c, &r);
    c->program_written = 1;
}

long mt_collector_drain(struct mt_collector *c)
{
    uint64_t waiting;
    program_check(c);
    list_slots(c);
    long moved = drain_pass(c, &waiting, MT_DRAIN_BUDGET);
    if (waiting != UINT64_MAX && moved == 0) {
        /* The next number may sit in a ring we have not listed yet. */
        list_slots(c);
        moved = drain_pass(c, &waiting, MT_DRAIN_BUDGET);
    }
    /* A number taken and never written while the process lives: its thread
     * was cancelled inside a hook, or is stopped. Waiting for ever would,
     * once the rings are full, stop every other thread too: after
     * MT_GAP_PATIENCE idle drains, the gap is counted lost. */
    if (waiting != UINT64_MAX && moved == 0) {
        /* Once the program an exec started has written its first event,
         * no smaller number is still being written: the exec ended every
         * thread that had taken one. */
        if (waiting <= c->exec_waiting || ++c->stuck >= MT_GAP_PATIENCE) {
            c->lost += waiting - c->next_seq;
            c->next_seq = waiting;
            c->stuck = 0;
        }
    } else {
        c->stuck = 0;
    }
    return c->err != MT_OK ? c->err : moved;
}

long mt_collector_finish(struct mt_collector *c)
{
    long total = 0;
    program_check(c);
    list_slots(c);
    for (;;) {
        uint64_t waiting;
        long moved = drain_pass(c, &waiting, LONG_MAX);
        if (moved < 0)
            return moved;
        total += moved;
        if (waiting == UINT64_MAX)
            break;
        /* Nobody will write the numbers before it: their threads were
         * killed inside a hook. */
        c->lost += waiting - c->next_seq;
        c->next_seq = waiting;
    }
    return c->err != MT_OK ? c->err : total;
}

int mt_collector_sample(struct mt_collector *c, uint64_t time_us, uint64_t rss)
{
    struct mt_record r = {.tag = MT_T_SAMPLE};
    r.u.sample.time_us = time_us;
    r.u.sample.rss_bytes = rss;
    put(c, &r);
    return c->err;
}

uint64_t mt_collector_events(const struct mt_collector *c)
{
    return c->events;
}

uint32_t mt_collector_execs(const struct mt_collector *c, const char **path)
{
    *path = c->exec_path;
    return c->execs;
}

int mt_collector_exit_code(const struct mt_collector *c)
{
    return c->exited ? c->exit_code : -1;
}

uint64_t mt_collector_lost(const struct mt_collector *c)
{
    return c->lost;
}

void mt_collector_publish_path(struct mt_collector *c, const char *path)
{
    char *abs = realpath(path, NULL);
    snprintf(c->shm->capture_path, sizeof c->shm->capture_path, "%s", abs ? abs : "");
    free(abs);
}

uint32_t mt_collector_ring_waits(const struct mt_collector *c)
{
    return atomic_load_explicit(&c->shm->ring_waits, memory_order_relaxed);
}

int mt_collector_ready(const struct mt_collector *c)
{
    return (int)atomic_load_explicit(&c->shm->ready, memory_order_acquire);
}

void mt_collector_program_exe(const struct mt_collector *c, char *buf, size_t cap)
{
    buf[0] = 0;
    if (!cap || !mt_collector_ready(c))
        return;
    size_t n = strnlen(c->shm->program_exe, sizeof c->shm->program_exe);
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, c->shm->program_exe, n);
    buf[n] = 0;
}

int mt_collector_stopped(const struct mt_collector *c)
{
    return (int)atomic_load_explicit(&c->shm->stopped, memory_order_acquire);
}

int mt_collector_shim_disabled(const struct mt_collector *c)
{
    return (int)atomic_load(&c->shm->disabled);
}

void mt_collector_free(struct mt_collector *c)
{
    if (!c)
        return;
    for (unsigned k = 0; k < c->nlisted; k++)
        idmaps_free(&c->slots[c->listed[k]]);
    ids_forget(c);
    munmap(c->shm, MT_SHM_BYTES);
    free(c->exec_command);
    free(c);
}
