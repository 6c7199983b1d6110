/* Scale-test generator for bench/run.py --scale: PAIRS iterations of malloc + free, i.e.
 * 2 x PAIRS allocation events, as fast as a C loop can make them.  Run under the shim
 * (memtap run build/bench/many_allocs PAIRS) it produces a capture of that many events.
 * Sizes cycle through 16..4111 B so the capture is not one repeated record.
 * Built by run.py with cc -O2 -fno-builtin (no malloc/free elision).
 */
#include <stdlib.h>

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 50000000L;
    for (long i = 0; i < pairs; i++) {
        volatile char *p = malloc(16 + (size_t)(i & 4095));
        if (!p) return 1;
        p[0] = (char)i;
        free((void *)p);
    }
    return 0;
}
