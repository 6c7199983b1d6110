/* Turns real captures into fuzz seeds for fuzz_reader.c:
 *
 *   mkseeds OUTDIR CAPTURE...
 *
 * For each capture: mode 0 (as is), mode 1 (as is, CRCs fixed by the
 * target), mode 0 cut at a few offsets, and mode 2/3 (the header payload
 * and every block decompressed: the structured form). */
#define _GNU_SOURCE
#include <lz4.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "dictionary.h"
#include "format.h"

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc((size_t)sz + 1);
    if (d && fread(d, 1, (size_t)sz, f) != (size_t)sz) {
        free(d);
        d = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return d;
}

static void emit(const char *dir, const char *base, const char *what,
                 uint8_t mode, const uint8_t *d, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/seed-%s-%s", dir, base, what);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputc(mode, f);
    fwrite(d, 1, n, f);
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: mkseeds OUTDIR CAPTURE...\n");
        return 2;
    }
    static char raw[MT_BLOCK_MAX_RAW];
    for (int i = 2; i < argc; i++) {
        size_t n;
        uint8_t *d = slurp(argv[i], &n);
        if (!d || n < 20) {
            fprintf(stderr, "mkseeds: cannot use %s\n", argv[i]);
            return 1;
        }
        const char *base = strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i];
        char what[64];
        emit(argv[1], base, "m0", 0, d, n);
        emit(argv[1], base, "m1", 1, d, n);
        size_t cuts[] = {0, 4, 8, 12, 16, 20, n / 4, n / 2, n - 5, n - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
            if (cuts[c] >= n)
                continue;
            snprintf(what, sizeof what, "cut%zu", cuts[c]);
            emit(argv[1], base, what, 0, d, cuts[c]);
        }
        /* Structured form. */
        uint32_t hl = mt_get_u32le(d + 12);
        size_t cap = n * 300 + 65536, m = 0;
        uint8_t *s = malloc(cap);
        s[m++] = (uint8_t)hl;
        s[m++] = (uint8_t)(hl >> 8);
        memcpy(s + m, d + 16, hl);
        m += hl;
        size_t off = 16 + hl + 4;
        while (off + MT_BLOCK_HEADER <= n) {
            uint32_t comp = mt_get_u32le(d + off + 8);
            /* format 4: a block may be compressed against a dictionary */
            unsigned dict_id = mt_get_u32le(d + off + 4) >> MT_BLOCK_DICTIONARY_SHIFT;
            struct mt_dictionary dict = {0};
            if (dict_id && !mt_dictionary_get(dict_id, &dict))
                break;
            int r = LZ4_decompress_safe_usingDict((const char *)d + off + MT_BLOCK_HEADER, raw,
                                                  (int)comp, MT_BLOCK_MAX_RAW, dict.data,
                                                  (int)dict.size);
            if (r < 0)
                break;
            /* chunks of at most 65535 raw bytes */
            for (int o = 0; o < r; o += 65535) {
                int len = r - o < 65535 ? r - o : 65535;
                if (m + 2 + (size_t)len > cap)
                    break;
                s[m++] = (uint8_t)len;
                s[m++] = (uint8_t)(len >> 8);
                memcpy(s + m, raw + o, (size_t)len);
                m += (size_t)len;
            }
            off += MT_BLOCK_HEADER + comp;
        }
        emit(argv[1], base, "m2", 2, s, m);
        emit(argv[1], base, "m3", 3, s, m);
        free(s);
        free(d);
    }
    return 0;
}
