/* Plumbing shared by the reporters (summary, tree, table, flamegraph,
 * export): common options, loading a capture with the right messages,
 * the metric of a group (peak / leaks / temporary), resolved stacks
 * (Python frames, symbolized native frames, hybrid merge), per-location
 * rows, size formatting and terminal colour.
 *
 * Everything here is single-threaded: one struct mt_report per thread. */
#ifndef MT_REPORT_H
#define MT_REPORT_H

#include <stdint.h>
#include <stdio.h>
#include "analysis.h"

/* ---- options ------------------------------------------------------------ */

enum mt_metric { MT_M_PEAK = 0, MT_M_LEAKS = 1, MT_M_TEMPORARY = 2 };

/* Which options a command accepts (bit mask for mt_report_parse_args). */
enum mt_report_opt_flags {
    MT_O_METRIC = 1u << 0,    /* --leaks, --temporary [N] */
    MT_O_SPLIT = 1u << 1,     /* --split-threads */
    MT_O_ROWS = 1u << 2,      /* -n ROWS */
    MT_O_OUTPUT = 1u << 3,    /* -o OUT */
    MT_O_JSON = 1u << 4,      /* --json */
    MT_O_SORT = 1u << 5,      /* --sort own|total|count */
    MT_O_INVERTED = 1u << 6,  /* --inverted */
    MT_O_FORMAT = 1u << 7,    /* --format NAME */
    MT_O_INTERNALS = 1u << 8, /* --show-internals, --python-only (always accepted) */
    MT_O_TEMPORAL = 1u << 9,  /* --temporal (not with --temporary) */
    MT_O_STACKS = 1u << 10,   /* -n counts stacks, not rows (tree) */
};

enum mt_sort { MT_S_OWN = 0, MT_S_TOTAL = 1, MT_S_COUNT = 2 };

/* A row count above every report's number of rows (-n asks for up to it). */
#define MT_ROWS_MAX 100000000L

struct mt_report_opts {
    enum mt_metric metric;
    unsigned temporary_n;     /* --temporary N; 1 by default */
    int split_threads;
    long rows;                /* -n (at most MT_ROWS_MAX); -1 when not given */
    const char *output;       /* -o; NULL when not given */
    int json;
    enum mt_sort sort;
    int inverted;
    const char *format;       /* --format; NULL when not given */
    int show_internals;
    int python_only;          /* --python-only: native frames only where a
                                 stack has no Python frame */
    int temporal;             /* --temporal: the analysis keeps time buckets */
    int totals_only;          /* set by the command, not an option: it shows
                                 totals only (mt_analysis_opts) */
    const char *file;         /* the capture (the one positional argument) */
    int file_at;              /* its index in argv (messages) */
};

/* Parses argv[1..argc) (argv[0] is the command name) into *o, accepting the
 * options in `allowed` (enum mt_report_opt_flags). `usage` is the synopsis
 * printed on -h/--help (stdout) or after a usage error (stderr).
 * @return -1 to go on, or the exit status the command must return at once
 * (0 after --help, 2 after a usage error, its message already printed). */
int mt_report_parse_args(int argc, char **argv, unsigned allowed,
                         const char *usage, struct mt_report_opts *o);

/* "peak", "leaks" or "temporary". Static. */
const char *mt_metric_name(enum mt_metric m);

/* ---- loading -------------------------------------------------------------- */

struct mt_report;   /* opaque */

/* Analyses o->file (progress on a TTY) and prepares symbolization.
 * When the file cannot be read, dies with one line on stderr (exit 1,
 * util.h's die_capture); returns NULL only when out of memory. Prints a
 * warning when the capture is incomplete or the program was killed, and
 * goes on.
 * o is copied. Free the result with mt_report_free. */
struct mt_report *mt_report_open(const struct mt_report_opts *o);

/* Frees r and its analysis (NULL accepted). */
void mt_report_free(struct mt_report *r);

