/* The interposed functions. Each one forwards to the real function and
 * reports to the tracker (preload/tracker.h); the logic lives there.
 *
 * Until the real functions are found, dlsym's own calloc is served from a
 * static bootstrap arena, whose blocks are never passed to the real free. */
/* mmap and mmap64 are both interposed: keep their names apart. */
#undef _FILE_OFFSET_BITS
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stdarg.h>
#include <pthread.h>
#include <unistd.h>

#include "../src/format.h"
#include "environ.h"
#include "limits.h"
#include "real.h"
#include "tracker.h"

#define EXPORT __attribute__((visibility("default")))

struct mt_real mt_real;

/* ---- bootstrap ------------------------------------------------------- */

static _Alignas(64) uint8_t bootstrap[64 * 1024];
static size_t bootstrap_used;
static int resolving;

static int bootstrap_owns(const void *p)
{
    return (const uint8_t *)p >= bootstrap &&
           (const uint8_t *)p < bootstrap + sizeof bootstrap;
}

static void *bootstrap_alloc(size_t size)
{
    size_t at = (__atomic_fetch_add(&bootstrap_used, (size + 15) & ~(size_t)15,
                                    __ATOMIC_RELAXED));
    if (at + size > sizeof bootstrap)
        return NULL;
    return bootstrap + at;  /* static storage: already zero */
}

void mt_real_resolve(void)
{
    if (mt_real.free)
        return;
    resolving = 1;
#define R(name) mt_real.name = (__typeof__(mt_real.name))dlsym(RTLD_NEXT, #name)
    R(malloc); R(calloc); R(realloc); R(reallocarray); R(posix_memalign);
    R(aligned_alloc); R(memalign); R(valloc); R(pvalloc);
    R(mmap); R(mmap64); R(munmap); R(mremap); R(prctl); R(pthread_setname_np);
    R(pthread_create); R(_exit); R(dlclose); R(execve); R(execvpe); R(fexecve); R(execveat);
    R(setrlimit); R(getrlimit); R(prlimit);
#undef R
    __atomic_store_n(&mt_real.free, (void (*)(void *))dlsym(RTLD_NEXT, "free"),
                     __ATOMIC_RELEASE);
    resolving = 0;
}

static inline int ready(void)
{
    if (__builtin_expect(mt_real.free != NULL, 1))
        return 1;
    if (resolving)
        return 0;
    mt_real_resolve();
    return mt_real.free != NULL;
}

/* ---- the free family ------------------------------------------------- */

EXPORT void *malloc(size_t size)
{
    if (!ready())
        return bootstrap_alloc(size);
    struct mt_thread *t = mt_enter();
    void *p = mt_real.malloc(size);
    mt_record_alloc(t, MT_A_MALLOC, p, size);
    return p;
}

EXPORT void free(void *ptr)
{
    if (ptr == NULL || bootstrap_owns(ptr))
        return;
    struct mt_thread *t = mt_enter();
    /* The number is taken before the block goes back: once freed, another
     * thread may be handed the same address and must come after us. */
    uint64_t seq = mt_order(t);
    mt_real.free(ptr);
    mt_record_free(t, seq, ptr);
}

EXPORT void *calloc(size_t n, size_t size)
{
    if (!ready())
        return bootstrap_alloc(n * size);
    struct mt_thread *t = mt_enter();
    void *p = mt_real.calloc(n, size);
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        bytes = 0;  /* the real calloc failed: nothing is recorded */
    mt_record_alloc(t, MT_A_CALLOC, p, bytes);
    return p;
}

static void *realloc_bootstrapped(void *old, size_t size)
{
    void *p = malloc(size);
    if (p && old)
        memcpy(p, old, size < (size_t)(bootstrap + sizeof bootstrap - (uint8_t *)old)
                           ? size : (size_t)(bootstrap + sizeof bootstrap - (uint8_t *)old));
    return p;
}

EXPORT void *realloc(void *old, size_t size)
{
    if (!ready())
        return bootstrap_alloc(size);
    if (bootstrap_owns(old))
        return realloc_bootstrapped(old, size);
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);  /* old may be freed inside: see free() */
    void *p = mt_real.realloc(old, size);
    mt_record_realloc(t, seq, MT_A_REALLOC, old, p, size);
    return p;
}

