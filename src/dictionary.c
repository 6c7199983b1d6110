#include <string.h>

#include "dictionary.h"
#include "version.h"

/* Every dictionary: id, the CPython version it was made from, the first
 * format version whose captures may name it (a dictionary holds records,
 * so each encoding of them has its own). Each is embedded by tools/embed.py
 * from src/dictionaries/ID-cpython-X.Y.bin as mt_dictionary_ID (meson.build
 * lists the files). An id, once in a released capture, names the same
 * bytes forever. */
#define DICTIONARIES(X) \
    X(1, "3.9", 4) X(2, "3.10", 4) X(3, "3.11", 4) X(4, "3.12", 4) X(5, "3.13", 4) \
    X(6, "3.9", 5) X(7, "3.10", 5) X(8, "3.11", 5) X(9, "3.12", 5) X(10, "3.13", 5)

#define DECLARE(id, version, since) \
    extern const char mt_dictionary_##id[]; \
    extern const unsigned long mt_dictionary_##id##_len;
DICTIONARIES(DECLARE)

#define ENTRY(id, version, since) \
    {id, version, since, mt_dictionary_##id, &mt_dictionary_##id##_len},
static const struct {
    unsigned id;
    const char *python;
    uint32_t since;
    const char *data;
    const unsigned long *size;  /* not a constant expression in C */
} table[] = {DICTIONARIES(ENTRY)};

static int fill(size_t i, struct mt_dictionary *d)
{
    d->id = table[i].id;
    d->python = table[i].python;
    d->since = table[i].since;
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
    int found = 0;  /* the newest the writer's format may name */
    for (size_t i = 0; version && i < sizeof table / sizeof table[0]; i++) {
        size_t n = strlen(table[i].python);
        /* equal over n bytes, so version[n] exists */
        if (table[i].since <= MT_FORMAT_VERSION && !strncmp(version, table[i].python, n) &&
            !(version[n] >= '0' && version[n] <= '9') && (!found || table[i].since >= d->since))
            found = fill(i, d);
    }
    return found;
}
