/* Writes captures: header, then lz4 blocks that each decode on their own
 * (delta state restarts at every block), so a file cut anywhere reads up
 * to its last whole block. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <lz4hc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture.h"
#include "codec.h"
#include "dictionary.h"
#include "map.h"

struct mt_writer {
    int fd;
    int failed;          /* the errno writing failed with (EIO if none); 0: not */
    uint64_t bytes;
    uint8_t *raw;        /* MT_BLOCK_MAX_RAW */
    size_t used;
    uint8_t *comp;       /* block header + LZ4_compressBound */
    struct mt_deltas d;  /* delta bases; reset per block */
    uint32_t thread;     /* thread of the last event in this block */
    uint64_t nallocs;    /* allocations written: the last one's number */
    struct mt_amap live; /* heap address -> its allocation number */
    struct mt_imap files; /* this block's file names -> their CODE file index */
    uint32_t node_id[2]; /* the last PYNODE and NATIVENODE ids written */
    uint64_t header_bytes; /* where the first block starts */
    int fast;            /* LZ4 fast mode instead of HC */
    int addresses;       /* heap blocks' addresses are written */
    unsigned dict_id;    /* the dictionary blocks are compressed against, 0: none */
    struct dict_states *dict; /* non-NULL exactly when dict_id is set */
};

/* LZ4 states with the dictionary loaded, copied to compress each block
 * (copying costs less than loading), and the HC copy's room. */
struct dict_states {
    LZ4_stream_t fast;
    LZ4_streamHC_t hc, hc_work;
};

/* Writing fails for good with err (an errno value): @return rc. */
static int fail(struct mt_writer *w, int err, int rc)
{
    w->failed = err;
    errno = err;
    return rc;
}

/* Every call after writing failed: the error again, with its errno (a
 * caller that reports it may have overwritten errno since). */
static int stuck(const struct mt_writer *w)
{
    errno = w->failed;
    return MT_E_IO;
}

/* Writes one whole unit (the header, a block). One that fails part way
 * (a full disk) is cut off again: the file ends with the last whole
 * block, and the space it took is the program's again. */
static int write_all(struct mt_writer *w, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    uint64_t start = w->bytes;
    while (n) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k == 0 ? ENOSPC : errno;
            if (w->bytes != start && ftruncate(w->fd, (off_t)start) == 0 &&
                lseek(w->fd, (off_t)start, SEEK_SET) >= 0)
                w->bytes = start;
            return fail(w, e, MT_E_IO);
        }
        p += k;
        n -= (size_t)k;
        w->bytes += (uint64_t)k;
    }
    return MT_OK;
}

static uint8_t *put_bytes(uint8_t *p, const void *s, size_t n)
{
    p = mt_put_varint(p, n);
    if (n)
        memcpy(p, s, n);
    return p + n;
}

static size_t str_len(const char *s)
{
    return s ? strlen(s) : 0;
}

static uint8_t *put_str(uint8_t *p, const char *s)
{
    return put_bytes(p, s ? s : "", str_len(s));
}

/* The file header (magic, version, run description, CRC) at the current
 * end of the file; the writer follows its flags. @return an mt_err. */
static int header_write(struct mt_writer *w, const struct mt_header *h)
{
    w->addresses = (h->flags & MT_HF_ADDRESSES) != 0;
    size_t cmd = str_len(h->command);
    uint8_t *hdr = malloc(64 + cmd);
    if (!hdr)
        return MT_E_NOMEM;
    memcpy(hdr, MT_FILE_MAGIC, 8);
    mt_put_u32le(hdr + 8, MT_FORMAT_VERSION);
    uint8_t *p = hdr + 16;
    p = mt_put_varint(p, h->flags);
    p = mt_put_varint(p, (uint64_t)h->pid);
    p = mt_put_varint(p, h->start_time_us);
    p = put_str(p, h->command);
    mt_put_u32le(hdr + 12, (uint32_t)(p - hdr - 16));
    mt_put_u32le(p, mt_crc32(0, hdr, (size_t)(p - hdr)));
    p += 4;
    int rc = write_all(w, hdr, (size_t)(p - hdr));
    free(hdr);
    w->header_bytes = w->bytes;
    return rc;
}

int mt_output_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode);
}

