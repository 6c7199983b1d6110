/* memtap diff: what changed between two captures, per location (function,
 * file, line): the bytes and allocations each has there (the line of Python
 * code that asked, mt_report_python_line) in BEFORE and in AFTER, and the
 * change, biggest growth first. The question
 * tracemalloc's compare_to answers, across two runs (CI: "what grew since
 * main?"). --fail-over SIZE makes the exit status 3 when the total grew by
 * more than SIZE. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "report.h"
#include "util.h"

static const char usage[] =
    "memtap diff BEFORE.bin AFTER.bin [--leaks] [-n ROWS] [--json] "
    "[--fail-over SIZE] [--show-internals]";

#define DEFAULT_ROWS 20
#define EXIT_GREW 3

/* One side's bytes at a location. Strings belong to that side's report. */
struct side_row {
    const char *function, *file;
    int32_t line;
    uint64_t bytes, count;
    const struct mt_loc *loc;  /* as shown */
};

struct drow {
    const char *function, *file;
    int32_t line;
    uint64_t bytes[2], count[2];
    const struct mt_loc *loc;
};

static int cmp_key(const char *f1, const char *p1, int32_t l1,
                   const char *f2, const char *p2, int32_t l2)
{
    int c = strcmp(f1, f2);
    if (c) return c;
    if ((c = strcmp(p1, p2))) return c;
    return l1 < l2 ? -1 : l1 > l2;
}

static int cmp_side(const void *x, const void *y)
{
    const struct side_row *a = x, *b = y;
    return cmp_key(a->function, a->file, a->line, b->function, b->file, b->line);
}

static int64_t change(const struct drow *d)
{
    return (int64_t)d->bytes[1] - (int64_t)d->bytes[0];
}

/* What grew, biggest first; then what shrank, biggest first (not behind
 * every unchanged location); then what did not change, biggest first. */
static int growth_class(int64_t c) { return c > 0 ? 0 : c < 0 ? 1 : 2; }

static int cmp_growth(const void *x, const void *y)
{
    const struct drow *a = x, *b = y;
    int64_t ca = change(a), cb = change(b);
    int ka = growth_class(ca), kb = growth_class(cb);
    if (ka != kb) return ka < kb ? -1 : 1;
    if (ca != cb) return (ca > cb) == (ka == 0) ? -1 : 1;
    int64_t na = (int64_t)a->count[1] - (int64_t)a->count[0];
    int64_t nb = (int64_t)b->count[1] - (int64_t)b->count[0];
    if (na != nb) return na > nb ? -1 : 1;
    if (a->bytes[1] != b->bytes[1]) return a->bytes[1] > b->bytes[1] ? -1 : 1;
    return cmp_key(a->function, a->file, a->line, b->function, b->file, b->line);
}

/* Where diff counts g: at the line of Python code that asked for it
 * (with native stacks too: the interpreter's own C frames would make every
 * row PyByteArray_Resize), or where a program that is not Python asked;
 * with --show-internals at the innermost frame, the interpreter's too. */
static uint32_t at(struct mt_report *r, const struct mt_group *g)
{
    if (!mt_report_options(r)->show_internals)
        return mt_report_python_line(r, g);
    const uint32_t *stack;
    mt_report_stack(r, g, &stack);
    return stack[0];
}

