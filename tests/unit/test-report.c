/* Unit test for the pure helpers of reader/report.c: size formatting,
 * native frame classification, the hybrid Python/native merge on synthetic
 * stacks, per-location own/total rows, call trees and option parsing.
 * Exit 0 on success; prints each failure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../reader/report.h"
#include "../../reader/symbols-ahead.h"
#include "../../src/capture.h"

static int failures;

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) { \
            failures++; \
            fprintf(stderr, "%s:%d: failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
        } \
    } while (0)

static void test_size(void)
{
    static const struct { unsigned long long v; const char *s; } cases[] = {
        {0, "0 B"}, {1, "1 B"}, {1023, "1023 B"}, {1024, "1.00 KiB"},
        {1536, "1.50 KiB"}, {10 * 1024, "10.0 KiB"}, {100 * 1024, "100 KiB"},
        {1023 * 1024, "1023 KiB"}, {1024 * 1024 - 1, "1.00 MiB"},
        {50ull << 20, "50.0 MiB"}, {(50ull << 20) + 1, "50.0 MiB"},
        {3ull << 30, "3.00 GiB"}, {5ull << 40, "5.00 TiB"},
        {18446744073709551615ull, "16.0 EiB"},
    };
    char buf[32];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mt_format_size(cases[i].v, buf, sizeof buf);
        CHECK(!strcmp(buf, cases[i].s), "%llu gave '%s', want '%s'", cases[i].v, buf,
              cases[i].s);
    }
}

static void test_classify(void)
{
    CHECK(mt_classify_native("_PyEval_EvalFrameDefault", "/usr/lib/libpython3.11.so.1.0") == MT_K_EVAL, "eval");
    CHECK(mt_classify_native("_PyEval_EvalFrameDefault.cold", "/usr/bin/python3.11") == MT_K_EVAL, "cold");
    CHECK(mt_classify_native("_PyEval_EvalFrameDefault.lto_priv.0", "") == MT_K_EVAL, "lto");
    CHECK(mt_classify_native("_PyEval_Vector", "/usr/bin/python3.11") == MT_K_INTERNAL, "_PyEval_Vector");
    CHECK(mt_classify_native("PyObject_Vectorcall", "/usr/bin/python3.11") == MT_K_INTERNAL, "vectorcall");
    CHECK(mt_classify_native("_PyFunction_Vectorcall", "libpython3.12.so") == MT_K_INTERNAL, "fn vectorcall");
    CHECK(mt_classify_native("method_vectorcall_NOARGS", "/usr/bin/python3.11") == MT_K_INTERNAL, "method_vectorcall");
    CHECK(mt_classify_native("_PyObject_Malloc", "/usr/bin/python3.11") == MT_K_INTERNAL, "_Py* in python");
    CHECK(mt_classify_native("_PyObject_Malloc", "/x/_multiarray_umath.so") == MT_K_NORMAL, "_Py* elsewhere");
    CHECK(mt_classify_native("method_vectorcall", "/x/numpy.so") == MT_K_NORMAL, "static name elsewhere");
    CHECK(mt_classify_native("PyArray_NewFromDescr", "/x/_multiarray_umath.so") == MT_K_NORMAL, "numpy");
    CHECK(mt_classify_native("malloc", "/lib/x86_64-linux-gnu/libc.so.6") == MT_K_ALLOCATOR, "malloc");
    CHECK(mt_classify_native("operator new(unsigned long)", "libstdc++.so.6") == MT_K_ALLOCATOR, "new");
    CHECK(mt_classify_native("malloc", "/usr/lib/memtap/libmemtap.so") == MT_K_SHIM, "shim");
    CHECK(mt_classify_native("main", "/usr/bin/python3.11") == MT_K_INTERNAL, "python main");
    CHECK(mt_classify_native("main", "/tmp/a.out") == MT_K_NORMAL, "c main");
    CHECK(mt_classify_native(NULL, NULL) == MT_K_NORMAL, "null");
}

/* frame constructors */
static struct mt_rframe nat(const char *fn, uint64_t ip)
{
    const char *obj = strncmp(fn, "_Py", 3) && strncmp(fn, "Py", 2) ? "libapp.so" : "python3.11";
    struct mt_rframe f = { fn, "", obj, 0, 0, 0, 0, ip };
    f.kind = (uint8_t)mt_classify_native(fn, obj);
    return f;
}

