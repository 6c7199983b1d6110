/* Reads captures block by block: memory is one block, whatever the size
 * of the file. Every length is checked before it is used: a damaged file
 * gives MT_E_CORRUPT or MT_E_TRUNCATED, never a read out of bounds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture.h"
#include "codec.h"
#include "dictionary.h"
#include "map.h"

struct mt_reader {
    FILE *f;
    uint64_t size, offset, block_offset;
    struct mt_header header;
    char *command;
    uint8_t *raw, *comp;
    const uint8_t *p, *end;  /* the decoded block */
    struct mt_deltas d;
    uint32_t thread;
    int done;               /* what every later call returns: 0 or an error */
    int done_rc;
    uint64_t nallocs;        /* allocations decoded: the last one's number */
    int numbers_only;        /* no address map: see mt_reader_numbers_only */
    int addresses;           /* mt_header_has_addresses(&header), asked per event */
    struct mt_amap live;     /* heap allocation number -> its address */
    uint32_t node_id[2];     /* the last PYNODE and NATIVENODE ids (version 2) */
    struct file { const uint8_t *s; uint32_t n; } *files;  /* this block's, in raw */
    uint32_t nfiles, files_cap;
    char strings[4][4096 + 1];  /* NUL-terminated copies for the record */
    uint64_t seg[64];
    struct mt_totals totals;
};

struct cursor { const uint8_t *p, *end; int bad; };

/* Most varints are one byte; the others are read up to a bound worked out
 * once (10 bytes, or the block's end), not checked per byte. */
static inline uint64_t get_varint(struct cursor *c)
{
    const uint8_t *p = c->p;
    if (p < c->end && *p < 0x80) {
        c->p = p + 1;
        return *p;
    }
    size_t left = (size_t)(c->end - p), n = left < 10 ? left : 10;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            c->p = p + i + 1;
            return v;
        }
    }
    c->p = p + n;  /* cut at the block's end, or longer than 64 bits */
    c->bad = 1;
    return 0;
}

/* One byte; 0 and the cursor bad at the block's end. */
static inline uint8_t get_u8(struct cursor *c)
{
    if (c->p < c->end)
        return *c->p++;
    c->bad = 1;
    return 0;
}

static const uint8_t *get_bytes(struct cursor *c, uint32_t *len)
{
    uint64_t n = get_varint(c);
    if (c->bad || n > (uint64_t)(c->end - c->p)) {
        c->bad = 1;
        *len = 0;
        return NULL;
    }
    const uint8_t *s = c->p;
    c->p += n;
    *len = (uint32_t)n;
    return s;
}

/* A NUL-terminated copy of n bytes at s in one of the record's string
 * slots; long strings are cut (names and paths, never data). */
static const char *keep_str(struct mt_reader *r, const uint8_t *s, uint32_t n, int slot)
{
    if (n > 4096) {
        n = 4096;
        /* whole characters: what is kept of a name stays UTF-8 */
        for (uint32_t k = 0; k < 3 && n > 0 && (s[n] & 0xc0) == 0x80; k++)
            n--;
    }
    memcpy(r->strings[slot], s, n);
    r->strings[slot][n] = 0;
    return r->strings[slot];
}

static const char *get_str(struct mt_reader *r, struct cursor *c, int slot)
{
    uint32_t n;
    const uint8_t *s = get_bytes(c, &n);
    return s ? keep_str(r, s, n, slot) : "";
}

/* CODE's file name (version 2): spelled out and added to the block's
 * list, or an index into that list. */
static const char *get_file(struct mt_reader *r, struct cursor *c, int slot)
{
    uint64_t k = get_varint(c);
    if (k) {
        if (k > r->nfiles) {
            c->bad = 1;
            return "";
        }
        return keep_str(r, r->files[k - 1].s, r->files[k - 1].n, slot);
    }
    uint32_t n;
    const uint8_t *s = get_bytes(c, &n);
    if (!s)
        return "";
    if (r->nfiles == r->files_cap) {
        uint32_t cap = r->files_cap ? r->files_cap * 2 : 64;
        struct file *f = realloc(r->files, cap * sizeof *f);
        if (!f) {
            c->bad = 1;  /* reported as corrupt: NOMEM has no path out of decode */
            return "";
        }
        r->files = f;
        r->files_cap = cap;
    }
    r->files[r->nfiles++] = (struct file){s, n};
    return keep_str(r, s, n, slot);
}

