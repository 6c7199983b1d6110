/* memtap flamegraph: one self-contained HTML page (inline JS and CSS, no
 * network) drawing the call tree of the chosen metric on a <canvas>, with
 * zoom, search, tooltips and, when the capture has memory samples, the
 * heap and RSS over time. The page template is reader/flamegraph.html.in,
 * embedded at build time (tools/embed.py) as mt_flamegraph_html. */
#include <stdlib.h>
#include <string.h>

#include "report.h"

extern const char mt_flamegraph_html[];

static const char usage[] =
    "memtap flamegraph FILE [-o OUT.html] [--leaks|--temporary [N]] [--inverted] "
    "[--split-threads] [--show-internals]";

struct fg {
    struct mt_report *r;
    struct mt_tree t;
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

/* The tree in pre-order: loc, depth, bytes, count per node (root left out).
 * Iterative: stacks can be thousands of frames deep. */
static void write_nodes(FILE *f, const struct mt_tree *t)
{
    uint32_t *stack = malloc(sizeof *stack * (t->n + 1));
    uint32_t *depth = malloc(sizeof *depth * (t->n + 1));
    uint32_t sp = 0;
    int first = 1;
    if (!stack || !depth) { fputs("memtap: out of memory\n", stderr); exit(1); }
    /* push the root's children in reverse so the biggest comes out first */
    uint32_t nkids = 0;
    for (uint32_t c = t->nodes[0].first_child; c; c = t->nodes[c].next_sibling) nkids++;
    for (uint32_t c = t->nodes[0].first_child, k = 0; c; c = t->nodes[c].next_sibling, k++) {
        stack[sp + nkids - 1 - k] = c;
        depth[sp + nkids - 1 - k] = 0;
    }
    sp += nkids;
    while (sp) {
        sp--;
        uint32_t id = stack[sp], d = depth[sp];
        const struct mt_tree_node *nd = &t->nodes[id];
        if (nd->bytes == 0 && nd->count == 0) continue;
        fprintf(f, "%s%u,%u,%llu,%llu", first ? "" : ",", nd->loc, d,
                (unsigned long long)nd->bytes, (unsigned long long)nd->count);
        first = 0;
        uint32_t n = 0;
        for (uint32_t c = nd->first_child; c; c = t->nodes[c].next_sibling) n++;
        uint32_t k = 0;
        for (uint32_t c = nd->first_child; c; c = t->nodes[c].next_sibling, k++) {
            stack[sp + n - 1 - k] = c;
            depth[sp + n - 1 - k] = d + 1;
        }
        sp += n;
    }
    free(stack);
    free(depth);
}

static int fill(FILE *f, const char *name, void *arg)
{
    struct fg *g = arg;
    const struct mt_analysis *a = mt_report_analysis(g->r);
    const struct mt_report_opts *o = mt_report_options(g->r);

    if (!strcmp(name, "TITLE")) {
        write_html_text(f, g->title);
        return 0;
    }
    if (strcmp(name, "DATA")) return -1;
    fprintf(f, "{\"inverted\": %s, \"split_threads\": %s, ",
            o->inverted ? "true" : "false", o->split_threads ? "true" : "false");
    mt_report_json_meta(g->r, f);
    fputs(",\n\"samples\": [", f);
    for (uint32_t i = 0; i < a->nsamples; i++)
        fprintf(f, "%s[%llu,%llu,%llu]", i ? "," : "",
                (unsigned long long)a->samples[i].time_us,
                (unsigned long long)a->samples[i].rss_bytes,
                (unsigned long long)a->samples[i].heap_bytes);
    fputs("],\n", f);
    mt_report_json_locs(g->r, f, 1);
    fputs(",\n\"nodes\": [", f);
    write_nodes(f, &g->t);
    fputs("]}", f);
    return 0;
}

int cmd_flamegraph(int argc, char **argv)
{
    struct mt_report_opts o;
    char defname[4096], title[4200];
    int rc = mt_report_parse_args(argc, argv,
                                  MT_O_METRIC | MT_O_OUTPUT | MT_O_INVERTED | MT_O_SPLIT,
                                  usage, &o);
    if (rc >= 0) return rc;
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;

    struct fg g = { .r = r };
    if (mt_report_build_tree(r, &g.t, NULL, 0, o.inverted)) {
        fputs("memtap: out of memory\n", stderr);
        mt_report_free(r);
        return 1;
    }
    const char *out = o.output ? o.output
                               : mt_default_output("flamegraph", o.file, "html", defname,
                                                   sizeof defname);
    snprintf(title, sizeof title, "memtap %s flame graph: %s", mt_metric_name(o.metric), o.file);
    g.title = title;
    FILE *f = mt_output_open(&o, out);
    if (!f) {
        mt_tree_release(&g.t);
        mt_report_free(r);
        return 1;
    }
    mt_write_template(f, mt_flamegraph_html, fill, &g);
    rc = mt_output_close(f, out) ? 1 : 0;
    if (!rc && f != stdout) fprintf(stderr, "wrote %s\n", out);
    mt_tree_release(&g.t);
    mt_report_free(r);
    return rc;
}
