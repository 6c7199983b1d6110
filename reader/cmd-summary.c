/* memtap summary: one row per location (function, file, line) with the
 * bytes and allocations whose innermost frame is there (own) and those with
 * the location anywhere on their stack (total), under the chosen metric. */
#include <stdlib.h>
#include <string.h>

#include "report.h"

static const char usage[] =
    "memtap summary FILE [--leaks|--temporary [N]] [-n ROWS] [--sort own|total|count] "
    "[--split-threads] [--json] [--show-internals] [--python-only]";

#define DEFAULT_ROWS 20

/* A row of the summary: a location, and with --split-threads a thread. */
struct srow {
    struct mt_row row;
    uint32_t thread;
};

static enum mt_sort srow_sort;
static int cmp_srows(const void *x, const void *y)
{
    const struct mt_row *a = &((const struct srow *)x)->row, *b = &((const struct srow *)y)->row;
    uint64_t ka, kb, ta, tb;
    switch (srow_sort) {
    case MT_S_TOTAL: ka = a->total_bytes; kb = b->total_bytes; ta = a->own_bytes; tb = b->own_bytes; break;
    case MT_S_COUNT: ka = a->own_count; kb = b->own_count; ta = a->total_count; tb = b->total_count; break;
    default: ka = a->own_bytes; kb = b->own_bytes; ta = a->total_bytes; tb = b->total_bytes; break;
    }
    if (ka != kb) return ka > kb ? -1 : 1;
    if (ta != tb) return ta > tb ? -1 : 1;
    if (a->loc != b->loc) return a->loc < b->loc ? -1 : 1;
    uint32_t p = ((const struct srow *)x)->thread, q = ((const struct srow *)y)->thread;
    return p < q ? -1 : p > q;
}

static void print_json(struct mt_report *r, const struct srow *rows, uint32_t n)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    const struct mt_report_opts *o = mt_report_options(r);
    printf("{\"mode\": \"%s\", \"peak_memory_bytes\": %llu, \"total_bytes\": %llu, "
           "\"complete\": %s, \"split_threads\": %s, \"rows\": [",
           mt_metric_name(o->metric), (unsigned long long)a->peak_bytes,
           (unsigned long long)mt_report_total_bytes(r), a->complete ? "true" : "false",
           o->split_threads ? "true" : "false");
    for (uint32_t i = 0; i < n; i++) {
        const struct mt_loc *l = mt_report_loc(r, rows[i].row.loc);
        printf("%s\n  {", i ? "," : "");
        if (o->split_threads) {
            printf("\"thread\": ");
            mt_json_string(stdout, mt_report_loc(r, mt_report_thread_loc(r, rows[i].thread))->function);
            printf(", ");
        }
        printf("\"function\": ");
        mt_json_string(stdout, l->function);
        printf(", \"file\": ");
        mt_json_string(stdout, mt_loc_where(l));
        printf(", \"line\": %d, \"own_bytes\": %llu, \"own_count\": %llu, "
               "\"total_bytes\": %llu, \"total_count\": %llu}",
               (int)l->line, (unsigned long long)rows[i].row.own_bytes,
               (unsigned long long)rows[i].row.own_count,
               (unsigned long long)rows[i].row.total_bytes,
               (unsigned long long)rows[i].row.total_count);
    }
    printf("%s]}\n", n ? "\n" : "");
}

static void print_header(struct mt_report *r, int color)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    const struct mt_report_opts *o = mt_report_options(r);
    char s1[32], s2[32];
    const char *b = color ? "\033[1m" : "", *e = color ? "\033[0m" : "";

    mt_format_size(a->peak_bytes, s1, sizeof s1);
    mt_format_size(mt_report_total_bytes(r), s2, sizeof s2);
    switch (o->metric) {
    case MT_M_LEAKS:
        printf("%sLeaks:%s %s alive at the end%s (peak %s)\n", b, e, s2,
               a->end_marked ? " of the program, before interpreter teardown" : "", s1);
        break;
    case MT_M_TEMPORARY:
        printf("%sTemporary allocations:%s %s freed within %u allocation%s on their "
               "thread (peak %s)\n", b, e, s2, o->temporary_n,
               o->temporary_n == 1 ? "" : "s", s1);
        break;
    default:
        printf("%sPeak memory:%s %s", b, e, s1);
        if (a->peak_time_us)
            printf(" at %.2f s", (double)a->peak_time_us / 1e6);
        printf(" (%llu allocations in total)\n", (unsigned long long)a->total_allocations);
        break;
    }
    if (!a->complete)
        printf("%s(incomplete capture: %s)%s\n", b, mt_incomplete_why(a), e);
}

