/* Unit test for src/map.c: mt_amap (address -> value, with backward-shift
 * deletion) and mt_imap (three-word key -> dense id) against plain
 * reference models, over random operations. Deletion is the delicate part:
 * keys are drawn from a small pool, and from hashes that collide in the
 * low bits, so probe chains are long, wrap around the table's end and are
 * cut in their middle; after every deletion each remaining key must still
 * be found. Exit 0 on success; prints each failure. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/map.h"

#define CHECK_SEED 0x2545f4914f6cdd1dull
#include "check.h"

/* The reference: an unsorted array, searched linearly. */
struct ref { uint64_t *key, *value; size_t n, cap; };

static size_t ref_find(const struct ref *r, uint64_t key)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->key[i] == key)
            return i;
    return SIZE_MAX;
}

static void ref_put(struct ref *r, uint64_t key, uint64_t value)
{
    size_t i = ref_find(r, key);
    if (i != SIZE_MAX) {
        r->value[i] = value;
        return;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->key = realloc(r->key, r->cap * sizeof *r->key);
        r->value = realloc(r->value, r->cap * sizeof *r->value);
        if (!r->key || !r->value)
            exit(2);
    }
    r->key[r->n] = key;
    r->value[r->n++] = value;
}

static int ref_take(struct ref *r, uint64_t key, uint64_t *value)
{
    size_t i = ref_find(r, key);
    if (i == SIZE_MAX)
        return 0;
    *value = r->value[i];
    r->key[i] = r->key[--r->n];
    r->value[i] = r->value[r->n];
    return 1;
}

/* Every key of the reference is in the map with its value, and the map
 * holds no more than the reference. */
static void amap_agrees(const char *what, const struct mt_amap *m, const struct ref *r,
                        long step)
{
    CHECK(m->used == r->n, "%s step %ld: map holds %zu, reference %zu", what, step,
          m->used, r->n);
    for (size_t i = 0; i < r->n; i++) {
        uint64_t v = ~0ull;
        int found = mt_amap_get(m, r->key[i], &v);
        CHECK(found && v == r->value[i],
              "%s step %ld: key 0x%" PRIx64 ": found %d value %" PRIu64 ", want %" PRIu64,
              what, step, r->key[i], found, v, r->value[i]);
    }
    size_t full = 0;
    for (size_t j = 0; j < m->cap; j++)
        full += m->e[j].key != 0;
    CHECK(full == r->n, "%s step %ld: %zu slots in use, %zu keys", what, step, full, r->n);
}

/* keys: 0 a pool of 64 random keys, 1 a pool of 5000, 2 multiples of a
 * large power of two (their hashes still spread, but they are the
 * addresses of aligned blocks), 3 small integers 1..200 */
static uint64_t pick_key(int kind, const uint64_t *pool)
{
    switch (kind) {
    case 0: return pool[rnd() % 64];
    case 1: return pool[rnd() % 5000];
    case 2: return (1 + rnd() % 3000) << 21;
    default: return 1 + rnd() % 200;
    }
}

