#include <string.h>

#include "dictionary.h"

/* Embedded by tools/embed.py from src/dictionaries/ID-cpython-X.Y.bin. */
#define EMBEDDED(sym) extern const char sym[]; extern const unsigned long sym##_len;
EMBEDDED(mt_dictionary_1)
EMBEDDED(mt_dictionary_2)
EMBEDDED(mt_dictionary_3)
EMBEDDED(mt_dictionary_4)
EMBEDDED(mt_dictionary_5)

/* An id, once in a released capture, names the same bytes forever. */
static const struct {
    unsigned id;
    const char *python;
    const char *data;
    const unsigned long *size;  /* not a constant expression in C */
} table[] = {
    {1, "3.9", mt_dictionary_1, &mt_dictionary_1_len},
    {2, "3.10", mt_dictionary_2, &mt_dictionary_2_len},
    {3, "3.11", mt_dictionary_3, &mt_dictionary_3_len},
    {4, "3.12", mt_dictionary_4, &mt_dictionary_4_len},
    {5, "3.13", mt_dictionary_5, &mt_dictionary_5_len},
};

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
