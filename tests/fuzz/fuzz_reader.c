/* libFuzzer target for the capture decoder (src/reader.c) and the analysis
 * every report runs on (reader/analysis.c).
 *
 * The first byte of the input picks how the rest becomes a capture file:
 *
 *   mode 0  the bytes as they are: framing, CRCs, LZ4, everything.
 *   mode 1  the bytes as they are, but the header CRC and every block's CRC
 *           are recomputed where the framing says they are, so mutations
 *           get past the checksums into LZ4 and the records.
 *   mode 2  structured: a header payload and raw (uncompressed) record
 *           chunks, which are compressed into well-formed blocks here, so
 *           the fuzzer works directly on records:
 *             u16le header-payload length, the payload,
 *             then chunks: u16le raw length, the raw record bytes.
 *   mode 3  as mode 2, with the analysis grouping by thread.
 *
 * The file is written to a private temporary file (the reader takes a
 * path), decoded to its end with mt_reader_open/mt_reader_next (with and
 * without mt_reader_numbers_only), then
 * analysed with mt_analyze, and every group's stacks are walked.
 *
 * tests/fuzz/regression_driver.c replays a corpus through this same entry
 * point without libFuzzer (it is part of `make test`). */
#define _GNU_SOURCE
#include <lz4.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture.h"
#include "codec.h"
#include "dictionary.h"
#include "../reader/analysis.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char tmp_path[256];

static void cleanup(void)
{
    if (tmp_path[0])
        unlink(tmp_path);
}

static FILE *open_tmp(void)
{
    if (!tmp_path[0]) {
        const char *dir = getenv("MT_FUZZ_TMPDIR");
        if (!dir)
            dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(tmp_path, sizeof tmp_path, "%s/memtap-fuzz-%d.bin", dir,
                 (int)getpid());
        atexit(cleanup);
    }
    return fopen(tmp_path, "wb");
}

/* A growable output buffer. */
struct buf { uint8_t *p; size_t n, cap; };

static void put(struct buf *b, const void *s, size_t n)
{
    if (!n)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            abort();
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4];
    mt_put_u32le(x, v);
    put(b, x, 4);
}

static size_t get_u16(const uint8_t **p, const uint8_t *end)
{
    if (end - *p < 2) {
        *p = end;
        return 0;
    }
    size_t v = (size_t)(*p)[0] | (size_t)(*p)[1] << 8;
    *p += 2;
    return v;
}

/* Mode 1: recompute the CRCs where the framing puts them. */
static void fix_crcs(uint8_t *d, size_t n)
{
    if (n < 16)
        return;
    uint64_t len = mt_get_u32le(d + 12);
    if (len > n || 16 + len + 4 > n)
        return;
    mt_put_u32le(d + 16 + len, mt_crc32(0, d, 16 + (size_t)len));
    uint32_t version = mt_get_u32le(d + 8);
    size_t off = 16 + (size_t)len + 4;
    while (off + MT_BLOCK_HEADER <= n) {
        uint64_t comp = mt_get_u32le(d + off + 8);
        if (comp > n - off - MT_BLOCK_HEADER)
            return;
        mt_put_u32le(d + off + 12, mt_block_crc(version, d + off,
                                                d + off + MT_BLOCK_HEADER, (size_t)comp));
        off += MT_BLOCK_HEADER + (size_t)comp;
    }
}

/* Modes 2 and 3: build a well-formed file around raw records. */
static void build_structured(struct buf *out, const uint8_t *p, const uint8_t *end)
{
    size_t hl = get_u16(&p, end);
    if (hl > (size_t)(end - p))
        hl = (size_t)(end - p);
    uint8_t fixed[16];
    memcpy(fixed, MT_FILE_MAGIC, 8);
    mt_put_u32le(fixed + 8, MT_FORMAT_VERSION);
    mt_put_u32le(fixed + 12, (uint32_t)hl);
    put(out, fixed, 16);
    put(out, p, hl);
    put_u32(out, mt_crc32(mt_crc32(0, fixed, 16), p, hl));
    p += hl;
    static char comp[LZ4_COMPRESSBOUND(65536)];
    for (unsigned chunk = 0; p < end; chunk++) {
        size_t rl = get_u16(&p, end);
        if (rl > (size_t)(end - p))
            rl = (size_t)(end - p);
        /* chunks against no dictionary and each of the known ones in turn */
        struct mt_dictionary dict = {0};
        int n;
        if (mt_dictionary_get(chunk % 11, &dict)) {
            LZ4_stream_t s;
            LZ4_initStream(&s, sizeof s);
            LZ4_loadDict(&s, dict.data, (int)dict.size);
            n = LZ4_compress_fast_continue(&s, (const char *)p, comp, (int)rl,
                                           (int)sizeof comp, 1);
        } else {
            n = LZ4_compress_default((const char *)p, comp, (int)rl, (int)sizeof comp);
        }
        if (n < 0)
            abort();
        uint8_t header[MT_BLOCK_HEADER];
        mt_put_u32le(header, MT_BLOCK_MAGIC);
        mt_put_u32le(header + 4, (uint32_t)rl | dict.id << MT_BLOCK_DICTIONARY_SHIFT);
        mt_put_u32le(header + 8, (uint32_t)n);
        mt_put_u32le(header + 12, mt_block_crc(MT_FORMAT_VERSION, header, comp, (size_t)n));
        put(out, header, sizeof header);
        put(out, comp, (size_t)n);
        p += rl;
    }
}

