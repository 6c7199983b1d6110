/* memtap export: the chosen metric's stacks in formats other tools read:
 *   collapsed   "root;...;leaf BYTES" per stack (flamegraph.pl, inferno...),
 *               frames as "function (file:line)";
 *   austin      Austin 3's sample format in full mode,
 *               "P<pid>;T<iid>:<tid>;file:function:line;... 0,0,BYTES" (time,
 *               idle, memory) after "# key: value" metadata lines;
 *   speedscope  speedscope's JSON file format (sampled profiles, unit bytes);
 *   csv         one row per stack: thread, bytes, count, allocators, the
 *               innermost location and the whole stack. */
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "util.h"

static const char usage[] =
    "memtap export --format collapsed|austin|speedscope|csv FILE [-o OUT] "
    "[--leaks|--temporary [N]] [--split-threads] [--show-internals] [--python-only]";

enum fmt { F_COLLAPSED, F_AUSTIN, F_SPEEDSCOPE, F_CSV };

/* Writes s as UTF-8: a byte of a name in another encoding becomes U+FFFD,
 * as the tools that read these files (Austin's, inferno, spreadsheets)
 * take nothing else. With `semicolons`, ';' becomes ',' (it separates
 * frames); `quotes` doubles '"' (CSV). */
static void put_text(FILE *f, const char *s, int semicolons, int quotes)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = mt_utf8_len(p);
        if (!n) {
            fputs("\xef\xbf\xbd", f);
            p++;
            continue;
        }
        if (n == 1) {
            char c = (char)*p;
            if (c == ';' && semicolons) c = ',';
            else if (c == '\n' || c == '\r' || c == '\t') c = ' ';
            else if (c == '"' && quotes) putc('"', f);
            putc(c, f);
        } else {
            fwrite(p, 1, (size_t)n, f);
        }
        p += n;
    }
}

/* Writes s with the characters that would break a line-oriented format
 * (';' separates frames, newlines separate samples) replaced. */
static void put_clean(FILE *f, const char *s) { put_text(f, s, 1, 0); }

static void put_csv(FILE *f, const char *s)
{
    putc('"', f);
    put_text(f, s, 0, 1);
    putc('"', f);
}

/* A growing buffer for locations as text: exports write them whole. */
struct text { char *s; size_t cap; };

static const char *loc_text(struct text *t, const struct mt_loc *l)
{
    size_t n = mt_loc_format(l, t->s, t->cap);
    if (n >= t->cap) {
        t->cap = n + 1;
        t->s = realloc(t->s, t->cap);
        if (!t->s) { fputs("memtap: out of memory\n", stderr); exit(1); }
        mt_loc_format(l, t->s, t->cap);
    }
    return t->s;
}

/* The thread id Austin is given for thread index `index`: the pid (the
 * main thread's id) when threads are not split; else the thread's, 0 for
 * the shared state's, which is no one thread (no real thread has id 0). */
static uint32_t thread_tid(const struct mt_analysis *a, uint32_t index, int split)
{
    if (!split)
        return (uint32_t)a->header.pid;
    for (uint32_t i = 0; i < a->nthreads; i++)
        if (a->threads[i].index == index) return a->threads[i].tid;
    return 0;
}

static void write_collapsed(struct mt_report *r, FILE *f, int austin)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    const struct mt_report_opts *o = mt_report_options(r);
    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    struct text buf = { malloc(256), 256 };
    if (!buf.s) { fputs("memtap: out of memory\n", stderr); exit(1); }

    if (austin) {
        /* "full" mode (time,idle,memory per sample) rather than "memory":
         * austin-python 2.x reads a lone metric as time, so a memory-mode
         * file would load as empty memory statistics there. */
        fputs("# austin: 3.6.0\n# interval: 1\n# mode: full\n", f);
        fprintf(f, "# memtap: %s\n", mt_metric_name(o->metric));
        if (a->header.command) {
            fputs("# command: ", f);
            put_clean(f, mt_report_clean(r, a->header.command));
            putc('\n', f);
        }
        if (a->python_version) fprintf(f, "# python: %s\n", a->python_version);
        /* the file outlives the warning on stderr */
        if (!a->complete) fprintf(f, "# incomplete: %s\n", mt_incomplete_why(a));
        putc('\n', f);
    }
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        uint64_t bytes = mt_report_bytes(r, g);
        if (!bytes) continue;
        const uint32_t *stack;
        int depth = mt_report_stack(r, g, &stack);
        if (austin) {
            /* iid 0: one interpreter; the thread id in hex, as Austin writes it */
            fprintf(f, "P%d;T0:%x", (int)a->header.pid,
                    thread_tid(a, g->thread, o->split_threads));
            for (int d = depth - 1; d >= 0; d--) {
                const struct mt_loc *l = mt_report_loc(r, stack[d]);
                putc(';', f);
                put_clean(f, mt_loc_where(l)[0] ? mt_loc_where(l) : "?");
                putc(':', f);
                put_clean(f, mt_loc_name(l));
                fprintf(f, ":%d", (int)l->line);
            }
        } else {
            int first = 1;
            if (o->split_threads) {
                put_clean(f, mt_report_loc(r, mt_report_thread_loc(r, g->thread))->function);
                first = 0;
            }
            for (int d = depth - 1; d >= 0; d--) {
                if (!first) putc(';', f);
                first = 0;
                put_clean(f, loc_text(&buf, mt_report_loc(r, stack[d])));
            }
        }
        fprintf(f, austin ? " 0,0,%llu\n" : " %llu\n", (unsigned long long)bytes);
    }
    free(buf.s);
}

