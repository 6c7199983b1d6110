/* Native symbolization for the reader (design.md §4).
 *
 * Turns the return addresses recorded by the shim into functions, inlined
 * frames and file:line, using elfutils libdw on the objects the capture
 * listed (path, load bias, build-id, PT_LOAD segments).  A missing, stripped
 * or rebuilt object never fails a lookup: it yields "symbol+0xoff (obj)" or
 * "0xADDR (obj)" instead.
 *
 * One symbolizer describes one address space.  Not thread-safe: use one
 * symbolizer per thread.  No network: libdw's debuginfod client stays off
 * unless the environment has MEMTAP_DEBUGINFOD=1 (see mt_symbolizer_new).
 */
#ifndef MT_SYMBOLS_H
#define MT_SYMBOLS_H

#include <stddef.h>
#include <stdint.h>

struct mt_symbolizer;

/* For mt_symbolizer_resolve: the objects declared last. */
#define MT_OBJECTS_ALL UINT32_MAX

/* One PT_LOAD segment as captured: ELF vaddr (add the base for the runtime
 * address), size in memory, PF_* flags. */
struct mt_segment {
    uint64_t vaddr, memsz;
    uint32_t flags;
};

enum mt_symbol_flags {
    /* This frame was inlined into the next one in the array: it has no
     * physical frame of its own. */
    MT_SYM_INLINED = 0x1u,
    /* The object's file on disk has a different build-id than the captured
     * one (or is missing): only the address is reported. */
    MT_SYM_NO_FILE = 0x2u,
};

/* One (possibly inlined) frame.  Strings belong to the symbolizer and stay
 * valid until mt_symbolizer_free(). */
struct mt_symbol {
    const char *function; /* demangled name; NULL when unknown */
    const char *file;     /* source file as DWARF names it; NULL if unknown */
    uint32_t line;        /* 0 when unknown */
    uint32_t column;      /* 0 when unknown */
    const char *object;   /* captured path of the object; NULL when the ip
                             lies in no known object */
    uint64_t address;     /* the ip relative to the object, i.e. the ELF
                             address addr2line wants (ip itself when there
                             is no object) */
    uint64_t offset;      /* ip - start of `function` (ELF symbol or DWARF
                             entry pc); meaningful only for the outermost
                             frame of an ip, 0 otherwise */
    uint32_t flags;       /* enum mt_symbol_flags */
};

/* Creates an empty symbolizer.  Unless the environment has
 * MEMTAP_DEBUGINFOD=1, this removes DEBUGINFOD_URLS from the process
 * environment so libdw never downloads anything.
 * @return the symbolizer (free with mt_symbolizer_free), or NULL when out of
 * memory. */
struct mt_symbolizer *mt_symbolizer_new(void);

/* Declares a loaded object, the next in the capture's order of objects.
 * Files are opened lazily, on the first address that falls in one of `segs`.
 * @path      the file as captured (copied); "[vdso]" or "" yield addresses only
 * @base      load bias (dlpi_addr)
 * @build_id  GNU build-id as captured, may be NULL (then any file at `path`
 *            is trusted); copied
 * @segs      PT_LOAD segments, copied; an object without segments matches no
 *            address
 * An object overlapping an earlier one replaces it from here on (dlclose,
 * then dlopen at the same place); the same object declared again changes
 * nothing. Every call counts as one object, a failed one too.
 * @return 0, or -1 when out of memory or an argument is NULL. */
int mt_symbolizer_add_object(struct mt_symbolizer *s, const char *path,
                             uint64_t base, const uint8_t *build_id,
                             size_t build_id_len,
                             const struct mt_segment *segs, size_t nsegs);
/* Resolves a return address (looks up ip - 1) to its frames, innermost
 * (most deeply inlined) first, the physical function last, in the object
 * that lay there when the capture had declared `objects` objects (a native
 * node's mt_node_info.objects; MT_OBJECTS_ALL: the latest). Results are
 * cached per ip and generation of objects.
 * @out  receives min(max, n) frames; may be NULL when max is 0
 * @return n >= 1, the number of frames this ip has (like snprintf: call again
 * with a larger array when n > max), or -1 when out of memory. */
int mt_symbolizer_resolve(struct mt_symbolizer *s, uint64_t ip, uint32_t objects,
                          struct mt_symbol *out, int max);
/* How many times an object replaced another before `objects` objects were
 * declared: addresses recorded in the same generation lie in the same
 * objects. 0 unless the capture unloaded and reloaded at one place. */
uint32_t mt_symbolizer_generation(const struct mt_symbolizer *s, uint32_t objects);
/* Formats one frame for humans into buf (always NUL-terminated when size > 0):
 *   "func (file:line)", "func+0x1a (libfoo.so)", "0x1234 (libfoo.so)",
 *   "0x7f00deadbeef".
 * @return the length the full text needs, as snprintf. */
int mt_symbol_format(const struct mt_symbol *sym, char *buf, size_t size);

/* Frees the symbolizer and every string it handed out.  Accepts NULL. */
void mt_symbolizer_free(struct mt_symbolizer *s);

#endif