/* The bytes/count per location of one capture (at()), sorted by key. */
static struct side_row *side_rows(struct mt_report *r, uint32_t *n)
{
    uint32_t ng, cap = 0;
    uint64_t (*per_loc)[2] = NULL;  /* bytes, count by location id */
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        uint64_t bytes = mt_report_bytes(r, g), count = mt_report_count(r, g);
        if (!bytes && !count)
            continue;
        uint32_t loc = at(r, g);
        if (loc >= cap) {
            uint32_t ncap = mt_report_nlocs(r) > loc ? mt_report_nlocs(r) : loc + 1;
            per_loc = realloc(per_loc, ncap * sizeof *per_loc);
            if (!per_loc) die("out of memory");
            memset(per_loc + cap, 0, (ncap - cap) * sizeof *per_loc);
            cap = ncap;
        }
        per_loc[loc][0] += bytes;
        per_loc[loc][1] += count;
    }
    struct side_row *out = calloc(cap ? cap : 1, sizeof *out);
    if (!out) die("out of memory");
    *n = 0;
    for (uint32_t loc = 0; loc < cap; loc++) {
        if (!per_loc[loc][0] && !per_loc[loc][1]) continue;
        const struct mt_loc *l = mt_report_loc(r, loc);
        out[(*n)++] = (struct side_row){
            l->function, mt_loc_where(l), l->line, per_loc[loc][0], per_loc[loc][1], l };
    }
    free(per_loc);
    if (*n > 1)
        qsort(out, *n, sizeof *out, cmp_side);
    /* One row per key: an inline function of one header compiled into two
     * libraries is two locations of the report but one (function, file,
     * line), which is all a row of the other capture can be paired by. */
    uint32_t m = 0;
    for (uint32_t i = 0; i < *n; i++) {
        if (m && !cmp_side(&out[m - 1], &out[i])) {
            out[m - 1].bytes += out[i].bytes;
            out[m - 1].count += out[i].count;
        } else {
            out[m++] = out[i];
        }
    }
    *n = m;
    return out;
}

/* "10MB", "10 MiB", "1.5GB", "4096": KB/MB/GB powers of 10, KiB/MiB/GiB
 * powers of 2. @return 0 or -1. */
static int parse_size(const char *s, uint64_t *out)
{
    /* Digits and a decimal point only: strtod would take nan, inf, hex
     * and exponents, and nan would make the gate never fail. */
    size_t digits = strspn(s, "0123456789."), points = 0;
    for (size_t i = 0; i < digits; i++)
        points += s[i] == '.';
    if (digits == points || points > 1)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != s + digits || errno || v < 0) return -1;
    while (isspace((unsigned char)*end)) end++;
    static const struct { const char *unit; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0},
        {"TiB", 1099511627776.0},
    };
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcasecmp(end, units[i].unit)) {
            double b = v * units[i].mult;
            if (b > 1.8e19) return -1;
            *out = (uint64_t)(b + 0.5);
            return 0;
        }
    return -1;
}

static char *fmt_change(char *buf, size_t cap, int64_t d)
{
    char s[32];
    mt_format_size((uint64_t)(d < 0 ? -d : d), s, sizeof s);
    snprintf(buf, cap, "%s%s", d < 0 ? "-" : d > 0 ? "+" : "", s);
    return buf;
}

static void print_json(struct mt_report *r[2], const char *files[2],
                       const struct drow *d, uint32_t n, int64_t total_change)
{
    printf("{\"mode\": \"%s\", \"total_change_bytes\": %lld",
           mt_metric_name(mt_report_options(r[0])->metric), (long long)total_change);
    for (int s = 0; s < 2; s++) {
        const struct mt_analysis *a = mt_report_analysis(r[s]);
        printf(", \"%s\": {\"file\": ", s ? "after" : "before");
        mt_json_string(stdout, files[s]);
        printf(", \"total_bytes\": %llu, \"peak_memory_bytes\": %llu, \"complete\": %s}",
               (unsigned long long)mt_report_total_bytes(r[s]),
               (unsigned long long)a->peak_bytes, a->complete ? "true" : "false");
    }
    printf(", \"rows\": [");
    for (uint32_t i = 0; i < n; i++) {
        printf("%s\n  {\"function\": ", i ? "," : "");
        mt_json_string(stdout, d[i].function);
        printf(", \"file\": ");
        mt_json_string(stdout, d[i].file);
        printf(", \"line\": %d, \"before_bytes\": %llu, \"before_count\": %llu, "
               "\"after_bytes\": %llu, \"after_count\": %llu, "
               "\"change_bytes\": %lld, \"change_count\": %lld}",
               (int)d[i].line, (unsigned long long)d[i].bytes[0],
               (unsigned long long)d[i].count[0], (unsigned long long)d[i].bytes[1],
               (unsigned long long)d[i].count[1], (long long)change(&d[i]),
               (long long)d[i].count[1] - (long long)d[i].count[0]);
    }
    printf("%s]}\n", n ? "\n" : "");
}