EXPORT void *reallocarray(void *old, size_t n, size_t size)
{
    size_t bytes;
    if (!ready() || bootstrap_owns(old)) {
        if (__builtin_mul_overflow(n, size, &bytes)) {
            errno = ENOMEM;
            return NULL;
        }
        return realloc(old, bytes);
    }
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    void *p = mt_real.reallocarray(old, n, size);
    if (__builtin_mul_overflow(n, size, &bytes))
        bytes = SIZE_MAX;  /* a failure that leaves old alone, not a free */
    mt_record_realloc(t, seq, MT_A_REALLOCARRAY, old, p, bytes);
    return p;
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (!ready())
        return ENOMEM;
    struct mt_thread *t = mt_enter();
    int rc = mt_real.posix_memalign(out, align, size);
    mt_record_alloc(t, MT_A_POSIX_MEMALIGN, rc == 0 ? *out : NULL, size);
    return rc;
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    if (!ready())
        return NULL;
    struct mt_thread *t = mt_enter();
    void *p = mt_real.aligned_alloc(align, size);
    mt_record_alloc(t, MT_A_ALIGNED_ALLOC, p, size);
    return p;
}

EXPORT void *memalign(size_t align, size_t size)
{
    if (!ready())
        return NULL;
    struct mt_thread *t = mt_enter();
    void *p = mt_real.memalign(align, size);
    mt_record_alloc(t, MT_A_MEMALIGN, p, size);
    return p;
}

EXPORT void *valloc(size_t size)
{
    if (!ready())
        return NULL;
    struct mt_thread *t = mt_enter();
    void *p = mt_real.valloc(size);
    mt_record_alloc(t, MT_A_VALLOC, p, size);
    return p;
}

EXPORT void *pvalloc(size_t size)
{
    if (!ready())
        return NULL;
    struct mt_thread *t = mt_enter();
    void *p = mt_real.pvalloc(size);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    mt_record_alloc(t, MT_A_PVALLOC, p, (size + page - 1) & ~(page - 1));
    return p;
}

/* ---- mappings -------------------------------------------------------- */

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!ready())
        return mt_raw_mmap(addr, len, prot, flags, fd, off);
    struct mt_thread *t = mt_enter();
    void *p = mt_real.mmap(addr, len, prot, flags, fd, off);
    mt_record_mmap(t, p, len, prot, flags, fd);
    return p;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!ready())
        return mt_raw_mmap(addr, len, prot, flags, fd, off);
    struct mt_thread *t = mt_enter();
    void *p = mt_real.mmap64(addr, len, prot, flags, fd, off);
    mt_record_mmap(t, p, len, prot, flags, fd);
    return p;
}

EXPORT int munmap(void *addr, size_t len)
{
    if (!ready())
        return mt_raw_munmap(addr, len);
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);  /* the range may be reused at once */
    int rc = mt_real.munmap(addr, len);
    mt_record_munmap(t, seq, addr, len, rc == 0);
    return rc;
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    if (!ready())
        return MAP_FAILED;
    struct mt_thread *t = mt_enter();
    uint64_t seq = mt_order(t);
    void *p = mt_real.mremap(old, old_len, new_len, flags, want);
    mt_record_mremap(t, seq, old, old_len, p, new_len, flags);
    return p;
}

/* ---- threads --------------------------------------------------------- */

EXPORT int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg)
{
    if (!ready())
        return EAGAIN;
    void *run_arg = arg;
    mt_start_routine run = mt_thread_create(fn, &run_arg);
    int rc = mt_real.pthread_create(thread, attr, run, run_arg);
    if (rc != 0)
        mt_thread_create_failed(run, run_arg);
    return rc;
}

EXPORT int prctl(int option, ...)
{
    va_list ap;
    va_start(ap, option);
    unsigned long a2 = va_arg(ap, unsigned long), a3 = va_arg(ap, unsigned long);
    unsigned long a4 = va_arg(ap, unsigned long), a5 = va_arg(ap, unsigned long);
    va_end(ap);
    if (!ready())
        return -1;
    int rc = mt_real.prctl(option, a2, a3, a4, a5);
    if (rc == 0 && option == PR_SET_NAME)
        mt_record_thread_name(mt_enter(), (const char *)a2);
    return rc;
}

EXPORT int pthread_setname_np(pthread_t thread, const char *name)
{
    if (!ready())
        return ENOSYS;
    int rc = mt_real.pthread_setname_np(thread, name);
    if (rc == 0 && pthread_equal(thread, pthread_self()))
        mt_record_thread_name(mt_enter(), name);
    return rc;
}

EXPORT int dlclose(void *handle)
{
    if (!ready() || !mt_real.dlclose)
        return -1;
    int rc = mt_real.dlclose(handle);
    mt_record_dlclose();
    return rc;
}

/* ---- the end --------------------------------------------------------- */

/* exit() (and main's return) is seen by the tracker's on_exit handler;
 * these end the process without it: os._exit, a forked child's end. */
static void __attribute__((noreturn)) end_now(int status)
{
    if (ready())
        mt_record_exit(status);
    if (mt_real._exit)
        mt_real._exit(status);
    for (;;)
        syscall(SYS_exit_group, status);
}

EXPORT void _exit(int status)
{
    end_now(status);
}

EXPORT void _Exit(int status)
{
    end_now(status);
}

