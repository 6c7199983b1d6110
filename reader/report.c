/* Report plumbing shared by the reporters: see report.h. */
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "symbols.h"
#include "symbols-ahead.h"
#include "util.h"
#include "../src/map.h"

#define MAX_DEPTH 4096   /* frames per side (Python, native) we resolve */

/* ---- small utilities --------------------------------------------------------- */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("memtap: out of memory\n", stderr);
        exit(1);
    }
    return q;
}

static uint64_t hash_bytes(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static const char *base_name(const char *path)
{
    if (!path) return "";
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- options ------------------------------------------------------------------ */

const char *mt_metric_name(enum mt_metric m)
{
    switch (m) {
    case MT_M_LEAKS: return "leaks";
    case MT_M_TEMPORARY: return "temporary";
    default: return "peak";
    }
}

static int usage_error(const char *usage, const char *fmt, ...)
{
    va_list ap;
    fputs("memtap: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: %s\n", usage);
    return 2;
}

static int parse_ulong(const char *s, unsigned long *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int all_digits(const char *s)
{
    return *s && strspn(s, "0123456789") == strlen(s);
}

/* Whether s is written as a number, signed or not (a count after
 * --temporary, however wrong, is its value, not an option or a file). */
static int looks_numeric(const char *s)
{
    return all_digits(s + (*s == '-' || *s == '+'));
}

int mt_report_parse_args(int argc, char **argv, unsigned allowed,
                         const char *usage, struct mt_report_opts *o)
{
    int only_files = 0;
    memset(o, 0, sizeof *o);
    o->rows = -1;
    o->temporary_n = 1;
    allowed |= MT_O_INTERNALS;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = NULL;
        char name[64];

        if (only_files || arg[0] != '-' || !strcmp(arg, "-")) {
            /* `--temporary abc FILE`: abc was taken for the file */
            if (o->file && o->file_at > 1 && !strcmp(argv[o->file_at - 1], "--temporary"))
                return usage_error(usage, "bad --temporary value '%s' (1 to 1000000000)",
                                   o->file);
            if (o->file)
                return usage_error(usage, "unexpected argument '%s'", arg);
            o->file = mt_capture_arg(arg);
            o->file_at = i;
            continue;
        }
        if (!strcmp(arg, "--")) { only_files = 1; continue; }
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            printf("usage: %s\n", usage);
            return 0;
        }
        /* --name=value */
        snprintf(name, sizeof name, "%s", arg);
        char *eq = strchr(name, '=');
        if (eq && starts_with(arg, "--")) {
            *eq = 0;
            val = arg + (eq - name) + 1;
        } else if (arg[1] != '-' && arg[2] && strchr("nof", arg[1])) {
            /* -n5, -oFILE: a short option's value attached, as getopt takes it */
            name[2] = 0;
            val = arg + 2;
        }
#define NEEDS(flag) \
        if (!(allowed & (flag))) \
            return usage_error(usage, "unknown option '%s'", name)
#define NO_VALUE() \
        if (val) \
            return usage_error(usage, "option '%s' takes no value", name)
#define TAKE_VALUE() \
        do { \
            if (!val) { \
                if (i + 1 >= argc) \
                    return usage_error(usage, "option '%s' needs a value", name); \
                val = argv[++i]; \
            } \
        } while (0)

        if (!strcmp(name, "--leaks")) {
            NEEDS(MT_O_METRIC);
            NO_VALUE();
            if (o->metric == MT_M_TEMPORARY)
                return usage_error(usage, "--leaks and --temporary exclude each other");
            o->metric = MT_M_LEAKS;
        } else if (!strcmp(name, "--temporary")) {
            unsigned long n;
            NEEDS(MT_O_METRIC);
            if (o->metric == MT_M_LEAKS)
                return usage_error(usage, "--leaks and --temporary exclude each other");
            o->metric = MT_M_TEMPORARY;
            /* the optional N: --temporary=N, or a bare number after it */
            if (!val && i + 1 < argc && looks_numeric(argv[i + 1]))
                val = argv[++i];
            if (val) {
                if (parse_ulong(val, &n) || n == 0 || n > 1000000000ul)
                    return usage_error(usage, "bad --temporary value '%s' (1 to 1000000000)",
                                       val);
                o->temporary_n = (unsigned)n;
            }
        } else if (!strcmp(name, "--split-threads")) {
            NEEDS(MT_O_SPLIT);
            NO_VALUE();
            o->split_threads = 1;
        } else if (!strcmp(name, "-n") || !strcmp(name, "--rows")) {
            unsigned long n;
            NEEDS(MT_O_ROWS);
            TAKE_VALUE();
            if (parse_ulong(val, &n) && all_digits(val))
                n = ULONG_MAX;  /* all digits, too many for a number: as many as there are */
            else if (parse_ulong(val, &n) || n == 0)
                return usage_error(usage, "bad %s count '%s' (1 or more)",
                                   allowed & MT_O_STACKS ? "stack" : "row", val);
            o->rows = n > MT_ROWS_MAX ? MT_ROWS_MAX : (long)n;  /* more than any report has */
        } else if (!strcmp(name, "-o") || !strcmp(name, "--output")) {
            NEEDS(MT_O_OUTPUT);
            TAKE_VALUE();
            o->output = val;
        } else if (!strcmp(name, "--json")) {
            NEEDS(MT_O_JSON);
            NO_VALUE();
            o->json = 1;
        } else if (!strcmp(name, "--sort")) {
            NEEDS(MT_O_SORT);
            TAKE_VALUE();
            if (!strcmp(val, "own")) o->sort = MT_S_OWN;
            else if (!strcmp(val, "total")) o->sort = MT_S_TOTAL;
            else if (!strcmp(val, "count")) o->sort = MT_S_COUNT;
            else return usage_error(usage, "bad --sort value '%s' (own, total or count)", val);
        } else if (!strcmp(name, "--inverted")) {
            NEEDS(MT_O_INVERTED);
            NO_VALUE();
            o->inverted = 1;
        } else if (!strcmp(name, "--format") || !strcmp(name, "-f")) {
            NEEDS(MT_O_FORMAT);
            TAKE_VALUE();
            o->format = val;
        } else if (!strcmp(name, "--temporal")) {
            NEEDS(MT_O_TEMPORAL);
            NO_VALUE();
            o->temporal = 1;
        } else if (!strcmp(name, "--show-internals")) {
            NO_VALUE();
            o->show_internals = 1;
        } else if (!strcmp(name, "--python-only")) {
            NO_VALUE();
            o->python_only = 1;
        } else {
            return usage_error(usage, "unknown option '%s'", name);
        }
#undef NEEDS
#undef NO_VALUE
#undef TAKE_VALUE
    }
    if (o->temporal && o->metric == MT_M_TEMPORARY)
        return usage_error(usage, "--temporal and --temporary exclude each other");
    if (!o->file)
        return usage_error(usage, "no capture file given");
    return -1;
}

/* ---- interning ----------------------------------------------------------------- */

struct strtab {
    char **slots; uint32_t cap, n;
};

static const char *intern(struct strtab *t, const char *s)
{
    if (!s) s = "";
    if (t->n * 2 >= t->cap) {
        uint32_t ncap = t->cap ? t->cap * 2 : 1024;
        char **ns = calloc(ncap, sizeof *ns);
        if (!ns) { fputs("memtap: out of memory\n", stderr); exit(1); }
        for (uint32_t i = 0; i < t->cap; i++) {
            if (!t->slots[i]) continue;
            uint64_t h = hash_bytes(t->slots[i], strlen(t->slots[i]), 14695981039346656037ull);
            uint32_t j = (uint32_t)h & (ncap - 1);
            while (ns[j]) j = (j + 1) & (ncap - 1);
            ns[j] = t->slots[i];
        }
        free(t->slots);
        t->slots = ns;
        t->cap = ncap;
    }
    size_t len = strlen(s);
    uint64_t h = hash_bytes(s, len, 14695981039346656037ull);
    uint32_t j = (uint32_t)h & (t->cap - 1);
    while (t->slots[j]) {
        if (!strcmp(t->slots[j], s)) return t->slots[j];
        j = (j + 1) & (t->cap - 1);
    }
    char *c = xrealloc(NULL, len + 1);
    memcpy(c, s, len + 1);
    t->slots[j] = c;
    t->n++;
    return c;
}

static void strtab_release(struct strtab *t)
{
    for (uint32_t i = 0; i < t->cap; i++) free(t->slots[i]);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* ---- the report ------------------------------------------------------------------ */

struct ipcache_slot { uint64_t ip; uint32_t generation, start, n; int used; };

struct mt_report {
    struct mt_report_opts o;
    struct mt_analysis *a;
    struct mt_symbolizer *sym;
    struct strtab strings;

    struct mt_loc *locs; uint32_t nlocs, loccap;
    uint32_t *lochash; uint32_t lochcap;        /* slots hold loc ids */

    /* a name the analysis owns -> intern_name of it, by address */
    struct mt_amap owned;

    /* native ip -> symbolized frames (interned strings) */
    struct ipcache_slot *ipc; uint32_t ipccap, ipcn;
    struct mt_rframe *ipframes; uint32_t nipframes, ipframecap;

    uint32_t *sorted; uint32_t nsorted; int sorted_done;
    struct mt_group *shown;     /* mt_report_sorted_groups' groups */
    uint64_t total_bytes; int total_done;

    const char *python_object;  /* object name used for the main program */

    /* scratch for one stack */
    struct mt_frame pyraw[MAX_DEPTH];
    uint64_t ips[MAX_DEPTH];
    uint32_t ipobjects[MAX_DEPTH];  /* each ip's objects (mt_symbolizer_resolve) */
    struct mt_rframe py[MAX_DEPTH];
    struct mt_rframe *nat; uint32_t natcap;
    struct mt_rframe *merged; uint32_t mergedcap;
    uint32_t *stack; uint32_t stackcap;
};

const struct mt_analysis *mt_report_analysis(const struct mt_report *r) { return r->a; }
const struct mt_report_opts *mt_report_options(const struct mt_report *r) { return &r->o; }

static void warn_incomplete(const struct mt_analysis *a, const char *file,
                            enum mt_metric metric)
{
    if (!a->complete) {
        mt_warn_incomplete(file, a->stop_offset, a->stop_error);
    } else if (a->trailer.exit.signal > 0 && metric == MT_M_LEAKS) {
        fprintf(stderr, "memtap: note: the program was killed by signal %d; "
                "leaks are what was alive at the kill\n", a->trailer.exit.signal);
    }
    if (a->complete && a->trailer.lost_events)
        fprintf(stderr, "memtap: warning: %llu event%s lost\n",
                (unsigned long long)a->trailer.lost_events,
                a->trailer.lost_events == 1 ? " was" : "s were");
}

struct mt_report *mt_report_open(const struct mt_report_opts *o)
{
    struct mt_analysis_opts ao = {0};
    struct mt_analysis *a = NULL;
    uint32_t found = 0;

    ao.split_threads = o->split_threads;
    ao.temporary_n = o->temporary_n ? o->temporary_n : 1;
    ao.progress = isatty(2);
    ao.temporal = o->temporal;
    ao.totals_only = o->totals_only;
    struct mt_ahead *ahead = mt_ahead_new();
    if (ahead) {
        ao.on_native = mt_ahead_record;
        ao.on_native_arg = ahead;
    }
    int err = mt_analyze(o->file, &ao, &a, &found);
    struct mt_symbolizer *sym = mt_ahead_finish(ahead, err == MT_OK ? a : NULL);
    if (err != MT_OK)
        die_capture(o->file, err, found);   /* exits */
    if (o->metric == MT_M_TEMPORARY && (a->header.flags & MT_HF_AGGREGATE))
        die("'%s' is an aggregate capture (memtap run --aggregate): it keeps "
            "totals, not the events --temporary needs", o->file);
    if (o->temporal && (a->header.flags & MT_HF_AGGREGATE))
        die("'%s' is an aggregate capture (memtap run --aggregate): it has no "
            "time information per stack, which --temporal needs", o->file);
    warn_incomplete(a, o->file, o->metric);

    struct mt_report *r = calloc(1, sizeof *r);
    if (!r) {
        mt_symbolizer_free(sym);
        mt_analysis_free(a);
        fputs("memtap: out of memory\n", stderr);
        return NULL;
    }
    r->o = *o;
    r->a = a;
    r->sym = sym;
    /* The main program is recorded with an empty path; when it is Python,
     * classify its frames as the interpreter's own. */
    r->python_object = (a->python_version && a->python_version[0])
                       ? "python" : "";
    /* location 0: "<unknown>" */
    r->loccap = 256;
    r->locs = xrealloc(NULL, r->loccap * sizeof *r->locs);
    r->locs[0] = (struct mt_loc){ intern(&r->strings, "[no stack recorded]"), intern(&r->strings, ""),
                                  0, 0, intern(&r->strings, "") };
    r->nlocs = 1;
    return r;
}

void mt_report_free(struct mt_report *r)
{
    if (!r) return;
    mt_symbolizer_free(r->sym);
    mt_analysis_free(r->a);
    strtab_release(&r->strings);
    free(r->locs); free(r->lochash); free(r->ipc); free(r->ipframes);
    mt_amap_release(&r->owned);
    free(r->sorted); free(r->shown); free(r->nat); free(r->merged); free(r->stack);
    free(r);
}

uint64_t mt_report_bytes(const struct mt_report *r, const struct mt_group *g)
{
    switch (r->o.metric) {
    case MT_M_LEAKS: return g->end_bytes;
    case MT_M_TEMPORARY: return g->temp_bytes;
    default: return g->peak_bytes;
    }
}

uint64_t mt_report_count(const struct mt_report *r, const struct mt_group *g)
{
    switch (r->o.metric) {
    case MT_M_LEAKS: return g->end_count;
    case MT_M_TEMPORARY: return g->temp_count;
    default: return g->peak_count;
    }
}

uint64_t mt_report_total_bytes(const struct mt_report *r)
{
    struct mt_report *w = (struct mt_report *)r;
    if (!w->total_done) {
        uint64_t t = 0;
        for (uint32_t i = 0; i < r->a->ngroups; i++) t += mt_report_bytes(r, &r->a->groups[i]);
        w->total_bytes = t;
        w->total_done = 1;
    }
    return w->total_bytes;
}

static const struct mt_report *sort_ctx;
static int cmp_groups(const void *x, const void *y)
{
    const struct mt_group *g = &sort_ctx->shown[*(const uint32_t *)x];
    const struct mt_group *h = &sort_ctx->shown[*(const uint32_t *)y];
    uint64_t a = mt_report_bytes(sort_ctx, g), b = mt_report_bytes(sort_ctx, h);
    if (a != b) return a > b ? -1 : 1;
    a = mt_report_count(sort_ctx, g); b = mt_report_count(sort_ctx, h);
    if (a != b) return a > b ? -1 : 1;
    return *(const uint32_t *)x < *(const uint32_t *)y ? -1 : 1;
}

static void group_add(struct mt_group *to, const struct mt_group *g)
{
    to->allocators |= g->allocators;
    to->total_bytes += g->total_bytes; to->total_count += g->total_count;
    to->peak_bytes += g->peak_bytes; to->peak_count += g->peak_count;
    to->end_bytes += g->end_bytes; to->end_count += g->end_count;
    to->temp_bytes += g->temp_bytes; to->temp_count += g->temp_count;
}

/* The analysis's groups with a non-zero metric into r->shown, those whose
 * stacks print alike (and are of one thread) as one: return addresses
 * that resolve to the same frames (64 calls of malloc from one macro, a
 * code object announced again) are one stack to every report.
 * @return how many. */
static uint32_t groups_merge(struct mt_report *r)
{
    uint32_t ng = r->a->ngroups, n = 0, cap = 16;
    while (cap < 2 * ng + 2) cap *= 2;
    struct slot { uint64_t hash; uint32_t group, at, depth; } *tab = calloc(cap, sizeof *tab);
    uint32_t *pool = NULL;
    size_t used = 0, pcap = 0;
    r->shown = xrealloc(NULL, (ng + 1) * sizeof *r->shown);
    if (!tab) die("out of memory");
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = &r->a->groups[i];
        if (!mt_report_bytes(r, g) && !mt_report_count(r, g))
            continue;
        const uint32_t *stack;
        uint32_t depth = (uint32_t)mt_report_stack(r, g, &stack);
        uint64_t h = mix64(g->thread + 1);
        for (uint32_t d = 0; d < depth; d++)
            h = mix64(h ^ stack[d]);
        uint32_t j = (uint32_t)h & (cap - 1);
        for (; tab[j].depth; j = (j + 1) & (cap - 1)) {
            const struct mt_group *s = &r->shown[tab[j].group];
            if (tab[j].hash == h && tab[j].depth == depth && s->thread == g->thread &&
                !memcmp(pool + tab[j].at, stack, depth * sizeof *stack))
                break;
        }
        if (tab[j].depth) {
            group_add(&r->shown[tab[j].group], g);
            continue;
        }
        if (used + depth > pcap) {
            pcap = (used + depth) * 2;
            pool = xrealloc(pool, pcap * sizeof *pool);
        }
        memcpy(pool + used, stack, depth * sizeof *stack);
        tab[j] = (struct slot){h, n, (uint32_t)used, depth};
        used += depth;
        r->shown[n++] = *g;
    }
    free(tab);
    free(pool);
    return n;
}

const uint32_t *mt_report_sorted_groups(struct mt_report *r, uint32_t *n)
{
    if (!r->sorted_done) {
        r->nsorted = groups_merge(r);
        r->sorted = xrealloc(NULL, (r->nsorted + 1) * sizeof *r->sorted);
        for (uint32_t i = 0; i < r->nsorted; i++)
            r->sorted[i] = i;
        sort_ctx = r;
        if (r->nsorted > 1)
            qsort(r->sorted, r->nsorted, sizeof *r->sorted, cmp_groups);
        r->sorted_done = 1;
    }
    *n = r->nsorted;
    return r->sorted;
}

const struct mt_group *mt_report_group(const struct mt_report *r, uint32_t id)
{
    return &r->shown[id];
}

/* ---- locations ------------------------------------------------------------------ */

const struct mt_loc *mt_report_loc(const struct mt_report *r, uint32_t id)
{
    return &r->locs[id < r->nlocs ? id : 0];
}

uint32_t mt_report_nlocs(const struct mt_report *r) { return r->nlocs; }

static uint64_t loc_hash(const struct mt_loc *l)
{
    uint64_t h = mix64((uintptr_t)l->function);
    h = mix64(h ^ (uintptr_t)l->file);
    h = mix64(h ^ (uint32_t)l->line ^ ((uint64_t)l->is_python << 40));
    h = mix64(h ^ (uintptr_t)l->object);
    return h;
}

static int loc_eq(const struct mt_loc *a, const struct mt_loc *b)
{
    return a->function == b->function && a->file == b->file && a->line == b->line &&
           a->is_python == b->is_python && a->object == b->object;
}

/* f's strings must be interned already. */
static uint32_t loc_id(struct mt_report *r, const struct mt_rframe *f)
{
    struct mt_loc l = { f->function, f->file, f->line, f->is_python, f->object };
    if (r->nlocs * 2 >= r->lochcap) {
        uint32_t ncap = r->lochcap ? r->lochcap * 2 : 1024;
        free(r->lochash);
        r->lochash = calloc(ncap, sizeof *r->lochash);
        if (!r->lochash) { fputs("memtap: out of memory\n", stderr); exit(1); }
        r->lochcap = ncap;
        for (uint32_t id = 1; id < r->nlocs; id++) {
            uint32_t j = (uint32_t)loc_hash(&r->locs[id]) & (ncap - 1);
            while (r->lochash[j]) j = (j + 1) & (ncap - 1);
            r->lochash[j] = id;
        }
    }
    uint32_t j = (uint32_t)loc_hash(&l) & (r->lochcap - 1);
    while (r->lochash[j]) {
        if (loc_eq(&r->locs[r->lochash[j]], &l)) return r->lochash[j];
        j = (j + 1) & (r->lochcap - 1);
    }
    if (r->nlocs == r->loccap) {
        r->loccap *= 2;
        r->locs = xrealloc(r->locs, r->loccap * sizeof *r->locs);
    }
    r->locs[r->nlocs] = l;
    r->lochash[j] = r->nlocs;
    return r->nlocs++;
}

/* The length of the control character at p (C0, DEL, C1, or the line and
 * paragraph separators U+2028 and U+2029, which break lines for Python's
 * str.splitlines and JavaScript), 0 when p starts none. p is NUL-ended. */
/* A name as reports show it: control characters become '?', so that no
 * name can move a terminal's cursor or break a line-based format; bytes
 * that are no UTF-8 stay (JSON escapes them). */
static const char *intern_name(struct strtab *t, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t len = strlen((const char *)p);
    int clean = 1;
    for (size_t i = 0; i < len && clean; i++)
        clean = !mt_control_at(p + i);
    if (clean)
        return intern(t, (const char *)p);
    char *c = xrealloc(NULL, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t k = mt_control_at(p + i);
        c[n++] = k ? '?' : (char)p[i];
        i += k ? k : 1;
    }
    c[n] = 0;
    const char *r = intern(t, c);
    free(c);
    return r;
}

/* intern_name of a string that outlives r (the analysis's, or a literal),
 * found by its address: every stack a code object is on names it again. */
static const char *intern_owned(struct mt_report *r, const char *s)
{
    int found;
    uint64_t *to = mt_amap_upsert(&r->owned, (uintptr_t)s, &found);
    if (!to) { fputs("memtap: out of memory\n", stderr); exit(1); }
    if (!found)
        *to = (uintptr_t)intern_name(&r->strings, s);
    return (const char *)(uintptr_t)*to;
}

const char *mt_report_clean(struct mt_report *r, const char *s)
{
    return intern_name(&r->strings, s);
}

const char *mt_incomplete_why(const struct mt_analysis *a)
{
    return a->stop_error == MT_E_CORRUPT || a->stop_error == MT_E_VERSION
               ? "its data is damaged there" : MT_INCOMPLETE_WHY;
}

const char *mt_loc_name(const struct mt_loc *l)
{
    /* Code compiled with an empty name (compile(src, "", ...)) still makes
     * a frame: never an empty one. */
    return l->function[0] ? l->function : MT_UNNAMED;
}

enum place { P_NONE, P_LINE, P_FILE, P_OBJECT };

/* Which of the forms of mt_loc_place l takes, and its file or object. */
static enum place loc_place(const struct mt_loc *l, const char **where)
{
    const char *file = l->file ? l->file : "";
    /* Python code from an empty file name still has its line */
    *where = file[0] ? file : MT_NO_FILE;
    if (l->line > 0 && (file[0] || l->is_python == 1)) return P_LINE;
    if (file[0]) return P_FILE;
    *where = l->object ? l->object : "";
    if (!l->is_python && (*where)[0]) return P_OBJECT;
    *where = "";
    return P_NONE;
}

/* The length of s's longest prefix of at most max bytes that ends at a
 * character boundary: a cut text stays UTF-8. */
static size_t char_prefix(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    if (n < max || !s[n]) return n;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) n--;
    return n;
}

