/* One streaming pass over a capture: replays every event, keeping only the
 * live blocks and per-stack totals, and yields what every report needs —
 * what was alive at the peak, at the end (leaks), what was short-lived
 * (temporary), totals per allocator and thread, the memory series.
 * Memory grows with live blocks and distinct stacks, never with events. */
#ifndef MT_ANALYSIS_H
#define MT_ANALYSIS_H

#include <stdint.h>

#include "../src/replay.h"

/* Reads the capture at path. @return MT_OK with *out (free it with
 * mt_analysis_free), or an mt_err when the file cannot be read at all
 * (not a capture, newer version, empty...). A capture cut short is not an
 * error: it returns MT_OK with complete = 0 and stop_error/stop_offset set.
 * *found_version gets the file's version on MT_E_VERSION (may be NULL). */
int mt_analyze(const char *path, const struct mt_analysis_opts *opts,
               struct mt_analysis **out, uint32_t *found_version);


/* A frame of a stack, resolved for display. */
struct mt_frame {
    const char *function;   /* qualified name; never NULL */
    const char *file;       /* "" when unknown */
    int32_t line;           /* 0 when unknown */
    int is_python;
    int is_entry;           /* Python frame that began a C-level eval */
    uint64_t ip;            /* native frames: the return address */
};

/* The Python frames of a stack, innermost first, into out[0..max).
 * @return how many. Strings belong to a. */
int mt_analysis_py_frames(const struct mt_analysis *a, uint32_t py_stack,
                          struct mt_frame *out, int max);

/* The native return addresses of a stack, innermost first, and when
 * objects is not NULL, each one's mt_node_info.objects (for
 * mt_symbolizer_resolve). */
int mt_analysis_native_ips(const struct mt_analysis *a, uint32_t native_stack,
                           uint64_t *out, uint32_t *objects, int max);

/* Name of thread index (its name, or "thread <tid>"); static or owned by a. */
const char *mt_analysis_thread_name(const struct mt_analysis *a, uint32_t index);

#endif
