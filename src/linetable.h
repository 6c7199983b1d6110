/* Line numbers from a CPython code object's line table.
 * The shim records (code, instruction offset); the collector maps the
 * offset to a line with the table the shim sent once per code object. */
#ifndef MT_LINETABLE_H
#define MT_LINETABLE_H

#include <stddef.h>
#include <stdint.h>

/* memtap's own format (after enum mt_linetable_format in
 * preload/pystack.h): byte ranges and their lines, which the shim sends in
 * place of a table too big to copy (mt_linetable_ranges). */
#define MT_LINETABLE_RANGES 4

/* The offset of a frame that has not run an instruction yet (3.9/3.10:
 * f_lasti -1, as a profile or trace "call" event, or CPython's own
 * allocations before the first instruction, see it): its line is the
 * code's first line, as CPython's f_lineno says. */
#define MT_INSTR_UNSTARTED UINT32_MAX

/* The line of the instruction at byte offset `instr`, decoding `table`
 * (`len` bytes) in `format` (enum mt_linetable_format in preload/pystack.h,
 * or MT_LINETABLE_RANGES). @return the line, or firstlineno when the table
 * has no entry for that offset, or when the table is malformed (never
 * reads past len). Pure; thread-safe. One walk of the table per call. */
int32_t mt_linetable_line(uint8_t format, const uint8_t *table, size_t len,
                          int32_t firstlineno, uint32_t instr);

/* A table walked once, for many lookups: a generated module's table is
 * hundreds of KiB, and walking it for each of its thousands of lines
 * would cost seconds. */
struct mt_lineindex {
    uint32_t *starts;   /* where each run of one line starts, ascending */
    int32_t *lines;
    uint32_t n;
    uint64_t end;       /* offsets from here on have line `after` */
    int32_t after, first;
};

/* Walks table into ix (release it with mt_lineindex_free).
 * @return 0, or -1 when out of memory (ix then holds nothing). */
int mt_lineindex_build(struct mt_lineindex *ix, uint8_t format, const uint8_t *table,
                       size_t len, int32_t firstlineno);
/* What mt_linetable_line says of the table ix was built from. */
int32_t mt_lineindex_line(const struct mt_lineindex *ix, uint32_t instr);
void mt_lineindex_free(struct mt_lineindex *ix);

/* Writes table's ranges in format MT_LINETABLE_RANGES into out (cap
 * bytes). @return the length, or 0 when it does not fit. Allocates
 * nothing: the shim calls it inside allocation hooks. */
size_t mt_linetable_ranges(uint8_t format, const uint8_t *table, size_t len,
                           int32_t firstlineno, uint8_t *out, size_t cap);

#endif