/* Where l is as text ("file:line", "file", "(object)" or "") into buf,
 * cut at a character boundary when it does not fit (buf may be NULL when
 * cap is 0). @return the length of the whole text. */
static size_t loc_place_text(const struct mt_loc *l, char *buf, size_t cap)
{
    const char *w;
    int n = 0;
    switch (loc_place(l, &w)) {
    case P_LINE: n = snprintf(buf, cap, "%s:%d", w, (int)l->line); break;
    case P_FILE: n = snprintf(buf, cap, "%s", w); break;
    case P_OBJECT: n = snprintf(buf, cap, "(%s)", w); break;
    case P_NONE: if (cap) buf[0] = 0; break;
    }
    if (n < 0) n = 0;
    if ((size_t)n >= cap && cap)
        buf[char_prefix(buf, cap - 1)] = 0;
    return (size_t)n;
}

void mt_loc_put_place(FILE *f, const struct mt_loc *l, const char *dim,
                      const char *off)
{
    char small[256], *s = small;
    size_t n = loc_place_text(l, small, sizeof small);
    if (!n) return;
    if (n >= sizeof small) {
        s = xrealloc(NULL, n + 1);
        loc_place_text(l, s, n + 1);
    }
    fprintf(f, "  %s%s%s", dim, s, off);
    if (s != small) free(s);
}