static struct mt_rframe py(const char *fn, int entry)
{
    struct mt_rframe f = { fn, "x.py", "", 1, 1, (uint8_t)entry, MT_K_NORMAL, 0 };
    return f;
}

static void expect_stack(const struct mt_rframe *got, int n, const char *want, int line)
{
    char buf[1024] = "";
    for (int i = 0; i < n; i++) {
        if (i) strcat(buf, " ");
        strncat(buf, got[i].function, sizeof buf - strlen(buf) - 2);
    }
    if (strcmp(buf, want)) {
        failures++;
        fprintf(stderr, "%s:%d: merged stack\n  got:  %s\n  want: %s\n", __FILE__, line, buf, want);
    }
}

static void test_merge(void)
{
    struct mt_rframe out[64];
    int n;

    /* Python only */
    struct mt_rframe p1[] = { py("inner", 0), py("outer", 1) };
    n = mt_hybrid_merge(NULL, 0, p1, 2, 0, out, 64);
    expect_stack(out, n, "inner outer", __LINE__);

    /* native only (C program): allocator and shim dropped, libc start hidden */
    struct mt_rframe n1[] = {
        { "malloc", "", "libmemtap.so", 0, 0, 0, MT_K_SHIM, 1 },
        nat("malloc", 2), nat("make_buffer", 3), nat("main", 4), nat("__libc_start_main", 5),
    };
    n1[1].object = "libc.so.6";
    n1[1].kind = (uint8_t)mt_classify_native("malloc", "libc.so.6");
    n = mt_hybrid_merge(n1, 5, NULL, 0, 0, out, 64);
    expect_stack(out, n, "make_buffer main", __LINE__);
    n = mt_hybrid_merge(n1, 5, NULL, 0, 1, out, 64);
    expect_stack(out, n, "make_buffer main __libc_start_main", __LINE__);

    /* 3.11-style: two C-level evaluations, numpy C code in between.
     * Python (innermost first): np_ones <- f [entry] ; g <- <module> [entry] */
    struct mt_rframe p2[] = { py("ones", 0), py("f", 1), py("g", 0), py("<module>", 1) };
    struct mt_rframe n2[] = {
        nat("malloc", 10), nat("PyDataMem_UserNEW", 11), nat("array_new", 12),
        nat("_PyObject_MakeTpCall", 13), nat("_PyEval_EvalFrameDefault", 14),
        nat("_PyEval_Vector", 15), nat("PyObject_Call", 16), nat("call_trampoline", 17),
        nat("_PyEval_EvalFrameDefault.cold", 18), nat("PyEval_EvalCode", 19),
        nat("Py_RunMain", 20), nat("main", 21),
    };
    n2[0].object = "libc.so.6";
    n2[0].kind = MT_K_ALLOCATOR;
    n2[1].object = n2[2].object = n2[7].object = "_multiarray_umath.so";
    n2[1].kind = n2[2].kind = n2[7].kind = MT_K_NORMAL;
    n2[11].object = "python3.11";
    n2[11].kind = (uint8_t)mt_classify_native("main", "python3.11");
    n = mt_hybrid_merge(n2, 12, p2, 4, 0, out, 64);
    expect_stack(out, n, "PyDataMem_UserNEW array_new ones f call_trampoline g <module>", __LINE__);
    n = mt_hybrid_merge(n2, 12, p2, 4, 1, out, 64);
    expect_stack(out, n, "PyDataMem_UserNEW array_new _PyObject_MakeTpCall ones f "
                 "_PyEval_EvalFrameDefault _PyEval_Vector PyObject_Call call_trampoline g "
                 "<module> _PyEval_EvalFrameDefault.cold PyEval_EvalCode Py_RunMain main",
                 __LINE__);

    /* fewer eval frames than segments (unwind cut short): the rest goes
     * where the outermost eval frame was */
    struct mt_rframe n3[] = { nat("work", 30), nat("_PyEval_EvalFrameDefault", 31) };
    n = mt_hybrid_merge(n3, 2, p2, 4, 0, out, 64);
    expect_stack(out, n, "work ones f g <module>", __LINE__);

    /* more eval frames than segments: extra (outer) ones are dropped */
    struct mt_rframe p3[] = { py("f", 1) };
    struct mt_rframe n4[] = { nat("work", 40), nat("_PyEval_EvalFrameDefault", 41),
                              nat("helper", 42), nat("_PyEval_EvalFrameDefault", 43) };
    n = mt_hybrid_merge(n4, 4, p3, 1, 0, out, 64);
    expect_stack(out, n, "work f helper", __LINE__);

    /* the native stack cut at its outer end (512 frames): the outer
     * segments, whose evaluations were cut off, go past the marker */
    struct mt_rframe n4c[] = { nat("work", 45), nat("_PyEval_EvalFrameDefault", 46),
                               nat("helper", 47), nat(MT_CUT_NAME, MT_NATIVE_CUT) };
    n = mt_hybrid_merge(n4c, 4, p2, 4, 0, out, 64);
    expect_stack(out, n, "work ones f helper [deeper frames not recorded] g <module>", __LINE__);

    /* no eval frame recognised (stripped interpreter): Python at the outer end */
    struct mt_rframe n5[] = { nat("work", 50), nat("0x1234", 51) };
    n = mt_hybrid_merge(n5, 2, p2, 4, 0, out, 64);
    expect_stack(out, n, "work 0x1234 ones f g <module>", __LINE__);

    /* inlined frames share an ip: an eval group replaced as a whole */
    struct mt_rframe n6[] = { nat("work", 60), nat("_PyObject_VectorcallTstate", 61),
                              nat("_PyEval_EvalFrameDefault", 61), nat("main", 62) };
    n6[1].object = n6[2].object = "python3.11";
    n6[1].kind = (uint8_t)mt_classify_native(n6[1].function, "python3.11");
    n = mt_hybrid_merge(n6, 4, p3, 1, 0, out, 64);
    expect_stack(out, n, "work f main", __LINE__);

    /* output bounded by max */
    n = mt_hybrid_merge(n2, 12, p2, 4, 0, out, 3);
    CHECK(n == 3, "max: %d", n);
}