static void test_amap(int kind, long steps, int check_every)
{
    static uint64_t pool[5000];
    for (size_t i = 0; i < 5000; i++)
        do pool[i] = rnd(); while (!pool[i]);
    struct mt_amap m = {0};
    struct ref r = {0};
    char what[32];
    snprintf(what, sizeof what, "amap kind %d", kind);
    uint64_t v;
    CHECK(!mt_amap_get(&m, 5, &v) && !mt_amap_take(&m, 5, &v), "%s: an empty map finds", what);
    for (long s = 0; s < steps; s++) {
        uint64_t key = pick_key(kind, pool);
        unsigned op = (unsigned)(rnd() % 10);
        /* phases: grow, churn, drain; so deletions meet full and empty maps */
        long phase = s * 3 / steps;
        if (phase == 0 ? op < 7 : phase == 1 ? op < 5 : op < 2) {
            uint64_t value = rnd();
            CHECK(mt_amap_put(&m, key, value) == 0, "%s: put failed", what);
            ref_put(&r, key, value);
        } else if (op < 9 || phase == 2) {
            uint64_t want = 0, got = 0;
            int w = ref_take(&r, key, &want), g = mt_amap_take(&m, key, &got);
            CHECK(w == g && (!w || want == got),
                  "%s step %ld: take 0x%" PRIx64 ": got %d/%" PRIu64 ", want %d/%" PRIu64,
                  what, s, key, g, got, w, want);
        } else {
            uint64_t want = 0, got = 0;
            int w = ref_find(&r, key) != SIZE_MAX, g = mt_amap_get(&m, key, &got);
            if (w)
                want = r.value[ref_find(&r, key)];
            CHECK(w == g && (!w || want == got), "%s step %ld: get 0x%" PRIx64, what, s, key);
        }
        if (check_every && s % check_every == 0)
            amap_agrees(what, &m, &r, s);
        if (failures > 40)
            break;
    }
    amap_agrees(what, &m, &r, steps);
    /* take everything left, in the reference's order */
    while (r.n) {
        uint64_t key = r.key[r.n - 1], want, got = 0;
        ref_take(&r, key, &want);
        CHECK(mt_amap_take(&m, key, &got) == 1 && got == want, "%s: final take", what);
        if (r.n % 97 == 0)
            amap_agrees(what, &m, &r, -1);
    }
    CHECK(m.used == 0, "%s: %zu left after taking everything", what, m.used);
    mt_amap_release(&m);
    CHECK(m.e == NULL && m.cap == 0 && m.used == 0, "%s: release clears", what);
    mt_amap_release(&m);  /* twice is fine */
    free(r.key);
    free(r.value);
}

/* Deletion where it is hardest: a table of 1024 slots kept full to just
 * under its growth point (1/8 full: small tables stay sparse), keys chosen
 * so that many share a home slot near the table's end (probe chains of up
 * to ~100 wrap to slot 0), deleted in every order. */
static void test_amap_wrap(void)
{
    struct mt_amap m = {0};
    mt_amap_put(&m, 1, 1);  /* allocates the first table */
    uint64_t v;
    mt_amap_take(&m, 1, &v);
    size_t cap = m.cap, mask = cap - 1;
    /* find keys whose home is one of the last 4 slots, with a brute-force
     * search through mt_amap itself: a key's home is where a lone key
     * lands in the empty table */
    uint64_t keys[400];
    size_t n = 0;
    for (uint64_t k = 1; n < 400 && k < 50000000; k++) {
        mt_amap_put(&m, k, 0);
        size_t j = 0;
        while (j < cap && m.e[j].key != k)
            j++;
        mt_amap_take(&m, k, &v);
        if (j >= cap - 4)
            keys[n++] = k;
    }
    CHECK(n == 400, "wrap: found only %zu keys homed at the end", n);
    (void)mask;
    for (int round = 0; round < 200 && failures <= 40; round++) {
        struct ref r = {0};
        size_t take = 40 + rnd() % 60;  /* up to 99 + 25 of 1024 slots, 127 max */
        for (size_t i = 0; i < take; i++) {
            uint64_t k = keys[rnd() % n];
            mt_amap_put(&m, k, k * 3);
            ref_put(&r, k, k * 3);
            /* and a few keys homed anywhere */
            uint64_t other = 100000000 + rnd() % 1000000;
            if (i % 4 == 0) {
                mt_amap_put(&m, other, 7);
                ref_put(&r, other, 7);
            }
        }
        CHECK(m.cap == cap || round > 0, "wrap: the table grew (%zu)", m.cap);
        amap_agrees("wrap", &m, &r, round);
        while (r.n) {
            size_t i = (size_t)(rnd() % r.n);
            uint64_t key = r.key[i], want, got = 0;
            ref_take(&r, key, &want);
            CHECK(mt_amap_take(&m, key, &got) == 1 && got == want,
                  "wrap round %d: take 0x%" PRIx64, round, key);
            amap_agrees("wrap", &m, &r, round);
        }
        free(r.key);
        free(r.value);
    }
    mt_amap_release(&m);
}