size_t mt_loc_format(const struct mt_loc *l, char *buf, size_t cap)
{
    const char *fn = mt_loc_name(l), *w;
    enum place p = loc_place(l, &w);
    if (p == P_OBJECT && strstr(fn, " ("))  /* a degraded name carries its object */
        p = P_NONE;
    char tail[32] = "";
    if (p == P_LINE) snprintf(tail, sizeof tail, ":%d)", (int)l->line);
    else if (p != P_NONE) strcpy(tail, ")");
    const char *open = p == P_NONE ? "" : " (";
    if (p == P_NONE) w = "";
    else if (p == P_OBJECT) w = l->object;
    size_t fl = strlen(fn), rest = strlen(open) + strlen(w) + strlen(tail);
    if (fl + rest < cap) {
        snprintf(buf, cap, "%s%s%s%s", fn, open, w, tail);
    } else if (rest + sizeof "..." < cap) {
        /* the name gives way: where it is matters more than its end */
        int keep = (int)char_prefix(fn, cap - rest - sizeof "...");
        snprintf(buf, cap, "%.*s...%s%s%s", keep, fn, open, w, tail);
    } else if (cap) {
        snprintf(buf, cap, "%s%s%s%s", fn, open, w, tail);
        buf[char_prefix(buf, cap - 1)] = 0;
    }
    return fl + rest;
}