static void write_speedscope(struct mt_report *r, FILE *f)
{
    const struct mt_analysis *a = mt_report_analysis(r);
    const struct mt_report_opts *o = mt_report_options(r);
    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    /* thread indices in groups: 0 .. nthr-1 (all 0 when not split) */
    uint32_t nthr = 1;
    for (uint32_t i = 0; o->split_threads && i < ng; i++)
        if (mt_report_group(r, order[i])->thread + 1 > nthr)
            nthr = mt_report_group(r, order[i])->thread + 1;
    char name[512];
    /* The schema has no key for it: the profile's name carries it. */
    const char *incomplete = a->complete ? "" : " (incomplete capture)";

    /* resolve every stack first so that every location has an id */
    struct { uint32_t *ids; int n; } *st = calloc(ng + 1, sizeof *st);
    if (!st) { fputs("memtap: out of memory\n", stderr); exit(1); }
    for (uint32_t i = 0; i < ng; i++) {
        const uint32_t *stack;
        int depth = mt_report_stack(r, mt_report_group(r, order[i]), &stack);
        st[i].ids = malloc(sizeof *st[i].ids * (size_t)depth);
        if (!st[i].ids) { fputs("memtap: out of memory\n", stderr); exit(1); }
        memcpy(st[i].ids, stack, sizeof *stack * (size_t)depth);
        st[i].n = depth;
    }

    fputs("{\"$schema\": \"https://www.speedscope.app/file-format-schema.json\",\n", f);
    fputs("\"exporter\": \"memtap\", \"name\": ", f);
    snprintf(name, sizeof name, "memtap %s: %s", mt_metric_name(o->metric),
             a->header.command ? a->header.command : o->file);
    mt_json_string(f, name);
    fputs(", \"activeProfileIndex\": 0,\n\"shared\": {\"frames\": [", f);
    uint32_t nlocs = mt_report_nlocs(r);
    for (uint32_t id = 0; id < nlocs; id++) {
        const struct mt_loc *l = mt_report_loc(r, id);
        fputs(id ? ",\n" : "\n", f);
        fputs("{\"name\": ", f);
        mt_json_string(f, l->function);
        if (l->file[0] || (!l->is_python && l->object[0])) {
            fputs(", \"file\": ", f);
            mt_json_string(f, mt_loc_where(l));
        }
        if (l->line > 0) fprintf(f, ", \"line\": %d", (int)l->line);
        putc('}', f);
    }
    /* one profile per thread with something to show when split (biggest
     * first, so that the active profile is the one that matters), else one */
    struct prof { uint32_t thread; uint64_t sum; } *profs = calloc(nthr + 1, sizeof *profs);
    uint32_t nprof = 0;
    if (!profs) { fputs("memtap: out of memory\n", stderr); exit(1); }
    for (uint32_t t = 0; t < nthr; t++) {
        uint64_t sum = 0;
        int any = 0;
        for (uint32_t i = 0; i < ng; i++) {
            const struct mt_group *g = mt_report_group(r, order[i]);
            if (o->split_threads && g->thread != t) continue;
            sum += mt_report_bytes(r, g);
            any = 1;
        }
        if (any || !o->split_threads) profs[nprof++] = (struct prof){ t, sum };
    }
    if (!nprof)  /* split, nothing allocated: a file needs one profile */
        profs[nprof++] = (struct prof){ 0, 0 };
    for (uint32_t i = 1; i < nprof; i++)   /* insertion sort: few threads */
        for (uint32_t j = i; j > 0 && profs[j].sum > profs[j - 1].sum; j--) {
            struct prof tmp = profs[j]; profs[j] = profs[j - 1]; profs[j - 1] = tmp;
        }
    fputs("]},\n\"profiles\": [", f);
    for (uint32_t p = 0; p < nprof; p++) {
        uint32_t tindex = profs[p].thread;
        if (o->split_threads)
            snprintf(name, sizeof name, "%s: %s%s", mt_metric_name(o->metric),
                     mt_report_loc(r, mt_report_thread_loc(r, tindex))->function,
                     incomplete);
        else
            snprintf(name, sizeof name, "%s%s", mt_metric_name(o->metric), incomplete);
        fputs(p ? ",\n{" : "\n{", f);
        fputs("\"type\": \"sampled\", \"name\": ", f);
        mt_json_string(f, name);
        fprintf(f, ", \"unit\": \"bytes\", \"startValue\": 0, \"endValue\": %llu,\n\"samples\": [",
                (unsigned long long)profs[p].sum);
        int first = 1;
        for (uint32_t i = 0; i < ng; i++) {
            const struct mt_group *g = mt_report_group(r, order[i]);
            if (o->split_threads && g->thread != tindex) continue;
            fputs(first ? "[" : ",\n[", f);
            first = 0;
            for (int d = st[i].n - 1; d >= 0; d--)
                fprintf(f, "%u%s", st[i].ids[d], d ? "," : "");
            putc(']', f);
        }
        fputs("],\n\"weights\": [", f);
        first = 1;
        for (uint32_t i = 0; i < ng; i++) {
            const struct mt_group *g = mt_report_group(r, order[i]);
            if (o->split_threads && g->thread != tindex) continue;
            fprintf(f, "%s%llu", first ? "" : ",", (unsigned long long)mt_report_bytes(r, g));
            first = 0;
        }
        fputs("]}", f);
    }
    free(profs);
    fputs("]}\n", f);
    for (uint32_t i = 0; i < ng; i++) free(st[i].ids);
    free(st);
}

