/* memtap parse: every record of a capture as one line of text, straight
 * from the decoder (src/capture.h), for debugging the format. Streams: the
 * memory used does not grow with the file. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "../src/capture.h"
#include "util.h"

static const char usage[] = "memtap parse FILE";

static void put_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_header(const struct mt_header *h)
{
    char when[64] = "?";
    time_t t = (time_t)(h->start_time_us / 1000000);
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("HEADER version=%u flags=0x%x", h->format_version, h->flags);
    if (h->flags & MT_HF_NATIVE) printf(",native");
    if (h->flags & MT_HF_AGGREGATE) printf(",aggregate");
    if (h->flags & MT_HF_FOLLOW_FORK) printf(",follow-fork");
    if (h->flags & MT_HF_PYALLOC) printf(",python-allocators");
    if (h->flags & MT_HF_ADDRESSES) printf(",addresses");
    printf(" pid=%d start=%s command=", (int)h->pid, when);
    put_str(h->command);
    putchar('\n');
}

/* A heap block: by its address, or by its number in a capture without
 * addresses ("old" for the block a realloc ends). */
static void print_block(int addresses, const char *old, uint64_t addr, uint64_t number)
{
    if (addresses)
        printf(" %s=0x%" PRIx64, *old ? "old" : "addr", addr);
    else
        printf(" %sblock=%" PRIu64, old, number);
}

static void print_record(const struct mt_record *r, int addresses)
{
    switch (r->tag) {
    case MT_T_ALLOC:
        printf("ALLOC thread=%u %s", r->thread, mt_allocator_name(r->u.ev.allocator));
        print_block(addresses || mt_allocator_is_mapping(r->u.ev.allocator), "",
                    r->u.ev.addr, r->u.ev.number);
        printf(" size=%" PRIu64 " py=%u native=%u\n", r->u.ev.size,
               r->u.ev.py_stack, r->u.ev.native_stack);
        break;
    case MT_T_FREE:
        printf("FREE thread=%u%s%s", r->thread, r->u.ev.allocator ? " " : "",
               r->u.ev.allocator ? mt_allocator_name(r->u.ev.allocator) : "");
        print_block(addresses, "", r->u.ev.addr, r->u.ev.number);
        putchar('\n');
        break;
    case MT_T_REALLOC:
        printf("REALLOC thread=%u %s", r->thread, mt_allocator_name(r->u.ev.allocator));
        print_block(addresses, "old_", r->u.ev.old_addr, r->u.ev.old_number);
        print_block(addresses, "", r->u.ev.addr, r->u.ev.number);
        printf(" size=%" PRIu64 " py=%u native=%u\n", r->u.ev.size, r->u.ev.py_stack,
               r->u.ev.native_stack);
        break;
    case MT_T_MUNMAP:
        printf("MUNMAP thread=%u addr=0x%" PRIx64 " size=%" PRIu64 "\n", r->thread,
               r->u.ev.addr, r->u.ev.size);
        break;
    case MT_T_MREMAP:
        printf("MREMAP thread=%u %s old=0x%" PRIx64 " old_size=%" PRIu64 " addr=0x%" PRIx64
               " size=%" PRIu64 " py=%u native=%u\n", r->thread,
               mt_allocator_name(r->u.ev.allocator), r->u.ev.old_addr, r->u.ev.old_size,
               r->u.ev.addr, r->u.ev.size, r->u.ev.py_stack, r->u.ev.native_stack);
        break;
    case MT_T_THREAD_SWITCH:
        printf("THREAD_SWITCH thread=%u\n", r->thread);
        break;
    case MT_T_THREAD:
        printf("THREAD index=%u tid=%u name=", r->u.thread.index, r->u.thread.tid);
        put_str(r->u.thread.name);
        putchar('\n');
        break;
    case MT_T_CODE:
        printf("CODE id=%u name=", r->u.code.id);
        put_str(r->u.code.name);
        printf(" qualname=");
        put_str(r->u.code.qualname);
        printf(" file=");
        put_str(r->u.code.filename);
        printf(" firstlineno=%d\n", (int)r->u.code.firstlineno);
        break;
    case MT_T_PYNODE:
        printf("PYNODE id=%u parent=%u code=%" PRIu64 " line=%u flags=0x%x\n",
               r->u.node.id, r->u.node.parent, r->u.node.a, r->u.node.b, r->u.node.flags);
        break;
    case MT_T_NATIVENODE:
        printf("NATIVENODE id=%u parent=%u ip=0x%" PRIx64 "\n", r->u.node.id,
               r->u.node.parent, r->u.node.a);
        break;
    case MT_T_OBJECT:
        printf("OBJECT %s path=", r->u.object.unload ? "unload" : "load");
        put_str(r->u.object.path);
        printf(" base=0x%" PRIx64 " build_id=", r->u.object.base);
        for (uint32_t i = 0; i < r->u.object.build_id_len; i++)
            printf("%02x", r->u.object.build_id[i]);
        if (!r->u.object.build_id_len) putchar('-');
        printf(" segments=");
        for (uint32_t i = 0; i < r->u.object.nseg; i++)
            printf("%s0x%" PRIx64 "+0x%" PRIx64, i ? "," : "", r->u.object.seg[2 * i],
                   r->u.object.seg[2 * i + 1]);
        if (!r->u.object.nseg) putchar('-');
        putchar('\n');
        break;
    case MT_T_SAMPLE:
        printf("SAMPLE time_us=%" PRIu64 " rss=%" PRIu64, r->u.sample.time_us,
               r->u.sample.rss_bytes);
        if (r->u.sample.heap_bytes)
            printf(" heap=%" PRIu64, r->u.sample.heap_bytes - 1);
        printf("\n");
        break;
    case MT_T_GROUP:
        printf("GROUP py=%u native=%u thread=%u allocators=0x%x total=%" PRIu64
               "/%" PRIu64 " peak=%" PRIu64 "/%" PRIu64 " end=%" PRIu64 "/%" PRIu64 "\n",
               r->u.group.py_stack, r->u.group.native_stack, r->u.group.thread,
               r->u.group.allocators, r->u.group.total_bytes, r->u.group.total_count,
               r->u.group.peak_bytes, r->u.group.peak_count, r->u.group.end_bytes,
               r->u.group.end_count);
        break;
    case MT_T_TOTALS:
        printf("TOTALS allocations=%" PRIu64 " frees=%" PRIu64 " bytes=%" PRIu64
               " peak=%" PRIu64 " end=%" PRIu64 " end_marked=%u\n",
               r->u.totals->allocations, r->u.totals->frees,
               r->u.totals->allocated_bytes, r->u.totals->peak_bytes,
               r->u.totals->end_bytes, r->u.totals->end_marked);
        break;
    case MT_T_END:
        printf("END thread=%u\n", r->thread);
        break;
    case MT_T_PROGRAM:
        printf("PROGRAM python_version=");
        put_str(r->u.program.python_version);
        putchar('\n');
        break;
    case MT_T_TRAILER:
        printf("TRAILER ");
        if (r->u.trailer.exit.signal) printf("signal=%d", r->u.trailer.exit.signal);
        else printf("exit=%d", r->u.trailer.exit.code);
        printf(" duration_us=%" PRIu64 " events=%" PRIu64 " lost=%" PRIu64 "\n",
               r->u.trailer.duration_us, r->u.trailer.events, r->u.trailer.lost_events);
        break;
    default:
        printf("UNKNOWN tag=0x%02x\n", (unsigned)r->tag);
        break;
    }
}

