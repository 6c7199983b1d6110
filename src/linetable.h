/* Line numbers from a CPython code object's line table.
 * The shim records (code, instruction offset); the reader maps the offset
 * to a line with the table captured once per code object. */
#ifndef MT_LINETABLE_H
#define MT_LINETABLE_H

#include <stddef.h>
#include <stdint.h>

/* The line of the instruction at byte offset `instr`, decoding `table`
 * (`len` bytes) in `format` (enum mt_linetable_format in preload/pystack.h,
 * values stored in captures). @return the line, or firstlineno when the
 * table has no entry for that offset, or when the table is malformed
 * (never reads past len). Pure; thread-safe. */
int32_t mt_linetable_line(uint8_t format, const uint8_t *table, size_t len,
                          int32_t firstlineno, uint32_t instr);

#endif
