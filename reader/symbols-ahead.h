/* Symbolization ahead of the report (design.md §4).
 *
 * Reading an object's symbol table and inflating its compressed DWARF is
 * most of what symbolizing a capture's native stacks costs, and none of it
 * needs the replay: a thread of its own does it, and resolves the return
 * addresses as the capture names them, while mt_analyze reads and replays
 * the capture. The report then finds the objects loaded and many addresses
 * cached. The thread runs at a lower priority, so that the replay, which
 * the report waits for, keeps its core.
 *
 *   struct mt_ahead *ahead = mt_ahead_new();
 *   opts.on_native = mt_ahead_record; opts.on_native_arg = ahead;
 *   mt_analyze(path, &opts, &a, NULL);
 *   sym = mt_ahead_finish(ahead, a);
 */
#ifndef MT_SYMBOLS_AHEAD_H
#define MT_SYMBOLS_AHEAD_H

#include "analysis.h"
#include "symbols.h"

struct mt_ahead;

/* @return the state for mt_ahead_record, or NULL when out of memory (the
 * report then symbolizes after the analysis, as mt_ahead_finish(NULL, a)). */
struct mt_ahead *mt_ahead_new(void);

/* The analysis's on_native: queues an OBJECT for the symbolizer and every
 * NATIVENODE's return address for resolving; the first NATIVENODE starts
 * the thread. NULL r: reading ended. */
void mt_ahead_record(const struct mt_record *r, void *ahead);

/* Stops the thread (addresses not reached yet are resolved when the report
 * asks) and frees ahead (NULL accepted). @return a symbolizer of a's
 * objects, to free with mt_symbolizer_free; NULL when a is NULL (the
 * analysis failed), has no native stacks, or memory ran out. */
struct mt_symbolizer *mt_ahead_finish(struct mt_ahead *ahead, const struct mt_analysis *a);

#endif