static void write_csv(struct mt_report *r, FILE *f)
{
    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    char al[256];
    struct text buf = { malloc(256), 256 };
    if (!buf.s) { fputs("memtap: out of memory\n", stderr); exit(1); }

    fputs("thread,bytes,count,allocators,function,file,line,stack\n", f);
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        const uint32_t *stack;
        int depth = mt_report_stack(r, g, &stack);
        const struct mt_loc *leaf = mt_report_loc(r, stack[0]);
        /* the thread as the other exports name it: two threads may share a name */
        put_csv(f, mt_report_options(r)->split_threads
                       ? mt_report_loc(r, mt_report_thread_loc(r, g->thread))->function
                       : "all");
        fprintf(f, ",%llu,%llu,", (unsigned long long)mt_report_bytes(r, g),
                (unsigned long long)mt_report_count(r, g));
        put_csv(f, mt_allocators_format(g->allocators, al, sizeof al));
        putc(',', f);
        put_csv(f, leaf->function);
        putc(',', f);
        put_csv(f, leaf->file[0] ? leaf->file : leaf->object);
        fprintf(f, ",%d,\"", (int)leaf->line);
        for (int d = depth - 1; d >= 0; d--) {
            put_text(f, loc_text(&buf, mt_report_loc(r, stack[d])), 1, 1);
            if (d) putc(';', f);
        }
        fputs("\"\n", f);
    }
    free(buf.s);
}

int cmd_export(int argc, char **argv)
{
    struct mt_report_opts o;
    enum fmt fmt;
    int rc = mt_report_parse_args(argc, argv,
                                  MT_O_METRIC | MT_O_OUTPUT | MT_O_FORMAT | MT_O_SPLIT,
                                  usage, &o);
    if (rc >= 0) return rc;
    if (!o.format) {
        fprintf(stderr, "memtap: no --format given\nusage: %s\n", usage);
        return 2;
    }
    if (!strcmp(o.format, "collapsed")) fmt = F_COLLAPSED;
    else if (!strcmp(o.format, "austin")) fmt = F_AUSTIN;
    else if (!strcmp(o.format, "speedscope")) fmt = F_SPEEDSCOPE;
    else if (!strcmp(o.format, "csv")) fmt = F_CSV;
    else {
        fprintf(stderr, "memtap: unknown format '%s' (collapsed, austin, speedscope "
                "or csv)\nusage: %s\n", o.format, usage);
        return 2;
    }
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;
    FILE *f = mt_output_open(&o, "-");
    if (!f) { mt_report_free(r); return 1; }
    switch (fmt) {
    case F_COLLAPSED: write_collapsed(r, f, 0); break;
    case F_AUSTIN: write_collapsed(r, f, 1); break;
    case F_SPEEDSCOPE: write_speedscope(r, f); break;
    case F_CSV: write_csv(r, f); break;
    }
    rc = mt_output_close(f, o.output ? o.output : "-") ? 1 : 0;
    if (!rc && f != stdout)
        mt_say_wrote(o.output);
    mt_report_free(r);
    return rc;
}
