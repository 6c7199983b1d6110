/* Replays fuzz inputs through the fuzz target's entry point without
 * libFuzzer, so `make test` checks the corpus (and every crash ever found,
 * kept in tests/fuzz/corpus/) with the ordinary build.
 *
 *   regression_driver DIR_OR_FILE...
 *
 * Each file (directories are read one level deep, sorted) is run once;
 * a crash or sanitizer report fails the run. Prints how many ran. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *d = malloc(cap);
    size_t got;
    while (d && (got = fread(d + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *q = realloc(d, cap *= 2);
            if (!q)
                free(d);
            d = q;
        }
    }
    fclose(f);
    if (!d) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    LLVMFuzzerTestOneInput(d, n);
    free(d);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int ran = 0, bad = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            bad++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += run_file(argv[i]) != 0;
            ran++;
            continue;
        }
        DIR *dir = opendir(argv[i]);
        if (!dir) {
            perror(argv[i]);
            bad++;
            continue;
        }
        char **names = NULL;
        size_t nn = 0;
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char **q = realloc(names, (nn + 1) * sizeof *names);
            if (!q)
                abort();
            names = q;
            if (asprintf(&names[nn], "%s/%s", argv[i], e->d_name) < 0)
                abort();
            nn++;
        }
        closedir(dir);
        qsort(names, nn, sizeof *names, cmp);
        for (size_t j = 0; j < nn; j++) {
            if (stat(names[j], &st) == 0 && S_ISREG(st.st_mode)) {
                bad += run_file(names[j]) != 0;
                ran++;
            }
            free(names[j]);
        }
        free(names);
    }
    printf("fuzz regression: %d input(s) replayed, %d unreadable\n", ran, bad);
    return bad ? 1 : 0;
}
