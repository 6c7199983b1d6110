#include "format.h"

const char *mt_allocator_name(unsigned a)
{
    static const char *names[MT_A_COUNT] = {
        [MT_A_MALLOC] = "malloc", [MT_A_CALLOC] = "calloc",
        [MT_A_REALLOC] = "realloc", [MT_A_REALLOCARRAY] = "reallocarray",
        [MT_A_POSIX_MEMALIGN] = "posix_memalign",
        [MT_A_ALIGNED_ALLOC] = "aligned_alloc", [MT_A_MEMALIGN] = "memalign",
        [MT_A_VALLOC] = "valloc", [MT_A_PVALLOC] = "pvalloc",
        [MT_A_MMAP] = "mmap", [MT_A_MMAP_FILE] = "mmap_file",
        [MT_A_MMAP_RESERVE] = "mmap_reserve", [MT_A_PYMALLOC] = "pymalloc",
    };
    return a < MT_A_COUNT && names[a] ? names[a] : "unknown";
}
