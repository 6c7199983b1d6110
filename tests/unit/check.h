/* What the C unit tests share: CHECK (counts every failure, prints the
 * first 40: one bug can fail thousands of checks) and a xorshift64
 * generator whose seed the test sets before including this:
 *     #define CHECK_SEED 0x2545f4914f6cdd1dull
 */
#ifndef MT_TEST_CHECK_H
#define MT_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

static int failures;

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) { \
            if (++failures <= 40) { \
                fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__); \
                fputc('\n', stderr); \
            } \
        } \
    } while (0)

static uint64_t rng = CHECK_SEED;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#endif
