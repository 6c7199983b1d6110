/* Unit test for the replay's live-block bookkeeping (src/replay.c): a
 * capture written with the real writer, read back twice — blocks keyed by
 * address (the reader maps numbers back to addresses) and keyed by
 * allocation number (the reports' way: recent numbers in a ring, survivors
 * moved to a hash map) — and the same capture written without addresses,
 * read by number, must give the same analysis, and all the numbers a model
 * of the workload computes:
 *  - blocks that outlive the ring (freed 100,000+ allocations later), many
 *    of them, freed in and out of order;
 *  - long runs of mappings, whose numbers are never heap blocks (gaps in
 *    the ring bigger than the ring);
 *  - reallocs, frees of unknown addresses, the ring emptying and
 *    restarting;
 *  - the temporary counts (freed before the thread's next allocation),
 *    which need each block's place in its thread's order.
 * Exit 0 on success; prints each failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/capture.h"
#include "../../src/replay.h"

#define CHECK_SEED 0x9e3779b97f4a7c15ull
#include "check.h"

/* The model: live heap blocks by address, and the heap's high-water mark. */
#define MAXLIVE 400000
static struct { uint64_t addr, size; uint32_t py; } live[MAXLIVE];
static size_t nlive;
static uint64_t heap, peak, nallocs, nfrees, allocated;

static struct mt_writer *w[2];  /* with addresses, without */
static uint64_t next_addr = 0x10000;

static void add(const struct mt_record *r)
{
    for (int i = 0; i < 2; i++)
        if (mt_writer_add(w[i], r) != MT_OK) {
            fprintf(stderr, "mt_writer_add failed\n");
            exit(2);
        }
}

static void alloc(uint64_t size, uint32_t py)
{
    struct mt_record r = {.tag = MT_T_ALLOC, .thread = 1};
    r.u.ev.allocator = MT_A_MALLOC;
    r.u.ev.addr = next_addr;
    r.u.ev.size = size;
    r.u.ev.py_stack = py;
    add(&r);
    live[nlive].addr = next_addr, live[nlive].size = size, live[nlive].py = py;
    nlive++;
    next_addr += 64;
    heap += size, nallocs++, allocated += size;
    if (heap > peak)
        peak = heap;
}

static void release(size_t i)
{
    struct mt_record r = {.tag = MT_T_FREE, .thread = 1};
    r.u.ev.addr = live[i].addr;
    add(&r);
    heap -= live[i].size, nfrees++;
    live[i] = live[--nlive];
}

/* A mapping made and unmapped: a number that is never a heap block. */
static void mapping(void)
{
    struct mt_record r = {.tag = MT_T_ALLOC, .thread = 1};
    r.u.ev.allocator = MT_A_MMAP_FILE;  /* not in the heap: the peak stays */
    r.u.ev.addr = 0x7f0000000000ull;
    r.u.ev.size = 4096;
    r.u.ev.py_stack = 1;
    add(&r);
    r = (struct mt_record){.tag = MT_T_MUNMAP, .thread = 1};
    r.u.ev.addr = 0x7f0000000000ull;
    r.u.ev.size = 4096;
    add(&r);
}

static void write_capture(char path[2][PATH_MAX])
{
    for (int i = 0; i < 2; i++) {
        struct mt_header h = {.flags = i ? 0 : MT_HF_ADDRESSES, .pid = 1,
                              .start_time_us = 1, .command = "test-replay"};
        if (mt_writer_open(path[i], 1, &h, &w[i]) != MT_OK) {
            fprintf(stderr, "cannot write %s: %s\n", path[i], strerror(errno));
            exit(2);
        }
    }
    struct mt_record r = {.tag = MT_T_THREAD};
    r.u.thread.index = 1;
    r.u.thread.tid = 7;
    r.u.thread.name = "main";
    add(&r);

    /* 2,000 survivors, then churn: most blocks die young, one in 50 is
     * freed much later (picked at random among all live blocks). */
    for (int i = 0; i < 2000; i++)
        alloc(1000 + (uint64_t)i, 2);
    for (int i = 0; i < 300000; i++) {
        uint64_t x = rnd();
        if (nlive > 2000 && x % 100 < 48) {
            size_t k = x % 50 == 0 ? (size_t)(rnd() % nlive) : nlive - 1 - (size_t)(rnd() % 8 % nlive);
            release(k);
        } else if (x % 100 < 49) {
            struct mt_record f = {.tag = MT_T_FREE, .thread = 1};
            f.u.ev.addr = 0x1000 + (x & 0xff0);  /* never allocated: dropped */
            add(&f);
        } else {
            alloc(16 + x % 4000, 10 + (uint32_t)(x >> 60));
        }
        if (i == 150000)  /* a gap of numbers bigger than the ring */
            for (int k = 0; k < 70000; k++)
                mapping();
    }
    /* a realloc of a survivor: ends it, makes a block */
    struct mt_record re = {.tag = MT_T_REALLOC, .thread = 1};
    re.u.ev.allocator = MT_A_REALLOC;
    re.u.ev.old_addr = live[0].addr;
    re.u.ev.addr = next_addr;
    re.u.ev.size = 12345;
    re.u.ev.py_stack = 4;
    add(&re);
    heap -= live[0].size, nfrees++;
    live[0] = (typeof(live[0])){next_addr, 12345, 4};
    next_addr += 64;
    heap += 12345, nallocs++, allocated += 12345;
    if (heap > peak)
        peak = heap;
    /* everything but 10 blocks ends; the ring empties, then restarts */
    while (nlive > 10)
        release(nlive - 1);
    for (int k = 0; k < 100; k++)
        mapping();
    for (int i = 0; i < 5; i++)
        alloc(777, 5);
    struct mt_trailer t = {.duration_us = 10, .events = 1};
    for (int i = 0; i < 2; i++)
        if (mt_writer_close(w[i], &t) != MT_OK) {
            fprintf(stderr, "mt_writer_close failed\n");
            exit(2);
        }
}

