/* Constants of the capture file format; docs/format.md is the spec. */
#ifndef MT_FORMAT_H
#define MT_FORMAT_H

#include <stdint.h>
#include "version.h"   /* MT_FORMAT_VERSION, generated from meson.build */

#define MT_FILE_MAGIC "MEMTAPv\x01"   /* 8 bytes */
#define MT_BLOCK_MAGIC 0x4b4c424du    /* "MBLK" little endian */
#define MT_BLOCK_MAX_RAW (256u * 1024) /* largest uncompressed block */
/* Version 4 on, a block header's raw_length holds the block's dictionary
 * (0: none) in its top byte. */
#define MT_BLOCK_DICTIONARY_SHIFT 24
#define MT_BLOCK_LENGTH_MASK 0xffffffu

/* Header flags */
#define MT_HF_NATIVE 0x1u
#define MT_HF_AGGREGATE 0x2u
#define MT_HF_FOLLOW_FORK 0x4u
#define MT_HF_PYALLOC 0x8u
/* Heap blocks' addresses are stored (--addresses). From version 3 on they
 * are left out unless asked for: no report needs them (frees name blocks by
 * number) and they are the least compressible part of a capture. Versions
 * 1 and 2 always store them. Mappings' addresses are always stored. */
#define MT_HF_ADDRESSES 0x10u
#define MT_HF_KNOWN (MT_HF_NATIVE | MT_HF_AGGREGATE | MT_HF_FOLLOW_FORK | \
                     MT_HF_PYALLOC | MT_HF_ADDRESSES)

/* Allocators: which function made (or ended) a block. Values are stored. */
enum mt_allocator {
    MT_A_MALLOC = 1,
    MT_A_CALLOC = 2,
    MT_A_REALLOC = 3,
    MT_A_REALLOCARRAY = 4,
    MT_A_POSIX_MEMALIGN = 5,
    MT_A_ALIGNED_ALLOC = 6,
    MT_A_MEMALIGN = 7,
    MT_A_VALLOC = 8,
    MT_A_PVALLOC = 9,
    MT_A_MMAP = 10,          /* anonymous, accessible: counts as heap */
    MT_A_MMAP_FILE = 11,     /* file-backed: shown apart, not in the peak */
    MT_A_MMAP_RESERVE = 12,  /* PROT_NONE or MAP_NORESERVE: not in the peak */
    MT_A_PYMALLOC = 13,      /* --trace-python-allocators */
    MT_A_COUNT
};

/* Is a block of this allocator part of the tracked heap (peak, leaks)? */
static inline int mt_allocator_counts(unsigned a)
{
    return a != MT_A_MMAP_FILE && a != MT_A_MMAP_RESERVE;
}

/* Is this allocator's block ended by munmap rather than free? */
static inline int mt_allocator_is_mapping(unsigned a)
{
    return a == MT_A_MMAP || a == MT_A_MMAP_FILE || a == MT_A_MMAP_RESERVE;
}

/* The allocator's name as reports show it ("malloc", "mmap_file"...);
 * "unknown" for values this version does not know. Static. */
const char *mt_allocator_name(unsigned a);

/* PYNODE flag: the frame started a new C-level evaluation (merging Python
 * and native stacks splits there). The only flag the format stores. */
#define MT_PYF_ENTRY 0x1u

/* A NATIVENODE whose return address is this stands for the outer frames of
 * a native stack too deep to record whole (no code lives at address 1). */
#define MT_NATIVE_CUT 1u

/* How reports name what a stack too deep to record leaves out: that
 * native node, and the code the shim defines for the Python stack's
 * equivalent. */
#define MT_CUT_NAME "[deeper frames not recorded]"

/* Record tags in the decompressed stream (docs/format.md §Records). */
enum mt_tag {
    MT_T_ALLOC = 0x01,
    MT_T_FREE = 0x02,
    MT_T_REALLOC = 0x03,
    MT_T_MUNMAP = 0x04,
    MT_T_MREMAP = 0x05,
    MT_T_THREAD_SWITCH = 0x10,
    MT_T_THREAD = 0x11,
    MT_T_CODE = 0x12,
    MT_T_PYNODE = 0x13,
    MT_T_NATIVENODE = 0x14,
    MT_T_OBJECT = 0x15,
    MT_T_SAMPLE = 0x16,
    MT_T_END = 0x17,
    MT_T_PROGRAM = 0x18,
    MT_T_GROUP = 0x19,    /* aggregate captures: one stack's totals */
    MT_T_TOTALS = 0x1a,   /* aggregate captures: the whole run's totals */
    MT_T_TRAILER = 0x7f,
};

#endif