int cmd_parse(int argc, char **argv)
{
    const char *file = NULL;
    int options = 1;  /* until "--" */
    for (int i = 1; i < argc; i++) {
        if (options && !strcmp(argv[i], "--")) {
            options = 0;
            continue;
        }
        if (options && (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))) {
            printf("usage: %s\n", usage);
            return 0;
        }
        if (options && argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "memtap: unknown option '%s'\nusage: %s\n", argv[i], usage);
            return MT_EXIT_USAGE;
        }
        if (file) {
            fprintf(stderr, "memtap: unexpected argument '%s'\nusage: %s\n", argv[i], usage);
            return MT_EXIT_USAGE;
        }
        file = mt_capture_arg(argv[i]);
    }
    if (!file) {
        fprintf(stderr, "memtap: no capture file given\nusage: %s\n", usage);
        return MT_EXIT_USAGE;
    }

    struct mt_reader *rd;
    uint32_t found = 0;
    int err = mt_reader_open(file, &rd, &found);
    if (err != MT_OK) die_capture(file, err, found);
    print_header(mt_reader_header(rd));
    int addresses = mt_header_has_addresses(mt_reader_header(rd));
    if (!addresses)  /* frees name their blocks by number: no map of live blocks */
        mt_reader_numbers_only(rd);

    struct mt_record rec;
    uint64_t n = 0;
    int rc;
    while ((rc = mt_reader_next(rd, &rec)) == 1) {
        print_record(&rec, addresses);
        n++;
    }
    int status = 0;
    if (rc == 0) {
        printf("# %" PRIu64 " records, complete\n", n);
    } else {
        uint64_t off = mt_reader_offset(rd);
        int saved = errno;
        printf("# %" PRIu64 " records, incomplete: %s at byte %" PRIu64 "\n", n,
               mt_strerror(rc), off);
        if (rc == MT_E_TRUNCATED) {
            mt_warn_incomplete(file, off, rc);
        } else {
            errno = saved;
            error("cannot read '%s' at byte %" PRIu64 ": %s", file, off,
                  rc == MT_E_IO ? strerror(errno) : mt_strerror(rc));
            status = MT_EXIT_FAIL;
        }
    }
    mt_reader_close(rd);
    if (fflush(stdout) || ferror(stdout)) {
        error("cannot write the output: %s", strerror(errno));
        status = MT_EXIT_FAIL;
    }
    return status;
}