/* ---- classification and the hybrid merge -------------------------------------------- */

static int is_python_object(const char *object)
{
    const char *b = base_name(object);
    return starts_with(b, "python") || starts_with(b, "libpython");
}

enum mt_frame_kind mt_classify_native(const char *function, const char *object)
{
    static const char *const allocators[] = {
        "malloc", "calloc", "realloc", "reallocarray", "free", "posix_memalign",
        "aligned_alloc", "memalign", "valloc", "pvalloc", "mmap", "mmap64", "munmap",
        "mremap", "__libc_malloc", "__libc_calloc", "__libc_realloc", "__libc_memalign",
        "__libc_valloc", "__libc_pvalloc", "__posix_memalign", "__mmap", "__munmap",
        "__mremap", "__GI___libc_malloc", NULL,
    };
    /* CPython's public/internal call and run machinery: exported names. */
    static const char *const internal_prefixes[] = {
        "_PyEval_", "PyEval_", "_PyObject_Call", "PyObject_Call", "_PyObject_Vectorcall",
        "PyObject_Vectorcall", "_PyObject_MakeTpCall", "_PyFunction_Vectorcall",
        "PyVectorcall_", "_PyVectorcall_", "PyRun_", "_PyRun_", "Py_RunMain", "Py_BytesMain",
        "Py_Main", "_Py_RunMain", "PyCFunction_Call", "_PyCFunction_", NULL,
    };
    /* static helpers: only trusted inside the interpreter (or an unknown object) */
    static const char *const static_prefixes[] = {
        "method_vectorcall", "cfunction_call", "cfunction_vectorcall", "vectorcall_",
        "slot_tp_call", "slot_tp_init", "type_call", "run_mod", "run_eval_code_obj",
        "pyrun_", "pymain_", "builtin_exec", "exec_code_in_module", "_PyObject_VectorcallTstate",
        "object_vacall", "call_function", "do_call_core", "function_code_fastcall",
        "partial_call", "partial_vectorcall", "wrapper_call", "wrapperdescr_call",
        "method_vectorcall_", "builtin___build_class__", "bounded_lru_cache_wrapper",
        "lru_cache_call", "py_trampoline_evaluator", NULL,
    };
    if (!function) function = "";
    const char *obj = base_name(object);

    if (strstr(obj, "memtap") && strstr(obj, ".so"))
        return MT_K_SHIM;
    if (starts_with(function, "mt_shim_") || starts_with(function, "mt_hook_"))
        return MT_K_SHIM;
    if (starts_with(obj, "libunwind") || starts_with(function, "_ULx86_64_") ||
        starts_with(function, "_ULaarch64_") || !strcmp(function, "unw_backtrace"))
        return MT_K_SHIM;
    if (starts_with(function, "_PyEval_EvalFrameDefault"))
        return MT_K_EVAL;
    for (int i = 0; allocators[i]; i++)
        if (!strcmp(function, allocators[i])) return MT_K_ALLOCATOR;
    if (starts_with(function, "operator new") || starts_with(function, "_Znwm") ||
        starts_with(function, "_Znam"))
        return MT_K_ALLOCATOR;
    for (int i = 0; internal_prefixes[i]; i++)
        if (starts_with(function, internal_prefixes[i])) return MT_K_INTERNAL;
    int in_python = is_python_object(object);
    if (in_python || !obj[0]) {
        for (int i = 0; static_prefixes[i]; i++)
            if (starts_with(function, static_prefixes[i])) return MT_K_INTERNAL;
    }
    if (in_python && (starts_with(function, "_Py") || !strcmp(function, "main")))
        return MT_K_INTERNAL;
    if (!strcmp(function, "_start") || starts_with(function, "__libc_start_main") ||
        starts_with(function, "__libc_start_call_main"))
        return MT_K_INTERNAL;
    return MT_K_NORMAL;
}

/* Whether the merge leaves out a native frame outside an eval group: shim
 * frames always, allocator frames while nothing has been kept yet (leading),
 * CPython's plumbing unless show_internals. */
static int merge_hides(const struct mt_rframe *f, int leading, int show_internals)
{
    return f->kind == MT_K_SHIM || (f->kind == MT_K_ALLOCATOR && leading) ||
           (f->kind == MT_K_INTERNAL && !show_internals);
}

