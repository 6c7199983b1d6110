/* Line numbers from CPython line tables (see src/linetable.h).
 *
 * Three encodings, all addressed by a *byte* offset into co_code
 * (the shim converts 3.10's f_lasti and 3.11+'s code-unit pointers to
 * bytes; see preload/pystack.c):
 *   - 3.8/3.9 co_lnotab: (addr_delta u8, line_delta s8) pairs; the line
 *     changes at each address boundary (Objects/lnotab_notes.txt, 3.9).
 *   - 3.10 co_linetable: (length u8, line_delta s8) pairs, each one a
 *     byte range; line_delta -128 means "no line" (lnotab_notes.txt, 3.10).
 *   - 3.11+ location table: variable-length entries, each covering 1..8
 *     code units of 2 bytes (InternalDocs/locations.md; same in 3.12/3.13).
 * and memtap's own, which the shim sends for a table too big to copy:
 *   - ranges: svarint(after - first), then (uvarint length, svarint
 *     line delta) pairs, both varints as the 3.11 table's.
 * Each is walked once into byte ranges and their lines; every read is
 * bounds-checked: a truncated or garbage table ends the walk (later
 * offsets get firstlineno), never a read past `len`.
 */
#include "linetable.h"

#include <stdlib.h>

/* Keep in sync with enum mt_linetable_format (preload/pystack.h); src/
 * must not include the shim's header. */
enum {
    LT_NONE = 0,
    LT_LNOTAB = 1,
    LT_LINETABLE310 = 2,
    LT_LOCATIONS311 = 3,
};

/* Told each range [start, end) of byte offsets and its line, in order,
 * contiguous from 0; returns nonzero to stop the walk. */
typedef int (*range_fn)(void *arg, uint64_t start, uint64_t end, int32_t line);

/* What a walk leaves: offsets from `end` on have line `after`. */
struct walk_end { uint64_t end; int32_t after; };

/* line += delta; -1 (a malformed table) where that overflows: the bytes
 * come from the traced program's memory. */
static int add_line(int64_t *line, int64_t delta)
{
    return __builtin_add_overflow(*line, delta, line) ? -1 : 0;
}

static int32_t clamp_line(int64_t line, int32_t first)
{
    return line >= INT32_MIN && line <= INT32_MAX ? (int32_t)line : first;
}

static struct walk_end lnotab_walk(const uint8_t *t, size_t len, int32_t first,
                                   range_fn fn, void *arg)
{
    /* As PyCode_Addr2Line in 3.9: the line delta of a pair applies from
     * its address on. */
    uint64_t addr = 0;
    int64_t line = first;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint64_t next = addr + t[i];
        if (next > addr && fn(arg, addr, next, clamp_line(line, first)))
            return (struct walk_end){next, first};
        addr = next;
        line += (int8_t)t[i + 1];
    }
    return (struct walk_end){addr, clamp_line(line, first)};
}

static struct walk_end linetable310_walk(const uint8_t *t, size_t len, int32_t first,
                                         range_fn fn, void *arg)
{
    /* Each pair is the range [end, end + length); zero-length ranges
     * still move the line (like advance() in 3.10's codeobject.c). */
    uint64_t end = 0;
    int64_t line = first;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint64_t start = end;
        int8_t ldelta = (int8_t)t[i + 1];
        end += t[i];
        if (ldelta != -128)
            line += ldelta;
        if (end > start &&
            fn(arg, start, end, ldelta == -128 ? first : clamp_line(line, first)))
            break;
    }
    return (struct walk_end){end, first};
}

/* Reads an unsigned varint of the 3.11 location table: 6-bit groups,
 * low first, 0x40 = more follows. @return 0, or -1 past the end. */
static int read_varint(const uint8_t *t, size_t len, size_t *pos,
                       uint64_t *val)
{
    uint64_t v = 0;
    unsigned shift = 0;
    for (;;) {
        if (*pos >= len || shift > 56)
            return -1;
        uint8_t b = t[(*pos)++];
        v |= (uint64_t)(b & 0x3f) << shift;
        shift += 6;
        if (!(b & 0x40))
            break;
    }
    *val = v;
    return 0;
}

static int read_svarint(const uint8_t *t, size_t len, size_t *pos,
                        int64_t *val)
{
    uint64_t u;
    if (read_varint(t, len, pos, &u) < 0)
        return -1;
    *val = (u & 1) ? -(int64_t)(u >> 1) : (int64_t)(u >> 1);
    return 0;
}

