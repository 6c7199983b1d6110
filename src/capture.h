/* The capture file: writing it (the collector) and reading it back (the
 * reader). See docs/format.md for the bytes. Nothing here prints or exits. */
#ifndef MT_CAPTURE_H
#define MT_CAPTURE_H

#include <stddef.h>
#include <stdint.h>
#include "format.h"
#include "mt_err.h"

struct mt_header {
    uint32_t format_version;
    uint32_t flags;            /* MT_HF_* */
    int32_t pid;
    uint64_t start_time_us;    /* wall clock, microseconds since the epoch */
    const char *command;       /* argv joined by spaces */
};

/* Why a capture ends early (no trailer), as readers say it: the
 * program's own death does not do it, memtap outlives it. */
#define MT_INCOMPLETE_WHY "memtap was killed, could not finish writing it, or is still writing it"

/* Exit of the traced program, stored in the trailer. */
struct mt_exit {
    int code;                  /* valid when signal == 0 */
    int signal;                /* killed by this signal, 0 when it exited,
                                  or one of the two below */
};
#define MT_EXIT_UNKNOWN (-1)   /* how it ended is not known (a followed child) */
#define MT_EXIT_STOPPED (-2)   /* recording stopped, the process ran on (a
                                  Tracker's block ended) */

struct mt_trailer {
    struct mt_exit exit;
    uint64_t duration_us;
    uint64_t events;           /* allocation and free events written */
    uint64_t lost_events;      /* numbers taken but never written */
};

/* The totals of a run, stored by aggregate captures. */
struct mt_totals {
    uint64_t allocations, frees, allocated_bytes;
    uint64_t peak_bytes, peak_time_us, end_bytes, peak_rss_bytes;
    uint32_t end_marked;
    uint64_t allocator_count[MT_A_COUNT], allocator_bytes[MT_A_COUNT];
    uint64_t histogram[64];
};

/* One decoded record. Pointers point into the reader's buffer and stay
 * valid until the next mt_reader_next call. */
struct mt_record {
    enum mt_tag tag;
    uint32_t thread;           /* events: index of the thread (THREAD) */
    union {
        struct {               /* ALLOC FREE REALLOC MUNMAP MREMAP */
            uint8_t allocator; /* enum mt_allocator; 0 for FREE and MUNMAP */
            /* Read back, a heap block's addr is 0 when the capture does not
             * store addresses (format 3 without MT_HF_ADDRESSES). Written,
             * addr is needed either way: frees are matched by it. */
            uint64_t addr, size;
            uint64_t old_addr, old_size;   /* REALLOC, MREMAP */
            uint32_t py_stack, native_stack;
            /* Read back: an allocation's number (the n-th of the capture)
             * or the number of the block a FREE (REALLOC: old_number)
             * ends; 0 when none. Ignored by the writer. */
            uint64_t number, old_number;
        } ev;
        struct { uint32_t index; uint32_t tid; const char *name; } thread;
        struct {
            uint32_t id; int32_t firstlineno;
            const char *name, *qualname, *filename;
        } code;
        /* PYNODE: a = code id, b = line, flags = MT_PYF_*;
         * NATIVENODE: a = return address */
        struct { uint32_t id, parent; uint64_t a; uint32_t b, flags; } node;
        struct {
            const char *path; uint64_t base;
            const uint8_t *build_id; uint32_t build_id_len;
            uint32_t nseg; const uint64_t *seg; /* nseg × {vaddr, memsz} */
            uint32_t unload;
        } object;
        /* heap_bytes: 0 = not stored (replaying the events tells) */
        struct { uint64_t time_us, rss_bytes, heap_bytes; } sample;
        struct {
            uint32_t py_stack, native_stack, thread, allocators;
            uint64_t total_bytes, total_count, peak_bytes, peak_count;
            uint64_t end_bytes, end_count;
        } group;
        const struct mt_totals *totals;
        struct { const char *python_version; } program;  /* "" if not Python */
        struct mt_trailer trailer;
    } u;
};

/* ---- writing ---------------------------------------------------------- */

struct mt_writer;

/* Whether path names something a capture written there would replace: a
 * file, a directory or a symbolic link, not a FIFO or a device, which take
 * the capture as a stream. */
int mt_output_exists(const char *path);

/* Creates `path` (O_EXCL unless force, never through a symbolic link, mode
 * 0644 less umask) and writes the header; a FIFO or a device takes the
 * capture as a stream. A file left without its header is removed. On
 * success *out owns the file; finish it with mt_writer_close. @return
 * MT_OK, MT_E_EXISTS, MT_E_LINK, MT_E_NO_READER (a FIFO no process reads),
 * MT_E_IO (errno set). */