static void print_table(struct mt_report *r[2], const struct drow *d, uint32_t n,
                        uint32_t all, int64_t total_change)
{
    int color = mt_use_color(stdout);
    const char *bold = color ? "\033[1m" : "", *dim = color ? "\033[2m" : "";
    const char *cyan = color ? "\033[36m" : "", *red = color ? "\033[31m" : "";
    const char *green = color ? "\033[32m" : "", *off = color ? "\033[0m" : "";
    char s0[32], s1[32], sc[40];
    enum mt_metric m = mt_report_options(r[0])->metric;

    mt_format_size(mt_report_total_bytes(r[0]), s0, sizeof s0);
    mt_format_size(mt_report_total_bytes(r[1]), s1, sizeof s1);
    printf("%s%s:%s %s -> %s (%s)\n", bold,
           m == MT_M_LEAKS ? "Leaks" : m == MT_M_TEMPORARY ? "Temporary" : "Peak memory",
           off, s0, s1, fmt_change(sc, sizeof sc, total_change));
    for (int s = 0; s < 2; s++)
        if (!mt_report_analysis(r[s])->complete)
            printf("%s(%s capture incomplete: %s)%s\n", bold, s ? "after" : "before",
                   mt_incomplete_why(mt_report_analysis(r[s])), off);
    if (n == 0) {
        printf("no allocations\n");
        return;
    }
    printf("\n%s%10s %10s %11s %9s  %s%s\n", bold, "BEFORE", "AFTER", "CHANGE",
           "COUNT", "LOCATION", off);
    for (uint32_t i = 0; i < n; i++) {
        int64_t c = change(&d[i]);
        long long dc = (long long)d[i].count[1] - (long long)d[i].count[0];
        mt_format_size(d[i].bytes[0], s0, sizeof s0);
        mt_format_size(d[i].bytes[1], s1, sizeof s1);
        printf("%10s %10s %s%11s%s %+9lld  %s%s%s", s0, s1, c > 0 ? red : c < 0 ? green : "",
               fmt_change(sc, sizeof sc, c), off, dc, cyan, mt_loc_name(d[i].loc), off);
        mt_loc_put_place(stdout, d[i].loc, dim, off);
        putchar('\n');
    }
    if (n < all)
        printf("%s... %u more location%s (use -n)%s\n", dim, all - n,
               all - n == 1 ? "" : "s", off);
}

