/* Two small open-addressing hash maps used by the collector and reader.
 * Not thread-safe: one owner. */
#ifndef MT_MAP_H
#define MT_MAP_H

#include <stdint.h>
#include <stddef.h>

/* Interning: a key of three words -> a dense id (1, 2, ...). */
struct mt_imap {
    struct mt_ientry { uint64_t k[3]; uint32_t id; } *e;
    size_t cap, used;
};

/* The id of key k; *is_new tells whether it was just assigned (the next
 * id is used + 1). @return the id, or 0 when out of memory. */
uint32_t mt_imap_intern(struct mt_imap *m, const uint64_t k[3], int *is_new);
/* Forgets every key (ids restart at 1) but keeps the memory. */
void mt_imap_clear(struct mt_imap *m);
void mt_imap_release(struct mt_imap *m);

/* Address map: a 64-bit key (never 0) -> a 64-bit value, with deletion. */
struct mt_amap {
    struct mt_aentry { uint64_t key, value; } *e;
    size_t cap, used;
    unsigned shift;  /* 64 - log2(cap) */
};

/* Inserts or replaces. @return 0, or -1 when out of memory. */
int mt_amap_put(struct mt_amap *m, uint64_t key, uint64_t value);
/* The value of key, inserted as 0 when absent (*found says which): one
 * probe where a lookup then an insert would take two. The pointer is valid
 * until the map next changes. @return NULL when out of memory. */
uint64_t *mt_amap_upsert(struct mt_amap *m, uint64_t key, int *found);
/* Looks key up; *value is set when found. @return 1 found, 0 not. */
int mt_amap_get(const struct mt_amap *m, uint64_t key, uint64_t *value);
/* Removes key; *value gets its value. @return 1 removed, 0 absent. */
int mt_amap_take(struct mt_amap *m, uint64_t key, uint64_t *value);
void mt_amap_release(struct mt_amap *m);

/* A 64-bit hash of bytes (seeded). */
uint64_t mt_hash_bytes(const void *p, size_t n, uint64_t seed);

#endif
