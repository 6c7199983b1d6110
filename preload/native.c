/* Native stacks (libunwind) and the loaded-object list (dl_iterate_phdr)
 * inside the traced process; see native.h and design.md §4.
 *
 * Everything past mt_native_setup() runs inside allocation hooks: no malloc
 * of our own, no stdio, no locks of our own.  What the libraries we call do
 * underneath is noted where it matters. */
#define _GNU_SOURCE
#define UNW_LOCAL_ONLY
#include "../src/format.h"
#include "native.h"
#include "unwind.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <unistd.h>

#include <libunwind.h>

/* Deep enough for any realistic allocation site plus the frames we drop.
 * unw_backtrace() writes void *, we hand out uintptr_t: go through a local
 * buffer rather than aliasing the caller's array. */
#define MT_UNWIND_MAX 256

/* Slots in libunwind's per-thread unwind-info cache (heaptrack uses 1024). */
#define MT_UNWIND_CACHE 1024

/* libunwind, opened with local scope rather than linked: it exports the
 * whole _Unwind_* interface, which a C++ library loaded after the shim
 * would bind to in place of libgcc's (its throws 40 times slower, the
 * destructors of a thread's forced unwind not run). Names as the header's
 * macros spell them. */
#define MT_XSTR(x) MT_STR_(x)
#define MT_STR_(x) #x
static struct {
    int (*backtrace)(void **, int);
    int (*set_caching_policy)(unw_addr_space_t, unw_caching_policy_t);
    int (*set_cache_size)(unw_addr_space_t, size_t, int);
    unw_addr_space_t *local;
} unw;

/* @return 0, or -1 when libunwind is not there (no native stacks). */
static int unwind_open(void)
{
    void *h = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return -1;
    unw.backtrace = (int (*)(void **, int))dlsym(h, MT_XSTR(unw_backtrace));
    unw.set_caching_policy = (int (*)(unw_addr_space_t, unw_caching_policy_t))
        dlsym(h, MT_XSTR(unw_set_caching_policy));
    unw.set_cache_size = (int (*)(unw_addr_space_t, size_t, int))
        dlsym(h, MT_XSTR(unw_set_cache_size));
    unw.local = (unw_addr_space_t *)dlsym(h, MT_XSTR(unw_local_addr_space));
    return unw.backtrace && unw.set_caching_policy && unw.local ? 0 : -1;
}

/* Loader counters seen by the last mt_native_objects_each(). */
static unsigned long long seen_adds, seen_subs;
/* ELF header of the vDSO (AT_SYSINFO_EHDR), 0 when there is none. */
static uintptr_t vdso_ehdr;

/* libunwind makes a pipe when it initialises (to test addresses by
 * writing them to it, which unw_backtrace never does). Made first thing
 * in a program it would hold descriptors 3 and 4, which the program
 * counts on getting from its first open: while libunwind starts, /dev/null
 * holds every free descriptor below this one (taken lowest first, so none
 * that another thread opens meanwhile is touched). */
#define MT_UNWIND_FD_FLOOR 512

/* Starts libunwind: its caching policy, then one backtrace, which does the
 * rest of its lazy set-up (pthread_once, its key, the first mmap'd
 * caches) here, outside any hook, not at a traced allocation while the
 * loader lock may be held. @return what unw_backtrace returned, or -1. */
static int unwind_start(void)
{
    int held[MT_UNWIND_FD_FLOOR], n = 0;
    /* Never more than half the descriptors the process may have: other
     * threads (a Tracker starts in a running program) open files too. */
    struct rlimit nofile;
    int floor = MT_UNWIND_FD_FLOOR;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur / 2 < (rlim_t)floor)
        floor = (int)(nofile.rlim_cur / 2);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    while (null >= 0 && n < floor) {
        int fd = fcntl(null, F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
            break;
        if (fd >= floor) {
            close(fd);
            break;
        }
        held[n++] = fd;
    }
    int got = -1;
    void *warm[8];
    if (unwind_open() == 0 && !unw.set_caching_policy(*unw.local, UNW_CACHE_PER_THREAD)) {
        /* Best effort: an older libunwind without resizable caches keeps
         * its default size, which only costs speed. */
        if (unw.set_cache_size)
            (void)unw.set_cache_size(*unw.local, MT_UNWIND_CACHE, 0);
        got = unw.backtrace(warm, 8);
    }
    while (n > 0)
        close(held[--n]);
    if (null >= 0)
        close(null);
    return got;
}

