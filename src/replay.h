/* Replaying a capture's records: keeps only the live blocks and per-stack
 * totals and yields what every report needs — what was alive at the peak,
 * at the end (leaks), what was short-lived (temporary), totals per
 * allocator and thread, the memory series. Memory grows with live blocks
 * and distinct stacks, never with events. The reader replays captures
 * with it; the collector replays events into it for --aggregate and
 * saves the result as an aggregate capture. One owner, one thread. */
#ifndef MT_REPLAY_H
#define MT_REPLAY_H

#include <stdint.h>
#include "capture.h"

struct mt_analysis_opts {
    int split_threads;      /* group by (stack, thread) instead of stack */
    unsigned temporary_n;   /* "temporary": freed before N more allocations
                               on the same thread; 0 means 1 */
    int progress;           /* show progress on stderr (TTY) after 1 s */
    int temporal;           /* keep allocations by time bucket per group
                               (struct mt_temporal); costs nothing when 0 */
    int totals_only;        /* only totals are wanted: the run's (peak and
                               end included) and each group's total_*; the
                               groups' peak_*, end_* and temp_* stay 0 and
                               temporal is ignored. ~10 % less replay per
                               event, for reports that show no more */
    /* mt_analyze calls it on the thread that reads the capture with each
     * OBJECT and NATIVENODE record, as soon as it is read and before the
     * replay has it, then once with NULL when reading ended: work that
     * needs only those (symbolization) can start while the replay runs.
     * The record is valid during the call only. NULL: no calls. */
    void (*on_native)(const struct mt_record *r, void *arg);
    void *on_native_arg;
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

/* Python: a = code id, b = line; native: a = return address, objects =
 * the OBJECT records before the node's (which object held the address:
 * the capture may load another at the same place later). */
struct mt_node_info { uint32_t parent, objects; uint64_t a; uint32_t b, flags; };

struct mt_object_info {
    char *path; uint64_t base; uint8_t *build_id; uint32_t build_id_len;
    uint32_t nseg; uint64_t *seg;  /* nseg × {vaddr, memsz} */
};

struct mt_sample { uint64_t time_us, rss_bytes, heap_bytes; };

struct mt_allocator_total { uint64_t count, bytes; };

/* --temporal: per group, bytes and counts by the time bucket they were
 * allocated in (a) and freed in (f). Times are the sample clock: an event
 * is dated by the last memory sample before it (every ~10 ms); bucket i is
 * [i * bucket_us, (i + 1) * bucket_us) of it. At most MT_TBUCKETS buckets:
 * when the run outgrows them, or the cells outgrow their budget, pairs of
 * buckets are merged (bucket_us doubles). docs/reports.md, "Temporal flame
 * graphs", gives the semantics and the memory bound. */
#define MT_TBUCKETS 128
#define MT_TALIVE 0xffffu      /* f of a cell still alive (at the end / peak) */
struct mt_tcell { uint32_t group; uint16_t a, f; uint64_t bytes, count; };

struct mt_temporal {
    uint64_t bucket_us;              /* width of a bucket */
    uint32_t nbuckets;               /* buckets in use: 0 .. the end's */
    uint32_t peak_bucket;            /* the bucket of peak_time_us */
    /* Everything allocated, once: freed in bucket f, or f = MT_TALIVE:
     * alive at the end (the END marker when there is one; what comes
     * after it is left out, like the leaks report does). Several cells may
     * have the same (group, a, f): add them. */
    struct mt_tcell *cells; uint32_t ncells;
    /* Alive at the peak (f = MT_TALIVE), by allocation bucket. */
    struct mt_tcell *peak; uint32_t npeak;
};

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
    struct mt_temporal *temporal;    /* NULL unless opts.temporal */
};

struct mt_replay;

/* A new replay. opts is copied. @return NULL when out of memory. */
struct mt_replay *mt_replay_new(const struct mt_analysis_opts *opts);

/* Starts over, as mt_replay_new with the same opts (and keying): for a
 * process that exec'd another program. @return MT_OK, or MT_E_NOMEM (r is
 * unchanged then). */
int mt_replay_restart(struct mt_replay *r);

/* Heap blocks are then found by allocation number (ev.number), not by
 * address: for records from mt_reader_numbers_only. Call before adding. */
void mt_replay_key_by_number(struct mt_replay *r);

/* Applies one record (events, definitions, samples, the aggregate records
 * of an aggregate capture, the trailer). Strings are copied.
 * @return MT_OK, or MT_E_CORRUPT for a record whose ids cannot be right
 * (bigger than the number of records so far), or, keyed by number, that
 * ends a block that is not live (a capture ends each block it numbered
 * once): it is not applied, and the replay takes no more records. */
int mt_replay_add(struct mt_replay *r, const struct mt_record *rec);

/* The same as mt_replay_add of an ALLOC or a FREE record with these
 * fields, without building one: the collector's path when it aggregates.
 * For a replay keyed by address: one keyed by number needs the numbers a
 * reader gives (mt_replay_add), and both return MT_E_CORRUPT. */
int mt_replay_alloc(struct mt_replay *r, uint32_t thread, unsigned allocator,
                    uint64_t addr, uint64_t size, uint32_t py_stack, uint32_t native_stack);
int mt_replay_free(struct mt_replay *r, uint32_t thread, uint64_t addr);

/* mt_replay_add of recs[0..n) in turn, stopping at the first that fails;
 * *done gets how many were applied. One call per batch: the per-record
 * call costs as much as replaying an event. */
int mt_replay_add_many(struct mt_replay *r, const struct mt_record *recs, uint32_t n,
                       uint32_t *done);

/* Ends the replay: what is alive now is "the end" unless an END record
 * came. @return the result (free with mt_analysis_free); r is freed.
 * header: copied into the result (strings too). NULL when out of memory. */
struct mt_analysis *mt_replay_finish(struct mt_replay *r,
                                     const struct mt_header *header);

/* Writes the replay's state as an aggregate capture to path, replacing it
 * atomically (written to "path.tmp", then renamed): a collector killed
 * while saving leaves the previous save. trailer NULL: the program runs on
 * (the file reads as incomplete). The replay goes on afterwards.
 * @return MT_OK or MT_E_IO (errno set) / MT_E_NOMEM. */
int mt_replay_save(struct mt_replay *r, const char *path,
                   const struct mt_header *header,
                   const struct mt_trailer *trailer);

void mt_analysis_free(struct mt_analysis *a);

/* Called when memory runs out in src/ functions that cannot return an
 * error; the program sets it (it prints and exits). Default: abort(). */
void mt_set_oom_handler(void (*fn)(void));

#endif