/* direct: allocations and frees go in through mt_replay_alloc and
 * mt_replay_free (the collector's way with --aggregate), not as records;
 * 2: after another program's, which mt_replay_restart forgets (an exec). */
static struct mt_analysis *replay_file(const char *path, int by_number, int totals_only,
                                       int direct)
{
    struct mt_reader *rd;
    if (mt_reader_open(path, &rd, NULL) != MT_OK) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    struct mt_analysis_opts opts = {.temporary_n = 1, .totals_only = totals_only};
    struct mt_replay *rp = mt_replay_new(&opts);
    if (by_number) {
        mt_reader_numbers_only(rd);
        mt_replay_key_by_number(rp);
    }
    if (direct == 2) {
        /* at the capture's own addresses, on other stacks and threads */
        for (uint64_t i = 0; i < 5000; i++)
            CHECK(mt_replay_alloc(rp, 1 + i % 3, MT_A_MALLOC, 0x10000 + 64 * i,
                                  1000 + i, 90 + (uint32_t)(i % 7), 0) == MT_OK,
                  "the first program's allocation");
        CHECK(mt_replay_free(rp, 1, 0x10000) == MT_OK, "the first program's free");
        CHECK(mt_replay_restart(rp) == MT_OK, "mt_replay_restart");
    }
    struct mt_record r;
    int rc;
    while ((rc = mt_reader_next(rd, &r)) == 1) {
        int added;
        if (direct && r.tag == MT_T_ALLOC)
            added = mt_replay_alloc(rp, r.thread, r.u.ev.allocator, r.u.ev.addr,
                                    r.u.ev.size, r.u.ev.py_stack, r.u.ev.native_stack);
        else if (direct && r.tag == MT_T_FREE)
            added = mt_replay_free(rp, r.thread, r.u.ev.addr);
        else
            added = mt_replay_add(rp, &r);
        CHECK(added == MT_OK, "replay refused a record");
    }
    CHECK(rc == 0, "reading ended with %d", rc);
    struct mt_analysis *a = mt_replay_finish(rp, mt_reader_header(rd));
    mt_reader_close(rd);
    return a;
}

static const struct mt_group *group_of_stack(const struct mt_analysis *a, uint32_t py)
{
    for (uint32_t i = 0; i < a->ngroups; i++)
        if (a->groups[i].py_stack == py)
            return &a->groups[i];
    return NULL;
}