int mt_writer_open(const char *path, int force, const struct mt_header *h,
                   struct mt_writer **out)
{
    /* O_NONBLOCK: a FIFO nobody reads fails (ENXIO) instead of waiting
     * for ever; writes then block as usual. A FIFO or a device takes the
     * stream without -f: there is no file to lose. */
    int stream = !force && !mt_output_exists(path) && access(path, F_OK) == 0;
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                (force ? O_TRUNC : stream ? 0 : O_EXCL);
    int fd = open(path, flags, 0644);
    if (fd < 0)
        return errno == EEXIST ? MT_E_EXISTS : errno == ELOOP ? MT_E_LINK
             : errno == ENXIO ? MT_E_NO_READER : MT_E_IO;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return MT_E_IO;
    }
    struct mt_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->raw = malloc(MT_BLOCK_MAX_RAW);
        w->comp = malloc(MT_BLOCK_HEADER + LZ4_compressBound(MT_BLOCK_MAX_RAW));
    }
    if (!w || !w->raw || !w->comp) {
        if (w) {
            free(w->raw);
            free(w->comp);
        }
        free(w);
        close(fd);
        return MT_E_NOMEM;
    }
    w->fd = fd;
    int rc = header_write(w, h);
    if (rc != MT_OK) {
        int e = errno;
        struct stat st, now;
        /* Not even the header (a full disk): no file, rather than an empty
         * one that the next run without -f refuses to replace (this very
         * file: the name may be another's by now). */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && stat(path, &now) == 0 &&
            now.st_dev == st.st_dev && now.st_ino == st.st_ino)
            unlink(path);
        mt_writer_close(w, NULL);
        errno = e;
        return rc;
    }
    *out = w;
    return MT_OK;
}

/* An empty block: what a block's records are encoded against starts over
 * (each block decodes on its own). */
static void block_reset(struct mt_writer *w)
{
    w->used = 0;
    memset(&w->d, 0, sizeof w->d);
    mt_imap_clear(&w->files);
    w->thread = 0;
}

int mt_writer_restart(struct mt_writer *w, const struct mt_header *h)
{
    if (w->failed)
        return stuck(w);
    uint64_t keep = h ? 0 : w->header_bytes;
    if (ftruncate(w->fd, (off_t)keep) != 0 || lseek(w->fd, (off_t)keep, SEEK_SET) < 0)
        return fail(w, errno, MT_E_IO);
    w->bytes = keep;
    if (h) {
        int rc = header_write(w, h);
        if (rc != MT_OK)
            return fail(w, errno ? errno : EIO, rc);
    }
    block_reset(w);
    w->nallocs = 0;
    mt_amap_release(&w->live);
    w->node_id[0] = w->node_id[1] = 0;
    free(w->dict);
    w->dict = NULL;
    w->dict_id = 0;
    return MT_OK;
}

void mt_writer_set_fast(struct mt_writer *w, int fast)
{
    w->fast = fast;
}

/* Whether high compression would be wasted on a block that the fast mode
 * made n bytes of. HC pays where a block repeats itself (Python stacks
 * and sizes: 10-30 % smaller than the fast mode, at 250-1100 MB/s); a
 * block of native events is nearly random to LZ4 (the fast mode keeps
 * ~100 % of it, HC ~90 %), and there HC runs at 45-70 MB/s: more CPU than
 * all the rest of the collector's work, taken from the program's cores. So
 * a big block the fast mode could not halve stays as it is; a small one
 * (the last block, a quiet program's timed flush) is cheap either way. */
static int hc_futile(size_t raw, size_t n)
{
    return raw >= MT_BLOCK_MAX_RAW / 4 && n * 2 > raw;
}

/* From a program's Python version on (its PROGRAM record), blocks are
 * compressed against that version's dictionary, if there is one. Without
 * the memory for the LZ4 states they are not: a valid capture either way. */
static void choose_dictionary(struct mt_writer *w, const char *python_version)
{
    struct mt_dictionary d;
    if (w->dict_id || !mt_dictionary_for_python(python_version, &d) ||
        !(w->dict = malloc(sizeof *w->dict)))
        return;
    LZ4_initStream(&w->dict->fast, sizeof w->dict->fast);
    LZ4_loadDict(&w->dict->fast, d.data, (int)d.size);
    LZ4_initStreamHC(&w->dict->hc, sizeof w->dict->hc);
    LZ4_resetStreamHC_fast(&w->dict->hc, 6);
    LZ4_loadDictHC(&w->dict->hc, d.data, (int)d.size);
    w->dict_id = d.id;
}