static void test_rows(void)
{
    struct mt_rows rows = {0};
    /* locations: 1 <module>, 2 keep, 3 churn, 4 rec */
    uint32_t s1[] = { 2, 1 };          /* keep <- <module> */
    uint32_t s2[] = { 3, 1 };          /* churn <- <module> */
    uint32_t s3[] = { 4, 4, 4, 1 };    /* recursion: counted once in total */
    CHECK(mt_rows_add(&rows, s1, 2, 50, 1) == 0, "add");
    CHECK(mt_rows_add(&rows, s2, 2, 20, 10) == 0, "add");
    CHECK(mt_rows_add(&rows, s3, 4, 5, 2) == 0, "add");
    CHECK(mt_rows_add(&rows, s2, 2, 1, 1) == 0, "add");
    CHECK(rows.rows[1].own_bytes == 0 && rows.rows[1].total_bytes == 76, "module %llu",
          (unsigned long long)rows.rows[1].total_bytes);
    CHECK(rows.rows[1].total_count == 14, "module count");
    CHECK(rows.rows[2].own_bytes == 50 && rows.rows[2].total_bytes == 50, "keep");
    CHECK(rows.rows[3].own_bytes == 21 && rows.rows[3].own_count == 11, "churn");
    CHECK(rows.rows[4].own_bytes == 5 && rows.rows[4].total_bytes == 5 &&
          rows.rows[4].total_count == 2, "recursion %llu",
          (unsigned long long)rows.rows[4].total_bytes);

    uint32_t n;
    struct mt_row *s = mt_rows_sorted(&rows, MT_S_OWN, &n);
    CHECK(n == 4, "n %u", n);
    CHECK(n == 4 && s[0].loc == 2 && s[1].loc == 3 && s[2].loc == 4 && s[3].loc == 1,
          "own order");
    free(s);
    s = mt_rows_sorted(&rows, MT_S_TOTAL, &n);
    CHECK(n == 4 && s[0].loc == 1 && s[1].loc == 2, "total order");
    free(s);
    s = mt_rows_sorted(&rows, MT_S_COUNT, &n);
    CHECK(n == 4 && s[0].loc == 3, "count order");
    free(s);
    mt_rows_release(&rows);
}

