/* memtap stats: the capture's totals, peak, allocators, threads and the
 * locations that allocated most. docs/stats.md documents the JSON keys. */
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "report.h"
#include "util.h"

#define TOP_LOCATIONS 25

static const char stats_usage[] = "memtap stats [--json] FILE";

struct location_total { uint32_t loc; uint64_t bytes, count; };

static int by_bytes(const void *x, const void *y)
{
    const struct location_total *a = x, *b = y;
    if (a->bytes != b->bytes)
        return a->bytes < b->bytes ? 1 : -1;
    return a->loc < b->loc ? -1 : a->loc > b->loc;
}

/* Everything ever allocated, per innermost location, biggest first.
 * @return the array (free it) with *n entries. */
static struct location_total *top_locations(struct mt_report *r, uint32_t *n)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    uint32_t nlocs = 0;
    struct location_total *t = NULL;
    for (uint32_t i = 0; i < a->ngroups; i++) {
        const struct mt_group *g = &a->groups[i];
        if (!g->total_count)
            continue;
        uint32_t loc = mt_report_innermost(r, g, mt_loc_outside_libc);
        if (loc >= nlocs) {
            uint32_t cap = mt_report_nlocs(r) + 1 > loc + 1 ? mt_report_nlocs(r) + 1 : loc + 1;
            t = realloc(t, cap * sizeof *t);
            if (!t)
                die("out of memory");
            memset(t + nlocs, 0, (cap - nlocs) * sizeof *t);
            nlocs = cap;
        }
        t[loc].loc = loc;
        t[loc].bytes += g->total_bytes;
        t[loc].count += g->total_count;
    }
    if (nlocs > 1)  /* t is NULL when nothing was allocated */
        qsort(t, nlocs, sizeof *t, by_bytes);
    while (nlocs && !t[nlocs - 1].count)
        nlocs--;
    *n = nlocs;
    return t;
}

/* Whether the capture has native stacks: asked for (--native), or a
 * program that is not Python, which always gets them. */
static int native_stacks(const struct mt_analysis *a)
{
    return (a->header.flags & MT_HF_NATIVE) || a->nnativenodes > 1;
}

static void print_json(struct mt_report *r)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    printf("{\"format_version\": %u, \"pid\": %d, \"command\": ",
           a->header.format_version, a->header.pid);
    mt_json_string(stdout, a->header.command);
    printf(", \"python_version\": ");
    if (a->python_version)
        mt_json_string(stdout, a->python_version);
    else
        printf("null");
    printf(", \"native\": %s, \"complete\": %s",
           native_stacks(a) ? "true" : "false",
           a->complete ? "true" : "false");
    if (!a->complete)
        printf(", \"truncated_at\": %llu", (unsigned long long)a->stop_offset);
    if (!a->complete || a->trailer.exit.signal < 0)  /* < 0: not known */
        printf(", \"exit\": null");
    else if (a->trailer.exit.signal)
        printf(", \"exit\": {\"signal\": %d}", a->trailer.exit.signal);
    else
        printf(", \"exit\": {\"code\": %d}", a->trailer.exit.code);
    uint64_t duration = a->complete ? a->trailer.duration_us
                                    : a->nsamples ? a->samples[a->nsamples - 1].time_us : 0;
    printf(", \"duration_ms\": %llu", (unsigned long long)(duration / 1000));
    printf(", \"total_allocations\": %llu, \"total_frees\": %llu, "
           "\"total_allocated_bytes\": %llu, \"peak_memory_bytes\": %llu, "
           "\"end_memory_bytes\": %llu, \"peak_rss_bytes\": %llu, "
           "\"lost_events\": %llu",
           (unsigned long long)a->total_allocations,
           (unsigned long long)a->total_frees,
           (unsigned long long)a->total_allocated_bytes,
           (unsigned long long)a->peak_bytes, (unsigned long long)a->end_bytes,
           (unsigned long long)a->peak_rss_bytes,
           (unsigned long long)(a->complete ? a->trailer.lost_events : 0));
    printf(", \"allocators\": {");
    const char *sep = "";
    for (unsigned i = 1; i < MT_A_COUNT; i++) {
        if (!a->allocators[i].count)
            continue;
        printf("%s\"%s\": {\"count\": %llu, \"bytes\": %llu}", sep,
               mt_allocator_name(i), (unsigned long long)a->allocators[i].count,
               (unsigned long long)a->allocators[i].bytes);
        sep = ", ";
    }
    printf("}, \"threads\": [");
    sep = "";
    for (uint32_t i = 1; i < a->nthreads; i++) {
        printf("%s{\"id\": %u, \"index\": %u, \"name\": ", sep, a->threads[i].tid, i);
        mt_json_string(stdout, a->threads[i].name);
        printf("}");
        sep = ", ";
    }
    printf("], \"top_locations\": [");
    uint32_t n;
    struct location_total *top = top_locations(r, &n);
    for (uint32_t i = 0; i < n && i < TOP_LOCATIONS; i++) {
        const struct mt_loc *l = mt_report_loc(r, top[i].loc);
        printf("%s{\"function\": ", i ? ", " : "");
        mt_json_string(stdout, l->function);
        printf(", \"file\": ");
        mt_json_string(stdout, mt_loc_where(l));
        printf(", \"line\": %d, \"bytes\": %llu, \"count\": %llu}", l->line,
               (unsigned long long)top[i].bytes, (unsigned long long)top[i].count);
    }
    free(top);
    printf("]}\n");
}