/* Compresses the block into out, *dict_id set to the dictionary used (0:
 * none). @return its size, <= 0 on failure. The fast mode without a
 * dictionary comes first: a block it cannot halve stays as it is (see
 * hc_futile; a dictionary of Python start-ups does nothing for native
 * events and slows LZ4 down), the others are compressed again, against the
 * dictionary and with HC unless the fast mode is asked for. */
static int compress_block(struct mt_writer *w, char *out, unsigned *dict_id)
{
    const char *src = (const char *)w->raw;
    int len = (int)w->used, cap = LZ4_compressBound(MT_BLOCK_MAX_RAW);
    int n = LZ4_compress_default(src, out, len, cap);
    *dict_id = 0;
    if (n <= 0 || hc_futile(w->used, (size_t)n) || (w->fast && !w->dict_id))
        return n;
    if (!w->dict_id)
        return LZ4_compress_HC(src, out, len, cap, 6);
    *dict_id = w->dict_id;
    if (w->fast) {
        LZ4_stream_t work;
        memcpy(&work, &w->dict->fast, sizeof work);
        return LZ4_compress_fast_continue(&work, src, out, len, cap, 1);
    }
    memcpy(&w->dict->hc_work, &w->dict->hc, sizeof w->dict->hc_work);
    return LZ4_compress_HC_continue(&w->dict->hc_work, src, out, len, cap);
}

int mt_writer_flush(struct mt_writer *w)
{
    if (w->failed)
        return stuck(w);
    if (!w->used)
        return MT_OK;
    unsigned dict_id;
    int n = compress_block(w, (char *)w->comp + MT_BLOCK_HEADER, &dict_id);
    if (n <= 0)
        return fail(w, EIO, MT_E_IO);  /* LZ4 said no: no errno of its own */
    mt_put_u32le(w->comp, MT_BLOCK_MAGIC);
    mt_put_u32le(w->comp + 4, (uint32_t)w->used | dict_id << MT_BLOCK_DICTIONARY_SHIFT);
    mt_put_u32le(w->comp + 8, (uint32_t)n);
    mt_put_u32le(w->comp + 12, mt_block_crc(MT_FORMAT_VERSION, w->comp,
                                             w->comp + MT_BLOCK_HEADER, (size_t)n));
    block_reset(w);
    return write_all(w, w->comp, MT_BLOCK_HEADER + (size_t)n);
}

/* Largest encoding of a record without its variable-length parts
 * (TOTALS: 2 * MT_A_COUNT + 64 + 10 varints). */
#define FIXED_MAX 2048

static size_t var_size(const struct mt_record *r)
{
    switch (r->tag) {
    case MT_T_THREAD: return str_len(r->u.thread.name);
    case MT_T_PROGRAM: return str_len(r->u.program.python_version);
    case MT_T_CODE:
        return str_len(r->u.code.name) + str_len(r->u.code.qualname) +
               str_len(r->u.code.filename);
    case MT_T_OBJECT:
        return str_len(r->u.object.path) + r->u.object.build_id_len +
               (size_t)r->u.object.nseg * 20;
    default: return 0;
    }
}

/* THREAD_SWITCH, in its short form when the thread allows. */
static uint8_t *put_switch(uint8_t *p, uint32_t thread)
{
    if (thread < MT_SWITCH_SHORT_MAX) {
        *p++ = (uint8_t)(MT_TAG_SWITCH_SHORT + thread);
        return p;
    }
    *p++ = MT_T_THREAD_SWITCH;
    return mt_put_varint(p, thread);
}

/* FREE of reference ref (the zigzag of its number's change), in the
 * shortest of its three forms. */
static uint8_t *put_free(uint8_t *p, uint64_t ref)
{
    const uint64_t mid = mt_free_mid_base(MT_FORMAT_VERSION);
    if (ref < mid) {
        *p++ = (uint8_t)(MT_TAG_FREE_SHORT | ref);
    } else if (ref < mid + 0x800) {
        *p++ = (uint8_t)(MT_TAG_FREE_MID | ((ref - mid) >> 8));
        *p++ = (uint8_t)(ref - mid);
    } else {
        *p++ = MT_T_FREE;
        p = mt_put_varint(p, ref);
    }
    return p;
}