int main(void)
{
    char path[2][PATH_MAX];
    const char *dir = getenv("TMPDIR");
    for (int i = 0; i < 2; i++)
        snprintf(path[i], sizeof path[i], "%s/memtap-test-replay-%d%s.bin",
                 dir && *dir ? dir : "/tmp", (int)getpid(), i ? "-noaddr" : "");
    write_capture(path);
    struct mt_analysis *by_addr = replay_file(path[0], 0, 0, 0);
    struct mt_analysis *by_num = replay_file(path[0], 1, 0, 0);
    struct mt_analysis *no_addr = replay_file(path[1], 1, 0, 0);
    struct mt_analysis *totals = replay_file(path[1], 1, 1, 0);
    struct mt_analysis *direct = replay_file(path[0], 0, 0, 1);
    struct mt_analysis *restarted = replay_file(path[0], 0, 0, 2);
    unlink(path[0]);
    unlink(path[1]);

    uint64_t end = 0;
    for (size_t i = 0; i < nlive; i++)
        end += live[i].size;
    const struct mt_analysis *as[5] = {by_addr, by_num, no_addr, direct, restarted};
    static const char *const hows[5] = {"by address", "by number",
                                        "by number, no addresses",
                                        "by address, direct calls",
                                        "direct calls after a restart"};
    for (int k = 0; k < 5; k++) {
        const struct mt_analysis *a = as[k];
        const char *how = hows[k];
        /* the file mappings are the allocator's alone: neither in the heap
         * nor in the totals */
        CHECK(a->total_allocations == nallocs,
              "%s: %" PRIu64 " allocations, want %" PRIu64, how, a->total_allocations,
              nallocs);
        CHECK(a->total_frees == nfrees, "%s: %" PRIu64 " frees, want %" PRIu64, how,
              a->total_frees, nfrees);
        CHECK(a->allocators[MT_A_MMAP_FILE].count == 70100,
              "%s: %" PRIu64 " file mappings, want 70100", how,
              a->allocators[MT_A_MMAP_FILE].count);
        CHECK(a->total_allocated_bytes == allocated, "%s: %" PRIu64 " bytes, want %" PRIu64,
              how, a->total_allocated_bytes, allocated);
        CHECK(a->peak_bytes == peak, "%s: peak %" PRIu64 ", want %" PRIu64, how,
              a->peak_bytes, peak);
        CHECK(a->end_bytes == end, "%s: end %" PRIu64 ", want %" PRIu64, how, a->end_bytes,
              end);
        const struct mt_group *g = group_of_stack(a, 5);
        CHECK(g && g->end_count == 5 && g->end_bytes == 5 * 777,
              "%s: the blocks after the ring restarted", how);
        g = group_of_stack(a, 4);
        CHECK(g && g->total_count == 1 && g->end_count == 1 && g->end_bytes == 12345,
              "%s: the realloc", how);
    }
    for (int k = 1; k < 5; k++) {
        const struct mt_analysis *b = as[k];
        CHECK(by_addr->ngroups == b->ngroups, "groups: %u by address, %u %s",
              by_addr->ngroups, b->ngroups, hows[k]);
        for (uint32_t i = 0; i < by_addr->ngroups && i < b->ngroups; i++)
            CHECK(!memcmp(&by_addr->groups[i], &b->groups[i], sizeof b->groups[i]),
                  "group %u differs %s: temp %" PRIu64 "/%" PRIu64 ", peak %" PRIu64
                  "/%" PRIu64 ", end %" PRIu64 "/%" PRIu64, i, hows[k],
                  by_addr->groups[i].temp_count, b->groups[i].temp_count,
                  by_addr->groups[i].peak_bytes, b->groups[i].peak_bytes,
                  by_addr->groups[i].end_bytes, b->groups[i].end_bytes);
    }
    /* totals only: the same totals, peak and end of the run; each group's
     * totals, nothing else */
    CHECK(totals->total_allocations == by_addr->total_allocations &&
          totals->total_frees == by_addr->total_frees &&
          totals->total_allocated_bytes == by_addr->total_allocated_bytes &&
          totals->peak_bytes == by_addr->peak_bytes &&
          totals->peak_time_us == by_addr->peak_time_us &&
          totals->end_bytes == by_addr->end_bytes &&
          !memcmp(totals->histogram, by_addr->histogram, sizeof totals->histogram) &&
          !memcmp(totals->allocators, by_addr->allocators, sizeof totals->allocators) &&
          totals->ngroups == by_addr->ngroups, "totals only: the run's totals differ");
    for (uint32_t i = 0; i < totals->ngroups && i < by_addr->ngroups; i++) {
        const struct mt_group *t = &totals->groups[i], *g = &by_addr->groups[i];
        CHECK(t->py_stack == g->py_stack && t->total_bytes == g->total_bytes &&
              t->total_count == g->total_count && t->allocators == g->allocators &&
              !t->peak_bytes && !t->peak_count && !t->end_bytes && !t->end_count &&
              !t->temp_bytes && !t->temp_count, "totals only: group %u", i);
    }
    uint64_t temp = 0;
    for (uint32_t i = 0; i < by_num->ngroups; i++)
        temp += by_num->groups[i].temp_count;
    CHECK(temp > 10000, "temporary blocks: %" PRIu64, temp);
    mt_analysis_free(by_addr);
    mt_analysis_free(by_num);
    mt_analysis_free(no_addr);
    mt_analysis_free(totals);
    mt_analysis_free(direct);
    mt_analysis_free(restarted);
    if (failures) {
        fprintf(stderr, "test-replay: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test-replay: ok\n");
    return 0;
}