int mt_hybrid_merge(const struct mt_rframe *nat, int nn,
                    const struct mt_rframe *py, int np, int show_internals,
                    struct mt_rframe *out, int max)
{
    int n = 0;
    if (nn <= 0) {
        for (int i = 0; i < np && n < max; i++) out[n++] = py[i];
        return n;
    }
    /* Python segments, innermost first: [seg_lo[k], seg_hi[k]) */
    enum { MAXSEG = 1024 };
    int seg_lo[MAXSEG], seg_hi[MAXSEG], nseg = 0, s = 0;
    for (int i = 0; i < np; i++) {
        if (py[i].is_entry || i == np - 1) {
            if (nseg < MAXSEG) {
                seg_lo[nseg] = s; seg_hi[nseg] = i + 1; nseg++;
            } else {
                seg_hi[nseg - 1] = i + 1;   /* fold the rest into the last */
            }
            s = i + 1;
        }
    }
    /* eval groups: consecutive frames with one ip, any of them EVAL */
    int neval = 0;
    for (int i = 0; i < nn;) {
        int j = i, ev = 0;
        while (j < nn && nat[j].ip == nat[i].ip) ev |= nat[j].kind == MT_K_EVAL, j++;
        neval += ev;
        i = j;
    }

    /* A native stack cut at its outer end lacks the evaluations of the
     * outer segments: those go past the cut's marker, at the outer end. */
    int native_cut = nat[nn - 1].ip == MT_NATIVE_CUT;
    int evalno = 0, leading = 1, emitted = 0;
#define EMIT(f) do { if (n < max) out[n++] = (f); } while (0)
    for (int i = 0; i < nn;) {
        int j = i, ev = 0;
        while (j < nn && nat[j].ip == nat[i].ip) ev |= nat[j].kind == MT_K_EVAL, j++;
        if (ev) {
            int seg = evalno;
            if (seg < nseg) {
                int last = evalno == neval - 1 && !native_cut ? nseg - 1 : seg;
                for (int k = seg; k <= last; k++)
                    for (int p = seg_lo[k]; p < seg_hi[k]; p++) EMIT(py[p]);
                emitted = last + 1;
                leading = 0;
            }
            if (show_internals)
                for (int k = i; k < j; k++) EMIT(nat[k]);
            evalno++;
        } else {
            for (int k = i; k < j; k++) {
                if (merge_hides(&nat[k], leading, show_internals)) continue;
                leading = 0;
                EMIT(nat[k]);
            }
        }
        i = j;
    }
    for (int k = emitted; k < nseg; k++)  /* no evaluation found, or cut off */
        for (int p = seg_lo[k]; p < seg_hi[k]; p++) EMIT(py[p]);
#undef EMIT
    return n;
}

/* ---- resolving stacks ----------------------------------------------------------------- */

static const char *object_of(struct mt_report *r, uint64_t ip, uint64_t *rel)
{
    const struct mt_analysis *a = r->a;
    for (uint32_t i = 0; i < a->nobjects; i++) {
        const struct mt_object_info *o = &a->objects[i];
        for (uint32_t s = 0; s < o->nseg; s++) {
            uint64_t lo = o->base + o->seg[2 * s], hi = lo + o->seg[2 * s + 1];
            if (ip >= lo && ip < hi) {
                *rel = ip - o->base;
                return o->path ? o->path : "";
            }
        }
    }
    *rel = ip;
    return NULL;
}

/* Symbolizes ip, recorded after `objects` objects, into r->ipframes
 * (cached); returns first index and count. */
static void symbolize(struct mt_report *r, uint64_t ip, uint32_t objects, uint32_t *start,
                      uint32_t *n)
{
    if (r->ipcn * 2 >= r->ipccap) {
        uint32_t ncap = r->ipccap ? r->ipccap * 2 : 4096;
        struct ipcache_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) { fputs("memtap: out of memory\n", stderr); exit(1); }
        for (uint32_t i = 0; i < r->ipccap; i++) {
            if (!r->ipc[i].used) continue;
            uint32_t j = (uint32_t)mix64(r->ipc[i].ip + r->ipc[i].generation) & (ncap - 1);
            while (ns[j].used) j = (j + 1) & (ncap - 1);
            ns[j] = r->ipc[i];
        }
        free(r->ipc);
        r->ipc = ns;
        r->ipccap = ncap;
    }
    /* The same address in another generation of objects may be another
     * object's (dlclose, then dlopen at the same place). */
    uint32_t gen = r->sym ? mt_symbolizer_generation(r->sym, objects) : 0;
    uint32_t j = (uint32_t)mix64(ip + gen) & (r->ipccap - 1);
    while (r->ipc[j].used) {
        if (r->ipc[j].ip == ip && r->ipc[j].generation == gen) {
            *start = r->ipc[j].start;
            *n = r->ipc[j].n;
            return;
        }
        j = (j + 1) & (r->ipccap - 1);
    }

    struct mt_symbol sf[64];
    int k = r->sym && ip != MT_NATIVE_CUT ? mt_symbolizer_resolve(r->sym, ip, objects, sf, 64)
                                          : 0;
    if (k > 64) k = 64;
    uint64_t rel;
    const char *objpath = object_of(r, ip, &rel);
    if (k <= 0) {
        memset(sf, 0, sizeof sf[0]);
        sf[0].object = objpath;
        sf[0].address = rel;
        k = 1;
    }
    if (r->nipframes + (uint32_t)k > r->ipframecap) {
        r->ipframecap = (r->ipframecap + k) * 2;
        r->ipframes = xrealloc(r->ipframes, r->ipframecap * sizeof *r->ipframes);
    }
    uint32_t s0 = r->nipframes;
    for (int i = 0; i < k; i++) {
        const char *op = sf[i].object ? sf[i].object : (objpath ? objpath : "");
        /* the main program is captured with an empty path */
        const char *cls_obj = op[0] ? op : r->python_object;
        char buf[64];
        const char *fn = ip == MT_NATIVE_CUT ? MT_CUT_NAME : sf[i].function;
        if (!fn || !fn[0]) {
            /* degraded: the address addr2line wants, with the object shown
             * next to it by mt_loc_format */
            snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)sf[i].address);
            fn = buf;
        }
        struct mt_rframe *f = &r->ipframes[r->nipframes++];
        f->function = intern_name(&r->strings, fn);
        f->file = intern_name(&r->strings, sf[i].file ? sf[i].file : "");
        f->line = (int32_t)sf[i].line;
        f->object = intern_name(&r->strings, op[0] ? base_name(op) : "");
        f->is_python = 0;
        f->is_entry = 0;
        f->kind = (uint8_t)mt_classify_native(f->function, cls_obj);
        f->ip = ip;
    }
    r->ipc[j] = (struct ipcache_slot){ ip, gen, s0, (uint32_t)k, 1 };
    r->ipcn++;
    *start = s0;
    *n = (uint32_t)k;
}

/* g's Python frames into r->py, innermost first. @return how many. */
static int py_frames(struct mt_report *r, const struct mt_group *g)
{
    if (!g->py_stack)
        return 0;
    int np = mt_analysis_py_frames(r->a, g->py_stack, r->pyraw, MAX_DEPTH);
    for (int i = 0; i < np; i++) {
        const struct mt_frame *f = &r->pyraw[i];
        r->py[i] = (struct mt_rframe){
            intern_owned(r, f->function), intern_owned(r, f->file),
            intern_owned(r, ""), f->line, 1, (uint8_t)(f->is_entry != 0),
            MT_K_NORMAL, 0 };
    }
    return np;
}