static void test_imap(void)
{
    struct mt_imap m = {0};
    /* the reference: id i+1 is keys[i] */
    size_t cap = 300000;
    uint64_t (*keys)[3] = malloc(cap * sizeof *keys);
    size_t n = 0;
    for (long s = 0; s < 300000 && failures <= 40; s++) {
        uint64_t k[3];
        if (n && rnd() % 3 == 0) {
            size_t i = (size_t)(rnd() % n);
            memcpy(k, keys[i], sizeof k);
            int is_new = -1;
            uint32_t id = mt_imap_intern(&m, k, &is_new);
            CHECK(id == i + 1 && is_new == 0, "imap step %ld: known key: id %u new %d, want %zu",
                  s, id, is_new, i + 1);
            continue;
        }
        /* new keys that differ in one word only, and all-zero words */
        switch (rnd() % 4) {
        case 0: k[0] = rnd(); k[1] = rnd(); k[2] = rnd(); break;
        case 1: k[0] = (uint64_t)s; k[1] = 0; k[2] = 0; break;
        case 2: k[0] = 0; k[1] = (uint64_t)s; k[2] = 7; break;
        default: k[0] = 1; k[1] = 1; k[2] = (uint64_t)s << 32; break;
        }
        int known = 0;
        for (size_t i = n; i-- > 0 && n - i < 64;)  /* cheap: recent ones */
            known |= !memcmp(keys[i], k, sizeof k);
        if (known)
            continue;
        int is_new = -1;
        uint32_t id = mt_imap_intern(&m, k, &is_new);
        if (is_new == 0)
            continue;  /* an older duplicate: its id must be its first */
        CHECK(id == n + 1 && is_new == 1, "imap step %ld: new key: id %u new %d, want %zu",
              s, id, is_new, n + 1);
        memcpy(keys[n++], k, sizeof k);
    }
    CHECK(m.used == n, "imap: %zu ids, %zu keys", m.used, n);
    for (size_t i = 0; i < n && failures <= 40; i++) {
        int is_new = -1;
        CHECK(mt_imap_intern(&m, keys[i], &is_new) == i + 1 && !is_new, "imap: key %zu", i);
    }
    uint64_t zero[3] = {0, 0, 0};
    int is_new;
    uint32_t z = mt_imap_intern(&m, zero, &is_new);
    CHECK(z != 0 && mt_imap_intern(&m, zero, &is_new) == z && !is_new, "imap: the zero key");
    mt_imap_release(&m);
    CHECK(m.e == NULL && m.used == 0, "imap: release clears");
    free(keys);
}

static void test_hash(void)
{
    uint8_t buf[64];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)i;
    /* the same bytes, same seed: same hash; any length reads only its bytes */
    for (size_t n = 0; n <= sizeof buf; n++) {
        CHECK(mt_hash_bytes(buf, n, 1) == mt_hash_bytes(buf, n, 1), "hash: stable");
        if (n)
            CHECK(mt_hash_bytes(buf, n, 1) != mt_hash_bytes(buf, n - 1, 1),
                  "hash: length %zu and %zu collide", n, n - 1);
        CHECK(mt_hash_bytes(buf, n, 1) != mt_hash_bytes(buf, n, 2), "hash: seeds collide");
    }
}

int main(void)
{
    test_amap(0, 200000, 1);
    test_amap(1, 400000, 5000);
    test_amap(2, 400000, 5000);
    test_amap(3, 200000, 1);
    test_amap_wrap();
    test_imap();
    test_hash();
    if (failures) {
        fprintf(stderr, "test-map: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test-map: ok\n");
    return 0;
}
