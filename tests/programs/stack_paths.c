/* Allocation sites reached on paths that part late and alternate, and by
 * recursion: what the shim's cache of recent native stacks must get right
 * (tests/integration/test_native_program.py, test_native_stacks_exact).
 * Every site's stack and bytes are known; the @ markers name the lines. */
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))

static void *keep[4096];
static int nkeep;

NOINLINE static void take(size_t n)
{
    keep[nkeep++] = malloc(n);      /* @take */
    __asm__ volatile("" ::: "memory");  /* no tail calls: every frame stays */
}

NOINLINE static void leaf_x(void)
{
    take(777);                      /* @leaf_x */
    __asm__ volatile("");
}

NOINLINE static void leaf_y(void)
{
    take(888);                      /* @leaf_y */
    __asm__ volatile("");
}

NOINLINE static void fork_xy(int y)
{
    if (y)
        leaf_y();                   /* @fork_y */
    else
        leaf_x();                   /* @fork_x */
    __asm__ volatile("");
}

NOINLINE static void rec(int depth)
{
    take(1000 + (size_t)depth);     /* @rec_take */
    if (depth < 40)
        rec(depth + 1);             /* @rec_rec */
    __asm__ volatile("");
}

int main(void)
{
    for (int i = 0; i < 100; i++)
        fork_xy(i & 1);             /* @alternate: x, y, x, y ... */
    rec(0);                         /* @recurse: one stack per depth, 41 */
    for (int i = 0; i < 50; i++) {
        fork_xy(i % 3 == 0);        /* @mixed: y, x, x, y ... */
        rec(38);                    /* @mixed_rec: 3 deep */
    }
    for (int i = 0; i < nkeep; i++)
        free(keep[i]);
    return 0;
}