int mt_header_has_addresses(const struct mt_header *h)
{
    return h->format_version < 3 || (h->flags & MT_HF_ADDRESSES);
}

/* Version 1 spelled some records out in full (docs/format.md). */
static int v1(const struct mt_reader *r)
{
    return r->header.format_version == 1;
}

/* Version 3 brought the short forms of ALLOC, FREE and THREAD_SWITCH;
 * before, their tags were reserved. */
static int short_forms(const struct mt_reader *r)
{
    return r->header.format_version >= 3;
}

static int read_exact(struct mt_reader *r, void *buf, size_t n)
{
    size_t got = fread(buf, 1, n, r->f);
    r->offset += got;
    if (got == n)
        return MT_OK;
    return ferror(r->f) ? MT_E_IO : MT_E_TRUNCATED;
}

static char *dup_bytes(const uint8_t *s, uint32_t n)
{
    char *d = malloc((size_t)n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static int read_header(struct mt_reader *r, uint32_t *found_version)
{
    uint8_t fixed[16];
    size_t got = fread(fixed, 1, sizeof fixed, r->f);
    r->offset += got;
    if (got == 0)
        return ferror(r->f) ? MT_E_IO : MT_E_EMPTY;
    if (memcmp(fixed, MT_FILE_MAGIC, got < 8 ? got : 8) != 0)
        return MT_E_NOT_CAPTURE;
    if (got < sizeof fixed)
        return ferror(r->f) ? MT_E_IO : MT_E_TRUNCATED;
    int rc;
    uint32_t version = mt_get_u32le(fixed + 8), len = mt_get_u32le(fixed + 12);
    if (found_version)
        *found_version = version;
    if (version > MT_FORMAT_VERSION)
        return MT_E_VERSION;
    if (version < 1 || len > 1u << 20)
        return MT_E_CORRUPT;
    uint8_t *buf = malloc(16 + (size_t)len + 4);
    if (!buf)
        return MT_E_NOMEM;
    memcpy(buf, fixed, 16);
    rc = read_exact(r, buf + 16, (size_t)len + 4);
    if (rc == MT_OK &&
        mt_crc32(0, buf, 16 + (size_t)len) != mt_get_u32le(buf + 16 + len))
        rc = MT_E_CORRUPT;
    if (rc == MT_OK) {
        struct cursor c = {buf + 16, buf + 16 + len, 0};
        uint32_t n1;
        r->header.format_version = version;
        r->header.flags = (uint32_t)get_varint(&c);
        r->header.pid = (int32_t)get_varint(&c);
        r->header.start_time_us = get_varint(&c);
        const uint8_t *cmd = get_bytes(&c, &n1);
        uint32_t known = version < 3 ? MT_HF_KNOWN & ~MT_HF_ADDRESSES : MT_HF_KNOWN;
        if (c.bad || (r->header.flags & ~known))  /* ADDRESSES: reserved before 3 */
            rc = MT_E_CORRUPT;
        else if (!(r->command = dup_bytes(cmd, n1)))
            rc = MT_E_NOMEM;
        r->header.command = r->command;
        r->addresses = mt_header_has_addresses(&r->header);
    }
    free(buf);
    return rc;
}

int mt_reader_open(const char *path, struct mt_reader **out,
                   uint32_t *found_version)
{
    struct mt_reader *r = calloc(1, sizeof *r);
    if (!r)
        return MT_E_NOMEM;
    /* A FIFO waits for its writer, as for any reader. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        mt_reader_close(r);
        return MT_E_IO;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        mt_reader_close(r);
        errno = EISDIR;
        return MT_E_IO;
    }
    r->f = fdopen(fd, "rb");
    if (!r->f) {
        close(fd);
        mt_reader_close(r);
        return MT_E_IO;
    }
    r->size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;  /* a pipe: not known */
    r->raw = malloc(MT_BLOCK_MAX_RAW);
    r->comp = malloc((size_t)LZ4_compressBound(MT_BLOCK_MAX_RAW));
    int rc = r->raw && r->comp ? read_header(r, found_version) : MT_E_NOMEM;
    if (rc != MT_OK) {
        mt_reader_close(r);
        return rc;
    }
    *out = r;
    return MT_OK;
}

const struct mt_header *mt_reader_header(const struct mt_reader *r)
{
    return &r->header;
}

static int next_block(struct mt_reader *r)
{
    uint8_t h[MT_BLOCK_HEADER];
    r->block_offset = r->offset;
    size_t got = fread(h, 1, sizeof h, r->f);
    r->offset += got;
    if (got == 0 && !ferror(r->f))
        return 0;  /* end of file between blocks */
    if (got != sizeof h)
        return ferror(r->f) ? MT_E_IO : MT_E_TRUNCATED;
    uint32_t raw = mt_get_u32le(h + 4), comp = mt_get_u32le(h + 8);
    struct mt_dictionary dict = {0};
    if (r->header.format_version >= 4) {
        dict.id = raw >> MT_BLOCK_DICTIONARY_SHIFT;
        raw &= MT_BLOCK_LENGTH_MASK;
    }
    if (mt_get_u32le(h) != MT_BLOCK_MAGIC || raw > MT_BLOCK_MAX_RAW ||
        comp > (uint32_t)LZ4_compressBound(MT_BLOCK_MAX_RAW) ||
        (dict.id && (!mt_dictionary_get(dict.id, &dict) ||
                     dict.since > r->header.format_version)))
        return MT_E_CORRUPT;
    int rc = read_exact(r, r->comp, comp);
    if (rc != MT_OK)
        return rc;
    if (mt_block_crc(r->header.format_version, h, r->comp, comp) != mt_get_u32le(h + 12))
        return MT_E_CORRUPT;
    int n = dict.id ?
        LZ4_decompress_safe_usingDict((const char *)r->comp, (char *)r->raw,
                                      (int)comp, MT_BLOCK_MAX_RAW, dict.data,
                                      (int)dict.size) :
        LZ4_decompress_safe((const char *)r->comp, (char *)r->raw,
                            (int)comp, MT_BLOCK_MAX_RAW);
    if (n < 0 || (uint32_t)n != raw)
        return MT_E_CORRUPT;
    r->p = r->raw;
    r->end = r->raw + n;
    memset(&r->d, 0, sizeof r->d);
    r->nfiles = 0;
    r->thread = 0;
    return 1;
}

static inline uint64_t get_delta(struct cursor *c, uint64_t *base)
{
    *base += (uint64_t)mt_unzigzag(get_varint(c));
    return *base;
}

void mt_reader_numbers_only(struct mt_reader *r)
{
    r->numbers_only = 1;
}

/* Numbers a decoded block as the writer did. @return its number. */
static uint64_t block_new(struct mt_reader *r, struct cursor *c, unsigned allocator,
                          uint64_t addr)
{
    uint64_t number = ++r->nallocs;
    if (!r->numbers_only && !mt_allocator_is_mapping(allocator) &&
        mt_amap_put(&r->live, number, addr) < 0)
        c->bad = 1;
    return number;
}

/* The block a free refers to (ref as written, without the +1 of realloc's
 * optional reference): *number, and its address unless numbers only. */
static uint64_t block_end(struct mt_reader *r, struct cursor *c, uint64_t ref,
                          uint64_t *number)
{
    uint64_t addr = 0;
    r->d.free_index += (uint64_t)mt_unzigzag(ref);
    *number = r->d.free_index;
    if (r->numbers_only)
        return 0;
    if (!mt_amap_take(&r->live, r->d.free_index, &addr))
        c->bad = 1;  /* the writer only refers to blocks it numbered */
    return addr;
}

/* An event's stack fields (delta from the bases); they become the bases
 * and, from version 5 on, the latest recent pair. */
static void get_stacks(struct mt_reader *r, struct cursor *c, uint32_t *py, uint32_t *native)
{
    *py = (uint32_t)get_delta(c, &r->d.py);
    if (native)
        *native = (uint32_t)get_delta(c, &r->d.native);
    mt_recent_push(&r->d);
}

static void decode_group_v1(struct cursor *c, struct mt_record *rec)
{
    rec->u.group.py_stack = (uint32_t)get_varint(c);
    rec->u.group.native_stack = (uint32_t)get_varint(c);
    rec->u.group.thread = (uint32_t)get_varint(c);
    rec->u.group.allocators = (uint32_t)get_varint(c);
    rec->u.group.total_bytes = get_varint(c);
    rec->u.group.total_count = get_varint(c);
    rec->u.group.peak_bytes = get_varint(c);
    rec->u.group.peak_count = get_varint(c);
    rec->u.group.end_bytes = get_varint(c);
    rec->u.group.end_count = get_varint(c);
}

/* Version 2: the shape's low 2 bits say which counts equal which. */
static void decode_group(struct mt_reader *r, struct cursor *c, struct mt_record *rec)
{
    get_stacks(r, c, &rec->u.group.py_stack, &rec->u.group.native_stack);
    rec->u.group.thread = (uint32_t)get_varint(c);
    uint64_t shape = get_varint(c);
    rec->u.group.allocators = (uint32_t)(shape >> 2);
    uint64_t tb = get_varint(c), tc = get_varint(c);
    rec->u.group.total_bytes = tb;
    rec->u.group.total_count = tc;
    switch (shape & 3) {
    case 0:
        rec->u.group.peak_bytes = rec->u.group.end_bytes = tb;
        rec->u.group.peak_count = rec->u.group.end_count = tc;
        break;
    case 1:
        break;  /* all zero, as decode() left them */
    case 2:
        rec->u.group.peak_bytes = rec->u.group.end_bytes = get_varint(c);
        rec->u.group.peak_count = rec->u.group.end_count = get_varint(c);
        break;
    default:
        rec->u.group.peak_bytes = get_varint(c);
        rec->u.group.peak_count = get_varint(c);
        rec->u.group.end_bytes = get_varint(c);
        rec->u.group.end_count = get_varint(c);
    }
}

/* Version 5's two-byte ALLOC: made as the block's previous one was. */
static int decode_sized(struct mt_reader *r, struct cursor *c, uint8_t tag,
                        struct mt_record *rec)
{
    unsigned kind = r->d.alloc_kind;
    rec->tag = MT_T_ALLOC;
    rec->u.ev.allocator = kind & 0xf;
    rec->u.ev.size = (uint64_t)(tag & 0x3fu) << 8 | get_u8(c);
    rec->u.ev.py_stack = (uint32_t)r->d.py;
    if (kind & MT_TAG_ALLOC_NATIVE)
        rec->u.ev.native_stack = (uint32_t)r->d.native;
    if (!kind || r->addresses || mt_allocator_is_mapping(rec->u.ev.allocator))
        c->bad = 1;  /* no ALLOC before it, or one whose address it lacks */
    if (!c->bad)
        rec->u.ev.number = block_new(r, c, rec->u.ev.allocator, 0);
    return c->bad ? MT_E_CORRUPT : 1;
}

static int decode(struct mt_reader *r, struct cursor *c, struct mt_record *rec)
{
    memset(rec, 0, sizeof *rec);
    uint8_t tag = *c->p++;
    rec->thread = r->thread;
    if (tag >= MT_TAG_STACKS && tag < MT_TAG_STACKS + MT_RECENT_MAX - 1 &&
        r->header.format_version >= 5) {
        /* not a record: it sets the bases for the event after it */
        unsigned k = tag - MT_TAG_STACKS + 1u;
        if (k >= r->d.nrecent || c->p >= c->end)
            return MT_E_CORRUPT;
        mt_recent_take(&r->d, k);
        tag = *c->p++;  /* another STACKS: a reserved tag below */
    }
    if (MT_TAG_IS_ALLOC(tag)) {
        rec->tag = MT_T_ALLOC;
        r->d.alloc_kind = MT_ALLOC_KIND_SEEN | (tag & 0x1fu);
        rec->u.ev.allocator = tag & 0xf;
        if (r->addresses || mt_allocator_is_mapping(rec->u.ev.allocator))
            rec->u.ev.addr = get_delta(c, &r->d.alloc_addr);
        rec->u.ev.size = get_varint(c);
        if (tag >= MT_TAG_ALLOC_SAME) {
            if (!short_forms(r))
                c->bad = 1;
            rec->u.ev.py_stack = (uint32_t)r->d.py;
            if (tag & MT_TAG_ALLOC_NATIVE)
                rec->u.ev.native_stack = (uint32_t)r->d.native;
        } else {
            get_stacks(r, c, &rec->u.ev.py_stack,
                       tag & MT_TAG_ALLOC_NATIVE ? &rec->u.ev.native_stack : NULL);
        }
        if (!c->bad)
            rec->u.ev.number = block_new(r, c, rec->u.ev.allocator, rec->u.ev.addr);
        return c->bad ? MT_E_CORRUPT : 1;
    }
    const unsigned mid = mt_free_mid_base(r->header.format_version);
    if (tag >= MT_TAG_FREE_SHORT + mid && r->header.format_version >= 5)
        return decode_sized(r, c, tag, rec);
    if (tag >= MT_TAG_FREE_SHORT ||
        (tag >= MT_TAG_FREE_MID && tag < MT_TAG_FREE_MID + 8)) {
        if (!short_forms(r))
            return MT_E_CORRUPT;
        uint64_t ref = tag & 0x7fu;
        if (tag < MT_TAG_FREE_SHORT) {
            ref = mid + ((uint64_t)(tag & 7u) << 8 | get_u8(c));
            if (c->bad)
                return MT_E_CORRUPT;
        }
        rec->tag = MT_T_FREE;
        rec->u.ev.addr = block_end(r, c, ref, &rec->u.ev.number);
        return c->bad ? MT_E_CORRUPT : 1;
    }
    if (tag >= MT_TAG_SWITCH_SHORT && tag < MT_TAG_SWITCH_SHORT + MT_SWITCH_SHORT_MAX) {
        if (!short_forms(r))
            return MT_E_CORRUPT;
        rec->tag = MT_T_THREAD_SWITCH;
        r->thread = rec->thread = tag - MT_TAG_SWITCH_SHORT;
        return 1;
    }
    rec->tag = (enum mt_tag)tag;
    switch (rec->tag) {
    case MT_T_FREE: {
        uint64_t ref = get_varint(c);
        if (!c->bad)
            rec->u.ev.addr = block_end(r, c, ref, &rec->u.ev.number);
        break;
    }
    case MT_T_REALLOC: {
        rec->u.ev.allocator = get_u8(c);
        uint64_t ref = get_varint(c);
        if (ref && !c->bad)
            rec->u.ev.old_addr = block_end(r, c, ref - 1, &rec->u.ev.old_number);
        int made;  /* a new block: realloc did not fail */
        if (r->addresses) {
            rec->u.ev.addr = get_delta(c, &r->d.alloc_addr);
            made = rec->u.ev.addr != 0;
        } else {
            made = get_u8(c);
            if (made > 1)
                c->bad = 1;
        }
        rec->u.ev.size = get_varint(c);
        get_stacks(r, c, &rec->u.ev.py_stack, &rec->u.ev.native_stack);
        if (made && !c->bad)
            rec->u.ev.number = block_new(r, c, MT_A_REALLOC, rec->u.ev.addr);
        break;
    }
    case MT_T_MREMAP:
        rec->u.ev.allocator = get_u8(c);
        rec->u.ev.old_addr = get_delta(c, &r->d.free_addr);
        rec->u.ev.old_size = get_varint(c);
        rec->u.ev.addr = get_delta(c, &r->d.alloc_addr);
        rec->u.ev.size = get_varint(c);
        get_stacks(r, c, &rec->u.ev.py_stack, &rec->u.ev.native_stack);
        if (rec->u.ev.addr && !c->bad)  /* numbered as the writer does */
            rec->u.ev.number = block_new(r, c, MT_A_MMAP, rec->u.ev.addr);
        break;
    case MT_T_MUNMAP:
        rec->u.ev.addr = get_delta(c, &r->d.free_addr);
        rec->u.ev.size = get_varint(c);
        break;
    case MT_T_THREAD_SWITCH:
        r->thread = (uint32_t)get_varint(c);
        rec->thread = r->thread;
        break;
    case MT_T_THREAD:
        rec->u.thread.index = (uint32_t)get_varint(c);
        rec->u.thread.tid = (uint32_t)get_varint(c);
        rec->u.thread.name = get_str(r, c, 0);
        break;
    case MT_T_CODE:
        rec->u.code.id = (uint32_t)get_varint(c);
        rec->u.code.firstlineno = (int32_t)mt_unzigzag(get_varint(c));
        rec->u.code.name = get_str(r, c, 0);
        rec->u.code.qualname = get_str(r, c, 1);
        rec->u.code.filename = v1(r) ? get_str(r, c, 2) : get_file(r, c, 2);
        break;
    case MT_T_PYNODE:
    case MT_T_NATIVENODE: {
        int native = rec->tag == MT_T_NATIVENODE;
        if (v1(r)) {
            rec->u.node.id = (uint32_t)get_delta(c, native ? &r->d.nativenode : &r->d.pynode);
        } else {
            if (r->node_id[native] == UINT32_MAX)
                c->bad = 1;
            rec->u.node.id = ++r->node_id[native];
        }
        rec->u.node.parent =
            (uint32_t)((uint64_t)rec->u.node.id - (uint64_t)mt_unzigzag(get_varint(c)));
        if (native) {
            rec->u.node.a = get_delta(c, &r->d.ip);
        } else if (v1(r)) {
            rec->u.node.a = get_varint(c);
            rec->u.node.b = (uint32_t)get_varint(c);
            rec->u.node.flags = (uint32_t)get_varint(c);
        } else {
            rec->u.node.a = get_varint(c);
            uint64_t line = get_varint(c);
            rec->u.node.b = (uint32_t)(line >> 1);
            rec->u.node.flags = (uint32_t)(line & MT_PYF_ENTRY);
        }
        break;
    }
    case MT_T_OBJECT:
        rec->u.object.path = get_str(r, c, 0);
        rec->u.object.base = get_varint(c);
        rec->u.object.build_id = get_bytes(c, &rec->u.object.build_id_len);
        rec->u.object.nseg = (uint32_t)get_varint(c);
        if (rec->u.object.nseg > 32) {
            c->bad = 1;
            break;
        }
        for (uint32_t i = 0; i < 2 * rec->u.object.nseg; i++)
            r->seg[i] = get_varint(c);
        rec->u.object.seg = r->seg;
        rec->u.object.unload = (uint32_t)get_varint(c);
        break;
    case MT_T_SAMPLE:
        if (v1(r)) {
            rec->u.sample.time_us = get_varint(c);
            rec->u.sample.rss_bytes = get_varint(c);
            rec->u.sample.heap_bytes = get_varint(c);
        } else {
            r->d.sample_time += get_delta(c, &r->d.sample_step);
            rec->u.sample.time_us = r->d.sample_time;
            rec->u.sample.rss_bytes = get_delta(c, &r->d.sample_rss);
            rec->u.sample.heap_bytes = get_delta(c, &r->d.sample_heap);
        }
        break;
    case MT_T_GROUP:
        if (v1(r))
            decode_group_v1(c, rec);
        else
            decode_group(r, c, rec);
        break;
    case MT_T_TOTALS: {
        struct mt_totals *t = &r->totals;
        memset(t, 0, sizeof *t);
        t->allocations = get_varint(c);
        t->frees = get_varint(c);
        t->allocated_bytes = get_varint(c);
        t->peak_bytes = get_varint(c);
        t->peak_time_us = get_varint(c);
        t->end_bytes = get_varint(c);
        t->peak_rss_bytes = get_varint(c);
        t->end_marked = (uint32_t)get_varint(c);
        uint64_t n = get_varint(c);
        for (uint64_t i = 0; i < n && !c->bad; i++) {
            uint64_t count = get_varint(c), bytes = get_varint(c);
            if (i < MT_A_COUNT) {  /* allocators this version does not know */
                t->allocator_count[i] = count;
                t->allocator_bytes[i] = bytes;
            }
        }
        for (unsigned i = 0; i < 64; i++)
            t->histogram[i] = get_varint(c);
        rec->u.totals = t;
        break;
    }
    case MT_T_END:
        break;
    case MT_T_PROGRAM:
        rec->u.program.python_version = get_str(r, c, 0);
        break;
    case MT_T_TRAILER:
        rec->u.trailer.exit.code = (int)mt_unzigzag(get_varint(c));
        rec->u.trailer.exit.signal = (int)mt_unzigzag(get_varint(c));
        if (rec->u.trailer.exit.signal < MT_EXIT_STOPPED || rec->u.trailer.exit.signal > 64)
            c->bad = 1;  /* no signal has that number */
        rec->u.trailer.duration_us = get_varint(c);
        rec->u.trailer.events = get_varint(c);
        rec->u.trailer.lost_events = get_varint(c);
        break;
    default:
        c->bad = 1;
    }
    return c->bad ? MT_E_CORRUPT : 1;
}

/* Records whose strings or tables live in the reader's buffers. */
static int points_into_reader(enum mt_tag tag)
{
    return tag == MT_T_THREAD || tag == MT_T_CODE || tag == MT_T_OBJECT ||
           tag == MT_T_TOTALS || tag == MT_T_PROGRAM;
}

int mt_reader_next_many(struct mt_reader *r, struct mt_record *recs, int max)
{
    if (r->done)
        return r->done_rc;
    while (r->p == r->end) {
        int rc = next_block(r);
        if (rc <= 0) {
            r->done = 1;
            /* A clean end needs the trailer: a file without it stopped
             * early, even when it ends between blocks. */
            r->done_rc = rc == 0 ? MT_E_TRUNCATED : rc;
            return r->done_rc;
        }
    }
    struct cursor c = {r->p, r->end, 0};
    int n = 0;
    while (n < max && c.p < c.end) {
        struct mt_record *rec = &recs[n];
        int rc = decode(r, &c, rec);
        if (rc < 0) {
            r->done = 1;
            r->done_rc = rc;
            break;  /* the error comes with the next call */
        }
        r->p = c.p;
        n++;
        if (rec->tag == MT_T_TRAILER) {
            r->done = 1;
            r->done_rc = 0;
            break;
        }
        if (points_into_reader(rec->tag))
            break;
    }
    return n ? n : r->done_rc;
}

int mt_reader_next(struct mt_reader *r, struct mt_record *rec)
{
    int rc = mt_reader_next_many(r, rec, 1);
    return rc > 0 ? 1 : rc;
}

uint64_t mt_reader_offset(const struct mt_reader *r)
{
    return r->block_offset;
}

uint64_t mt_reader_file_size(const struct mt_reader *r)
{
    return r->size;
}

void mt_reader_close(struct mt_reader *r)
{
    if (!r)
        return;
    if (r->f)
        fclose(r->f);
    free(r->raw);
    free(r->comp);
    free(r->command);
    mt_amap_release(&r->live);
    free(r->files);
    free(r);
}