static void test_tree(void)
{
    struct mt_tree t;
    CHECK(mt_tree_init(&t) == 0, "init");
    uint32_t a[] = { 1, 2 }, b[] = { 1, 3 }, c[] = { 1, 2, 4 };
    mt_tree_add(&t, a, 2, 10, 1);
    mt_tree_add(&t, b, 2, 30, 1);
    mt_tree_add(&t, c, 3, 5, 1);
    /* many siblings to force the hash to grow */
    for (uint32_t i = 100; i < 5000; i++) {
        uint32_t d[] = { 1, i };
        mt_tree_add(&t, d, 2, 0, 1);
    }
    mt_tree_sort(&t);
    CHECK(t.nodes[0].bytes == 45, "root %llu", (unsigned long long)t.nodes[0].bytes);
    uint32_t m = t.nodes[0].first_child;
    CHECK(t.nodes[m].loc == 1 && t.nodes[m].bytes == 45 && t.nodes[m].next_sibling == 0, "module");
    uint32_t k = t.nodes[m].first_child;
    CHECK(t.nodes[k].loc == 3 && t.nodes[k].bytes == 30, "biggest first");
    k = t.nodes[k].next_sibling;
    CHECK(t.nodes[k].loc == 2 && t.nodes[k].bytes == 15 && t.nodes[k].self_bytes == 10, "keep");
    CHECK(t.n == 1 + 4 + 4900, "nodes %u", t.n);
    mt_tree_release(&t);
}

static void test_args(void)
{
    struct mt_report_opts o;
    unsigned all = MT_O_METRIC | MT_O_ROWS | MT_O_SORT | MT_O_JSON | MT_O_OUTPUT | MT_O_SPLIT;
    char *a1[] = { "summary", "x.bin", "--temporary", "3", "-n", "5", "--sort=total", "--json" };
    CHECK(mt_report_parse_args(8, a1, all, "u", &o) == -1, "parse");
    CHECK(o.metric == MT_M_TEMPORARY && o.temporary_n == 3 && o.rows == 5 &&
          o.sort == MT_S_TOTAL && o.json && !strcmp(o.file, "x.bin"), "values");
    char *a2[] = { "summary", "--temporary", "x.bin" };
    CHECK(mt_report_parse_args(3, a2, all, "u", &o) == -1 && o.temporary_n == 1 &&
          !strcmp(o.file, "x.bin"), "optional N");
    char *a3[] = { "tree", "x.bin", "--json" };
    fprintf(stderr, "(a usage error is expected next)\n");
    CHECK(mt_report_parse_args(3, a3, MT_O_METRIC, "u", &o) == 2, "not allowed");
    char *a4[] = { "tree", "--leaks", "--temporary", "x.bin" };
    fprintf(stderr, "(a usage error is expected next)\n");
    CHECK(mt_report_parse_args(4, a4, all, "u", &o) == 2, "exclusive");
}

/* Predicates for test_innermost: what stats takes, everything, nothing,
 * Python only, all but eval frames, an arbitrary half of the functions. */