int mt_writer_open(const char *path, int force, const struct mt_header *h,
                   struct mt_writer **out);

/* Appends one record (tag and fields from rec; `thread` of events is used to
 * emit THREAD_SWITCH when it changes). Buffers; compresses a block when full.
 * @return MT_OK or MT_E_IO (the writer then stays failed: later calls
 * return MT_E_IO without writing). Not thread-safe: one writer, one thread. */
int mt_writer_add(struct mt_writer *w, const struct mt_record *rec);

/* The same as mt_writer_add of an ALLOC or a FREE record with these
 * fields, without building one: the collector's path for the bulk of a
 * capture. A FREE of an address with no live block writes nothing. */
int mt_writer_alloc(struct mt_writer *w, uint32_t thread, unsigned allocator,
                    uint64_t addr, uint64_t size, uint32_t py_stack,
                    uint32_t native_stack);
int mt_writer_free(struct mt_writer *w, uint32_t thread, uint64_t addr);

/* Compresses and writes what is buffered as one block (done at least every
 * ~100 ms by the collector so a killed collector loses little). */
int mt_writer_flush(struct mt_writer *w);

/* How blocks flushed from now on are compressed: fast 0 (the default)
 * with LZ4's high-compression mode (level 6: files ~25-40 % smaller) where
 * the fast mode cannot halve a big block (nearly random data: HC would
 * gain ~10 % at 100 times the CPU), fast 1 with LZ4's fast mode only (~4x
 * less CPU per block). Same format, same decoder: a capture may mix both. */
void mt_writer_set_fast(struct mt_writer *w, int fast);

/* Writes the trailer, flushes, closes and frees w (NULL is accepted).
 * trailer NULL: close without a trailer (the capture reads as incomplete). */
int mt_writer_close(struct mt_writer *w, const struct mt_trailer *trailer);

/* Starts the capture over: everything after the header is dropped (the
 * file is cut there; with h, the header too, and h is written instead) and
 * the writer is as mt_writer_open left it: ids, allocation numbers and the
 * dictionary start again. For a process that exec'd another program.
 * @return MT_OK, or MT_E_IO / MT_E_NOMEM (the writer then stays failed). */
int mt_writer_restart(struct mt_writer *w, const struct mt_header *h);

/* Bytes written to the file so far. */
uint64_t mt_writer_bytes(const struct mt_writer *w);

/* ---- reading ---------------------------------------------------------- */

struct mt_reader;

/* Opens a capture and reads its header. @return MT_OK and *out (close with
 * mt_reader_close), or MT_E_IO/NOT_CAPTURE/VERSION/EMPTY/CORRUPT/TRUNCATED.
 * On MT_E_VERSION, *found_version (if not NULL) gets the file's version. */
int mt_reader_open(const char *path, struct mt_reader **out,
                   uint32_t *found_version);

const struct mt_header *mt_reader_header(const struct mt_reader *r);

/* Does a capture with this header store heap blocks' addresses? (Always
 * before format 3; from 3 on, with MT_HF_ADDRESSES.) Without them, heap
 * events read back with addr 0: name their blocks by number. */
int mt_header_has_addresses(const struct mt_header *h);

/* Frees and reallocs then name their block only by number (ev.number,
 * ev.old_number), with addr 0: the reader keeps no map of live blocks,
 * for callers that key blocks by number themselves. Call before the first
 * mt_reader_next. */
void mt_reader_numbers_only(struct mt_reader *r);

/* Decodes the next record into *rec. @return 1 for a record, 0 at a clean
 * end (after the trailer), or MT_E_TRUNCATED (the file stops early: the
 * records before are good), MT_E_CORRUPT, MT_E_IO. Memory use is bounded by
 * one block, whatever the file's size. */
int mt_reader_next(struct mt_reader *r, struct mt_record *rec);

/* Decodes up to max records, all from the block being decoded, into
 * recs[0..n): the same records as n calls of mt_reader_next, fewer calls.
 * Only the last may point into the reader's buffers (a definition ends
 * the run). @return n > 0, or what mt_reader_next returns at the end (0 or
 * an error; an error after some records comes with the next call). */
int mt_reader_next_many(struct mt_reader *r, struct mt_record *recs, int max);

/* Byte offset in the file of the block being decoded (for messages). */
uint64_t mt_reader_offset(const struct mt_reader *r);

/* File size (0 when reading a pipe, whose size is not known) and bytes
 * consumed so far (for progress). Captures are read front to back once,
 * so a pipe or a FIFO serves as well as a file. */
uint64_t mt_reader_file_size(const struct mt_reader *r);

void mt_reader_close(struct mt_reader *r);

#endif