/* ---- exec ------------------------------------------------------------ */

/* Each exec passes the environment mt_environ_for_exec gives for its own:
 * memtap's variables come back only for the process memtap run started. */

extern char **environ;

/* An exec about to be made: the environment to give it, and, for a
 * program a child starts without the shim, the limit without the shim's
 * share. exec_done puts both back when the exec returns. */
struct exec_prep {
    char *const *env;
    struct rlimit limit;
    int limited;
};

static void exec_prepare(struct exec_prep *x, char *const envp[])
{
    x->limited = mt_environ_exec_untraced() && mt_limit_exec_untraced(&x->limit);
    x->env = mt_environ_for_exec(envp);
}

static int exec_done(int rc, const struct exec_prep *x, char *const envp[])
{
    int e = errno;
    mt_environ_exec_failed(x->env, envp);
    if (x->limited)
        mt_limit_exec_failed(&x->limit);
    errno = e;
    return rc;
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    mt_real_resolve();
    struct exec_prep x;
    exec_prepare(&x, envp);
    return exec_done(mt_real.execve(path, argv, x.env), &x, envp);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    mt_real_resolve();
    struct exec_prep x;
    exec_prepare(&x, envp);
    return exec_done(mt_real.execvpe(file, argv, x.env), &x, envp);
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    mt_real_resolve();
    struct exec_prep x;
    exec_prepare(&x, envp);
    return exec_done(mt_real.fexecve(fd, argv, x.env), &x, envp);
}

EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
                    int flags)
{
    mt_real_resolve();
    if (!mt_real.execveat) {  /* a C library without it */
        errno = ENOSYS;
        return -1;
    }
    struct exec_prep x;
    exec_prepare(&x, envp);
    return exec_done(mt_real.execveat(dirfd, path, argv, x.env, flags), &x, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
    return execve(path, argv, environ);
}

EXPORT int execvp(const char *file, char *const argv[])
{
    return execvpe(file, argv, environ);
}

/* The execl family's arguments as an argv, up to its NULL; then, where
 * envp is not NULL, *envp gets the argument after it (execle's; execl and
 * execlp have none to read). */
#define LIST_ARGV(first, argv, envp) \
    do { \
        va_list ap; \
        size_t n = 1; \
        va_start(ap, first); \
        while (va_arg(ap, const char *)) \
            n++; \
        va_end(ap); \
        argv = __builtin_alloca((n + 1) * sizeof *argv); \
        argv[0] = (char *)(first); \
        va_start(ap, first); \
        for (size_t i = 1; i <= n; i++) \
            argv[i] = va_arg(ap, char *); \
        char *const **to = (envp); \
        if (to) \
            *to = va_arg(ap, char *const *); \
        va_end(ap); \
    } while (0)

EXPORT int execl(const char *path, const char *arg, ...)
{
    char **argv;
    LIST_ARGV(arg, argv, (char *const **)NULL);
    return execve(path, argv, environ);
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
    char **argv;
    LIST_ARGV(arg, argv, (char *const **)NULL);
    return execvpe(file, argv, environ);
}

EXPORT int execle(const char *path, const char *arg, ...)
{
    char **argv;
    char *const *envp;
    LIST_ARGV(arg, argv, &envp);
    return execve(path, argv, envp);
}

/* ---- the address space limit ----------------------------------------- */

/* RLIMIT_AS is the program's for its own memory: the shim's share of the
 * address space is kept out of what it sets and reads (limits.h). */

EXPORT int setrlimit(__rlimit_resource_t resource, const struct rlimit *rl)
{
    mt_real_resolve();
    return mt_limit(0, (int)resource, rl, NULL);
}

EXPORT int getrlimit(__rlimit_resource_t resource, struct rlimit *rl)
{
    mt_real_resolve();
    return mt_limit(0, (int)resource, NULL, rl);
}

EXPORT int prlimit(pid_t pid, __rlimit_resource_t resource, const struct rlimit *new,
                   struct rlimit *old)
{
    mt_real_resolve();
    return mt_limit(pid, (int)resource, new, old);
}

/* The same functions under their 64-bit names: one layout on 64-bit
 * systems, where glibc exports both. */
_Static_assert(sizeof(struct rlimit) == sizeof(struct rlimit64), "rlimit64");

EXPORT int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *rl)
{
    return setrlimit(resource, (const struct rlimit *)rl);
}

EXPORT int getrlimit64(__rlimit_resource_t resource, struct rlimit64 *rl)
{
    return getrlimit(resource, (struct rlimit *)rl);
}

EXPORT int prlimit64(pid_t pid, __rlimit_resource_t resource, const struct rlimit64 *new,
                     struct rlimit64 *old)
{
    return prlimit(pid, resource, (const struct rlimit *)new, (struct rlimit *)old);
}
