/* The collector: drains the traced process's rings (src/transport.h),
 * merges them into one order by event number, turns thread-local ids into
 * capture-wide ones, and writes records to a capture. Runs in memtap's own
 * process, never in the traced one. One collector, one thread. */
#ifndef MT_COLLECTOR_H
#define MT_COLLECTOR_H

#include <stdint.h>
#include "capture.h"
#include "transport.h"

struct mt_collector;

/* Creates the transport: a memfd sized MT_SHM_BYTES, mapped, its header
 * set for a collector with pid collector_pid and run flags (MT_SHMF_*).
 * @return MT_OK and *out, *fd (the memfd, close-on-exec; hand it to the
 * child as "<fd>:<inode>" in MT_ENV_SHM), or MT_E_IO / MT_E_NOMEM. */
int mt_collector_new(uint32_t flags, int collector_pid,
                     struct mt_collector **out, int *fd);

/* Collects from a transport a followed child created (memfd fd, which
 * stays the caller's to close). @return MT_OK and *out, MT_E_CORRUPT when
 * fd is not a transport, MT_E_IO, MT_E_NOMEM. */
int mt_collector_adopt(int fd, struct mt_collector **out);

/* Starts writing into w (owned by the caller; close it after
 * mt_collector_finish), whose header is h (copied; h->command must
 * outlive c). After an exec the capture starts over with h, the command
 * replaced by the new program's. */
void mt_collector_attach(struct mt_collector *c, struct mt_writer *w,
                         const struct mt_header *h);

/* --aggregate: records are replayed into r (owned by the caller) instead
 * of written; save it with mt_replay_save. */
struct mt_replay;
void mt_collector_aggregate(struct mt_collector *c, struct mt_replay *r);

/* Idle drains (one every ~0.5 ms in memtap run) an unwritten number is
 * waited for before it is counted lost: about 2 seconds. */
#define MT_GAP_PATIENCE 4000u

/* Moves what the rings hold into the capture, in order. An event whose
 * predecessor number is still being written stays for the next call.
 * @return the number of records moved, or MT_E_IO when writing failed. */
long mt_collector_drain(struct mt_collector *c);

/* The traced process is gone: drains everything, skipping numbers that
 * will never be written (threads killed mid-hook). @return as drain. */
long mt_collector_finish(struct mt_collector *c);

/* Adds a memory sample (RSS at a time since the start). */
int mt_collector_sample(struct mt_collector *c, uint64_t time_us, uint64_t rss);

/* Tells the traced process where its capture is (absolute), for
 * memtap.Tracker blocks inside memtap run (the shim's memtap_mark). */
void mt_collector_publish_path(struct mt_collector *c, const char *path);

/* Times the traced process's threads found their ring full and waited for
 * the collector (a running count). */
uint32_t mt_collector_ring_waits(const struct mt_collector *c);

/* 1 once the shim in the traced process has set itself up (it is
 * recording); 0 while it has not, or never will (a static program). */
int mt_collector_ready(const struct mt_collector *c);

/* The executable the shim announced it runs in ("" before it did): a
 * process running another one exec'd a program without the shim. Copied
 * into buf (cap bytes, NUL-ended). */
void mt_collector_program_exe(const struct mt_collector *c, char *buf, size_t cap);

/* 1 once the shim stopped recording (memtap_stop, the Python API): drain,
 * finish and close; the process itself runs on. */
int mt_collector_stopped(const struct mt_collector *c);

/* Events written and numbers lost so far. */
uint64_t mt_collector_events(const struct mt_collector *c);
uint64_t mt_collector_lost(const struct mt_collector *c);

/* h, with the command line of the program the process exec'd last when
 * it did (the capture's header from then on): for a header written after.
 * The command points into c. */
struct mt_header mt_collector_header(const struct mt_collector *c, const struct mt_header *h);

/* NUL-separated arguments (n bytes, as /proc/PID/cmdline has them) joined
 * by spaces. @return it (malloc'ed), or NULL when there are none or no
 * memory. */
char *mt_args_join(const char *args, size_t n);

/* How often the program exec'd another one that went on recording (the
 * capture started over each time: docs/transport.md); *path gets the last
 * one's executable ("" when unknown), valid until mt_collector_free. */
uint32_t mt_collector_execs(const struct mt_collector *c, const char **path);

/* The status the process gave exit or _exit, once drained: how a followed
 * child ended when its parent reaped it before memtap could look. -1: not
 * seen (still running, or killed by a signal). */
int mt_collector_exit_code(const struct mt_collector *c);

/* 1 when the shim reported an internal failure and stopped. */
int mt_collector_shim_disabled(const struct mt_collector *c);

/* Unmaps the transport and frees c (NULL accepted). */
void mt_collector_free(struct mt_collector *c);

#endif