static uint8_t *put_delta(uint8_t *p, uint64_t *base, uint64_t value)
{
    p = mt_put_varint(p, mt_zigzag((int64_t)(value - *base)));
    *base = value;
    return p;
}

/* An event's stack fields, which make its stacks the bases. */
static uint8_t *put_stacks(struct mt_writer *w, uint8_t *p, uint64_t py, int with_native,
                           uint64_t native)
{
    p = put_delta(p, &w->d.py, py);
    if (with_native)
        p = put_delta(p, &w->d.native, native);
    mt_recent_push(&w->d);
    return p;
}

/* STACKS k when the stacks are not the bases but a recent pair: *same
 * then says the bases hold them. */
static uint8_t *put_recent(struct mt_writer *w, uint8_t *p, uint64_t py, int with_native,
                           uint64_t native, int *same)
{
    unsigned k = *same ? 0 : mt_recent_find(&w->d, py, with_native, native);
    if (k) {
        *p++ = (uint8_t)(MT_TAG_STACKS + k - 1);
        mt_recent_take(&w->d, k);
        *same = 1;
    }
    return p;
}

/* Numbers a new block; heap blocks are remembered for their free (in
 * *slot when the caller holds the map's slot for addr already). */
static int block_new(struct mt_writer *w, unsigned allocator, uint64_t addr,
                     uint64_t *slot)
{
    uint64_t number = ++w->nallocs;
    if (slot) {
        *slot = number;
        return MT_OK;
    }
    if (addr && !mt_allocator_is_mapping(allocator) &&
        mt_amap_put(&w->live, addr, number) < 0)
        return fail(w, ENOMEM, MT_E_NOMEM);
    return MT_OK;
}

/* The reference a free writes: 0 for a block never seen allocated. */
static uint64_t block_ref(struct mt_writer *w, uint64_t addr)
{
    uint64_t number;
    if (!addr || !mt_amap_take(&w->live, addr, &number))
        return 0;
    uint64_t ref = mt_zigzag((int64_t)(number - w->d.free_index)) + 1;
    w->d.free_index = number;
    return ref;
}

/* CODE's file field: the index of a file name this block already spelled
 * out, or 0 (the name follows, and takes the next index). */
static int file_ref(struct mt_writer *w, const char *filename, uint32_t *ref)
{
    size_t n = str_len(filename);
    uint64_t key[3] = {mt_hash_bytes(filename, n, 1), mt_hash_bytes(filename, n, 2), n};
    int is_new;
    uint32_t id = mt_imap_intern(&w->files, key, &is_new);
    if (!id)
        return MT_E_NOMEM;
    *ref = is_new ? 0 : id;
    return MT_OK;
}

/* GROUP's shape: which of peak and end the record has to spell out. */
static unsigned group_shape(const struct mt_record *r)
{
    uint64_t tb = r->u.group.total_bytes, tc = r->u.group.total_count;
    uint64_t pb = r->u.group.peak_bytes, pc = r->u.group.peak_count;
    uint64_t eb = r->u.group.end_bytes, ec = r->u.group.end_count;
    if (pb == tb && pc == tc && eb == tb && ec == tc)
        return 0;
    if (!pb && !pc && !eb && !ec)
        return 1;
    return eb == pb && ec == pc ? 2 : 3;
}

/* An ALLOC or FREE, thread switch included, takes at most this much. */
#define EVENT_MAX 48

/* The event's thread, switched to when it is not the block's. */
static uint8_t *put_thread(struct mt_writer *w, uint8_t *p, uint32_t thread)
{
    if (thread == w->thread)
        return p;
    w->thread = thread;
    return put_switch(p, thread);
}

/* Room for n events: a full block is flushed first, since a flush resets
 * the delta bases an event's encoding is relative to. */
static int make_room(struct mt_writer *w, size_t n)
{
    if (w->failed)
        return stuck(w);
    if (w->used + n * EVENT_MAX > MT_BLOCK_MAX_RAW && mt_writer_flush(w) != MT_OK)
        return MT_E_IO;
    return MT_OK;
}