static struct walk_end locations311_walk(const uint8_t *t, size_t len, int32_t first,
                                         range_fn fn, void *arg)
{
    /* The table is in code units of 2 bytes. */
    uint64_t end = 0;
    int64_t line = first;
    size_t pos = 0;
    while (pos < len) {
        uint8_t head = t[pos++];
        if (!(head & 0x80))
            break;  /* not the start of an entry: malformed */
        unsigned code = (head >> 3) & 0x0f;
        uint64_t start = end;
        int has_line = 1;
        end += (head & 0x07) + 1u;
        int64_t delta = 0;
        uint64_t skip;
        switch (code) {
        case 15:  /* no location */
            has_line = 0;
            break;
        case 14:  /* long form: line delta, end line delta, col, end col */
            if (read_svarint(t, len, &pos, &delta) < 0 ||
                read_varint(t, len, &pos, &skip) < 0 ||
                read_varint(t, len, &pos, &skip) < 0 ||
                read_varint(t, len, &pos, &skip) < 0)
                return (struct walk_end){2 * start, first};
            break;
        case 13:  /* no column: line delta */
            if (read_svarint(t, len, &pos, &delta) < 0)
                return (struct walk_end){2 * start, first};
            break;
        case 10: case 11: case 12:  /* one-line form: delta 0..2, 2 cols */
            delta = (int64_t)code - 10;
            if (len - pos < 2)
                return (struct walk_end){2 * start, first};
            pos += 2;
            break;
        default:  /* short form, same line, one column byte */
            if (pos >= len)
                return (struct walk_end){2 * start, first};
            pos += 1;
            break;
        }
        if (add_line(&line, delta) < 0)
            return (struct walk_end){2 * start, first};
        if (fn(arg, 2 * start, 2 * end, has_line ? clamp_line(line, first) : first))
            break;
    }
    return (struct walk_end){2 * end, first};
}

static struct walk_end ranges_walk(const uint8_t *t, size_t len, int32_t first,
                                   range_fn fn, void *arg)
{
    uint64_t end = 0, length;
    int64_t line = first, after, delta;
    size_t pos = 0;
    if (read_svarint(t, len, &pos, &after) < 0)
        return (struct walk_end){0, first};
    while (pos < len) {
        if (read_varint(t, len, &pos, &length) < 0 || read_svarint(t, len, &pos, &delta) < 0 ||
            length > UINT32_MAX)
            return (struct walk_end){end, first};
        uint64_t start = end;
        end += length;
        if (add_line(&line, delta) < 0)
            return (struct walk_end){start, first};
        if (end > start && fn(arg, start, end, clamp_line(line, first)))
            break;
    }
    int64_t last = first;
    return (struct walk_end){end, add_line(&last, after) < 0 ? first : clamp_line(last, first)};
}

static struct walk_end walk(uint8_t format, const uint8_t *table, size_t len,
                            int32_t first, range_fn fn, void *arg)
{
    if (!table)
        len = 0;
    switch (format) {
    case LT_LNOTAB:
        return lnotab_walk(table, len, first, fn, arg);
    case LT_LINETABLE310:
        return linetable310_walk(table, len, first, fn, arg);
    case LT_LOCATIONS311:
        return locations311_walk(table, len, first, fn, arg);
    case MT_LINETABLE_RANGES:
        return ranges_walk(table, len, first, fn, arg);
    default:
        return (struct walk_end){0, first};
    }
}

struct find { uint64_t instr; int32_t line; int found; };

static int find_range(void *arg, uint64_t start, uint64_t end, int32_t line)
{
    struct find *f = arg;
    if (f->instr < start || f->instr >= end)
        return 0;
    f->line = line;
    f->found = 1;
    return 1;
}

int32_t mt_linetable_line(uint8_t format, const uint8_t *table, size_t len,
                          int32_t firstlineno, uint32_t instr)
{
    if (instr == MT_INSTR_UNSTARTED)
        return firstlineno;
    struct find f = {instr, firstlineno, 0};
    struct walk_end e = walk(format, table, len, firstlineno, find_range, &f);
    if (f.found)
        return f.line;
    return instr >= e.end ? e.after : firstlineno;
}