static void print_text(struct mt_report *r)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    char b1[32], b2[32], b3[32];
    printf("Capture of: %s\n", mt_report_clean(r, a->header.command));
    printf("  pid %d, %s, format %u%s\n", a->header.pid,
           /* null for a Python memtap cannot walk (3.8) as well */
           a->python_version ? a->python_version : "no Python stacks",
           a->header.format_version,
           native_stacks(a) ? ", native stacks" : "");
    if (!a->complete)
        printf("  INCOMPLETE: the capture stops at byte %llu (%s)\n",
               (unsigned long long)a->stop_offset, mt_strerror(a->stop_error));
    else if (a->trailer.exit.signal == MT_EXIT_STOPPED)
        printf("  recorded for %.3f s (a Tracker's block; the process ran on)\n",
               (double)a->trailer.duration_us / 1e6);
    else if (a->trailer.exit.signal < 0)
        printf("  ended after %.3f s (memtap did not see how: a followed child, or a "
               "process memtap did not start)\n", (double)a->trailer.duration_us / 1e6);
    else if (a->trailer.exit.signal)
        printf("  killed by signal %d after %.3f s\n", a->trailer.exit.signal,
               (double)a->trailer.duration_us / 1e6);
    else
        printf("  exited with code %d after %.3f s\n", a->trailer.exit.code,
               (double)a->trailer.duration_us / 1e6);
    printf("\n  allocations     %llu (%s)\n  frees           %llu\n",
           (unsigned long long)a->total_allocations,
           mt_format_size(a->total_allocated_bytes, b1, sizeof b1),
           (unsigned long long)a->total_frees);
    printf("  peak heap       %s\n  at the end      %s%s\n  peak RSS        %s\n",
           mt_format_size(a->peak_bytes, b2, sizeof b2),
           mt_format_size(a->end_bytes, b3, sizeof b3),
           a->end_marked ? " (before interpreter teardown)" : "",
           /* samples come every 10 ms: a shorter run may have none */
           a->peak_rss_bytes ? mt_format_size(a->peak_rss_bytes, b1, sizeof b1)
                             : "not sampled");
    printf("\nAllocators:\n");
    for (unsigned i = 1; i < MT_A_COUNT; i++)
        if (a->allocators[i].count)
            printf("  %-16s %12llu  %12s\n", mt_allocator_name(i),
                   (unsigned long long)a->allocators[i].count,
                   mt_format_size(a->allocators[i].bytes, b1, sizeof b1));
    printf("\nAllocation sizes:\n");
    uint64_t most = 1;
    for (int i = 0; i < 64; i++)
        if (a->histogram[i] > most)
            most = a->histogram[i];
    for (int i = 0; i < 64; i++) {
        if (!a->histogram[i])
            continue;
        char lo[32];
        mt_format_size(i ? 1ull << i : 0, lo, sizeof lo);  /* the first holds size 0 too */
        int bar = (int)(40.0 * (double)a->histogram[i] / (double)most);
        printf("  >= %-10s %10llu  %.*s\n", lo, (unsigned long long)a->histogram[i],
               bar > 0 ? bar : 1,
               "########################################");
    }
    printf("\nThreads:\n");
    for (uint32_t i = 1; i < a->nthreads; i++)
        printf("  %-4u tid %-8u %s\n", i, a->threads[i].tid,
               mt_report_clean(r, a->threads[i].name));
    printf("\nTop locations by bytes allocated:\n");
    uint32_t n;
    struct location_total *top = top_locations(r, &n);
    for (uint32_t i = 0; i < n && i < 10; i++) {
        char where[512];
        mt_loc_format(mt_report_loc(r, top[i].loc), where, sizeof where);
        printf("  %12s %10llu  %s\n", mt_format_size(top[i].bytes, b1, sizeof b1),
               (unsigned long long)top[i].count, where);
    }
    free(top);
}

int cmd_stats(int argc, char **argv)
{
    struct mt_report_opts o;
    int rc = mt_report_parse_args(argc, argv, MT_O_JSON, stats_usage, &o);
    if (rc >= 0)
        return rc;  /* --help, or a usage error already reported */
    o.totals_only = 1;  /* locations by bytes allocated; peak and end of the run */
    struct mt_report *r = mt_report_open(&o);
    if (!r)
        return MT_EXIT_FAIL;
    if (o.json)
        print_json(r);
    else
        print_text(r);
    mt_report_free(r);
    return mt_output_close(stdout, "-") ? MT_EXIT_FAIL : 0;
}
