#include <string.h>

#include "dictionary.h"

/* Every dictionary: id, the CPython version it was made from. Each is
 * embedded by tools/embed.py from src/dictionaries/ID-cpython-X.Y.bin as
 * mt_dictionary_ID (meson.build lists the files). An id, once in a
 * released capture, names the same bytes forever. */
#define DICTIONARIES(X) \
    X(1, "3.9") X(2, "3.10") X(3, "3.11") X(4, "3.12") X(5, "3.13")

#define DECLARE(id, version) \
    extern const char mt_dictionary_##id[]; \
    extern const unsigned long mt_dictionary_##id##_len;
DICTIONARIES(DECLARE)

#define ENTRY(id, version) \
    {id, version, mt_dictionary_##id, &mt_dictionary_##id##_len},
static const struct {
    unsigned id;
    const char *python;
    const char *data;
    const unsigned long *size;  /* not a constant expression in C */
} table[] = {DICTIONARIES(ENTRY)};

static int fill(size_t i, struct mt_dictionary *d)
{
    d->id = table[i].id;
    d->python = table[i].python;
    d->data = table[i].data;
    d->size = *table[i].size;
    return 1;
}

int mt_dictionary_get(unsigned id, struct mt_dictionary *d)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].id == id)
            return fill(i, d);
    return 0;
}

int mt_dictionary_for_python(const char *version, struct mt_dictionary *d)
{
    for (size_t i = 0; version && i < sizeof table / sizeof table[0]; i++) {
        size_t n = strlen(table[i].python);
        /* equal over n bytes, so version[n] exists */
        if (!strncmp(version, table[i].python, n) &&
            !(version[n] >= '0' && version[n] <= '9'))
            return fill(i, d);
    }
    return 0;
}
