/* The real allocation functions, found with dlsym(RTLD_NEXT). */
#ifndef MT_REAL_H
#define MT_REAL_H

#include <pthread.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

struct mt_real {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    void *(*mmap)(void *, size_t, int, int, int, off_t);
    void *(*mmap64)(void *, size_t, int, int, int, off_t);
    int (*munmap)(void *, size_t);
    void *(*mremap)(void *, size_t, size_t, int, ...);
    int (*prctl)(int, ...);
    int (*pthread_setname_np)(pthread_t, const char *);
    int (*pthread_create)(pthread_t *, const pthread_attr_t *,
                          void *(*)(void *), void *);
    int (*dlclose)(void *);
    void (*_exit)(int);
    int (*execve)(const char *, char *const[], char *const[]);
    int (*execvpe)(const char *, char *const[], char *const[]);
    int (*fexecve)(int, char *const[], char *const[]);
    int (*execveat)(int, const char *, char *const[], char *const[], int);
    int (*setrlimit)(int, const struct rlimit *);
    int (*getrlimit)(int, struct rlimit *);
    int (*prlimit)(pid_t, int, const struct rlimit *, struct rlimit *);
};

extern struct mt_real mt_real;

/* Finds the real functions; idempotent. Called from the constructor and
 * lazily by the first hook that runs before it. */
void mt_real_resolve(void);

/* The tracker's own mappings bypass every hook. */
static inline void *mt_raw_mmap(void *addr, size_t len, int prot, int flags,
                                int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static inline int mt_raw_munmap(void *addr, size_t len)
{
    return (int)syscall(SYS_munmap, addr, len);
}

#endif
