/* memtap: the command-line program. One table of subcommands. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "util.h"
#include "version.h"

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

/* Rows with no help text are hidden from the list (internal commands). */
static const struct command commands[] = {
    {"run", cmd_run, "run a program and capture its allocations"},
    {"stats", cmd_stats, "totals, peak, allocators, threads, top locations"},
    {"summary", cmd_summary, "a table of locations: own and total bytes"},
    {"tree", cmd_tree, "the call tree of the biggest stacks"},
    {"table", cmd_table, "a sortable, filterable HTML table"},
    {"flamegraph", cmd_flamegraph, "an HTML flame graph with memory over time"},
    {"export", cmd_export, "collapsed stacks, Austin, speedscope or CSV"},
    {"parse", cmd_parse, "every record of a capture, as text"},
    {"diff", cmd_diff, "what grew between two captures, per location"},
    {"collect", cmd_collect, NULL},
    {"extract", cmd_extract, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: memtap <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (commands[i].help)
            fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nmemtap <command> --help shows a command's options; memtap --version,\n"
               "the version and the capture format it writes.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return MT_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("memtap %s (capture format %d)\n", MT_VERSION, MT_FORMAT_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    error("'%s' is not a memtap command; see 'memtap --help'", argv[1]);
    return MT_EXIT_USAGE;
}