/* bytes as a share of the shown set's total, "12.3%". */
static void format_share(uint64_t bytes, uint64_t total, char *buf, size_t size)
{
    snprintf(buf, size, "%.1f%%", total ? 100.0 * (double)bytes / (double)total : 0.0);
}

static void print_table(struct mt_report *r, const struct srow *srows, uint32_t n,
                        uint32_t all)
{
    int color = mt_use_color(stdout);
    const char *bold = color ? "\033[1m" : "", *dim = color ? "\033[2m" : "";
    const char *cyan = color ? "\033[36m" : "", *yel = color ? "\033[33m" : "";
    const char *off = color ? "\033[0m" : "";
    uint64_t total = mt_report_total_bytes(r);

    print_header(r, color);
    if (n == 0) {
        printf("no allocations\n");
        return;
    }
    int split = mt_report_options(r)->split_threads;
    printf("\n%s%10s %7s %9s %10s %7s %9s  %s%s%s\n", bold, "OWN", "%", "COUNT", "TOTAL",
           "%", "COUNT", split ? "THREAD  " : "", "LOCATION", off);
    for (uint32_t i = 0; i < n; i++) {
        const struct mt_row *row = &srows[i].row;
        const struct mt_loc *l = mt_report_loc(r, row->loc);
        char own[32], tot[32], own_pct[16], tot_pct[16];
        mt_format_size(row->own_bytes, own, sizeof own);
        mt_format_size(row->total_bytes, tot, sizeof tot);
        format_share(row->own_bytes, total, own_pct, sizeof own_pct);
        format_share(row->total_bytes, total, tot_pct, sizeof tot_pct);
        printf("%s%10s%s %7s %9llu %10s %7s %9llu  ", yel, own, off, own_pct,
               (unsigned long long)row->own_count, tot, tot_pct,
               (unsigned long long)row->total_count);
        if (split)
            printf("[%s]  ", mt_report_loc(r, mt_report_thread_loc(r, srows[i].thread))->function);
        printf("%s%s%s", cyan, mt_loc_name(l), off);
        mt_loc_put_place(stdout, l, dim, off);
        putchar('\n');
    }
    if (n < all)
        printf("%s... %u more location%s (use -n)%s\n", dim, all - n,
               all - n == 1 ? "" : "s", off);
}

int cmd_summary(int argc, char **argv)
{
    struct mt_report_opts o;
    int rc = mt_report_parse_args(argc, argv,
                                  MT_O_METRIC | MT_O_ROWS | MT_O_SORT | MT_O_JSON | MT_O_SPLIT,
                                  usage, &o);
    if (rc >= 0) return rc;
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;

    /* one set of rows per thread when split (a single one otherwise) */
    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    uint32_t nsets = 1;
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        if (g->thread + 1 > nsets) nsets = g->thread + 1;
    }
    struct mt_rows *sets = calloc(nsets, sizeof *sets);
    if (!sets) { fputs("memtap: out of memory\n", stderr); exit(1); }
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        const uint32_t *stack;
        int depth = mt_report_stack(r, g, &stack);
        if (mt_rows_add(&sets[g->thread], stack, depth, mt_report_bytes(r, g),
                        mt_report_count(r, g))) {
            fputs("memtap: out of memory\n", stderr);
            exit(1);
        }
    }
    uint32_t n = 0, cap = 0;
    struct srow *sorted = NULL;
    for (uint32_t t = 0; t < nsets; t++) {
        uint32_t k;
        struct mt_row *rs = mt_rows_sorted(&sets[t], o.sort, &k);
        if (n + k > cap) {
            cap = (n + k) * 2 + 16;
            sorted = realloc(sorted, cap * sizeof *sorted);
            if (!sorted) { fputs("memtap: out of memory\n", stderr); exit(1); }
        }
        for (uint32_t i = 0; i < k; i++) sorted[n++] = (struct srow){ rs[i], t };
        free(rs);
        mt_rows_release(&sets[t]);
    }
    free(sets);
    srow_sort = o.sort;
    if (nsets > 1) qsort(sorted, n, sizeof *sorted, cmp_srows);
    uint32_t shown = n;
    if (o.rows >= 0 && (uint64_t)o.rows < n) shown = (uint32_t)o.rows;
    else if (o.rows < 0 && !o.json && n > DEFAULT_ROWS) shown = DEFAULT_ROWS;

    if (o.json) print_json(r, sorted, shown);
    else print_table(r, sorted, shown, n);

    free(sorted);
    mt_report_free(r);
    return mt_output_close(stdout, "-") ? 1 : 0;
}
