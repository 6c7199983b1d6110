/* Preset dictionaries: blocks compressed against a stream much like their
 * own. A capture of a Python program starts with the interpreter's start-up
 * and the imports most programs make, the same few thousand records every
 * time; a short program's capture is mostly that, and LZ4 keeps ~3x less
 * of it when it can refer to a typical start-up. docs/format.md
 * (Dictionaries) has the rule; tools/make-dictionary.py makes them. */
#ifndef MT_DICTIONARY_H
#define MT_DICTIONARY_H

#include <stddef.h>
#include <stdint.h>

struct mt_dictionary {
    unsigned id;          /* stored in block headers: 1 ... 255, permanent */
    const char *python;   /* the CPython "major.minor" it was made from */
    uint32_t since;       /* the first format version that may name it */
    const char *data;
    size_t size;          /* at most 64 KiB: all that LZ4 can refer to */
};

/* Fills *d with the dictionary numbered id. @return 1, or 0 when this
 * version knows none by that number. */
int mt_dictionary_get(unsigned id, struct mt_dictionary *d);

/* Fills *d with the dictionary the writer's format version has for a
 * program on this CPython version ("3.11.7", "3.13.0rc1": its major.minor
 * decides). @return 1, or 0 when there is none, and for NULL or "" (not a
 * Python program). */
int mt_dictionary_for_python(const char *version, struct mt_dictionary *d);

#endif