const struct mt_analysis *mt_report_analysis(const struct mt_report *r);
const struct mt_report_opts *mt_report_options(const struct mt_report *r);

/* The bytes / count of a group under the chosen metric. */
uint64_t mt_report_bytes(const struct mt_report *r, const struct mt_group *g);
uint64_t mt_report_count(const struct mt_report *r, const struct mt_group *g);

/* Sum of mt_report_bytes over all groups. */
uint64_t mt_report_total_bytes(const struct mt_report *r);

/* The stacks a report shows, as group ids for mt_report_group, biggest
 * (bytes, then count) first: the analysis's groups with a non-zero metric,
 * those whose stacks print alike (and, split, of one thread) summed into
 * one. *n gets how many. The array belongs to r. */
const uint32_t *mt_report_sorted_groups(struct mt_report *r, uint32_t *n);
/* The group of id (from mt_report_sorted_groups), valid as long as r. */
const struct mt_group *mt_report_group(const struct mt_report *r, uint32_t id);

/* ---- locations and stacks ---------------------------------------------------- */

/* A distinct (function, file, line). Strings are interned by r: two
 * locations are the same iff their ids are equal. */
struct mt_loc {
    const char *function;  /* never NULL */
    const char *file;      /* "" when unknown */
    int32_t line;          /* 0 when unknown */
    uint8_t is_python;     /* 1 Python, 0 native, 2 a thread (--split-threads) */
    const char *object;    /* native: object basename ("" unknown); Python: "" */
};

/* Where location l is, as one string: its source file, or for native code
 * without line information its object's name. */
static inline const char *mt_loc_where(const struct mt_loc *l)
{
    return l->file[0] ? l->file : l->object;
}

/* The location with id `id` (ids start at 1; id 0 is "[no stack recorded]"). */
const struct mt_loc *mt_report_loc(const struct mt_report *r, uint32_t id);
/* s as reports show names (control characters, U+2028 and U+2029 as '?'),
 * kept as long as r: for text from the capture that is not a location,
 * such as the command line or a thread's name. */
const char *mt_report_clean(struct mt_report *r, const char *s);
uint32_t mt_report_nlocs(const struct mt_report *r);

/* The resolved stack of group g as location ids, INNERMOST first, after the
 * hybrid merge and hiding (see mt_hybrid_merge). @return the depth (>= 1: a
 * stack that resolves to nothing gives the single location 0);
 * *out points into r and stays valid until the next call. */
int mt_report_stack(struct mt_report *r, const struct mt_group *g,
                    const uint32_t **out);

/* The innermost location of g's stack (as mt_report_stack gives it) that
 * accept() takes, or its outermost when accept() takes none; resolves only
 * the native frames it has to look at. */
uint32_t mt_report_innermost(struct mt_report *r, const struct mt_group *g,
                             int (*accept)(const struct mt_loc *));

/* What exports call a frame of code compiled with an empty name. */
#define MT_UNNAMED "[unnamed]"
/* What text reports show for the file of code compiled from an empty file
 * name. */
#define MT_NO_FILE "[no file]"

/* mt_report_innermost's accept() for where a program asked for memory:
 * Python code, or native code outside the C library (and the loader). */
int mt_loc_outside_libc(const struct mt_loc *l);

/* The same for the line of Python code that asked (a C function called
 * from Python is counted at the line that called it): the innermost
 * Python frame, or mt_loc_outside_libc's where the stack has none. */
uint32_t mt_report_python_line(struct mt_report *r, const struct mt_group *g);

/* A pseudo-location naming thread index `thread` ("thread-name (tid)"),
 * for the first level of --split-threads trees. */
uint32_t mt_report_thread_loc(struct mt_report *r, uint32_t thread);

/* Writes `"strings": [...], "locs": [function, file, line, kind, ...]` (flat,
 * four numbers per location id, strings as indices, kind as is_python) for
 * the HTML reports and exports; escapes '<' when html. */
