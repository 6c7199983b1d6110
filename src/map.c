#include "map.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

uint64_t mt_hash_bytes(const void *p, size_t n, uint64_t seed)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull ^ mix(seed + n);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = mix(h ^ w) + 0x9e3779b97f4a7c15ull;
    }
    uint64_t w = 0;
    if (n > i)
        memcpy(&w, b + i, n - i);
    return mix(h ^ w ^ (uint64_t)n);
}

/* The address map's slot for a key: Fibonacci hashing, the top bits of one
 * multiplication (one multiply per probe start: the collector numbers
 * every allocation and free through this map). shift is 64 - log2(cap). */
static size_t amap_home(uint64_t key, unsigned shift)
{
    return (size_t)((key * 0x9e3779b97f4a7c15ull) >> shift);
}

static uint64_t ikey_hash(const uint64_t k[3])
{
    return mix(k[0] ^ mix(k[1] ^ mix(k[2])));
}

static int imap_grow(struct mt_imap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    struct mt_ientry *e = calloc(cap, sizeof *e);
    if (!e)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->e[i].id)
            continue;
        size_t j = ikey_hash(m->e[i].k) & (cap - 1);
        while (e[j].id)
            j = (j + 1) & (cap - 1);
        e[j] = m->e[i];
    }
    free(m->e);
    m->e = e;
    m->cap = cap;
    return 0;
}

uint32_t mt_imap_intern(struct mt_imap *m, const uint64_t k[3], int *is_new)
{
    *is_new = 0;
    if ((m->used + 1) * 2 > m->cap && imap_grow(m) < 0)
        return 0;
    size_t j = ikey_hash(k) & (m->cap - 1);
    for (; m->e[j].id; j = (j + 1) & (m->cap - 1))
        if (!memcmp(m->e[j].k, k, sizeof m->e[j].k))
            return m->e[j].id;
    memcpy(m->e[j].k, k, sizeof m->e[j].k);
    m->e[j].id = (uint32_t)++m->used;
    *is_new = 1;
    return m->e[j].id;
}

void mt_imap_clear(struct mt_imap *m)
{
    if (m->used)
        memset(m->e, 0, m->cap * sizeof *m->e);
    m->used = 0;
}

void mt_imap_release(struct mt_imap *m)
{
    free(m->e);
    memset(m, 0, sizeof *m);
}

static int amap_grow(struct mt_amap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    unsigned shift = 64 - (unsigned)__builtin_ctzll(cap);
    struct mt_aentry *e = calloc(cap, sizeof *e);
    if (!e)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->e[i].key)
            continue;
        size_t j = amap_home(m->e[i].key, shift);
        while (e[j].key)
            j = (j + 1) & (cap - 1);
        e[j] = m->e[i];
    }
    free(m->e);
    m->e = e;
    m->cap = cap;
    m->shift = shift;
    return 0;
}

/* The probe loops below work on local copies of the table and its mask:
 * keys and the map's sizes are both 64-bit words, so the compiler would
 * otherwise reload the sizes after every key it reads. */

/* Up to this many slots the map stays at most 1/8 full, then at most
 * half: an insertion into a half-full table probes 2.5 slots on average,
 * and the branches that end the probe and the deletion's shift mispredict
 * about as often; a sparse one stops at the first slot nearly always. The
 * collector numbers every allocation and free through this map: on native2
 * it spends ~20 % less CPU with the sparse table. Past 4 MiB a lookup is a
 * cache miss whatever the fill, and memory matters more. */
#define AMAP_SPARSE_SLOTS (1u << 18)

static int amap_full(const struct mt_amap *m)
{
    size_t need = m->used + 1;
    return need * 2 > m->cap || (m->cap < AMAP_SPARSE_SLOTS && need * 8 > m->cap);
}

uint64_t *mt_amap_upsert(struct mt_amap *m, uint64_t key, int *found)
{
    if (amap_full(m) && amap_grow(m) < 0)
        return NULL;
    struct mt_aentry *e = m->e;
    size_t mask = m->cap - 1, j = amap_home(key, m->shift);
    for (; e[j].key; j = (j + 1) & mask)
        if (e[j].key == key) {
            *found = 1;
            return &e[j].value;
        }
    e[j].key = key;
    e[j].value = 0;
    m->used++;
    *found = 0;
    return &e[j].value;
}

int mt_amap_put(struct mt_amap *m, uint64_t key, uint64_t value)
{
    int found;
    uint64_t *v = mt_amap_upsert(m, key, &found);
    if (!v)
        return -1;
    *v = value;
    return 0;
}

int mt_amap_get(const struct mt_amap *m, uint64_t key, uint64_t *value)
{
    if (!m->cap)
        return 0;
    const struct mt_aentry *e = m->e;
    size_t mask = m->cap - 1;
    for (size_t j = amap_home(key, m->shift); e[j].key; j = (j + 1) & mask)
        if (e[j].key == key) {
            *value = e[j].value;
            return 1;
        }
    return 0;
}

int mt_amap_take(struct mt_amap *m, uint64_t key, uint64_t *value)
{
    if (!m->cap)
        return 0;
    struct mt_aentry *e = m->e;
    size_t mask = m->cap - 1, j = amap_home(key, m->shift);
    unsigned shift = m->shift;
    for (; e[j].key; j = (j + 1) & mask)
        if (e[j].key == key)
            break;
    if (!e[j].key)
        return 0;
    *value = e[j].value;
    /* Backward-shift deletion keeps probe chains whole without tombstones. */
    size_t hole = j;
    for (size_t i = (j + 1) & mask; e[i].key; i = (i + 1) & mask) {
        size_t home = amap_home(e[i].key, shift);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            e[hole] = e[i];
            hole = i;
        }
    }
    e[hole].key = 0;
    m->used--;
    return 1;
}

void mt_amap_release(struct mt_amap *m)
{
    free(m->e);
    memset(m, 0, sizeof *m);
}
