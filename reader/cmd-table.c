/* memtap table: one self-contained HTML page with a sortable, filterable
 * table of the chosen metric's stacks, one row per (stack, thread): thread,
 * size, count, allocators, innermost location; a click shows the stack.
 * The page is reader/table.html.in, embedded as mt_table_html. */
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "util.h"

extern const char mt_table_html[];

static const char usage[] =
    "memtap table FILE [-o OUT.html] [--leaks|--temporary [N]] [--show-internals] [--python-only]";

struct tbl {
    struct mt_report *r;
    const char *title;
};

static void write_html_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: putc(*s, f);
        }
    }
}

static int fill(FILE *f, const char *name, void *arg)
{
    struct tbl *t = arg;
    struct mt_report *r = t->r;
    char buf[64];

    if (!strcmp(name, "TITLE")) {
        write_html_text(f, t->title);
        return 0;
    }
    if (strcmp(name, "DATA")) return -1;

    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    /* resolve the stacks first: it creates the locations */
    fputs("{", f);
    mt_report_json_meta(r, f);
    fputs(",\n\"allocators\": [\"\"", f);
    for (unsigned k = 1; k < MT_A_COUNT; k++) {
        fputs(",", f);
        mt_json_html_string(f, mt_allocators_format(1u << k, buf, sizeof buf));
    }
    uint32_t maxthread = 0;
    for (uint32_t i = 0; i < ng; i++)
        if (mt_report_group(r, order[i])->thread > maxthread)
            maxthread = mt_report_group(r, order[i])->thread;
    fputs("],\n\"threads\": [", f);
    for (uint32_t k = 0; k <= maxthread; k++) {
        if (k) putc(',', f);
        mt_json_html_string(f, mt_report_loc(r, mt_report_thread_loc(r, k))->function);
    }
    fputs("],\n\"stacks\": [", f);
    for (uint32_t i = 0; i < ng; i++) {
        const uint32_t *stack;
        int depth = mt_report_stack(r, mt_report_group(r, order[i]), &stack);
        fputs(i ? ",[" : "[", f);
        for (int d = 0; d < depth; d++) fprintf(f, "%s%u", d ? "," : "", stack[d]);
        putc(']', f);
    }
    fputs("],\n\"rows\": [", f);
    for (uint32_t i = 0; i < ng; i++) {
        const struct mt_group *g = mt_report_group(r, order[i]);
        fprintf(f, "%s%u,%llu,%llu,%u", i ? "," : "", g->thread,
                (unsigned long long)mt_report_bytes(r, g),
                (unsigned long long)mt_report_count(r, g), g->allocators);
    }
    fputs("],\n", f);
    mt_report_json_locs(r, f, 1);
    fputs("}", f);
    return 0;
}

int cmd_table(int argc, char **argv)
{
    struct mt_report_opts o;
    char defname[4096], title[4200];
    int rc = mt_report_parse_args(argc, argv, MT_O_METRIC | MT_O_OUTPUT, usage, &o);
    if (rc >= 0) return rc;
    o.split_threads = 1;   /* the table has a thread column */
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;

    const char *out = o.output ? o.output
                               : mt_default_output("table", o.file, "html", defname,
                                                   sizeof defname);
    snprintf(title, sizeof title, "memtap %s table: %s", mt_metric_name(o.metric), o.file);
    struct tbl t = { r, title };
    FILE *f = mt_output_open(&o, out);
    if (!f) {
        mt_report_free(r);
        return 1;
    }
    mt_write_template(f, mt_table_html, fill, &t);
    rc = mt_output_close(f, out) ? 1 : 0;
    if (!rc && f != stdout)
        mt_say_wrote(out);
    mt_report_free(r);
    return rc;
}