int cmd_diff(int argc, char **argv)
{
    struct mt_report_opts o;
    const char *files[2] = {NULL, NULL};
    int nfiles = 0, have_limit = 0;
    uint64_t limit = 0;

    memset(&o, 0, sizeof o);
    o.rows = -1;
    o.temporary_n = 1;
    int options = 1;  /* until "--" */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = NULL;
        if (!options || arg[0] != '-' || !strcmp(arg, "-")) {
            if (nfiles == 2) goto bad;
            if (nfiles == 1 && !strcmp(arg, "-") && !strcmp(files[0], "/dev/stdin")) {
                fprintf(stderr, "memtap: only one capture can come from standard input "
                        "('-')\nusage: %s\n", usage);
                return MT_EXIT_USAGE;
            }
            files[nfiles++] = mt_capture_arg(arg);
        } else if (!strcmp(arg, "--")) {
            options = 0;
        } else if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            printf("usage: %s\n", usage);
            return 0;
        } else if (!strcmp(arg, "--leaks")) {
            o.metric = MT_M_LEAKS;
        } else if (!strcmp(arg, "--json")) {
            o.json = 1;
        } else if (!strcmp(arg, "--show-internals")) {
            o.show_internals = 1;
        } else if (!strncmp(arg, "-n", 2) || !strcmp(arg, "--rows") ||
                   !strncmp(arg, "--rows=", 7)) {
            char *end;
            if (arg[1] == 'n' && arg[2]) val = arg + 2;           /* -n5 */
            else if (arg[1] == '-' && arg[6] == '=') val = arg + 7;  /* --rows=5 */
            else if (i + 1 < argc) val = argv[++i];
            else goto no_value;
            o.rows = strtol(val, &end, 10);
            if (*end || end == val || o.rows < 1) {
                fprintf(stderr, "memtap: bad row count '%s' (1 or more)\nusage: %s\n", val, usage);
                return MT_EXIT_USAGE;
            }
            if (o.rows > MT_ROWS_MAX)
                o.rows = MT_ROWS_MAX;  /* more than any diff has */
        } else if (!strcmp(arg, "--fail-over") || !strncmp(arg, "--fail-over=", 12)) {
            if (arg[11] == '=') val = arg + 12;
            else if (i + 1 < argc) val = argv[++i];
            else goto no_value;
            if (parse_size(val, &limit)) {
                fprintf(stderr, "memtap: bad size '%s' (e.g. 10MB, 1.5 GiB, 4096)\n"
                        "usage: %s\n", val, usage);
                return MT_EXIT_USAGE;
            }
            have_limit = 1;
        } else {
            fprintf(stderr, "memtap: unknown option '%s'\nusage: %s\n", arg, usage);
            return MT_EXIT_USAGE;
        }
    }
    if (nfiles != 2) goto bad;

    struct mt_report *r[2];
    struct side_row *side[2];
    uint32_t ns[2];
    for (int s = 0; s < 2; s++) {
        o.file = files[s];
        if (!(r[s] = mt_report_open(&o))) die("out of memory");
        side[s] = side_rows(r[s], &ns[s]);
    }

    /* merge the two sorted lists */
    struct drow *d = calloc((size_t)ns[0] + ns[1] + 1, sizeof *d);
    if (!d) die("out of memory");
    uint32_t n = 0, i = 0, j = 0;
    while (i < ns[0] || j < ns[1]) {
        int c = i == ns[0] ? 1 : j == ns[1] ? -1
              : cmp_side(&side[0][i], &side[1][j]);
        const struct side_row *k = c <= 0 ? &side[0][i] : &side[1][j];
        struct drow *x = &d[n++];
        x->function = k->function; x->file = k->file; x->line = k->line; x->loc = k->loc;
        if (c <= 0) { x->bytes[0] = side[0][i].bytes; x->count[0] = side[0][i].count; i++; }
        if (c >= 0) { x->bytes[1] = side[1][j].bytes; x->count[1] = side[1][j].count; j++; }
    }
    if (n > 1)
        qsort(d, n, sizeof *d, cmp_growth);

    int64_t total_change = (int64_t)mt_report_total_bytes(r[1]) -
                           (int64_t)mt_report_total_bytes(r[0]);
    uint32_t shown = n;
    if (o.rows >= 0 && (uint64_t)o.rows < n) shown = (uint32_t)o.rows;
    else if (o.rows < 0 && !o.json && n > DEFAULT_ROWS) shown = DEFAULT_ROWS;
    if (o.json) print_json(r, files, d, shown, total_change);
    else print_table(r, d, shown, n, total_change);

    int rc = mt_output_close(stdout, "-") ? MT_EXIT_FAIL : 0;
    if (rc == 0 && have_limit && total_change > 0 && (uint64_t)total_change > limit) {
        char a[32], b[32];
        mt_format_size((uint64_t)total_change, a, sizeof a);
        mt_format_size(limit, b, sizeof b);
        fprintf(stderr, "memtap: %s grew by %s (%lld bytes), more than --fail-over %s "
                "(%llu bytes)\n", mt_metric_name(o.metric), a, (long long)total_change, b,
                (unsigned long long)limit);
        rc = EXIT_GREW;
    }
    free(d);
    for (int s = 0; s < 2; s++) {
        free(side[s]);
        mt_report_free(r[s]);
    }
    return rc;

bad:
    fprintf(stderr, "memtap: diff needs two captures, BEFORE and AFTER\nusage: %s\n", usage);
    return MT_EXIT_USAGE;
no_value:
    fprintf(stderr, "memtap: option '%s' needs a value\nusage: %s\n", argv[argc - 1], usage);
    return MT_EXIT_USAGE;
}
