/* preload/unwind.c against libunwind's unw_backtrace, which the shim used
 * alone before: from the same frame, both must give the same addresses, or
 * the fast path must give up (-1). Built with -fomit-frame-pointer, so most
 * frames find their CFA from rsp and the ones with variable-length arrays
 * from rbp, and with a layout table of 16 slots, so it grows. */
#define CHECK_SEED 0x5deece66dull
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"
#include "preload/unwind.h"

#define MAXF 300

static volatile int sink;
static int gave_up;

/* Unwinds here both ways; skip 1 drops this frame, so both start at the
 * return address into the caller. */
__attribute__((noinline)) static void compare(int max, const char *what)
{
    uintptr_t ours[MAXF];
    void *theirs[MAXF + 1];
    int n = mt_unwind_backtrace(ours, max, 1);
    int m = unw_backtrace(theirs, max + 1) - 1;
    if (n < 0) {
        gave_up++;
        return;
    }
    CHECK(n == m, "%s: %d frames, libunwind %d", what, n, m);
    for (int i = 0; i < n && i < m; i++)
        CHECK(ours[i] == (uintptr_t)theirs[i + 1], "%s: frame %d: %#lx, libunwind %p",
              what, i, (unsigned long)ours[i], theirs[i + 1]);
    sink++;
}

/* Return addresses in different functions and at different depths; the
 * array keeps a frame whose CFA comes from rbp in the chain. */
__attribute__((noinline)) static void recurse(int depth, int max, int vla)
{
    if (depth == 0) {
        compare(max, "recursion");
        return;
    }
    if (vla && depth % 3 == 0) {
        volatile char buf[16 + depth % 7 * 8];
        buf[0] = (char)depth;
        recurse(depth - 1, max, vla);
        sink += buf[0];
        return;
    }
    recurse(depth - 1, max, vla);
    sink++;
}

/* 64 call sites: 64 new return addresses for the table. */
#define SITE(i) __attribute__((noinline)) static void site##i(void) { compare(MAXF, "site"); sink++; }
#define SITES8(i) SITE(i##0) SITE(i##1) SITE(i##2) SITE(i##3) SITE(i##4) SITE(i##5) SITE(i##6) SITE(i##7)
SITES8(1) SITES8(2) SITES8(3) SITES8(4) SITES8(5) SITES8(6) SITES8(7) SITES8(8)
#define REF8(i) site##i##0, site##i##1, site##i##2, site##i##3, site##i##4, site##i##5, site##i##6, site##i##7
static void (*const sites[64])(void) = {REF8(1), REF8(2), REF8(3), REF8(4),
                                        REF8(5), REF8(6), REF8(7), REF8(8)};

/* Twelve call sites no other test reaches: each run through the plugin
 * below starts with a table miss, which is when unloads are noticed. */
static void (*plugin)(void (*)(void));
static void from_plugin(void) { compare(MAXF, "plugin"); }
#define LATE(i) __attribute__((noinline)) static void late##i(void) { plugin(from_plugin); sink++; }
LATE(0) LATE(1) LATE(2) LATE(3) LATE(4) LATE(5) LATE(6) LATE(7) LATE(8) LATE(9) LATE(10) LATE(11)
static void (*const late[12])(void) = {late0, late1, late2, late3, late4, late5,
                                       late6, late7, late8, late9, late10, late11};

static void *worker(void *arg)
{
    uint64_t x = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull | 1;
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (x & 1)
            sites[x >> 1 & 63]();
        else
            recurse((int)((x >> 8) % 120), MAXF, (int)(x >> 4) & 1);
    }
    return NULL;
}

/* A frame whose unwind table lies: its CFA 1 GiB further out than it is.
 * Following it would read far past the thread's stack. */
void bad_frame(void (*fn)(void));
__asm__(".text\n"
        ".globl bad_frame\n"
        ".type bad_frame, @function\n"
        "bad_frame:\n"
        ".cfi_startproc\n"
        "    subq $8, %rsp\n"
        "    .cfi_def_cfa_offset 0x40000010\n"
        "    call *%rdi\n"
        "    addq $8, %rsp\n"
        "    .cfi_def_cfa_offset 8\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size bad_frame, .-bad_frame\n");

/* The same lie, 128 KiB: past a small thread stack, into memory that is
 * not readable (see lying_thread). */
void bad_frame_near(void (*fn)(void));
__asm__(".text\n"
        ".globl bad_frame_near\n"
        ".type bad_frame_near, @function\n"
        "bad_frame_near:\n"
        ".cfi_startproc\n"
        "    subq $8, %rsp\n"
        "    .cfi_def_cfa_offset 0x20010\n"
        "    call *%rdi\n"
        "    addq $8, %rsp\n"
        "    .cfi_def_cfa_offset 8\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size bad_frame_near, .-bad_frame_near\n");

static int below_bad = -2;
static uintptr_t below_bad_ips[MAXF];

