/* One streaming pass over a capture: replays every event, keeping only the
 * live blocks and per-stack totals, and yields what every report needs —
 * what was alive at the peak, at the end (leaks), what was short-lived
 * (temporary), totals per allocator and thread, the memory series.
 * Memory grows with live blocks and distinct stacks, never with events. */
#ifndef MT_ANALYSIS_H
#define MT_ANALYSIS_H

#include <stdint.h>
#include "../src/capture.h"

struct mt_analysis_opts {
    int split_threads;      /* group by (stack, thread) instead of stack */
    unsigned temporary_n;   /* "temporary": freed before N more allocations
                               on the same thread; 0 means 1 */
    int progress;           /* show progress on stderr (TTY) after 1 s */
};

/* A group of allocations with the same stack (and thread when split). */
struct mt_group {
    uint32_t py_stack, native_stack;  /* leaf node ids, 0 = none */
    uint32_t thread;                  /* thread index; 0 when not split */
    uint32_t allocators;              /* bit mask: 1u << enum mt_allocator */
    uint64_t total_bytes, total_count;   /* everything ever allocated */
    uint64_t peak_bytes, peak_count;     /* alive at the peak */
    uint64_t end_bytes, end_count;       /* alive at the end (leaks) */
    uint64_t temp_bytes, temp_count;     /* temporary allocations */
};

struct mt_thread_info { uint32_t index; uint32_t tid; char *name; };

struct mt_code_info {
    char *name, *qualname, *filename;
    int32_t firstlineno;
};

/* Python: a = code id, b = line; native: a = return address. */
struct mt_node_info { uint32_t parent; uint64_t a; uint32_t b, flags; };

struct mt_object_info {
    char *path; uint64_t base; uint8_t *build_id; uint32_t build_id_len;
    uint32_t nseg; uint64_t *seg;  /* nseg × {vaddr, memsz} */
};

struct mt_sample { uint64_t time_us, rss_bytes, heap_bytes; };

struct mt_allocator_total { uint64_t count, bytes; };

struct mt_analysis {
    struct mt_header header;         /* strings owned by the analysis */
    char *python_version;            /* NULL: not Python (or not known) */
    int complete;                    /* a trailer was read */
    int stop_error;                  /* why reading stopped early (mt_err) */
    uint64_t stop_offset;            /* where, in bytes */
    struct mt_trailer trailer;       /* valid when complete */

    uint64_t total_allocations, total_frees, total_allocated_bytes;
    uint64_t peak_bytes;             /* high-water mark of live heap bytes */
    uint64_t peak_time_us;           /* from the last sample before it */
    uint64_t end_bytes;              /* live at the program's end */
    int end_marked;                  /* 1: Python teardown marker seen */
    uint64_t peak_rss_bytes;         /* largest sampled RSS */
    struct mt_allocator_total allocators[MT_A_COUNT];

    struct mt_group *groups; uint32_t ngroups;
    struct mt_thread_info *threads; uint32_t nthreads;
    struct mt_code_info *codes; uint32_t ncodes;         /* by id; [0] unused */
    struct mt_node_info *pynodes; uint32_t npynodes;     /* by id; [0] root */
    struct mt_node_info *nativenodes; uint32_t nnativenodes;
    struct mt_object_info *objects; uint32_t nobjects;
    struct mt_sample *samples; uint32_t nsamples;        /* thinned */
    uint64_t histogram[64];          /* allocations by floor(log2(size)) */
};

/* Reads the capture at path. @return MT_OK with *out (free it with
 * mt_analysis_free), or an mt_err when the file cannot be read at all
 * (not a capture, newer version, empty...). A capture cut short is not an
 * error: it returns MT_OK with complete = 0 and stop_error/stop_offset set.
 * *found_version gets the file's version on MT_E_VERSION (may be NULL). */
int mt_analyze(const char *path, const struct mt_analysis_opts *opts,
               struct mt_analysis **out, uint32_t *found_version);

void mt_analysis_free(struct mt_analysis *a);

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

/* The native return addresses of a stack, innermost first. */
int mt_analysis_native_ips(const struct mt_analysis *a, uint32_t native_stack,
                           uint64_t *out, int max);

/* Name of thread index (its name, or "thread <tid>"); static or owned by a. */
const char *mt_analysis_thread_name(const struct mt_analysis *a, uint32_t index);

#endif