int mt_report_stack(struct mt_report *r, const struct mt_group *g,
                    const uint32_t **out)
{
    int np = py_frames(r, g), nn = 0, nips = 0;
    /* --python-only: a stack with Python frames is those alone */
    if (g->native_stack && !(r->o.python_only && np))
        nips = mt_analysis_native_ips(r->a, g->native_stack, r->ips, r->ipobjects, MAX_DEPTH);
    for (int i = 0; i < nips; i++) {
        uint32_t s, k;
        symbolize(r, r->ips[i], r->ipobjects[i], &s, &k);
        if ((uint32_t)nn + k > r->natcap) {
            r->natcap = (nn + k) * 2;
            r->nat = xrealloc(r->nat, r->natcap * sizeof *r->nat);
        }
        memcpy(r->nat + nn, r->ipframes + s, k * sizeof *r->nat);
        nn += (int)k;
    }
    uint32_t need = (uint32_t)(np + nn + 1);
    if (need > r->mergedcap) {
        r->mergedcap = need * 2;
        r->merged = xrealloc(r->merged, r->mergedcap * sizeof *r->merged);
        r->stack = xrealloc(r->stack, r->mergedcap * sizeof *r->stack);
    }
    int n = mt_hybrid_merge(r->nat, nn, r->py, np, r->o.show_internals,
                            r->merged, (int)r->mergedcap);
    for (int i = 0; i < n; i++) r->stack[i] = loc_id(r, &r->merged[i]);
    if (n == 0) r->stack[n++] = 0;
    *out = r->stack;
    return n;
}

/* The merge emits, innermost first, the native frames it keeps up to the
 * first eval group, where the Python stack begins (mt_hybrid_merge): the
 * walk follows it that far, resolving return addresses one by one, and
 * asks mt_report_stack for anything past that point. */
uint32_t mt_report_innermost(struct mt_report *r, const struct mt_group *g,
                             int (*accept)(const struct mt_loc *))
{
    int nips = g->native_stack && !(r->o.python_only && g->py_stack)
        ? mt_analysis_native_ips(r->a, g->native_stack, r->ips, r->ipobjects, MAX_DEPTH) : 0;
    int leading = 1, show = r->o.show_internals;
    for (int i = 0; i < nips; i++) {
        uint32_t s, k, e = 0;
        symbolize(r, r->ips[i], r->ipobjects[i], &s, &k);
        const struct mt_rframe *f = r->ipframes + s;
        for (uint32_t j = 0; j < k; j++)
            e |= f[j].kind == MT_K_EVAL;
        if (e && py_frames(r, g)) {
            uint32_t loc = loc_id(r, &r->py[0]);  /* the Python stack starts here */
            if (accept(mt_report_loc(r, loc)))
                return loc;
            break;
        }
        for (uint32_t j = 0; j < k; j++) {
            if (e ? !show : merge_hides(&f[j], leading, show))
                continue;
            leading &= e;  /* eval frames shown do not end the leading allocators */
            uint32_t loc = loc_id(r, &f[j]);
            if (accept(mt_report_loc(r, loc)))
                return loc;
        }
    }
    const uint32_t *stack;
    int depth = mt_report_stack(r, g, &stack), k = 0;
    while (k + 1 < depth && !accept(mt_report_loc(r, stack[k])))
        k++;
    return stack[k];
}

int mt_loc_outside_libc(const struct mt_loc *l)
{
    return l->is_python || !l->object ||
           (strncmp(l->object, "libc.so", 7) && strncmp(l->object, "ld-linux", 8) &&
            strncmp(l->object, "libc-", 5));
}

static int loc_is_python(const struct mt_loc *l)
{
    return l->is_python;
}

uint32_t mt_report_python_line(struct mt_report *r, const struct mt_group *g)
{
    uint32_t loc = g->py_stack ? mt_report_innermost(r, g, loc_is_python) : 0;
    return mt_report_loc(r, loc)->is_python ? loc
                                            : mt_report_innermost(r, g, mt_loc_outside_libc);
}

/* ---- rows --------------------------------------------------------------------------------- */

int mt_rows_add(struct mt_rows *rows, const uint32_t *stack, int n,
                uint64_t bytes, uint64_t count)
{
    if (n <= 0) return 0;
    uint32_t maxid = 0;
    for (int i = 0; i < n; i++) if (stack[i] > maxid) maxid = stack[i];
    if (maxid >= rows->cap) {
        uint32_t ncap = rows->cap ? rows->cap : 256;
        while (ncap <= maxid) ncap *= 2;
        struct mt_row *nr = realloc(rows->rows, ncap * sizeof *nr);
        if (!nr) return -1;
        memset(nr + rows->cap, 0, (ncap - rows->cap) * sizeof *nr);
        for (uint32_t i = rows->cap; i < ncap; i++) nr[i].loc = i;
        rows->rows = nr;
        rows->cap = ncap;
    }
    rows->stamp++;
    rows->rows[stack[0]].own_bytes += bytes;
    rows->rows[stack[0]].own_count += count;
    for (int i = 0; i < n; i++) {
        struct mt_row *row = &rows->rows[stack[i]];
        if (row->seen == rows->stamp) continue;   /* recursion: count once */
        row->seen = rows->stamp;
        row->total_bytes += bytes;
        row->total_count += count;
    }
    return 0;
}

void mt_rows_release(struct mt_rows *rows)
{
    free(rows->rows);
    memset(rows, 0, sizeof *rows);
}

static enum mt_sort row_sort;
static int cmp_rows(const void *x, const void *y)
{
    const struct mt_row *a = x, *b = y;
    uint64_t ka, kb, ta, tb;
    switch (row_sort) {
    case MT_S_TOTAL: ka = a->total_bytes; kb = b->total_bytes; ta = a->own_bytes; tb = b->own_bytes; break;
    case MT_S_COUNT: ka = a->own_count; kb = b->own_count; ta = a->total_count; tb = b->total_count; break;
    default: ka = a->own_bytes; kb = b->own_bytes; ta = a->total_bytes; tb = b->total_bytes; break;
    }
    if (ka != kb) return ka > kb ? -1 : 1;
    if (ta != tb) return ta > tb ? -1 : 1;
    return a->loc < b->loc ? -1 : a->loc > b->loc;
}

struct mt_row *mt_rows_sorted(const struct mt_rows *rows, enum mt_sort sort, uint32_t *n)
{
    struct mt_row *out = xrealloc(NULL, (rows->cap + 1) * sizeof *out);
    uint32_t k = 0;
    for (uint32_t i = 0; i < rows->cap; i++)
        if (rows->rows[i].total_bytes || rows->rows[i].total_count)
            out[k++] = rows->rows[i];
    row_sort = sort;
    if (k > 1)
        qsort(out, k, sizeof *out, cmp_rows);
    *n = k;
    return out;
}

/* ---- output helpers ----------------------------------------------------------------------- */

char *mt_format_size(uint64_t bytes, char *buf, size_t cap)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    if (bytes < 1024) {
        snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 6) { v /= 1024.0; u++; }
    /* three significant digits; rounding up to 1024 moves to the next unit */
    for (;;) {
        int prec = v < 9.995 ? 2 : v < 99.95 ? 1 : 0;
        double shown = prec == 2 ? (double)(long long)(v * 100 + 0.5) / 100
                     : prec == 1 ? (double)(long long)(v * 10 + 0.5) / 10
                     : (double)(long long)(v + 0.5);
        if (shown >= 1024.0 && u < 6) { v /= 1024.0; u++; continue; }
        snprintf(buf, cap, "%.*f %s", prec, shown, units[u]);
        return buf;
    }
}

int mt_use_color(FILE *f)
{
    const char *nc = getenv("NO_COLOR");
    if (nc && nc[0]) return 0;
    return isatty(fileno(f));
}

static void json_str(FILE *f, const char *s, int html)
{
    putc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        case '<':   /* "</script>" must not appear inside a <script> */
            if (html) fputs("\\u003c", f);
            else putc('<', f);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                fprintf(f, "\\u%04x", *p);
            } else {
                /* A byte that is no UTF-8 (a file name in another
                 * encoding) as Python's surrogateescape reads it: the text
                 * stays valid, and Python decodes it to the name it had. */
                int n = mt_utf8_len(p);
                if (n == 0) fprintf(f, "\\udc%02x", *p);
                else fwrite(p, 1, (size_t)n, f), p += n - 1;
            }
        }
    }
    putc('"', f);
}