int mt_writer_free(struct mt_writer *w, uint32_t thread, uint64_t addr)
{
    int rc = make_room(w, 1);
    if (rc != MT_OK)
        return rc;
    uint64_t ref = block_ref(w, addr);
    if (!ref)
        return MT_OK;  /* nothing the capture knows of ends */
    uint8_t *p = put_thread(w, w->raw + w->used, thread);
    p = put_free(p, ref - 1);
    w->used = (size_t)(p - w->raw);
    return MT_OK;
}

int mt_writer_alloc(struct mt_writer *w, uint32_t thread, unsigned allocator,
                    uint64_t addr, uint64_t size, uint32_t py_stack,
                    uint32_t native_stack)
{
    if (allocator > 0xf)
        return MT_E_CORRUPT;  /* not representable: the format's bounds */
    int rc = make_room(w, 2);
    if (rc != MT_OK)
        return rc;
    int mapping = mt_allocator_is_mapping(allocator);
    uint64_t *slot = NULL;
    if (addr && !mapping) {
        /* The hot path: one probe takes the address's slot. */
        int found;
        if (!(slot = mt_amap_upsert(&w->live, addr, &found)))
            return fail(w, ENOMEM, MT_E_NOMEM);
        if (found) {
            /* The address is handed out again but its free was never seen
             * (an untracked thread freed it): the capture ends the old
             * block here, so readers keying blocks by number or by address
             * agree. The free takes the slot. */
            slot = NULL;
            if ((rc = mt_writer_free(w, thread, addr)) != MT_OK)
                return rc;
        }
    }
    if ((rc = block_new(w, allocator, addr, slot)) != MT_OK)
        return rc;
    uint8_t *p = put_thread(w, w->raw + w->used, thread);
    int nat = native_stack != 0;
    int same = py_stack == w->d.py && (!nat || native_stack == w->d.native);
    p = put_recent(w, p, py_stack, nat, native_stack, &same);
    unsigned kind = MT_ALLOC_KIND_SEEN | (nat ? MT_TAG_ALLOC_NATIVE : 0) | allocator;
    int addressed = w->addresses || mapping;
    if (same && kind == w->d.alloc_kind && !addressed && size < MT_ALLOC_SIZED_MAX) {
        *p++ = (uint8_t)(MT_TAG_ALLOC_SIZED | size >> 8);
        *p++ = (uint8_t)size;
        w->used = (size_t)(p - w->raw);
        return MT_OK;
    }
    w->d.alloc_kind = kind;
    *p++ = (uint8_t)((same ? MT_TAG_ALLOC_SAME : MT_TAG_ALLOC_BASE) |
                     (nat ? MT_TAG_ALLOC_NATIVE : 0) | allocator);
    if (addressed)
        p = put_delta(p, &w->d.alloc_addr, addr);
    p = mt_put_varint(p, size);
    if (!same)
        p = put_stacks(w, p, py_stack, nat, native_stack);
    w->used = (size_t)(p - w->raw);
    return MT_OK;
}

