/* memtap extract (hidden; used by memtap.Tracker inside memtap run): cuts
 * the part of a capture between two block boundaries (offsets the shim's
 * memtap_mark_offset gave) into a capture of its own, while the run goes on
 * writing the original. The new capture holds every definition (threads,
 * code, stack nodes, objects) seen before the end, and the events and
 * samples of the blocks in [FROM, TO): what a Tracker started and stopped
 * at those points would have recorded. Frees of blocks allocated before
 * FROM are dropped, as such a Tracker never saw those blocks. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/capture.h"
#include "commands.h"
#include "util.h"

static const char extract_usage[] =
    "usage: memtap extract CAPTURE --from OFFSET --to OFFSET -o FILE [-f]\n"
    "                      [--duration-us N]\n"
    "(used by the Python API, memtap.Tracker under memtap run; not meant to be\n"
    "run by hand)";

static int is_definition(enum mt_tag tag)
{
    return tag == MT_T_THREAD || tag == MT_T_CODE || tag == MT_T_PYNODE ||
           tag == MT_T_NATIVENODE || tag == MT_T_OBJECT || tag == MT_T_PROGRAM;
}

static int is_scoped(enum mt_tag tag)
{
    return tag == MT_T_ALLOC || tag == MT_T_FREE || tag == MT_T_REALLOC ||
           tag == MT_T_MUNMAP || tag == MT_T_MREMAP || tag == MT_T_SAMPLE ||
           tag == MT_T_END;
}

/* The writer matches frees to blocks by address; a capture without
 * addresses reads back with 0 for them, so each block goes by its number
 * instead (unique while it lives, and never written: the new capture has
 * no addresses either). */
static void address_by_number(struct mt_record *rec)
{
    switch (rec->tag) {
    case MT_T_ALLOC:
        if (!mt_allocator_is_mapping(rec->u.ev.allocator))
            rec->u.ev.addr = rec->u.ev.number;
        break;
    case MT_T_FREE:
        rec->u.ev.addr = rec->u.ev.number;
        break;
    case MT_T_REALLOC:
        rec->u.ev.old_addr = rec->u.ev.old_number;
        rec->u.ev.addr = rec->u.ev.number;
        break;
    default:
        break;
    }
}

static uint64_t offset_arg(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        die_usage("'%s' is not an offset\n%s", s, extract_usage);
    return v;
}

int cmd_extract(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"from", required_argument, NULL, 'F'},
        {"to", required_argument, NULL, 'T'},
        {"duration-us", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *output = NULL;
    uint64_t from = UINT64_MAX, to = UINT64_MAX, duration = 0;
    int force = 0, ch;
    while ((ch = getopt_long(argc, argv, "o:fh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'o': output = optarg; break;
        case 'f': force = 1; break;
        case 'F': from = offset_arg(optarg); break;
        case 'T': to = offset_arg(optarg); break;
        case 'D': duration = offset_arg(optarg); break;
        case 'h': puts(extract_usage); return 0;
        default: die_usage("%s", extract_usage);
        }
    }
    if (!output || from == UINT64_MAX || to == UINT64_MAX || from > to ||
        optind + 1 != argc)
        die_usage("%s", extract_usage);
    const char *path = mt_capture_arg(argv[optind]);
    if (mt_same_file(output, path))
        die("'%s' is the capture this cuts; give another output", output);

    struct mt_reader *r;
    uint32_t version;
    int rc = mt_reader_open(path, &r, &version);
    if (rc != MT_OK)
        die_capture(path, rc, version);
    const struct mt_header *h = mt_reader_header(r);
    if (h->flags & MT_HF_AGGREGATE)
        die("'%s' is an aggregate capture: it has no events to cut", path);
    int addresses = mt_header_has_addresses(h);
    struct mt_writer *w;
    rc = mt_writer_open(output, force, h, &w);
    if (rc == MT_E_EXISTS)
        die("'%s' exists; pass overwrite=True to replace it", output);
    if (rc != MT_OK)
        die("cannot create '%s': %s", output,
            rc == MT_E_IO ? strerror(errno) : mt_strerror(rc));

    /* Frees of blocks numbered before the first one in [FROM, TO) are
     * dropped by the writer: they are not counted. */
    uint64_t events = 0, first_number = UINT64_MAX;
    struct mt_record rec;
    for (;;) {
        rc = mt_reader_next(r, &rec);
        /* The run may be writing the block after TO right now: whatever
         * happens there is not ours. */
        if (mt_reader_offset(r) >= to)
            break;
        if (rc != 1) {
            mt_writer_close(w, NULL);
            unlink(output);
            die("'%s': %s before offset %" PRIu64, path,
                rc == 0 ? "the capture ends" : mt_strerror(rc), to);
        }
        int scoped = is_scoped(rec.tag);
        if (scoped && mt_reader_offset(r) < from)
            continue;
        if (!scoped && !is_definition(rec.tag))
            continue;
        if (!addresses)
            address_by_number(&rec);
        if (mt_writer_add(w, &rec) != MT_OK)
            break;
        int numbered = rec.tag == MT_T_ALLOC || rec.tag == MT_T_REALLOC ||
                       rec.tag == MT_T_MREMAP;
        if (numbered && rec.u.ev.number && first_number == UINT64_MAX)
            first_number = rec.u.ev.number;
        if (rec.tag == MT_T_FREE && rec.u.ev.number < first_number)
            continue;
        if (scoped && rec.tag != MT_T_SAMPLE && rec.tag != MT_T_END)
            events++;
    }
    mt_reader_close(r);
    struct mt_trailer tr = {{0, MT_EXIT_STOPPED}, duration, events, 0};
    if (mt_writer_close(w, &tr) != MT_OK)
        die("cannot write '%s': %s", output, strerror(errno));
    return 0;
}