int mt_native_setup(void)
{
    uintptr_t warm_ips[8];
    static int started;

    mt_native_objects_forget();
    vdso_ehdr = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
    mt_unwind_know_trampolines(dlsym(RTLD_DEFAULT, "_Py_trampoline_func_start"),
                               dlsym(RTLD_DEFAULT, "_Py_trampoline_func_end"));
    if (!started && unwind_start() <= 0)
        return -1;
    started = 1;
    /* The same for the fast path's first table. */
    (void)mt_unwind_backtrace(warm_ips, 8, 0);
    return 0;
}

/* The fast path (unwind.c) answers nearly every call; unw_backtrace() is
 * the general one, for stacks with a frame the fast path cannot describe.
 *
 * What unw_backtrace() does underneath (libunwind 1.6.2, x86_64), measured
 * with a counting shim and read in src/x86_64/Gtrace.c:
 *  - its fast path keeps its own per-thread cache of frame layouts keyed by
 *    ip (2^14 slots to start, mmap'd, grown x4 when half full), whatever the
 *    caching policy; the policy set above only covers the unw_step() path;
 *  - a cache miss (first allocation from a new call site) runs unw_step(),
 *    which calls dl_iterate_phdr() and so takes the loader's write lock
 *    (recursive in glibc: fine if this thread already holds it);
 *  - a thread's first call mmaps its cache (through our mmap hook: the
 *    re-entry guard must be set) and calls pthread_setspecific; when the
 *    shim is dlopen'ed, libunwind's 16 bytes of TLS are dynamic TLS and the
 *    first touch may malloc inside __tls_get_addr (guard again);
 *  - no malloc on these paths in practice (0 re-entries seen); libunwind
 *    only mallocs for .gnu_debugdata/.debug_frame, not used here;
 *  - the layout cache is never invalidated: if an object is dlclose'd and
 *    another one later maps code at the same addresses, stale layouts can
 *    misdirect the walk.  NEEDSWORK: fall back to an unw_step() loop after
 *    mt_native_objects_changed() sees dlpi_subs move, if that bites.
 *  - not async-signal-safe on a miss (lock, mmap); allocating in a signal
 *    handler is undefined anyway.
 * Cost here: ~60 ns + ~8 ns per frame with a warm cache.
 *
 * A function of its own so that its buffer is not in every traced call's
 * stack (2 KiB: a coroutine's small stack overflowed). noinline: `skip`
 * counts frames; +2: unw_backtrace's first entries are the pcs in this
 * function and in mt_native_backtrace. */
__attribute__((noinline))
static int libunwind_backtrace(uintptr_t *ips, int max, int skip)
{
    void *buf[MT_UNWIND_MAX];
    int want = max + skip + 2;
    int capped = want > MT_UNWIND_MAX;
    if (capped)
        want = MT_UNWIND_MAX;
    int n = unw.backtrace(buf, want);
    int full = n == want;
    n -= skip + 2;
    if (n <= 0)
        return 0;
    if (n > max)
        n = max;
    for (int i = 0; i < n; i++)
        ips[i] = (uintptr_t)buf[skip + 2 + i];
    if (capped && full)  /* it goes on past our buffer: say so, as the fast path's caller does */
        ips[n - 1] = MT_NATIVE_CUT;
    return n;
}

/* noinline, and no tail call below: `skip` counts frames, so this one
 * must be a real frame. */
__attribute__((noinline))
int mt_native_backtrace(uintptr_t *ips, int max, int skip)
{
    if (max <= 0)
        return 0;
    if (skip < 0)
        skip = 0;
    /* The fast path drops its own frame, this one and skip more. */
    int n = mt_unwind_backtrace(ips, max, skip + 1);
    if (n < 0) {
        n = libunwind_backtrace(ips, max, skip);
        __asm__ volatile("" ::: "memory");
    }
    return n;
}

/* ---- loaded objects ---------------------------------------------------- */

/* dlpi_adds/dlpi_subs exist since glibc 2.4; still check the size the
 * loader passes, as the dl_iterate_phdr contract asks. */
#define HAS_COUNTERS(size) \
    ((size) >= offsetof(struct dl_phdr_info, dlpi_subs) + \
               sizeof(((struct dl_phdr_info *)0)->dlpi_subs))

struct counters { unsigned long long adds, subs; int ok; };

static int read_counters(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct counters *c = arg;

    if (HAS_COUNTERS(size)) {
        c->adds = info->dlpi_adds;
        c->subs = info->dlpi_subs;
        c->ok = 1;
    }
    return 1; /* the counters are global: the first object is enough */
}

void mt_native_objects_forget(void)
{
    __atomic_store_n(&seen_adds, ~0ull, __ATOMIC_RELAXED);
    __atomic_store_n(&seen_subs, ~0ull, __ATOMIC_RELAXED);
}

/* The loader's counters of objects loaded and unloaded. */
static struct counters loader_counters(void)
{
    struct counters c = { 0, 0, 0 };