struct build { struct mt_lineindex *ix; uint32_t cap; int failed; };

static int add_range(void *arg, uint64_t start, uint64_t end, int32_t line)
{
    struct build *b = arg;
    struct mt_lineindex *ix = b->ix;
    (void)end;
    if (start > UINT32_MAX)
        return 1;  /* no instruction lies there */
    if (ix->n && ix->lines[ix->n - 1] == line)
        return 0;  /* the same line goes on */
    if (ix->n == b->cap) {
        uint32_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *starts = realloc(ix->starts, cap * sizeof *starts);
        if (starts)
            ix->starts = starts;
        int32_t *lines = starts ? realloc(ix->lines, cap * sizeof *lines) : NULL;
        if (!lines) {
            b->failed = 1;
            return 1;
        }
        ix->lines = lines;
        b->cap = cap;
    }
    ix->starts[ix->n] = (uint32_t)start;
    ix->lines[ix->n++] = line;
    return 0;
}

int mt_lineindex_build(struct mt_lineindex *ix, uint8_t format, const uint8_t *table,
                       size_t len, int32_t firstlineno)
{
    *ix = (struct mt_lineindex){NULL, NULL, 0, 0, firstlineno, firstlineno};
    struct build b = {ix, 0, 0};
    struct walk_end e = walk(format, table, len, firstlineno, add_range, &b);
    if (b.failed) {
        mt_lineindex_free(ix);
        return -1;
    }
    ix->end = e.end;
    ix->after = e.after;
    return 0;
}

int32_t mt_lineindex_line(const struct mt_lineindex *ix, uint32_t instr)
{
    if (instr == MT_INSTR_UNSTARTED)
        return ix->first;
    if (instr >= ix->end)
        return ix->after;
    uint32_t lo = 0, hi = ix->n;  /* the last range starting at or before instr */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ix->starts[mid] <= instr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? ix->lines[lo - 1] : ix->first;
}

void mt_lineindex_free(struct mt_lineindex *ix)
{
    free(ix->starts);
    free(ix->lines);
    ix->starts = NULL;
    ix->lines = NULL;
    ix->n = 0;
}

struct encode {
    uint8_t *out;
    size_t cap, len;
    int64_t line;       /* the last range written's */
    uint64_t end;
    uint64_t run_end;   /* a run of ranges of one line, not written yet */
    int32_t run_line;
    int full;
};

/* Appends v as a 3.11-table varint (6-bit groups, 0x40 = more). */
static int put_varint(struct encode *e, uint64_t v)
{
    do {
        if (e->len == e->cap) {
            e->full = 1;
            return -1;
        }
        uint8_t b = v & 0x3f;
        v >>= 6;
        e->out[e->len++] = (uint8_t)(b | (v ? 0x40 : 0));
    } while (v);
    return 0;
}

static uint64_t zigzag(int64_t v)
{
    return v < 0 ? ((uint64_t)-v << 1) | 1 : (uint64_t)v << 1;
}

static int flush_run(struct encode *e)
{
    if (e->run_end == e->end)
        return 0;
    if (put_varint(e, e->run_end - e->end) < 0 ||
        put_varint(e, zigzag(e->run_line - e->line)) < 0)
        return -1;
    e->end = e->run_end;
    e->line = e->run_line;
    return 0;
}

static int encode_range(void *arg, uint64_t start, uint64_t end, int32_t line)
{
    struct encode *e = arg;
    (void)start;
    if (line != e->run_line && flush_run(e) < 0)
        return 1;
    e->run_end = end;
    e->run_line = line;
    return 0;
}

size_t mt_linetable_ranges(uint8_t format, const uint8_t *table, size_t len,
                           int32_t firstlineno, uint8_t *out, size_t cap)
{
    /* The walk's `after` comes first: found by a first walk that writes
     * nothing. */
    struct encode e = {out, cap, 0, firstlineno, 0, 0, firstlineno, 0};
    struct walk_end end = walk(format, table, len, firstlineno, find_range,
                               &(struct find){UINT64_MAX, 0, 0});
    if (put_varint(&e, zigzag((int64_t)end.after - firstlineno)) < 0)
        return 0;
    walk(format, table, len, firstlineno, encode_range, &e);
    if (!e.full)
        flush_run(&e);
    return e.full ? 0 : e.len;
}