/* Built with -DMT_FUZZ_SKIP_HUGE_IDS, inputs whose thread, code or node
 * ids are beyond any real capture's are not analysed: the analysis sized
 * its tables by the largest id until a7a1e12 (docs/reliability.md, bug 1),
 * and without the filter every fuzzing job stopped on it within seconds.
 * The regression build has no filter. */
#define HUGE_ID (1u << 20)

/* @return 1 when the file holds an id the analysis cannot take (see above). */
static int decode_all(const char *path, int numbers_only)
{
    struct mt_reader *r;
    uint32_t version = 0;
    int huge = 0;
    if (mt_reader_open(path, &r, &version) != MT_OK)
        return 0;
    if (numbers_only)   /* as mt_analyze reads */
        mt_reader_numbers_only(r);
    const struct mt_header *h = mt_reader_header(r);
    volatile size_t sink = strlen(h->command);
    struct mt_record rec;
    int rc;
    while ((rc = mt_reader_next(r, &rec)) == 1) {
        /* Touch what the record points to, as the reports do. */
        if (rec.thread >= HUGE_ID)
            huge = 1;
        switch (rec.tag) {
        case MT_T_PYNODE:
        case MT_T_NATIVENODE:
            huge |= rec.u.node.id >= HUGE_ID;
            break;
        case MT_T_THREAD:
            huge |= rec.u.thread.index >= HUGE_ID;
            sink += strlen(rec.u.thread.name); break;
        case MT_T_CODE:
            huge |= rec.u.code.id >= HUGE_ID;
            sink += strlen(rec.u.code.name) + strlen(rec.u.code.qualname) +
                    strlen(rec.u.code.filename);
            break;
        case MT_T_OBJECT:
            sink += strlen(rec.u.object.path);
            for (uint32_t i = 0; i < rec.u.object.build_id_len; i++)
                sink += rec.u.object.build_id[i];
            for (uint32_t i = 0; i < 2 * rec.u.object.nseg; i++)
                sink += (size_t)rec.u.object.seg[i];
            break;
        case MT_T_PROGRAM: sink += strlen(rec.u.program.python_version); break;
        default: break;
        }
    }
    (void)mt_reader_offset(r);
    (void)sink;
    mt_reader_close(r);
    return huge;
}

static void analyse(const char *path, int split)
{
    struct mt_analysis_opts o = {.split_threads = split, .temporary_n = 1 + split};
    struct mt_analysis *a;
    if (mt_analyze(path, &o, &a, NULL) != MT_OK)
        return;
    static struct mt_frame frames[256];
    static uint64_t ips[256];
    volatile size_t sink = 0;
    for (uint32_t g = 0; g < a->ngroups; g++) {
        int n = mt_analysis_py_frames(a, a->groups[g].py_stack, frames, 256);
        for (int i = 0; i < n; i++)
            sink += strlen(frames[i].function) + strlen(frames[i].file);
        n = mt_analysis_native_ips(a, a->groups[g].native_stack, ips, NULL, 256);
        for (int i = 0; i < n; i++)
            sink += (size_t)ips[i];
        sink += strlen(mt_analysis_thread_name(a, a->groups[g].thread));
    }
    for (uint32_t t = 0; t < a->nthreads + 1; t++)
        sink += strlen(mt_analysis_thread_name(a, t));
    for (uint32_t i = 0; i < a->nobjects; i++) {
        sink += strlen(a->objects[i].path);
        for (uint32_t j = 0; j < a->objects[i].build_id_len; j++)
            sink += a->objects[i].build_id[j];
        for (uint32_t j = 0; j < 2 * a->objects[i].nseg; j++)
            sink += (size_t)a->objects[i].seg[j];
    }
    for (uint32_t i = 0; i < a->nsamples; i++)
        sink += (size_t)a->samples[i].heap_bytes;
    (void)sink;
    mt_analysis_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0] & 3;
    const uint8_t *p = data + 1, *end = data + size;
    struct buf file = {0};
    if (mode >= 2) {
        build_structured(&file, p, end);
    } else {
        put(&file, p, (size_t)(end - p));
        if (mode == 1)
            fix_crcs(file.p, file.n);
    }
    FILE *f = open_tmp();
    if (!f)
        abort();
    if (file.n && fwrite(file.p, 1, file.n, f) != file.n)
        abort();
    fclose(f);
    free(file.p);
    int huge = decode_all(tmp_path, 0);
    huge |= decode_all(tmp_path, 1);
#ifdef MT_FUZZ_SKIP_HUGE_IDS
    if (huge)
        return 0;
#endif
    (void)huge;
    analyse(tmp_path, mode == 3);
    return 0;
}