void mt_report_json_locs(struct mt_report *r, FILE *f, int html);

/* Writes `"mode": ..., "command": ..., "pid", "python", "peak_bytes",
 * "peak_time_us", "peak_rss_bytes", "allocations", "complete", "warning"`
 * (no braces; '<' escaped) for the HTML reports. */
void mt_report_json_meta(struct mt_report *r, FILE *f);

/* Why an incomplete capture stops early, for a report's heading: cut
 * short (MT_INCOMPLETE_WHY), or damaged data. */
const char *mt_incomplete_why(const struct mt_analysis *a);

/* l's function as reports show it: MT_UNNAMED for an empty name. */
const char *mt_loc_name(const struct mt_loc *l);

/* Writes "  " and where l is, as text reports show it after its function:
 * "file:line", "file", "(object)" for native code without source (Python
 * code compiled from an empty file name: MT_NO_FILE":line"), between the
 * terminal codes dim and off; nothing when nothing is known. */
void mt_loc_put_place(FILE *f, const struct mt_loc *l, const char *dim,
                      const char *off);

/* "function (file:line)", "function (file)", "function (object)" or
 * "function" into buf (cap > 0). When it does not fit, the function's name
 * is cut (at a character boundary, marked "...") before where it is.
 * @return the length of the whole text: >= cap when buf holds it cut. */
size_t mt_loc_format(const struct mt_loc *l, char *buf, size_t cap);

/* ---- the hybrid merge (pure; exposed for unit tests) ----------------------- */

enum mt_frame_kind {
    MT_K_NORMAL = 0,
    MT_K_EVAL,        /* _PyEval_EvalFrameDefault (and .cold/LTO copies) */
    MT_K_INTERNAL,    /* CPython plumbing: hidden unless --show-internals */
    MT_K_ALLOCATOR,   /* malloc & co.: dropped at the innermost end */
    MT_K_SHIM,        /* memtap's own frames: always dropped */
};

/* A frame in a report: Python or native (already symbolized; one return
 * address may give several frames when functions were inlined). */
struct mt_rframe {
    const char *function, *file, *object;
    int32_t line;
    uint8_t is_python, is_entry;
    uint8_t kind;         /* enum mt_frame_kind (native frames) */
    uint64_t ip;          /* native: the return address it came from */
};

/* Classifies a native frame by its function name and object path (either
 * may be NULL or ""). Pure. */
enum mt_frame_kind mt_classify_native(const char *function, const char *object);

/* Merges Python frames py[0..np) (innermost first, is_entry set on frames
 * that began a C-level evaluation) into native frames nat[0..nn) (innermost
 * first, kind set): the Python stack is cut after each entry frame into
 * segments; the k-th eval frame (same ip group, counted from the innermost)
 * is replaced by the k-th segment. Segments left over when there are fewer
 * eval frames go where the outermost eval frame was (or at the outer end
 * when there is none, or past the marker when the native stack was cut
 * there); eval frames left over are dropped. Shim frames are
 * dropped, allocator frames at the innermost end are dropped, internal
 * frames are dropped unless show_internals. With nn == 0 the result is py.
 * @return frames written to out[0..max). Pure. */
int mt_hybrid_merge(const struct mt_rframe *nat, int nn,
                    const struct mt_rframe *py, int np, int show_internals,
                    struct mt_rframe *out, int max);

/* ---- rows: per-location own and total ---------------------------------------- */

struct mt_row {
    uint32_t loc;
    uint64_t own_bytes, own_count, total_bytes, total_count;
    uint64_t seen;    /* internal: last stack counted into total */
};

struct mt_rows {
    struct mt_row *rows;   /* indexed by location id */
    uint32_t cap;
    uint64_t stamp;
};

