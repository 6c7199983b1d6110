/* Recording one traced process (and the children it forks, with
 * --follow-fork) into captures: the collector loop shared by `memtap run`
 * (the program is our child) and `memtap collect` (the Python API's
 * collector: the program is our parent and says when it stopped).
 * Single-threaded; may print errors (reader/ rules). */
#ifndef MT_SESSION_H
#define MT_SESSION_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "../src/collector.h"
#include "../src/replay.h"

/* The recording modes `memtap run` and `memtap collect` both take, under
 * the same option names. */
struct session_modes { int native, pyalloc, follow_fork, aggregate, addresses; };

/* Their getopt_long entries (<getopt.h>), for a command's option table. */
#define SESSION_MODE_OPTIONS \
    {"native", no_argument, NULL, 'N'}, \
    {"trace-python-allocators", no_argument, NULL, 'A'}, \
    {"follow-fork", no_argument, NULL, 'F'}, \
    {"aggregate", no_argument, NULL, 'G'}, \
    {"addresses", no_argument, NULL, 'D'}

/* Sets the mode getopt_long returned as ch. @return 1, or 0 when ch is not
 * a mode's. */
int session_modes_set(struct session_modes *m, int ch);

/* NULL, or why these modes cannot go together (a usage error). */
const char *session_modes_conflict(const struct session_modes *m);

/* The transport's flags (MT_SHMF_*) and the capture header's (MT_HF_*). */
uint32_t session_shm_flags(const struct session_modes *m);
uint32_t session_header_flags(const struct session_modes *m);

/* Monotonic and wall-clock time in microseconds. */
uint64_t session_now_us(void);
uint64_t session_wall_us(void);

/* One process being recorded into a capture of its own. */
struct session_capture {
    pid_t pid;
    struct mt_collector *c;
    struct mt_writer *w;         /* a full capture, or */
    struct mt_replay *agg;       /* --aggregate: saved every second */
    struct mt_header h;
    char *command;               /* h.command when owned (a child's), or NULL */
    char path[PATH_MAX];
    uint64_t start, last_flush, last_sample;
    uint64_t pace_at, pace_cpu;  /* the last pacing decision's clock */
    uint32_t pace_waits;
    uint64_t contend_at, contend_stall;  /* pace_contention()'s last look */
    uint64_t pace_bytes, contend_bytes;  /* the capture's size at each of those looks */
    int contended;
    int told;                    /* writing failed (said once): incomplete */
    char exe_other[PATH_MAX];    /* the process seen running another
                                    executable than its shim announced */
};

/* Creates cap->path (refusing to replace a file unless force) and connects
 * cap->c to it: a writer, or with MT_HF_AGGREGATE in cap->h.flags a replay
 * whose saves replace the file. pid, c, h, path, start must be set.
 * @return an mt_err (MT_E_EXISTS when the file exists and !force). */
int session_capture_open(struct session_capture *cap, int force);

/* Drains, samples RSS every 10 ms, flushes every 100 ms (aggregate:
 * checkpoints every second). @return records moved. */
long session_capture_step(struct session_capture *cap, uint64_t now);

/* Drains what is left, writes the trailer (exit NULL: the process is still
 * running, the capture reads as incomplete), frees cap->c. @return events. */
uint64_t session_capture_close(struct session_capture *cap, const struct mt_exit *exit);

/* Closes the capture of a program that never started and removes its
 * file; frees cap->c. */
void session_capture_discard(struct session_capture *cap);

/* How a process that is not our child ended, from /proc.
 * @return 1 ended (*exit set; signal -1 when unknown), 0 still running. */
int session_process_ended(pid_t pid, struct mt_exit *exit);

enum session_end {
    SESSION_WAIT = 0,      /* caps[0] is our child: waitpid it */
    SESSION_STOPPED = 1,   /* caps[0] is not: end when its shim stops or it dies */
};

struct session {
    struct session_capture *caps;   /* [0] is the traced process; malloc'ed */
    size_t n, cap;
    int sock;                       /* --follow-fork announcements, or -1 */
    const struct mt_header *h;      /* children's captures start from it */
    int force, quiet;
    enum session_end end;
    int incomplete;                 /* set by session_finish: caps[0]'s
                                       writing failed */
    unsigned unrecorded;            /* children not recorded after the first
                                       one said why (a full disk: one line) */
};

/* --follow-fork: a datagram socket bound to a fresh abstract name (written
 * to name, MT_FORK_NAME_MAX bytes), where children announce themselves.
 * @return the socket (non-blocking, close-on-exec), or -1 (errno set). */
int session_fork_listen(char *name, size_t cap);

/* Collects until the traced process ends (SESSION_WAIT: *status gets its
 * wait status) or stops recording / dies (SESSION_STOPPED: *status 0, or
 * its wait status as read from /proc when it died). Children's captures
 * are closed as they end. */
void session_collect(struct session *s, int *status, struct mt_exit *exit);

/* Takes the last fork announcements, closes caps[0] with exit and the
 * children still recorded (incomplete when still running), frees caps.
 * @return the events written to caps[0]. */
uint64_t session_finish(struct session *s, const struct mt_exit *exit);

#endif
