/* memtap flamegraph: one self-contained HTML page (inline JS and CSS, no
 * network) drawing the call tree of the chosen metric on a <canvas>, with
 * zoom, search, tooltips and, when the capture has memory samples, the
 * heap and RSS over time. The page template is reader/flamegraph.html.in,
 * embedded at build time (tools/embed.py) as mt_flamegraph_html.
 *
 * --temporal: the tree holds every stack that allocated, and the page gets
 * the analysis' time-bucket cells (src/replay.h, struct mt_temporal) keyed
 * by the node each stack ends at; it recomputes the weights for the time
 * range picked on the chart (docs/reports.md, "Temporal flame graphs"). */
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "util.h"

extern const char mt_flamegraph_html[];

static const char usage[] =
    "memtap flamegraph FILE [-o OUT.html] [--leaks|--temporary [N]] [--inverted] "
    "[--split-threads] [--temporal] [--show-internals] [--python-only]";

struct fg {
    struct mt_report *r;
    struct mt_tree t;
    const char *title;
    uint32_t *leaf;      /* --temporal: group -> tree node its stack ends at */
    uint32_t *index;     /* --temporal: tree node -> index in "nodes" */
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
 * Iterative: stacks can be thousands of frames deep. index (may be NULL)
 * gets each written node's position; nodes are then all written. */
static void write_nodes(FILE *f, const struct mt_tree *t, uint32_t *index)
{
    uint32_t pos = 0;
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
        if (!index && nd->bytes == 0 && nd->count == 0) continue;
        if (index) index[id] = pos++;
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

/* "temporal": the buckets and the cells, by node index (see the header). */
static void write_temporal(FILE *f, const struct fg *g)
{
    const struct mt_analysis *a = mt_report_analysis(g->r);
    const struct mt_temporal *tm = a->temporal;
    fprintf(f, ",\n\"temporal\": {\"bucket_us\": %llu, \"nbuckets\": %u, "
            "\"peak_bucket\": %u, \"end_us\": %llu,\n\"cells\": [",
            (unsigned long long)tm->bucket_us, tm->nbuckets, tm->peak_bucket,
            (unsigned long long)(a->nsamples ? a->samples[a->nsamples - 1].time_us : 0));
    int first = 1;
    for (uint32_t i = 0; i < tm->ncells; i++) {
        const struct mt_tcell *c = &tm->cells[i];
        uint32_t leaf = g->leaf[c->group];
        if (!leaf) continue;
        fprintf(f, "%s%u,%u,%d,%llu,%llu", first ? "" : ",", g->index[leaf], c->a,
                c->f == MT_TALIVE ? -1 : (int)c->f,
                (unsigned long long)c->bytes, (unsigned long long)c->count);
        first = 0;
    }
    fputs("],\n\"peak\": [", f);
    first = 1;
    for (uint32_t i = 0; i < tm->npeak; i++) {
        const struct mt_tcell *c = &tm->peak[i];
        uint32_t leaf = g->leaf[c->group];
        if (!leaf) continue;
        fprintf(f, "%s%u,%u,%llu,%llu", first ? "" : ",", g->index[leaf], c->a,
                (unsigned long long)c->bytes, (unsigned long long)c->count);
        first = 0;
    }
    fputs("]}", f);
}

/* --temporal: the tree of every stack that allocated (weighed by all it
 * allocated), remembering where each group's stack ends. */
static int build_temporal_tree(struct fg *g, int inverted)
{
    struct mt_report *r = g->r;
    const struct mt_analysis *a = mt_report_analysis(r);
    int split = mt_report_options(r)->split_threads;
    uint32_t *path = NULL, cap = 0;
    g->leaf = calloc(a->ngroups + 1, sizeof *g->leaf);
    if (!g->leaf || mt_tree_init(&g->t)) return -1;
    for (uint32_t i = 0; i < a->ngroups; i++) {
        const struct mt_group *gr = &a->groups[i];
        if (!gr->total_count) continue;
        const uint32_t *stack;
        int depth = mt_report_stack(r, gr, &stack);
        if ((uint32_t)depth + 2 > cap) {
            cap = (uint32_t)depth * 2 + 2;
            uint32_t *p = realloc(path, cap * sizeof *path);
            if (!p) { free(path); return -1; }
            path = p;
        }
        int k = 0;
        if (split) path[k++] = mt_report_thread_loc(r, gr->thread);
        for (int d = 0; d < depth; d++)
            path[k++] = inverted ? stack[d] : stack[depth - 1 - d];
        if (mt_tree_add(&g->t, path, k, gr->total_bytes, gr->total_count)) {
            free(path);
            return -1;
        }
        g->leaf[i] = g->t.last;
    }
    free(path);
    mt_tree_sort(&g->t);
    g->index = calloc(g->t.n + 1, sizeof *g->index);
    return g->index ? 0 : -1;
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
    write_nodes(f, &g->t, g->index);
    fputs("]", f);
    if (g->index) write_temporal(f, g);
    fputs("}", f);
    return 0;
}

int cmd_flamegraph(int argc, char **argv)
{
    struct mt_report_opts o;
    char defname[4096], title[4200];
    int rc = mt_report_parse_args(argc, argv,
                                  MT_O_METRIC | MT_O_OUTPUT | MT_O_INVERTED | MT_O_SPLIT |
                                  MT_O_TEMPORAL, usage, &o);
    if (rc >= 0) return rc;
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;

    struct fg g = { .r = r };
    if (o.temporal ? build_temporal_tree(&g, o.inverted)
                   : mt_report_build_tree(r, &g.t, NULL, 0, o.inverted)) {
        fputs("memtap: out of memory\n", stderr);
        free(g.leaf), free(g.index);
        mt_report_free(r);
        return 1;
    }
    const char *out = o.output ? o.output
                               : mt_default_output("flamegraph", o.file, "html", defname,
                                                   sizeof defname);
    snprintf(title, sizeof title, "memtap %s flame graph: %s",
             o.temporal ? "temporal" : mt_metric_name(o.metric), o.file);
    g.title = title;
    FILE *f = mt_output_open(&o, out);
    if (!f) {
        free(g.leaf), free(g.index);
        mt_tree_release(&g.t);
        mt_report_free(r);
        return 1;
    }
    mt_write_template(f, mt_flamegraph_html, fill, &g);
    rc = mt_output_close(f, out) ? 1 : 0;
    if (!rc && f != stdout)
        mt_say_wrote(out);
    free(g.leaf), free(g.index);
    mt_tree_release(&g.t);
    mt_report_free(r);
    return rc;
}
