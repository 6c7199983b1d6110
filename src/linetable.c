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
 * Every read is bounds-checked: a truncated or garbage table yields
 * firstlineno (or the last line decoded), never a read past `len`.
 */
#include "linetable.h"

/* Keep in sync with enum mt_linetable_format (preload/pystack.h); src/
 * must not include the shim's header. */
enum {
    LT_NONE = 0,
    LT_LNOTAB = 1,
    LT_LINETABLE310 = 2,
    LT_LOCATIONS311 = 3,
};

static int32_t lnotab_line(const uint8_t *t, size_t len, int32_t first,
                           uint32_t instr)
{
    /* Mirrors PyCode_Addr2Line in 3.9: the line delta of a pair applies
     * from its address on. */
    uint64_t addr = 0;
    int64_t line = first;
    for (size_t i = 0; i + 1 < len; i += 2) {
        addr += t[i];
        if (addr > instr)
            break;
        line += (int8_t)t[i + 1];
    }
    return (int32_t)line;
}

static int32_t linetable310_line(const uint8_t *t, size_t len, int32_t first,
                                 uint32_t instr)
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
        if (instr >= start && instr < end)
            return ldelta == -128 ? first : (int32_t)line;
    }
    return first;
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

static int32_t locations311_line(const uint8_t *t, size_t len, int32_t first,
                                 uint32_t instr)
{
    uint64_t end = 0;
    int64_t line = first;
    size_t pos = 0;
    /* The table is in code units of 2 bytes. */
    uint64_t unit = instr / 2;
    while (pos < len) {
        uint8_t head = t[pos++];
        if (!(head & 0x80))
            return first;  /* not the start of an entry: malformed */
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
                return first;
            break;
        case 13:  /* no column: line delta */
            if (read_svarint(t, len, &pos, &delta) < 0)
                return first;
            break;
        case 10: case 11: case 12:  /* one-line form: delta 0..2, 2 cols */
            delta = (int64_t)code - 10;
            if (len - pos < 2)
                return first;
            pos += 2;
            break;
        default:  /* short form, same line, one column byte */
            if (pos >= len)
                return first;
            pos += 1;
            break;
        }
        line += delta;
        if (unit >= start && unit < end)
            return (has_line && line >= INT32_MIN && line <= INT32_MAX)
                       ? (int32_t)line : first;
    }
    return first;
}

int32_t mt_linetable_line(uint8_t format, const uint8_t *table, size_t len,
                          int32_t firstlineno, uint32_t instr)
{
    if (!table)
        len = 0;
    switch (format) {
    case LT_LNOTAB:
        return lnotab_line(table, len, firstlineno, instr);
    case LT_LINETABLE310:
        return linetable310_line(table, len, firstlineno, instr);
    case LT_LOCATIONS311:
        return locations311_line(table, len, firstlineno, instr);
    case LT_NONE:
    default:
        return firstlineno;
    }
}