void mt_json_string(FILE *f, const char *s) { json_str(f, s, 0); }
void mt_json_html_string(FILE *f, const char *s) { json_str(f, s, 1); }

/* A report file is written under a temporary name and renamed over its
 * path once complete: a failed write (a full disk) leaves what was there
 * and no half a report. What is not a regular file (a device, a FIFO, a
 * symlink) is written in place. One output at a time. */
static char output_part[PATH_MAX + 32];

/* A report interrupted (Ctrl-C, kill) takes its temporary file with it. */
static const int part_signals[] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction part_saved[3];

static void part_interrupted(int sig)
{
    unlink(output_part);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void part_guard(int on)
{
    for (int i = 0; i < 3; i++) {
        if (!on) {
            sigaction(part_signals[i], &part_saved[i], NULL);
            continue;
        }
        sigaction(part_signals[i], NULL, &part_saved[i]);
        if (part_saved[i].sa_handler != SIG_IGN)  /* nohup, a `&` job: stays ignored */
            sigaction(part_signals[i], &(struct sigaction){.sa_handler = part_interrupted},
                      NULL);
    }
}

/* An error exit while the report is written (out of memory) takes the
 * temporary file too. */
static void part_at_exit(void)
{
    if (output_part[0])
        unlink(output_part);
}

static int output_in_place(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? !S_ISREG(st.st_mode) : errno != ENOENT;
}

/* The temporary file path is written to first, beside it (output_part
 * set): PATH.PID.part, or .memtap.PID.part in its directory when that
 * name would be too long. NULL when neither can be made. */
static FILE *part_open(const char *path)
{
    static int registered;
    if (!registered++)
        atexit(part_at_exit);
    part_guard(1);
    snprintf(output_part, sizeof output_part, "%s.%ld.part", path, (long)getpid());
    int fd = open(output_part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == ENAMETOOLONG) {
        const char *slash = strrchr(path, '/');
        int dir = slash ? (int)(slash - path) + 1 : 0;
        snprintf(output_part, sizeof output_part, "%.*s.memtap.%ld.part", dir, path,
                 (long)getpid());
        fd = open(output_part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    }
    /* A report written again keeps the mode its file was given. */
    struct stat old;
    if (fd >= 0 && stat(path, &old) == 0 && S_ISREG(old.st_mode))
        (void)fchmod(fd, old.st_mode & 0777);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f && fd >= 0) {
        close(fd);
        unlink(output_part);
    }
    if (!f) {
        output_part[0] = 0;
        part_guard(0);
    }
    return f;
}

FILE *mt_output_open(const struct mt_report_opts *o, const char *fallback)
{
    const char *path = o->output ? o->output : fallback;
    output_part[0] = 0;
    if (!path || !strcmp(path, "-")) return stdout;
    /* writing there would destroy the capture */
    if (mt_same_file(path, o->file)) {
        (void)error("'%s' is the capture this report reads; give another output",
                path);
        return NULL;
    }
    FILE *f = NULL;
    if (!output_in_place(path))
        f = part_open(path);
    /* A directory that takes no new file (the user may write the file, not
     * its directory; /proc) is written in place, and says why not. */
    if (!f)
        f = fopen(path, "w");
    if (!f) (void)error("cannot write '%s': %s", path, strerror(errno));
    return f;
}

void mt_say_wrote(const char *path)
{
    fputs("memtap: wrote ", stderr);
    mt_put_printable(stderr, path, 0);
    putc('\n', stderr);
}

int mt_output_close(FILE *f, const char *path)
{
    int bad = ferror(f);
    if (f == stdout) bad |= fflush(f) != 0;
    else bad |= fclose(f) != 0;
    if (!bad && output_part[0] && rename(output_part, path) != 0)
        bad = 1;
    int saved = errno;
    if (bad && output_part[0])
        unlink(output_part);
    if (output_part[0])
        part_guard(0);
    output_part[0] = 0;
    if (bad) {
        (void)error("cannot write '%s': %s",
                path && strcmp(path, "-") ? path : "<stdout>", strerror(saved));
        return -1;
    }
    return 0;
}

char *mt_default_output(const char *kind, const char *capture,
                        const char *ext, char *buf, size_t cap)
{
    const char *b = base_name(capture);
    size_t len = strlen(b);
    if (len > 4 && !strcmp(b + len - 4, ".bin")) len -= 4;
    /* a name the file system takes: the capture's part cut to fit, at a
     * character's start */
    size_t fixed = strlen("memtap--.") + strlen(kind) + strlen(ext);
    if (len + fixed > NAME_MAX) {
        len = NAME_MAX > fixed ? NAME_MAX - fixed : 0;
        while (len && ((unsigned char)b[len] & 0xC0) == 0x80)
            len--;
    }
    snprintf(buf, cap, "memtap-%s-%.*s.%s", kind, (int)len, b, ext);
    mt_name_without_controls(buf);
    return buf;
}

char *mt_allocators_format(uint32_t mask, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = 0;
    for (unsigned i = 1; i < MT_A_COUNT; i++) {
        if (!(mask & (1u << i))) continue;
        int w = snprintf(buf + used, cap - used, "%s%s", used ? "," : "",
                         mt_allocator_name(i));
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
    return buf;
}

int mt_write_template(FILE *f, const char *tmpl,
                      int (*fill)(FILE *f, const char *name, void *arg), void *arg)
{
    const char *p = tmpl;
    for (;;) {
        const char *q = strstr(p, "@@");
        if (!q) { fputs(p, f); return 0; }
        const char *e = strstr(q + 2, "@@");
        if (!e || e - q - 2 > 40 || e == q + 2) {
            fwrite(p, 1, (size_t)(q - p) + 2, f);
            p = q + 2;
            continue;
        }
        char name[48];
        memcpy(name, q + 2, (size_t)(e - q - 2));
        name[e - q - 2] = 0;
        int ok = 1;
        for (char *c = name; *c; c++)
            if (!((*c >= 'A' && *c <= 'Z') || *c == '_')) ok = 0;
        if (!ok) {
            fwrite(p, 1, (size_t)(q - p) + 2, f);
            p = q + 2;
            continue;
        }
        fwrite(p, 1, (size_t)(q - p), f);
        if (fill(f, name, arg)) return -1;
        p = e + 2;
    }
}

/* ---- call trees ------------------------------------------------------------------------- */

uint32_t mt_report_thread_loc(struct mt_report *r, uint32_t thread)
{
    char buf[256];
    const char *name = mt_analysis_thread_name(r->a, thread);
    uint32_t tid = 0;
    for (uint32_t i = 0; i < r->a->nthreads; i++)
        if (r->a->threads[i].index == thread) tid = r->a->threads[i].tid;
    if (tid && !strstr(name, "thread "))
        snprintf(buf, sizeof buf, "%s (thread %u)", name, tid);
    else
        snprintf(buf, sizeof buf, "%s", name);
    struct mt_rframe f = { intern_name(&r->strings, buf), intern(&r->strings, ""),
                           intern(&r->strings, ""), 0, 2, 0, 0, 0 };
    return loc_id(r, &f);
}

int mt_tree_init(struct mt_tree *t)
{
    memset(t, 0, sizeof *t);
    t->cap = 1024;
    t->nodes = calloc(t->cap, sizeof *t->nodes);
    t->hcap = 2048;
    t->hash = calloc(t->hcap, sizeof *t->hash);
    if (!t->nodes || !t->hash) return -1;
    t->n = 1;   /* the root */
    return 0;
}

void mt_tree_release(struct mt_tree *t)
{
    free(t->nodes);
    free(t->hash);
    memset(t, 0, sizeof *t);
}

static uint32_t tree_slot(const struct mt_tree *t, uint32_t parent, uint32_t loc)
{
    return (uint32_t)mix64(((uint64_t)parent << 32) | loc) & (t->hcap - 1);
}

static int tree_grow_hash(struct mt_tree *t)
{
    uint32_t ncap = t->hcap * 2;
    uint32_t *nh = calloc(ncap, sizeof *nh);
    if (!nh) return -1;
    free(t->hash);
    t->hash = nh;
    t->hcap = ncap;
    for (uint32_t i = 1; i < t->n; i++) {
        uint32_t j = tree_slot(t, t->nodes[i].parent, t->nodes[i].loc);
        while (t->hash[j]) j = (j + 1) & (t->hcap - 1);
        t->hash[j] = i;
    }
    return 0;
}

static uint32_t tree_child(struct mt_tree *t, uint32_t parent, uint32_t loc)
{
    if (t->n * 2 >= t->hcap && tree_grow_hash(t)) return 0;
    uint32_t j = tree_slot(t, parent, loc);
    while (t->hash[j]) {
        struct mt_tree_node *c = &t->nodes[t->hash[j]];
        if (c->parent == parent && c->loc == loc) return t->hash[j];
        j = (j + 1) & (t->hcap - 1);
    }
    if (t->n == t->cap) {
        struct mt_tree_node *nn = realloc(t->nodes, t->cap * 2 * sizeof *nn);
        if (!nn) return 0;
        t->nodes = nn;
        t->cap *= 2;
    }
    uint32_t id = t->n++;
    struct mt_tree_node *c = &t->nodes[id];
    memset(c, 0, sizeof *c);
    c->loc = loc;
    c->parent = parent;
    c->next_sibling = t->nodes[parent].first_child;
    t->nodes[parent].first_child = id;
    t->hash[j] = id;
    return id;
}

int mt_tree_add(struct mt_tree *t, const uint32_t *path, int n,
                uint64_t bytes, uint64_t count)
{
    uint32_t cur = 0;
    t->nodes[0].bytes += bytes;
    t->nodes[0].count += count;
    for (int i = 0; i < n; i++) {
        cur = tree_child(t, cur, path[i]);
        if (!cur) return -1;
        t->nodes[cur].bytes += bytes;
        t->nodes[cur].count += count;
    }
    t->nodes[cur].self_bytes += bytes;
    t->nodes[cur].self_count += count;
    t->last = cur;
    return 0;
}

static const struct mt_tree *tree_sort_ctx;
static int cmp_tree_children(const void *x, const void *y)
{
    const struct mt_tree_node *a = &tree_sort_ctx->nodes[*(const uint32_t *)x];
    const struct mt_tree_node *b = &tree_sort_ctx->nodes[*(const uint32_t *)y];
    if (a->bytes != b->bytes) return a->bytes > b->bytes ? -1 : 1;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return a->loc < b->loc ? -1 : a->loc > b->loc;
}

void mt_tree_sort(struct mt_tree *t)
{
    uint32_t *kids = NULL, cap = 0;
    tree_sort_ctx = t;
    for (uint32_t i = 0; i < t->n; i++) {
        uint32_t k = 0;
        for (uint32_t c = t->nodes[i].first_child; c; c = t->nodes[c].next_sibling) {
            if (k == cap) { cap = cap ? cap * 2 : 64; kids = xrealloc(kids, cap * sizeof *kids); }
            kids[k++] = c;
        }
        if (k < 2) continue;
        qsort(kids, k, sizeof *kids, cmp_tree_children);
        t->nodes[i].first_child = kids[0];
        for (uint32_t j = 0; j < k; j++)
            t->nodes[kids[j]].next_sibling = j + 1 < k ? kids[j + 1] : 0;
    }
    free(kids);
}

int mt_report_build_tree(struct mt_report *r, struct mt_tree *t,
                         const uint32_t *order, uint32_t n, int inverted)
{
    uint32_t *path = NULL, cap = 0;
    if (!order) order = mt_report_sorted_groups(r, &n);
    if (mt_tree_init(t)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        const uint32_t *stack;
        int depth = mt_report_stack(r, g, &stack);
        if ((uint32_t)depth + 1 > cap) {
            cap = (uint32_t)depth * 2 + 2;
            path = xrealloc(path, cap * sizeof *path);
        }
        int k = 0;
        if (r->o.split_threads) path[k++] = mt_report_thread_loc(r, g->thread);
        for (int d = 0; d < depth; d++)
            path[k++] = inverted ? stack[d] : stack[depth - 1 - d];
        if (mt_tree_add(t, path, k, mt_report_bytes(r, g), mt_report_count(r, g))) {
            free(path);
            return -1;
        }
    }
    free(path);
    mt_tree_sort(t);
    return 0;
}

void mt_report_json_locs(struct mt_report *r, FILE *f, int html)
{
    /* string pointer -> index, by open addressing over interned pointers */
    uint32_t cap = 1024;
    while (cap < r->nlocs * 4 + 16) cap *= 2;
    const char **keys = calloc(cap, sizeof *keys);
    uint32_t *vals = calloc(cap, sizeof *vals);
    uint32_t *idx = xrealloc(NULL, (size_t)r->nlocs * 2 * sizeof *idx);
    uint32_t nstr = 0;
    if (!keys || !vals) { fputs("memtap: out of memory\n", stderr); exit(1); }

    fputs("\"strings\": [", f);
    for (uint32_t id = 0; id < r->nlocs; id++) {
        const struct mt_loc *l = &r->locs[id];
        /* a native frame without source shows its object instead */
        const char *strs[2] = { l->function,
                                l->file[0] || l->is_python ? l->file : l->object };
        for (int k = 0; k < 2; k++) {
            uint32_t j = (uint32_t)mix64((uintptr_t)strs[k]) & (cap - 1);
            while (keys[j] && keys[j] != strs[k]) j = (j + 1) & (cap - 1);
            if (!keys[j]) {
                keys[j] = strs[k];
                vals[j] = nstr;
                if (nstr++) putc(',', f);
                json_str(f, strs[k], html);
            }
            idx[2 * id + k] = vals[j];
        }
    }
    fputs("],\n\"locs\": [", f);
    for (uint32_t id = 0; id < r->nlocs; id++)
        fprintf(f, "%s%u,%u,%d,%u", id ? "," : "", idx[2 * id], idx[2 * id + 1],
                (int)r->locs[id].line, (unsigned)r->locs[id].is_python);
    fputs("]", f);
    free(keys); free(vals); free(idx);
}

void mt_report_json_meta(struct mt_report *r, FILE *f)
{
    const struct mt_analysis *a = r->a;
    char w[200];

    fprintf(f, "\"mode\": \"%s\", \"command\": ", mt_metric_name(r->o.metric));
    json_str(f, a->header.command ? a->header.command : "", 1);
    fprintf(f, ", \"pid\": %d, \"python\": ", (int)a->header.pid);
    json_str(f, a->python_version ? a->python_version : "", 1);
    fprintf(f, ", \"peak_bytes\": %llu, \"peak_time_us\": %llu, \"peak_rss_bytes\": %llu, "
               "\"allocations\": %llu, \"complete\": %s, \"warning\": ",
            (unsigned long long)a->peak_bytes, (unsigned long long)a->peak_time_us,
            (unsigned long long)a->peak_rss_bytes, (unsigned long long)a->total_allocations,
            a->complete ? "true" : "false");
    w[0] = 0;
    if (!a->complete)
        snprintf(w, sizeof w, "Incomplete capture (it stops at byte %llu: %s). "
                 "Showing what it holds.", (unsigned long long)a->stop_offset,
                 mt_incomplete_why(a));
    else if (a->trailer.exit.signal > 0)
        snprintf(w, sizeof w, "The program was killed by signal %d.", a->trailer.exit.signal);
    json_str(f, w, 1);
}
