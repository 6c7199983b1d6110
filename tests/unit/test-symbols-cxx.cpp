// C++ half of test-symbols.c: a mangled, namespaced member function whose
// return address the C test symbolizes.
#include <stdint.h>

extern "C" uintptr_t mt_test_cxx_site(int *line);

namespace mt_test {
volatile uintptr_t seen;

struct Widget {
    __attribute__((noinline)) static void poke(int)
    {
        seen = (uintptr_t)__builtin_return_address(0);
        __asm__ volatile("" ::: "memory");
    }
    __attribute__((noinline)) static uintptr_t make(int *line)
    {
        *line = __LINE__; poke(1);
        __asm__ volatile("" ::: "memory");
        return seen;
    }
};
}

extern "C" uintptr_t mt_test_cxx_site(int *line)
{
    return mt_test::Widget::make(line);
}