    dl_iterate_phdr(read_counters, &c);
    return c;
}

int mt_native_objects_changed(void)
{
    struct counters c = loader_counters();

    if (!c.ok)
        return 1;
    return c.adds != __atomic_load_n(&seen_adds, __ATOMIC_RELAXED) ||
           c.subs != __atomic_load_n(&seen_subs, __ATOMIC_RELAXED);
}

void mt_native_forget_unloaded(void)
{
    mt_unwind_forget();
}

unsigned long long mt_native_unloads(void)
{
    return loader_counters().subs;
}

/* True when [addr, addr+len) lies inside one PT_LOAD segment, i.e. is mapped
 * and readable for as long as the object stays loaded. */
static int in_load_segment(const struct dl_phdr_info *info, ElfW(Addr) addr,
                           ElfW(Xword) len)
{
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && addr >= ph->p_vaddr &&
            len <= ph->p_memsz && addr - ph->p_vaddr <= ph->p_memsz - len)
            return 1;
    }
    return 0;
}

/* Finds NT_GNU_BUILD_ID in the object's PT_NOTE segments, read straight from
 * its mapped image.  Notes in a segment aligned to 8 (.note.gnu.property,
 * and some linkers put the build-id there too) are padded to 8, otherwise
 * to 4. */
static void find_build_id(const struct dl_phdr_info *info,
                          struct mt_object_view *v)
{
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        size_t align, off = 0;

        if (ph->p_type != PT_NOTE || ph->p_memsz < sizeof(ElfW(Nhdr)) ||
            !in_load_segment(info, ph->p_vaddr, ph->p_memsz))
            continue;
        align = ph->p_align == 8 ? 8 : 4;
        const unsigned char *seg =
            (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
        while (ph->p_memsz - off >= sizeof(ElfW(Nhdr))) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)(seg + off);
            size_t name_off = off + sizeof(*nh);
            size_t desc_off = name_off + ((nh->n_namesz + align - 1) & ~(align - 1));
            size_t next = desc_off + ((nh->n_descsz + align - 1) & ~(align - 1));

            if (desc_off > ph->p_memsz || nh->n_descsz > ph->p_memsz - desc_off)
                break; /* malformed: stop reading this segment */
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                memcmp(seg + name_off, "GNU", 4) == 0 && nh->n_descsz > 0) {
                v->build_id = seg + desc_off;
                v->build_id_len = nh->n_descsz;
                return;
            }
            if (next <= off)
                break;
            off = next;
        }
    }
}

struct each_ctx {
    void (*fn)(const struct mt_object_view *, void *);
    void *arg;
    unsigned long long adds, subs;
    int ok;
};

static int each_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct each_ctx *ctx = arg;
    struct mt_object_view v;

    if (!ctx->ok && HAS_COUNTERS(size)) {
        ctx->adds = info->dlpi_adds;
        ctx->subs = info->dlpi_subs;
        ctx->ok = 1;
    }
    memset(&v, 0, sizeof(v));
    v.base = info->dlpi_addr;
    v.path = info->dlpi_name ? info->dlpi_name : "";
    /* glibc names the vDSO after its soname ("linux-vdso.so.1"), which is
     * no file; its program headers sit right after its ELF header. */
    if (vdso_ehdr && (uintptr_t)info->dlpi_phdr >= vdso_ehdr &&
        (uintptr_t)info->dlpi_phdr < vdso_ehdr + 4096)
        v.path = "[vdso]";
    v.path_len = strlen(v.path);
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        /* NEEDSWORK: more than 16 PT_LOADs (never seen from ld.bfd, lld
         * or gold) keeps the first 16; the rest symbolize as unknown. */
        if (v.nsegments == sizeof(v.seg) / sizeof(v.seg[0]))
            break;
        v.seg[v.nsegments].vaddr = ph->p_vaddr;
        v.seg[v.nsegments].memsz = ph->p_memsz;
        v.seg[v.nsegments].flags = ph->p_flags;
        v.nsegments++;
    }
    find_build_id(info, &v);
    ctx->fn(&v, ctx->arg);
    return 0;
}

void mt_native_objects_each(void (*fn)(const struct mt_object_view *, void *),
                            void *arg)
{
    struct each_ctx ctx = { fn, arg, 0, 0, 0 };

    /* Here too, not only in setup: the collector may list objects before
     * it decides whether to unwind. */
    if (!vdso_ehdr)
        vdso_ehdr = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
    dl_iterate_phdr(each_object, &ctx);
    if (ctx.ok) {
        __atomic_store_n(&seen_adds, ctx.adds, __ATOMIC_RELAXED);
        __atomic_store_n(&seen_subs, ctx.subs, __ATOMIC_RELAXED);
    }
}