int mt_writer_add(struct mt_writer *w, const struct mt_record *r)
{
    if (r->tag == MT_T_ALLOC)
        return mt_writer_alloc(w, r->thread, r->u.ev.allocator, r->u.ev.addr,
                               r->u.ev.size, r->u.ev.py_stack, r->u.ev.native_stack);
    if (r->tag == MT_T_FREE)
        return mt_writer_free(w, r->thread, r->u.ev.addr);
    if (w->failed)
        return stuck(w);
    size_t need = FIXED_MAX + var_size(r);
    if (need > MT_BLOCK_MAX_RAW ||
        (r->tag == MT_T_OBJECT && r->u.object.nseg > 32) ||
        (r->tag == MT_T_PYNODE && (r->u.node.flags & ~MT_PYF_ENTRY)))
        return MT_E_CORRUPT;  /* not representable: the format's bounds */
    if ((r->tag == MT_T_PYNODE || r->tag == MT_T_NATIVENODE) &&
        r->u.node.id != w->node_id[r->tag == MT_T_NATIVENODE] + 1)
        return MT_E_CORRUPT;  /* ids are implicit: each must be the next */
    if (w->used + need > MT_BLOCK_MAX_RAW && mt_writer_flush(w) != MT_OK)
        return MT_E_IO;
    uint64_t number;
    if (r->tag == MT_T_REALLOC && r->u.ev.addr && r->u.ev.addr != r->u.ev.old_addr &&
        mt_amap_get(&w->live, r->u.ev.addr, &number)) {
        /* As for an allocation at an address still live (above). */
        int rc = mt_writer_free(w, r->thread, r->u.ev.addr);
        if (rc != MT_OK)
            return rc;
    }
    uint64_t ref = 0;
    if (r->tag == MT_T_REALLOC)
        ref = block_ref(w, r->u.ev.old_addr);
    if (((r->tag == MT_T_REALLOC || r->tag == MT_T_MREMAP) && r->u.ev.addr) &&
        block_new(w, r->tag == MT_T_REALLOC ? MT_A_REALLOC : MT_A_MMAP,
                  r->u.ev.addr, NULL) != MT_OK)
        return MT_E_NOMEM;
    uint8_t *p = w->raw + w->used;
    if (r->tag == MT_T_REALLOC || r->tag == MT_T_MUNMAP || r->tag == MT_T_MREMAP)
        p = put_thread(w, p, r->thread);
    if (r->tag == MT_T_THREAD_SWITCH) {
        p = put_switch(p, r->thread);
        w->thread = r->thread;
        w->used = (size_t)(p - w->raw);
        return MT_OK;
    }
    *p++ = (uint8_t)r->tag;
    switch (r->tag) {
    case MT_T_REALLOC:
        *p++ = r->u.ev.allocator;
        p = mt_put_varint(p, ref);
        if (w->addresses)
            p = put_delta(p, &w->d.alloc_addr, r->u.ev.addr);
        else
            *p++ = r->u.ev.addr != 0;  /* a new block, or a failed realloc */
        p = mt_put_varint(p, r->u.ev.size);
        p = put_stacks(w, p, r->u.ev.py_stack, 1, r->u.ev.native_stack);
        break;
    case MT_T_MREMAP:
        *p++ = r->u.ev.allocator;
        p = put_delta(p, &w->d.free_addr, r->u.ev.old_addr);
        p = mt_put_varint(p, r->u.ev.old_size);
        p = put_delta(p, &w->d.alloc_addr, r->u.ev.addr);
        p = mt_put_varint(p, r->u.ev.size);
        p = put_stacks(w, p, r->u.ev.py_stack, 1, r->u.ev.native_stack);
        break;
    case MT_T_MUNMAP:
        p = put_delta(p, &w->d.free_addr, r->u.ev.addr);
        p = mt_put_varint(p, r->u.ev.size);
        break;
    case MT_T_THREAD:
        p = mt_put_varint(p, r->u.thread.index);
        p = mt_put_varint(p, r->u.thread.tid);
        p = put_str(p, r->u.thread.name);
        break;
    case MT_T_CODE: {
        const char *name = r->u.code.name ? r->u.code.name : "";
        const char *qual = r->u.code.qualname ? r->u.code.qualname : "";
        uint32_t file;
        if (file_ref(w, r->u.code.filename, &file) != MT_OK)
            return fail(w, ENOMEM, MT_E_NOMEM);
        p = mt_put_varint(p, r->u.code.id);
        p = mt_put_varint(p, mt_zigzag(r->u.code.firstlineno));
        p = put_str(p, name);
        p = put_str(p, strcmp(qual, name) ? qual : "");
        p = mt_put_varint(p, file);
        if (!file)
            p = put_str(p, r->u.code.filename);
        break;
    }
    case MT_T_PYNODE:
    case MT_T_NATIVENODE:
        /* Parents are near: a difference. */
        w->node_id[r->tag == MT_T_NATIVENODE] = r->u.node.id;
        p = mt_put_varint(p, mt_zigzag((int64_t)((uint64_t)r->u.node.id -
                                                  (uint64_t)r->u.node.parent)));
        if (r->tag == MT_T_NATIVENODE) {
            p = put_delta(p, &w->d.ip, r->u.node.a);
        } else {
            p = mt_put_varint(p, r->u.node.a);
            p = mt_put_varint(p, (uint64_t)r->u.node.b << 1 |
                                     (r->u.node.flags & MT_PYF_ENTRY));
        }
        break;
    case MT_T_OBJECT:
        p = put_str(p, r->u.object.path);
        p = mt_put_varint(p, r->u.object.base);
        p = put_bytes(p, r->u.object.build_id, r->u.object.build_id_len);
        p = mt_put_varint(p, r->u.object.nseg);
        for (uint32_t i = 0; i < 2 * r->u.object.nseg; i++)
            p = mt_put_varint(p, r->u.object.seg[i]);
        p = mt_put_varint(p, r->u.object.unload);
        break;
    case MT_T_SAMPLE:
        /* Samples come every ~10 ms: the step changes little from one to the next. */
        p = put_delta(p, &w->d.sample_step, r->u.sample.time_us - w->d.sample_time);
        w->d.sample_time = r->u.sample.time_us;
        p = put_delta(p, &w->d.sample_rss, r->u.sample.rss_bytes);
        p = put_delta(p, &w->d.sample_heap, r->u.sample.heap_bytes);
        break;
    case MT_T_GROUP: {
        unsigned shape = group_shape(r);
        p = put_stacks(w, p, r->u.group.py_stack, 1, r->u.group.native_stack);
        p = mt_put_varint(p, r->u.group.thread);
        p = mt_put_varint(p, (uint64_t)r->u.group.allocators << 2 | shape);
        p = mt_put_varint(p, r->u.group.total_bytes);
        p = mt_put_varint(p, r->u.group.total_count);
        if (shape >= 2) {
            p = mt_put_varint(p, r->u.group.peak_bytes);
            p = mt_put_varint(p, r->u.group.peak_count);
        }
        if (shape == 3) {
            p = mt_put_varint(p, r->u.group.end_bytes);
            p = mt_put_varint(p, r->u.group.end_count);
        }
        break;
    }
    case MT_T_TOTALS: {
        const struct mt_totals *t = r->u.totals;
        p = mt_put_varint(p, t->allocations);
        p = mt_put_varint(p, t->frees);
        p = mt_put_varint(p, t->allocated_bytes);
        p = mt_put_varint(p, t->peak_bytes);
        p = mt_put_varint(p, t->peak_time_us);
        p = mt_put_varint(p, t->end_bytes);
        p = mt_put_varint(p, t->peak_rss_bytes);
        p = mt_put_varint(p, t->end_marked);
        p = mt_put_varint(p, MT_A_COUNT);
        for (unsigned i = 0; i < MT_A_COUNT; i++) {
            p = mt_put_varint(p, t->allocator_count[i]);
            p = mt_put_varint(p, t->allocator_bytes[i]);
        }
        for (unsigned i = 0; i < 64; i++)
            p = mt_put_varint(p, t->histogram[i]);
        break;
    }
    case MT_T_END:
        break;
    case MT_T_PROGRAM:
        p = put_str(p, r->u.program.python_version);
        choose_dictionary(w, r->u.program.python_version);
        break;
    case MT_T_TRAILER:
        p = mt_put_varint(p, mt_zigzag(r->u.trailer.exit.code));
        p = mt_put_varint(p, mt_zigzag(r->u.trailer.exit.signal));
        p = mt_put_varint(p, r->u.trailer.duration_us);
        p = mt_put_varint(p, r->u.trailer.events);
        p = mt_put_varint(p, r->u.trailer.lost_events);
        break;
    default:
        return MT_E_CORRUPT;
    }
    w->used = (size_t)(p - w->raw);
    return MT_OK;
}

uint64_t mt_writer_bytes(const struct mt_writer *w)
{
    return w->bytes + w->used;
}

int mt_writer_close(struct mt_writer *w, const struct mt_trailer *trailer)
{
    if (!w)
        return MT_OK;
    int rc = MT_OK;
    if (trailer) {
        struct mt_record r = {.tag = MT_T_TRAILER};
        r.u.trailer = *trailer;
        rc = mt_writer_add(w, &r);
    }
    if (rc == MT_OK)
        rc = mt_writer_flush(w);
    if (close(w->fd) != 0 && rc == MT_OK)
        rc = MT_E_IO;
    free(w->raw);
    free(w->comp);
    free(w->dict);
    mt_amap_release(&w->live);
    mt_imap_release(&w->files);
    free(w);
    return rc;
}
