/* Preloaded after memtap's shim by test_exec.py: free() of the address
 * STUCK_FREE never returns, so the calling thread sits inside memtap's free
 * hook with its event number taken and its record not written, as a thread
 * the kernel ends in the middle of a hook (an exec) would. Every other free
 * goes on to the C library's. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

#define STUCK_FREE ((void *)0x5107)

void free(void *p)
{
    static void (*next)(void *);
    if (p == STUCK_FREE)
        for (;;)
            pause();
    if (!next)
        next = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    next(p);
}