static int take_outside_libc(const struct mt_loc *l)
{
    return l->is_python || !l->object || strncmp(l->object, "libc.so", 7);
}
static int take_all(const struct mt_loc *l) { (void)l; return 1; }
static int take_none(const struct mt_loc *l) { (void)l; return 0; }
static int take_python(const struct mt_loc *l) { return l->is_python; }
static int take_not_eval(const struct mt_loc *l)
{
    return strncmp(l->function, "_PyEval_", 8) != 0;
}
static int take_half(const struct mt_loc *l)
{
    unsigned h = 5381;
    for (const char *p = l->function; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return (h >> 3) & 1;
}

/* Functions whose names the classifier knows: the synthetic stacks below
 * return into them (their addresses resolve through this binary's DWARF). */
__attribute__((noinline)) void mt_hook_fake(void) { __asm__ volatile(""); }
__attribute__((noinline)) void _PyEval_EvalFrameDefault_fake(void) { __asm__ volatile(""); }
__attribute__((noinline)) void PyEval_fake_internal(void) { __asm__ volatile(""); }
__attribute__((noinline)) void _Znwm_fake_allocator(void) { __asm__ volatile(""); }
__attribute__((noinline)) void plain_one(void) { __asm__ volatile(""); }
__attribute__((noinline)) void plain_two(void) { __asm__ volatile(""); }

static int add_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct mt_writer *w = arg;
    uint64_t seg[64];
    uint32_t n = 0;
    for (int i = 0; i < info->dlpi_phnum && n < 32; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD) {
            seg[2 * n] = info->dlpi_phdr[i].p_vaddr;
            seg[2 * n + 1] = info->dlpi_phdr[i].p_memsz;
            n++;
        }
    char exe[4096];
    const char *path = info->dlpi_name;
    if (!path[0]) {
        ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[k > 0 ? k : 0] = 0;
        path = exe;
    }
    struct mt_record r = {.tag = MT_T_OBJECT};
    r.u.object.path = path;
    r.u.object.base = info->dlpi_addr;
    r.u.object.nseg = n;
    r.u.object.seg = seg;
    CHECK(mt_writer_add(w, &r) == MT_OK, "OBJECT %s", path);
    return 0;
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* A native capture of random stacks over the frames the merge treats
 * differently: shim, eval, internal, allocator, plain, a C library function,
 * repeated return addresses; Python stacks with and without entry frames. */
static void write_synthetic(const char *path)
{
    uint64_t ips[] = {
        (uint64_t)(uintptr_t)mt_hook_fake + 1, (uint64_t)(uintptr_t)_PyEval_EvalFrameDefault_fake + 1,
        (uint64_t)(uintptr_t)PyEval_fake_internal + 1,
        (uint64_t)(uintptr_t)_Znwm_fake_allocator + 1, (uint64_t)(uintptr_t)plain_one + 1,
        (uint64_t)(uintptr_t)plain_two + 1, (uint64_t)(uintptr_t)dlsym(RTLD_DEFAULT, "labs") + 1,
        (uint64_t)(uintptr_t)dlsym(RTLD_DEFAULT, "qsort") + 1,
    };
    const size_t nip = sizeof ips / sizeof *ips;
    struct mt_header h = {.flags = MT_HF_NATIVE, .pid = 1, .command = "synthetic"};
    struct mt_writer *w;
    unlink(path);
    if (mt_writer_open(path, 1, &h, &w) != MT_OK) {
        CHECK(0, "cannot write %s", path);
        return;
    }
    struct mt_record r = {.tag = MT_T_PROGRAM};
    r.u.program.python_version = "3.11.0";
    mt_writer_add(w, &r);
    dl_iterate_phdr(add_object, w);
    static const char *const names[] = {"f", "g", "h"};
    for (uint32_t c = 1; c <= 3; c++) {
        r = (struct mt_record){.tag = MT_T_CODE};
        r.u.code.id = c;
        r.u.code.firstlineno = 1;
        r.u.code.name = names[c - 1];
        r.u.code.qualname = "";
        r.u.code.filename = "x.py";
        mt_writer_add(w, &r);
    }
    uint32_t pynodes = 0, natnodes = 0;
    for (uint32_t g = 0; g < 3000; g++) {
        /* each stack gets its own nodes, outermost first */
        uint32_t py = 0, native = 0, depth = (uint32_t)(rnd() % 6);
        for (uint32_t i = 0; i < depth; i++) {
            r = (struct mt_record){.tag = MT_T_PYNODE};
            r.u.node.id = ++pynodes;
            r.u.node.parent = py;
            r.u.node.a = 1 + rnd() % 3;
            r.u.node.b = 1 + (uint32_t)(rnd() % 50);
            r.u.node.flags = rnd() % 3 ? 0 : MT_PYF_ENTRY;
            mt_writer_add(w, &r);
            py = r.u.node.id;
        }
        depth = (uint32_t)(rnd() % 9);
        uint64_t last = 0;
        for (uint32_t i = 0; i < depth; i++) {
            r = (struct mt_record){.tag = MT_T_NATIVENODE};
            r.u.node.id = ++natnodes;
            r.u.node.parent = native;
            r.u.node.a = last && rnd() % 4 == 0 ? last : ips[rnd() % nip];  /* recursion */
            last = r.u.node.a;
            mt_writer_add(w, &r);
            native = r.u.node.id;
        }
        r = (struct mt_record){.tag = MT_T_ALLOC, .thread = 1};
        r.u.ev.allocator = MT_A_MALLOC;
        r.u.ev.addr = 0x100000 + 64 * (uint64_t)g;
        r.u.ev.size = g + 1;
        r.u.ev.py_stack = py;
        r.u.ev.native_stack = native;
        CHECK(mt_writer_add(w, &r) == MT_OK, "ALLOC");
    }
    struct mt_trailer t = {.events = 3000};
    CHECK(mt_writer_close(w, &t) == MT_OK, "close %s", path);
}

/* mt_report_innermost gives what a scan of the whole stack gives: on
 * synthetic stacks over every kind of frame, and on real captures (their
 * frames resolved against this machine's files: whatever they resolve to,
 * both ways must agree). */
static void test_innermost(const char *data)
{
    char synthetic[64];
    snprintf(synthetic, sizeof synthetic, "/tmp/memtap-test-report-%d.bin", (int)getpid());
    write_synthetic(synthetic);
    char real[3][4096];
    static const char *const captures[] = {"format-v2-native.bin", "format-v2.bin",
                                           "format-v1.bin"};
    const char *paths[4] = {synthetic, real[0], real[1], real[2]};
    for (int c = 0; c < 3; c++)
        snprintf(real[c], sizeof real[c], "%s/%s", data, captures[c]);
    int (*const takes[])(const struct mt_loc *) = {take_outside_libc, take_all, take_none,
                                                   take_python, take_not_eval, take_half};
    for (int c = 0; c < 4; c++) {
        for (int internals = 0; internals < 2; internals++) {
            struct mt_report_opts o = {.rows = -1, .show_internals = internals,
                                       .file = paths[c]};
            struct mt_report *r = mt_report_open(&o);
            CHECK(r != NULL, "%s", paths[c]);
            if (!r)
                continue;
            const struct mt_analysis *a = mt_report_analysis(r);
            CHECK(a->ngroups > 300, "%s: %u groups", paths[c], a->ngroups);
            for (size_t t = 0; t < sizeof takes / sizeof *takes; t++) {
                int differ = 0;
                /* the walk first, so that it meets return addresses unresolved */
                for (uint32_t i = 0; i < a->ngroups; i++) {
                    uint32_t got = mt_report_innermost(r, &a->groups[i], takes[t]);
                    const uint32_t *stack;
                    int depth = mt_report_stack(r, &a->groups[i], &stack), k = 0;
                    while (k + 1 < depth && !takes[t](mt_report_loc(r, stack[k])))
                        k++;
                    differ += got != stack[k];
                }
                CHECK(!differ, "%s, internals %d, predicate %zu: %d groups differ",
                      paths[c], internals, t, differ);
            }
            mt_report_free(r);
        }
    }
    unlink(synthetic);
}

static int same_text(const char *x, const char *y)
{
    return x == y || (x && y && !strcmp(x, y));
}

/* The symbolizer mt_ahead_finish hands over after loading objects on its
 * thread during the analysis resolves every return address of the capture
 * as one built after it does; and with none of that (no state, the
 * analysis failed) it still gives the one built after, or none. */
static void test_ahead(const char *data)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/format-v2-native.bin", data);
    struct mt_analysis_opts o = {0}, plain = {0};
    struct mt_ahead *w = mt_ahead_new();
    CHECK(w != NULL, "mt_ahead_new");
    o.on_native = mt_ahead_record;
    o.on_native_arg = w;
    struct mt_analysis *a = NULL, *b = NULL;
    CHECK(mt_analyze(path, &o, &a, NULL) == MT_OK, "%s", path);
    CHECK(mt_analyze(path, &plain, &b, NULL) == MT_OK, "%s", path);
    if (!a || !b)
        return;
    CHECK(a->nnativenodes > 1000 && a->nobjects > 3, "%u nodes, %u objects",
          a->nnativenodes, a->nobjects);
    struct mt_symbolizer *ahead = mt_ahead_finish(w, a), *after = mt_ahead_finish(NULL, b);
    CHECK(ahead && after, "symbolizers");
    int differ = 0, named = 0;
    for (uint32_t i = 1; ahead && after && i < a->nnativenodes; i++) {
        struct mt_symbol x[16], y[16];
        int n = mt_symbolizer_resolve(ahead, a->nativenodes[i].a, a->nativenodes[i].objects, x, 16);
        int m = mt_symbolizer_resolve(after, a->nativenodes[i].a, a->nativenodes[i].objects, y, 16);
        if (n != m) {
            differ++;
            continue;
        }
        for (int k = 0; k < n && k < 16; k++) {
            named += x[k].function != NULL;
            differ += !same_text(x[k].function, y[k].function) ||
                      !same_text(x[k].file, y[k].file) || x[k].line != y[k].line ||
                      !same_text(x[k].object, y[k].object) ||
                      x[k].address != y[k].address || x[k].flags != y[k].flags;
        }
    }
    CHECK(!differ, "%d return addresses resolve differently", differ);
    CHECK(named > 0, "no function named");
    mt_symbolizer_free(ahead);
    mt_symbolizer_free(after);
    CHECK(mt_ahead_finish(mt_ahead_new(), NULL) == NULL, "failed analysis");
    mt_analysis_free(a);
    mt_analysis_free(b);
}