__attribute__((noinline)) static void above_bad_frame(void)
{
    below_bad = mt_unwind_backtrace(below_bad_ips, MAXF, 0);
    sink++;
}

/* The walk bounded by an outer frame's address: the stack it gives is the
 * full one cut where frames would be read at or above that address. */
static uintptr_t bound_at;

__attribute__((noinline)) static void bounded(int depth, int mark)
{
    volatile char here = 0;
    if (depth == mark)
        bound_at = (uintptr_t)&here;
    if (depth > 0) {
        bounded(depth - 1, mark);
        sink += here;
        return;
    }
    uintptr_t full[MAXF], cut[MAXF];
    int n = mt_unwind_backtrace(full, MAXF, 0);
    int all = mt_unwind_backtrace_below(cut, MAXF, 0, 0);
    CHECK(all == n, "unbounded: %d frames, bounded by the stack %d", all, n);
    int k = mt_unwind_backtrace_below(cut, MAXF, 0, bound_at);
    CHECK(k > 5 && k < n - 10, "bounded at frame %d of 40: %d of %d frames", mark, k, n);
    /* [0] is this function's pc at each call */
    for (int i = 1; i < k && i < n; i++)
        CHECK(cut[i] == full[i], "bounded: frame %d differs", i);
}

static void *lying_thread(void *arg)
{
    (void)arg;
    bad_frame_near(above_bad_frame);
    return NULL;
}

/* A thread on a 64 KiB stack of ours with 1 MiB of unreadable memory above
 * it: the walk must stop at the thread's own stack (glibc's descriptor sits
 * at its top), not at the main thread's. */
static void lying_frame_in_a_thread(void)
{
    size_t stack = 64 << 10, above = 1 << 20;
    char *p = mmap(NULL, stack + above, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED && mprotect(p, stack, PROT_READ | PROT_WRITE) == 0, "mmap");
    pthread_attr_t a;
    pthread_t t;
    pthread_attr_init(&a);
    pthread_attr_setstack(&a, p, stack);
    below_bad = -2;
    CHECK(pthread_create(&t, &a, lying_thread, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    pthread_attr_destroy(&a);
    CHECK(below_bad == 2, "through a lying frame in a thread: %d frames, not 2", below_bad);
    munmap(p, stack + above);
}

static int in_handler_result = -2;

static void handler(int sig)
{
    uintptr_t ips[MAXF];
    (void)sig;
    in_handler_result = mt_unwind_backtrace(ips, MAXF, 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-unwind PLUGIN.so\n");
        return 2;
    }
    /* In the main thread: shallow, deep, through arrays, cut short. */
    for (int d = 0; d < 260; d += 13)
        recurse(d, MAXF, d & 1);
    for (int i = 0; i < 50; i++)
        recurse((int)(rnd() % 250), MAXF, (int)(rnd() & 1));
    recurse(200, 5, 1);
    recurse(200, 1, 0);
    recurse(3, 0, 0);
    for (int i = 0; i < 64; i++)
        sites[i]();
    CHECK(gave_up == 0, "gave up %d times on plain frames", gave_up);

    /* A bound cuts the walk; a lying unwind table ends it at the thread's
     * stack instead of reading beyond (libunwind would crash here: not
     * compared). */
    bounded(40, 20);
    bad_frame(above_bad_frame);
    CHECK(below_bad == 2, "through a lying frame: %d frames, not 2 (the function and "
          "the lying one)", below_bad);
    CHECK(below_bad_ips[0] > (uintptr_t)above_bad_frame &&
          below_bad_ips[1] > (uintptr_t)bad_frame && below_bad_ips[1] < (uintptr_t)bad_frame + 16,
          "through a lying frame: the wrong frames");

    lying_frame_in_a_thread();

    /* Threads at once, sharing and growing the table. */
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(i + 1)) == 0, "pthread_create");
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(gave_up == 0, "gave up %d times in threads", gave_up);

    /* A signal frame: described by the kernel's trampoline, which the fast
     * path leaves to libunwind. */
    signal(SIGUSR1, handler);
    raise(SIGUSR1);
    CHECK(in_handler_result == -1, "in a signal handler: %d, not -1", in_handler_result);

    /* Unloads: each one found makes a new table, the old one stays mapped;
     * after a few, the fast path hands every stack to libunwind for good. */
    int early_give_ups = -1;
    for (int i = 0; i < 12; i++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        CHECK(h, "dlopen %s: %s", argv[1], dlerror());
        if (!h)
            break;
        plugin = (void (*)(void (*)(void)))dlsym(h, "plugin_call");
        CHECK(plugin, "no plugin_call");
        if (plugin)
            late[i]();
        dlclose(h);
        if (i == 3)
            early_give_ups = gave_up;
    }
    CHECK(early_give_ups == 0, "gave up %d times after 4 unloads", early_give_ups);
    uintptr_t ips[8];
    CHECK(mt_unwind_backtrace(ips, 8, 0) == -1, "still unwinding after 12 unloads");

    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    return failures != 0;
}
