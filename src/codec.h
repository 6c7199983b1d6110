/* Byte-level helpers shared by the capture writer and reader. Internal. */
#ifndef MT_CODEC_H
#define MT_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint8_t *mt_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint64_t mt_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t mt_unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static inline void mt_put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t mt_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* The (py, native) stack pairs STACKS can name (below), the bases included. */
#define MT_RECENT_MAX 6u

/* Delta bases of one block (all restart at 0 with every block, so blocks
 * decode on their own). Allocated and freed addresses have separate bases:
 * a free is usually near the previous free (a container torn down in
 * order) or equal to it (churn), not near the last allocation. */
struct mt_deltas {
    uint64_t alloc_addr, free_addr, free_index, py, native;
    uint64_t ip;                        /* return addresses */
    uint64_t sample_time, sample_step, sample_rss, sample_heap;
    uint64_t pynode, nativenode;        /* version 1 only: node ids */
    unsigned alloc_kind;  /* version 5: tag & 0x1f | 0x100 of the last ALLOC with a
                             tag from 0x20 - 0x5f (0: none yet) */
    unsigned nrecent;     /* version 5: recent stacks, the latest (the bases) first */
    struct { uint64_t py, native; } recent[MT_RECENT_MAX];
};

/* Format 5 on, STACKS k (tags 0x1B - 0x1F, k = tag - 0x1A) makes the k-th
 * most recent pair of stack bases the bases again, so that the event after
 * it can take a form without stack fields. A program allocating from a few
 * places in turn (malloc in one, realloc in another) wrote the deltas
 * between them at every change. The list holds the distinct (py, native)
 * pairs the block's stack fields and STACKS records set, latest first. */
#define MT_TAG_STACKS 0x1bu

/* The bases just changed: they become the latest pair. */
static inline void mt_recent_push(struct mt_deltas *d)
{
    unsigned n = d->nrecent, i = 0;
    while (i < n && (d->recent[i].py != d->py || d->recent[i].native != d->native))
        i++;
    if (i == n) {
        if (n < MT_RECENT_MAX)
            d->nrecent = n + 1;
        else
            i = n - 1;  /* the oldest goes */
    }
    memmove(&d->recent[1], &d->recent[0], i * sizeof d->recent[0]);
    d->recent[0].py = d->py;
    d->recent[0].native = d->native;
}

/* The k of a recent pair (1 ...) whose Python stack is py and, when the
 * native one counts, whose native stack is native; 0 when none is. */
static inline unsigned mt_recent_find(const struct mt_deltas *d, uint64_t py,
                                      int with_native, uint64_t native)
{
    for (unsigned k = 1; k < d->nrecent; k++)
        if (d->recent[k].py == py && (!with_native || d->recent[k].native == native))
            return k;
    return 0;
}

/* STACKS k: the k-th pair (1 <= k < nrecent) becomes the bases. */
static inline void mt_recent_take(struct mt_deltas *d, unsigned k)
{
    d->py = d->recent[k].py;
    d->native = d->recent[k].native;
    mt_recent_push(d);
}

/* A free names its block by allocation number (the n-th allocation of the
 * capture, from 1), as a delta from the previous free's: blocks freed in
 * the order they were made, or just after, cost one byte that compresses
 * to almost nothing — addresses do not. Frees of blocks the capture never
 * saw allocated are not written at all. */

/* Allocation tags carry the allocator in their low 4 bits; the 0x10 bit
 * says the allocation has a native stack. Tags from MT_TAG_ALLOC_BASE
 * write the stack ids; from MT_TAG_ALLOC_SAME (format 3 on) the stacks are
 * the ones the last stack ids written named (their delta bases), and no
 * stack field follows: a loop allocating from one place costs no byte for
 * its stacks, which LZ4 could not always have matched between the
 * varying sizes. */
#define MT_TAG_ALLOC_BASE 0x20u
#define MT_TAG_ALLOC_SAME 0x40u
#define MT_TAG_ALLOC_NATIVE 0x10u
#define MT_TAG_IS_ALLOC(t) ((t) >= MT_TAG_ALLOC_BASE && (t) < MT_TAG_ALLOC_SAME + 0x20u)

/* Format 3 on, the short forms of the two commonest records after ALLOC.
 * A FREE whose reference (the zigzag of its number's change) is below 128
 * is the one byte MT_TAG_FREE_SHORT | reference: programs mostly free what
 * they allocated last or nearly so. Below 128 + 2048 it is two bytes,
 * MT_TAG_FREE_MID | high 3 bits, then the low 8, of reference - 128. A
 * THREAD_SWITCH to thread t < 31 is the byte MT_TAG_SWITCH_SHORT + t:
 * threads allocating together switch every few events. */
#define MT_TAG_FREE_SHORT 0x80u
#define MT_TAG_FREE_MID 0x08u
#define MT_TAG_SWITCH_SHORT 0x60u
#define MT_SWITCH_SHORT_MAX 31u

/* Format 5 on, half of FREE_SHORT's bytes go to the shortest ALLOC: one
 * made like the block's previous ALLOC (the same allocator and native-stack
 * bit, and the stacks the bases name, as ALLOC_SAME) whose size is below
 * 16 KiB is the two bytes MT_TAG_ALLOC_SIZED | size >> 8, then size & 0xff.
 * A loop allocating from one place with varying sizes (C code, buffers)
 * spent three bytes on each, two on the size, and LZ4 matches none of them.
 * FREE_SHORT keeps references below 64 and FREE_MID starts at 64. */
#define MT_TAG_ALLOC_SIZED 0xc0u
#define MT_ALLOC_SIZED_MAX 0x4000u
#define MT_ALLOC_KIND_SEEN 0x100u

/* The first reference FREE_MID holds: FREE_SHORT's end in version v. */
static inline unsigned mt_free_mid_base(uint32_t version)
{
    return version >= 5 ? 0x40u : 0x80u;
}

/* CRC-32 (IEEE, as zlib), continuing from crc (0 to start). */
uint32_t mt_crc32(uint32_t crc, const void *data, size_t n);

/* Size of the block header before the compressed bytes. */
#define MT_BLOCK_HEADER 16

/* A block's CRC-32 in a capture of this format version: of its n
 * compressed bytes, and from version 4 on of its raw_length field first
 * (header: the block header), as that names the dictionary and a block
 * decoded against the wrong one can decode to the right length. */
static inline uint32_t mt_block_crc(uint32_t version, const uint8_t *header,
                                    const void *data, size_t n)
{
    return mt_crc32(version >= 4 ? mt_crc32(0, header + 4, 4) : 0, data, n);
}

#endif