static void test_misc(void)
{
    char buf[128];
    struct mt_loc l = { "f", "x.py", 3, 1, "" };
    CHECK(mt_loc_format(&l, buf, sizeof buf) == 10 && !strcmp(buf, "f (x.py:3)"), "%s", buf);
    struct mt_loc n = { "0x1a2b", "", 0, 0, "libfoo.so" };
    mt_loc_format(&n, buf, sizeof buf);
    CHECK(!strcmp(buf, "0x1a2b (libfoo.so)"), "%s", buf);
    /* compile(src, "", "exec"): no name, no file, but a line */
    struct mt_loc e = { "", "", 2, 1, "" };
    mt_loc_format(&e, buf, sizeof buf);
    CHECK(!strcmp(buf, MT_UNNAMED " (" MT_NO_FILE ":2)"), "%s", buf);
    /* a name too long for the buffer gives way, at a character boundary,
     * and where it is stays whole */
    struct mt_loc g = { "f\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", "y.py", 12, 1, "" };
    char small[16];
    CHECK(mt_loc_format(&g, small, sizeof small) == 21, "%zu", strlen(small));
    CHECK(!strcmp(small, "f... (y.py:12)"), "%s", small);
    /* not even where it is fits: cut whole characters */
    struct mt_loc h = { "f", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9.py", 1, 1, "" };
    CHECK(mt_loc_format(&h, small, sizeof small) == 23, "%s", small);
    CHECK(!strcmp(small, "f (\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"), "%s", small);
    CHECK(!strcmp(mt_default_output("flamegraph", "/tmp/run.bin", "html", buf, sizeof buf),
                  "memtap-flamegraph-run.html"), "%s", buf);
    mt_allocators_format((1u << MT_A_MALLOC) | (1u << MT_A_MMAP), buf, sizeof buf);
    CHECK(!strcmp(buf, "malloc,mmap"), "%s", buf);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-report DATA_DIR (tests/data)\n");
        return 2;
    }
    test_size();
    test_classify();
    test_merge();
    test_rows();
    test_tree();
    test_args();
    test_misc();
    test_innermost(argv[1]);
    test_ahead(argv[1]);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("test-report: all passed\n");
    return 0;
}
