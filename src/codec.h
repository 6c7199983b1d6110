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

/* CRC-32 (IEEE, as zlib), continuing from crc (0 to start). */
uint32_t mt_crc32(uint32_t crc, const void *data, size_t n);

/* Size of the block header before the compressed bytes. */
#define MT_BLOCK_HEADER 16

#endif