/* Adds one stack (location ids, innermost first, n >= 1) weighing
 * bytes/count: own goes to stack[0], total to every distinct location of
 * the stack once. @return 0, or -1 out of memory. Zero-initialize rows
 * first; release with mt_rows_release. */
int mt_rows_add(struct mt_rows *rows, const uint32_t *stack, int n,
                uint64_t bytes, uint64_t count);
void mt_rows_release(struct mt_rows *rows);

/* Compacts rows with a non-zero total into a new array sorted by `sort`
 * (biggest first; ties by location id). *n gets the count; caller frees. */
struct mt_row *mt_rows_sorted(const struct mt_rows *rows, enum mt_sort sort,
                              uint32_t *n);

/* ---- call trees ---------------------------------------------------------------- */

struct mt_tree_node {
    uint32_t loc;              /* location id; node 0 is the root */
    uint32_t parent, first_child, next_sibling;   /* 0 = none (except root) */
    uint64_t bytes, count;     /* everything at or under this node */
    uint64_t self_bytes, self_count;   /* stacks ending here */
};

struct mt_tree {
    struct mt_tree_node *nodes; uint32_t n, cap;
    uint32_t *hash; uint32_t hcap;     /* (parent, loc) -> node */
    uint32_t last;                     /* where the last mt_tree_add ended */
};

/* Adds a stack given OUTERMOST first (path[0] is a child of the root).
 * Initialize the tree with mt_tree_init. @return 0 or -1 out of memory. */
int mt_tree_init(struct mt_tree *t);
int mt_tree_add(struct mt_tree *t, const uint32_t *path, int n,
                uint64_t bytes, uint64_t count);
/* Orders every node's children by bytes, biggest first. */
void mt_tree_sort(struct mt_tree *t);
void mt_tree_release(struct mt_tree *t);

/* Builds the tree of the groups order[0..n) (NULL: all sorted groups):
 * stacks root first, or leaf first when inverted; under a per-thread node
 * when the report is split by thread. */
int mt_report_build_tree(struct mt_report *r, struct mt_tree *t,
                         const uint32_t *order, uint32_t n, int inverted);

/* ---- output helpers ------------------------------------------------------------ */

/* Human size: "0 B", "999 B", "1.00 KiB", "12.3 MiB", "512 GiB"...
 * (binary units, three significant digits). @return buf (>= 16 bytes). */
char *mt_format_size(uint64_t bytes, char *buf, size_t cap);

/* 1 when colour escapes may be written to f: f is a TTY and NO_COLOR is
 * unset or empty. */
int mt_use_color(FILE *f);

/* Writes s as a JSON string (with quotes) to f. */
void mt_json_string(FILE *f, const char *s);
/* The same, also escaping '<' so the text can sit inside a <script>. */
void mt_json_html_string(FILE *f, const char *s);

/* Opens o->output for writing (or `fallback` when NULL; "-" is stdout).
 * Prints the error and returns NULL on failure. Close with mt_output_close,
 * which reports a write error. */
FILE *mt_output_open(const struct mt_report_opts *o, const char *fallback);
int mt_output_close(FILE *f, const char *path);
/* "memtap: wrote PATH" on stderr: where a page the user did not name went. */
void mt_say_wrote(const char *path);

/* "memtap-<kind>-<capture basename without .bin>.html" into buf, the
 * basename cut to keep the name within NAME_MAX. */
char *mt_default_output(const char *kind, const char *capture,
                        const char *ext, char *buf, size_t cap);

/* Names of the allocators in a bit mask, comma separated, into buf. */
char *mt_allocators_format(uint32_t mask, char *buf, size_t cap);

/* Writes a template (NUL-terminated), replacing each "@@NAME@@" by calling
 * fill(f, "NAME", arg). @return 0, -1 on unknown placeholder. */
int mt_write_template(FILE *f, const char *tmpl,
                      int (*fill)(FILE *f, const char *name, void *arg),
                      void *arg);

#endif
