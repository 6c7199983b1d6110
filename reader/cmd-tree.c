/* memtap tree: the call tree of the N biggest allocation stacks under the
 * chosen metric, root first, indented, with sizes and percentages of the
 * metric's total. */
#include <stdlib.h>
#include <string.h>

#include "report.h"

static const char usage[] =
    "memtap tree FILE [--leaks|--temporary [N]] [-n STACKS] [--split-threads] "
    "[--show-internals] [--python-only]";

#define DEFAULT_STACKS 10

struct tree_print {
    struct mt_report *r;
    const struct mt_tree *t;
    uint64_t total;
    int color;
    char *prefix; size_t plen, pcap;
};

/* Prints node id and its subtree. Indentation grows only where the tree
 * branches: an only child is printed right under its parent, at the same
 * indentation and without a connector, so long call chains stay readable;
 * siblings always get "├──"/"└──". */
static void print_node(struct tree_print *p, uint32_t id, const char *connector)
{
    const struct mt_tree_node *nd = &p->t->nodes[id];
    const struct mt_loc *l = mt_report_loc(p->r, nd->loc);
    const char *yel = p->color ? "\033[33m" : "", *cyan = p->color ? "\033[36m" : "";
    const char *dim = p->color ? "\033[2m" : "", *off = p->color ? "\033[0m" : "";
    char size[32];

    for (;;) {
        mt_format_size(nd->bytes, size, sizeof size);
        printf("%s%s%s%s%s%s%s (%.2f%%, %llu allocation%s)  %s%s%s", dim, p->prefix,
               connector, off, yel, size, off,
               p->total ? 100.0 * (double)nd->bytes / (double)p->total : 0.0,
               (unsigned long long)nd->count, nd->count == 1 ? "" : "s",
               cyan, mt_loc_name(l), off);
        mt_loc_put_place(stdout, l, dim, off);
        putchar('\n');

        /* the indentation under this node: below a connector, continue its column */
        if (connector[0]) {
            const char *add = !strcmp(connector, "├── ") ? "│   " : "    ";
            size_t al = strlen(add);
            if (p->plen + al + 1 > p->pcap) {
                p->pcap = (p->plen + al + 1) * 2;
                p->prefix = realloc(p->prefix, p->pcap);
                if (!p->prefix) { fputs("memtap: out of memory\n", stderr); exit(1); }
            }
            memcpy(p->prefix + p->plen, add, al + 1);
            p->plen += al;
        }
        uint32_t c = nd->first_child;
        if (!c) return;
        if (p->t->nodes[c].next_sibling == 0) {
            /* only child: same column, no connector (iterative: chains are long) */
            nd = &p->t->nodes[c];
            l = mt_report_loc(p->r, nd->loc);
            connector = "";
            continue;
        }
        size_t save = p->plen;
        for (; c; c = p->t->nodes[c].next_sibling) {
            print_node(p, c, p->t->nodes[c].next_sibling ? "├── " : "└── ");
            p->plen = save;
            p->prefix[save] = 0;
        }
        return;
    }
}

int cmd_tree(int argc, char **argv)
{
    struct mt_report_opts o;
    int rc = mt_report_parse_args(argc, argv, MT_O_METRIC | MT_O_ROWS | MT_O_STACKS | MT_O_SPLIT,
                                  usage, &o);
    if (rc >= 0) return rc;
    struct mt_report *r = mt_report_open(&o);
    if (!r) return 1;

    uint32_t ng;
    const uint32_t *order = mt_report_sorted_groups(r, &ng);
    uint32_t n = o.rows >= 0 ? (uint32_t)(o.rows < (long)ng ? o.rows : ng)
                             : (ng < DEFAULT_STACKS ? ng : DEFAULT_STACKS);
    struct mt_tree t;
    if (mt_report_build_tree(r, &t, order, n, 0)) {
        fputs("memtap: out of memory\n", stderr);
        mt_report_free(r);
        return 1;
    }

    struct tree_print p = { r, &t, mt_report_total_bytes(r), mt_use_color(stdout),
                            calloc(1, 64), 0, 64 };
    const struct mt_analysis *a = mt_report_analysis(r);
    char size[32];
    mt_format_size(p.total, size, sizeof size);
    printf("%s%s: %s in %u stack%s", p.color ? "\033[1m" : "",
           o.metric == MT_M_LEAKS ? "Leaks" : o.metric == MT_M_TEMPORARY
                                   ? "Temporary allocations" : "Peak memory",
           size, ng, ng == 1 ? "" : "s");
    if (n < ng) printf(", the %u biggest shown", n);
    printf("%s\n", p.color ? "\033[0m" : "");
    if (!a->complete)
        printf("(incomplete capture: %s)\n", mt_incomplete_why(a));
    if (n == 0) {
        printf("no allocations\n");
    } else {
        for (uint32_t c = t.nodes[0].first_child; c; c = t.nodes[c].next_sibling) {
            print_node(&p, c, t.nodes[c].next_sibling ? "├── " : "└── ");
            p.plen = 0;
            p.prefix[0] = 0;
        }
    }
    free(p.prefix);
    mt_tree_release(&t);
    mt_report_free(r);
    return mt_output_close(stdout, "-") ? 1 : 0;
}
