/* See analysis.h: reading a capture through a replay (src/replay.h), and
 * resolving stacks for display. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "analysis.h"

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int mt_analyze(const char *path, const struct mt_analysis_opts *opts,
               struct mt_analysis **out, uint32_t *found_version)
{
    struct mt_reader *rd;
    int rc = mt_reader_open(path, &rd, found_version);
    if (rc != MT_OK)
        return rc;
    struct mt_replay *replay = mt_replay_new(opts);
    if (!replay) {
        mt_reader_close(rd);
        return MT_E_NOMEM;
    }
    /* One map of live blocks, the replay's, keyed by allocation number:
     * the reader need not turn numbers back into addresses. */
    mt_reader_numbers_only(rd);
    mt_replay_key_by_number(replay);
    int show = opts->progress && isatty(2);
    double start = seconds();
    int shown = 0;
    struct mt_record r;
    uint64_t n = 0;
    while ((rc = mt_reader_next(rd, &r)) == 1) {
        if ((rc = mt_replay_add(replay, &r)) != MT_OK)
            break;  /* reported like a damaged block: what came before stands */
        if (show && (++n & 0xffff) == 0 && seconds() - start > 1.0) {
            fprintf(stderr, "\rmemtap: reading '%s': %3d%%", path,
                    (int)(100.0 * (double)mt_reader_offset(rd) /
                          (double)(mt_reader_file_size(rd) + 1)));
            shown = 1;
        }
    }
    if (shown)
        fprintf(stderr, "\r\033[K");
    struct mt_analysis *a = mt_replay_finish(replay, mt_reader_header(rd));
    if (rc < 0) {
        a->stop_error = rc;
        a->stop_offset = mt_reader_offset(rd);
    }
    mt_reader_close(rd);
    *out = a;
    return MT_OK;
}

int mt_analysis_py_frames(const struct mt_analysis *a, uint32_t py_stack,
                          struct mt_frame *out, int max)
{
    int n = 0;
    /* Parents always have smaller ids, so the walk ends. */
    for (uint32_t id = py_stack; id && id < a->npynodes && n < max;
         id = a->pynodes[id].parent) {
        const struct mt_node_info *node = &a->pynodes[id];
        const struct mt_code_info *c =
            node->a < a->ncodes && a->codes[node->a].name ? &a->codes[node->a] : NULL;
        struct mt_frame *f = &out[n++];
        memset(f, 0, sizeof *f);
        f->is_python = 1;
        f->is_entry = (node->flags & 1) != 0;
        if (!c) {
            f->function = "<unknown>";
            f->file = "";
            continue;
        }
        f->function = c->qualname;
        f->file = c->filename;
        f->line = (int32_t)node->b;
    }
    return n;
}

int mt_analysis_native_ips(const struct mt_analysis *a, uint32_t native_stack,
                           uint64_t *out, int max)
{
    int n = 0;
    for (uint32_t id = native_stack; id && id < a->nnativenodes && n < max;
         id = a->nativenodes[id].parent)
        out[n++] = a->nativenodes[id].a;
    return n;
}

const char *mt_analysis_thread_name(const struct mt_analysis *a, uint32_t index)
{
    static char buf[64];
    if (index < a->nthreads && a->threads[index].name && *a->threads[index].name)
        return a->threads[index].name;
    snprintf(buf, sizeof buf, "thread %u",
             index < a->nthreads ? a->threads[index].tid : index);
    return buf;
}
