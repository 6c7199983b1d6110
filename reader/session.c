/* The collector loop shared by memtap run and memtap collect (session.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/transport.h"
#include "session.h"
#include "util.h"

uint64_t session_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t session_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

int session_modes_set(struct session_modes *m, int ch)
{
    switch (ch) {
    case 'N': m->native = 1; return 1;
    case 'A': m->pyalloc = 1; return 1;
    case 'F': m->follow_fork = 1; return 1;
    case 'G': m->aggregate = 1; return 1;
    case 'D': m->addresses = 1; return 1;
    default: return 0;
    }
}

const char *session_modes_conflict(const struct session_modes *m)
{
    if (m->addresses && m->aggregate)  /* an aggregate capture has no blocks */
        return "--addresses and --aggregate exclude each other";
    return NULL;
}

uint32_t session_shm_flags(const struct session_modes *m)
{
    return (m->native ? MT_SHMF_NATIVE : 0) | (m->pyalloc ? MT_SHMF_PYALLOC : 0) |
           (m->follow_fork ? MT_SHMF_FOLLOW_FORK : 0) |
           (m->addresses ? MT_SHMF_ADDRESSES : 0);
}

uint32_t session_header_flags(const struct session_modes *m)
{
    return (m->native ? MT_HF_NATIVE : 0) | (m->pyalloc ? MT_HF_PYALLOC : 0) |
           (m->follow_fork ? MT_HF_FOLLOW_FORK : 0) |
           (m->aggregate ? MT_HF_AGGREGATE : 0) |
           (m->addresses ? MT_HF_ADDRESSES : 0);
}

/* The text of a small /proc file into buf (NUL-terminated). @return 0, or
 * -1 (missing, or empty). */
static int read_text(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return 0;
}

/* The text of /proc/<pid>/<file> into buf. @return 0, or -1 (the process
 * is gone, or the file is empty). */
static int read_proc(pid_t pid, const char *file, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    return read_text(path, buf, cap);
}

/* The kernel's PF_EXITING task flag (/proc/PID/stat's ninth field). */
#define TASK_EXITING 0x4u

/* Whether process pid has begun to exit (its memory is being torn down). */
static int exiting(pid_t pid)
{
    char buf[1024];
    unsigned flags;
    if (read_proc(pid, "stat", buf, sizeof buf) < 0)
        return 1;
    const char *p = strrchr(buf, ')');  /* the name may hold anything */
    return !p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %u", &flags) != 1 ||
           (flags & TASK_EXITING);
}

/* Process pid's resident memory, 0 when it is gone or going: a process
 * that exits reads less and less (12 KiB, then 0) as its memory goes. */
static uint64_t read_rss(pid_t pid)
{
    char buf[128];
    unsigned long long size, resident;
    if (read_proc(pid, "statm", buf, sizeof buf) < 0 ||
        sscanf(buf, "%llu %llu", &size, &resident) != 2 || exiting(pid))
        return 0;
    return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* CPU time process pid has used so far, in µs (0 when gone). */
static uint64_t process_cpu_us(pid_t pid)
{
    char buf[1024];
    if (read_proc(pid, "stat", buf, sizeof buf) < 0)
        return 0;
    const char *p = strrchr(buf, ')');  /* the name may hold anything */
    unsigned long long utime, stime;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &utime, &stime) != 2)
        return 0;
    return (utime + stime) * 1000000ull / (uint64_t)sysconf(_SC_CLK_TCK);
}

/* CPU time this process (the collector) has used so far, in µs. */
static uint64_t own_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static double usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (double)n : 1;
}

/* Below this rate of capture growth (bytes a second; records and
 * compressed blocks alike) high compression costs the program little even
 * on busy cores: at LZ4 HC's slowest (~40 MB/s on native events) under 5 %
 * of one core. A program's start-up and its imports come at such rates
 * (numpy's, while OpenBLAS's threads keep the cores busy a moment), and
 * there HC makes blocks 15-20 % smaller than the fast mode. */
#define PACE_HC_ALWAYS_RATE (2u << 20)

/* Whether the capture grew faster than PACE_HC_ALWAYS_RATE since it was
 * bytes_then long, at time at (a capture started over is shorter). */
static int streaming(const struct session_capture *cap, uint64_t bytes_then, uint64_t at,
                     uint64_t now)
{
    uint64_t bytes = mt_writer_bytes(cap->w);
    return bytes > bytes_then &&
           (bytes - bytes_then) * 1000000 > (uint64_t)PACE_HC_ALWAYS_RATE * (now - at);
}

/* The collector shares the cores with the program. While the two keep
 * them all busy and the capture streams in, or a thread of the program
 * waited for ring space, the CPU spent on high compression is taken from
 * the program: blocks are then compressed with LZ4's fast mode. Otherwise
 * high compression runs on a core that would idle, for files ~25-40 %
 * smaller. Decided every 200 ms, with hysteresis. */
static void pace(struct session_capture *cap, uint64_t now)
{
    if (!cap->w || now - cap->pace_at < 200000)
        return;
    uint64_t cpu = process_cpu_us(cap->pid) + own_cpu_us();
    uint32_t waits = mt_collector_ring_waits(cap->c);
    if (cap->pace_at && cpu >= cap->pace_cpu) {
        static double cpus;
        if (!cpus)
            cpus = usable_cpus();
        double busy = (double)(cpu - cap->pace_cpu) / (double)(now - cap->pace_at);
        int fast_pays = streaming(cap, cap->pace_bytes, cap->pace_at, now);
        if (waits != cap->pace_waits || (busy > cpus - 0.1 && fast_pays))
            mt_writer_set_fast(cap->w, 1);
        else if (busy < cpus - 0.35 || !fast_pays)
            mt_writer_set_fast(cap->w, 0);
    }
    cap->pace_at = now;
    cap->pace_cpu = cpu;
    cap->pace_waits = waits;
    cap->pace_bytes = mt_writer_bytes(cap->w);
}

/* Microseconds, since boot, during which some runnable thread on this
 * machine waited for a core (the kernel's CPU pressure count, exact at any
 * interval, where process CPU times come in 10 ms ticks). @return 0 when
 * the kernel does not count it. */
static uint64_t cpu_stall_us(void)
{
    char buf[256];
    if (read_text("/proc/pressure/cpu", buf, sizeof buf) < 0)
        return 0;
    const char *total = strstr(buf, "total=");  /* the first line's: "some" */
    return total ? strtoull(total + 6, NULL, 10) : 0;
}

/* pace() decides only every 200 ms, and a busy program would pay for high
 * compression all that time: every 20 ms, when threads waited for a core
 * more than a tenth of the time while the capture streamed in, twice in a
 * row (once is a blip), blocks switch to fast mode at once; pace() alone
 * switches back. */
static void pace_contention(struct session_capture *cap, uint64_t now)
{
    if (!cap->w || now - cap->contend_at < 20000)
        return;
    uint64_t stall = cpu_stall_us();
    if (!stall)
        return;
    int waited = cap->contend_at &&
                 stall - cap->contend_stall > (now - cap->contend_at) / 10 &&
                 streaming(cap, cap->contend_bytes, cap->contend_at, now);
    if (waited && cap->contended)
        mt_writer_set_fast(cap->w, 1);
    cap->contended = waited;
    cap->contend_at = now;
    cap->contend_stall = stall;
    cap->contend_bytes = mt_writer_bytes(cap->w);
}

/* Notes which executable the process runs (at each sample), when it is
 * not the one its shim announced (an exec'd program's shim announces
 * itself in turn): the process exec'd a program that runs without the shim
 * (LD_PRELOAD replaced, a static or setuid program), and nothing it does is
 * recorded. */
static void shim_watch(struct session_capture *cap)
{
    char proc[64], exe[PATH_MAX], announced[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/%d/exe", (int)cap->pid);
    ssize_t n = readlink(proc, exe, sizeof exe - 1);
    if (n <= 0)
        return;  /* it ended, or is not ours to look at */
    exe[n] = 0;
    mt_collector_program_exe(cap->c, announced, sizeof announced);
    if (announced[0] && strcmp(exe, announced) != 0)
        memcpy(cap->exe_other, exe, (size_t)n + 1);
    else
        cap->exe_other[0] = 0;
}

/* What the process ran that was not recorded, said once at its end. */
static void shim_report(const struct session_capture *cap, const char *who)
{
    char announced[PATH_MAX];
    mt_collector_program_exe(cap->c, announced, sizeof announced);
    if (!mt_collector_ready(cap->c))
        (void)error("%s never started memtap's shim (a statically linked "
                "or setuid program, its LD_PRELOAD replaced, or the shim could not set "
                "up): nothing was recorded", who);
    else if (cap->exe_other[0] && strcmp(cap->exe_other, announced) != 0)
        (void)error("%s exec'd '%s', which runs without memtap's shim "
                "(LD_PRELOAD replaced, a statically linked or setuid program): "
                "not recorded from there on", who, cap->exe_other);
}


/* Moves what the process's rings hold into its capture, samples its RSS
 * every 10 ms and flushes every 100 ms. @return records moved. */
long session_capture_step(struct session_capture *cap, uint64_t now)
{
    long moved = mt_collector_drain(cap->c);
    int drain_errno = errno;  /* what follows may set it: a socket's EAGAIN */
    /* The first sample 10 ms after the start, as for the rest: one taken at
     * once reads the exec'd image before the loader has mapped anything. */
    if (now - (cap->last_sample ? cap->last_sample : cap->start) >= 10000) {
        /* 0: the program is exiting or has exited; a sample then would
         * draw its RSS falling to nothing. */
        uint64_t rss = read_rss(cap->pid);
        /* now was read before a child announced this pass set its start */
        if (rss)
            mt_collector_sample(cap->c, now > cap->start ? now - cap->start : 0, rss);
        shim_watch(cap);
        cap->last_sample = now;
    }
    pace_contention(cap, now);
    pace(cap, now);
    if (cap->w && now - cap->last_flush >= 100000) {
        mt_writer_flush(cap->w);
        cap->last_flush = now;
    }
    /* A checkpoint: if memtap itself is killed, this much survives. */
    if (cap->agg && now - cap->last_flush >= 1000000) {
        struct mt_header h = mt_collector_header(cap->c, &cap->h);
        if (mt_replay_save(cap->agg, cap->path, &h, NULL) != MT_OK && !cap->told) {
            error("cannot write '%s': %s", cap->path, strerror(errno));
            cap->told = 1;
        }
        cap->last_flush = now;
    }
    if (moved < 0 && !cap->told) {
        error("cannot write '%s': %s; the program continues untracked",
              cap->path, strerror(drain_errno));
        cap->told = 1;
    }
    return moved > 0 ? moved : 0;
}

/* Drains what is left and closes the capture; exit NULL: the process is
 * still running (the capture reads as incomplete). @return the events. */
uint64_t session_capture_close(struct session_capture *cap, const struct mt_exit *exit)
{
    mt_collector_finish(cap->c);
    struct mt_trailer tr = {
        .duration_us = session_now_us() - cap->start,
        .events = mt_collector_events(cap->c),
        .lost_events = mt_collector_lost(cap->c),
    };
    if (exit)
        tr.exit = *exit;
    int code = mt_collector_exit_code(cap->c);
    if (exit && exit->signal < 0 && code >= 0)
        tr.exit = (struct mt_exit){code, 0};  /* reaped by its parent first */
    int rc;
    if (cap->agg) {
        struct mt_header h = mt_collector_header(cap->c, &cap->h);
        rc = mt_replay_save(cap->agg, cap->path, &h, exit ? &tr : NULL);
        mt_analysis_free(mt_replay_finish(cap->agg, &cap->h));
    } else {
        rc = mt_writer_close(cap->w, exit ? &tr : NULL);
    }
    if (rc != MT_OK && !cap->told)
        error("cannot finish '%s': %s", cap->path, strerror(errno));
    if (rc != MT_OK)
        cap->told = 1;
    mt_collector_free(cap->c);
    free(cap->command);
    cap->command = NULL;
    return tr.events;
}

void session_capture_discard(struct session_capture *cap)
{
    if (cap->agg)
        mt_analysis_free(mt_replay_finish(cap->agg, &cap->h));
    else
        mt_writer_close(cap->w, NULL);
    mt_collector_free(cap->c);
    unlink(cap->path);
    free(cap->command);
    cap->command = NULL;
}

/* Creates the capture file (refusing to replace one without force) and
 * connects the collector to it: a writer, or with --aggregate a replay
 * whose saves replace the file. @return an mt_err. */
/* Hands cap->c what it writes to: cap's replay, or its writer (and the
 * file's name, which the Python API asks for). */
static void capture_connect(struct session_capture *cap)
{
    if (cap->agg) {
        mt_collector_aggregate(cap->c, cap->agg);
    } else {
        mt_collector_attach(cap->c, cap->w, &cap->h);
        mt_collector_publish_path(cap->c, cap->path);
    }
}

int session_capture_open(struct session_capture *cap, int force)
{
    int rc = mt_writer_open(cap->path, force, &cap->h, &cap->w);
    if (rc != MT_OK)
        return rc;
    if (cap->h.flags & MT_HF_AGGREGATE) {
        mt_writer_close(cap->w, NULL);  /* readable (incomplete) until saved */
        cap->w = NULL;
        struct mt_analysis_opts by_thread = {.split_threads = 1};
        cap->agg = mt_replay_new(&by_thread);
        if (!cap->agg)
            return MT_E_NOMEM;
    }
    capture_connect(cap);
    return MT_OK;
}

/* The capture name of a child: the parent's with the child's pid before
 * ".bin" (memtap-app.4242.bin -> memtap-app.4242.4250.bin). @return 0, or
 * -1 when it would be longer than PATH_MAX. */
static int child_path(char *out, const char *parent, pid_t pid)
{
    struct stat st;
    if (stat(parent, &st) == 0 && S_ISCHR(st.st_mode)) {
        /* /dev/null takes every capture: no file beside it in /dev */
        int k = snprintf(out, PATH_MAX, "%s", parent);
        return k < 0 || k >= PATH_MAX ? -1 : 0;
    }
    size_t n = strlen(parent);
    int stem = (int)(n > 4 && !strcmp(parent + n - 4, ".bin") ? n - 4 : n);
    int k = snprintf(out, PATH_MAX, "%.*s.%d.bin", stem, parent, (int)pid);
    return k < 0 || k >= PATH_MAX ? -1 : 0;
}

int session_fork_listen(char *name, size_t cap)
{
    uint64_t nonce;
    if (getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != (ssize_t)sizeof nonce)
        nonce = session_now_us() ^ ((uint64_t)getpid() << 40);
    /* Fixed width: the program's environment has the same size in every
     * run, so its own allocations repeat exactly. */
    int len = snprintf(name, cap, MT_FORK_NAME_PREFIX "%010d.%016llx", (int)getpid(),
                       (unsigned long long)nonce);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (len < 0 || (size_t)len >= cap || (size_t)len + 1 > sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(addr.sun_path + 1, name, (size_t)len);  /* abstract: no file */
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int on = 1;
    if (sock < 0)
        return -1;
    if (setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0 ||
        bind(sock, (struct sockaddr *)&addr,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len)) != 0) {
        int e = errno;
        close(sock);
        errno = e;
        return -1;
    }
    return sock;
}

/* A followed child exec'd a program that records into the transport c:
 * its capture starts over with it, as the traced program's does at an exec
 * (the capture is the program the process became). */
static void capture_restart(struct session_capture *cap, struct mt_collector *c,
                            char *command)
{
    mt_collector_free(cap->c);  /* the exec ended every thread writing to it */
    cap->c = c;
    free(cap->command);
    cap->command = command;
    cap->h.command = command;
    cap->h.start_time_us = session_wall_us();
    int rc = cap->agg ? mt_replay_restart(cap->agg) : mt_writer_restart(cap->w, &cap->h);
    capture_connect(cap);
    if (rc != MT_OK)
        error("cannot start '%s' over: %s", cap->path,
              rc == MT_E_IO ? strerror(errno) : mt_strerror(rc));
}

/* The memfd a datagram carries, if it comes from a process of our user that
 * is the pid its note names. @return the descriptor, or -1. */
static int fork_note_fd(struct msghdr *msg, const struct mt_fork_note *note)
{
    int fd = -1, trusted = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET)
            continue;
        if (cm->cmsg_type == SCM_RIGHTS) {
            size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < n; i++) {
                int one;
                memcpy(&one, CMSG_DATA(cm) + i * sizeof(int), sizeof one);
                if (fd < 0)
                    fd = one;
                else
                    close(one);  /* one memfd per note */
            }
        } else if (cm->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(cm), sizeof cred);
            /* root's: also a program that gave up root before it forks
             * (a server's workers) */
            trusted = (cred.uid == getuid() || cred.uid == geteuid() || geteuid() == 0) &&
                      cred.pid == note->pid;
        }
    }
    if (fd >= 0 && !trusted) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        die("out of memory");
    return d;
}

/* Takes the announcements of newly forked children. */
static void follow_accept(struct session *f)
{
    for (;;) {
        struct {
            struct mt_fork_note note;
            char command[MT_FORK_COMMAND_MAX];
        } m;
        struct mt_fork_note note = {0, 0};
        struct iovec iov = {&m, sizeof m};
        union {
            char buf[CMSG_SPACE(4 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
            struct cmsghdr align;
        } u;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        ssize_t got = recvmsg(f->sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return;
        if (got >= (ssize_t)sizeof note)
            note = m.note;
        int fd = fork_note_fd(&msg, &note);
        if (got < (ssize_t)sizeof note || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) ||
            fd < 0) {
            if (fd >= 0)
                close(fd);
            continue;  /* not a child of ours: ignored */
        }
        struct mt_collector *c;
        int rc = mt_collector_adopt(fd, &c);
        close(fd);
        if (rc == MT_E_CORRUPT) {
            error("process %d sent something other than a memtap transport; ignored",
                  (int)note.pid);
            continue;
        }
        struct session_capture *same = NULL, *parent = &f->caps[0];
        for (size_t i = 0; i < f->n; i++) {
            if (f->caps[i].pid == note.ppid)
                parent = &f->caps[i];
            if (f->caps[i].pid == note.pid)
                same = &f->caps[i];
        }
        /* A forked child runs its parent's program; an exec'd one says. */
        char *command = mt_args_join(m.command, (size_t)got - sizeof note);
        if (rc == MT_OK && same) {
            if (same == &f->caps[0]) {
                mt_collector_free(c);  /* the program's exec has its own path */
                free(command);
            } else {
                capture_restart(same, c, command ? command : xstrdup(same->h.command));
            }
            continue;
        }
        struct session_capture cap = {.pid = note.pid, .c = c, .start = session_now_us()};
        cap.last_flush = cap.start;
        cap.h = *f->h;
        cap.h.pid = note.pid;
        cap.h.start_time_us = session_wall_us();
        /* the parent's command as it is now: it may have exec'd since */
        cap.command = command ? command
                              : xstrdup(mt_collector_header(parent->c, &parent->h).command);
        cap.h.command = cap.command;
        if (rc == MT_OK && child_path(cap.path, parent->path, note.pid) < 0) {
            mt_collector_free(c);
            rc = MT_E_IO;
            errno = ENAMETOOLONG;
        } else if (rc == MT_OK && (rc = session_capture_open(&cap, f->force)) != MT_OK) {
            mt_collector_free(cap.c);
        }
        if (rc != MT_OK) {
            /* once: a full disk fails every child alike (session_finish
             * counts the others) */
            const char *why = rc == MT_E_IO ? strerror(errno) : mt_strerror(rc);
            if (f->unrecorded++ == 0 && cap.path[0])
                error("cannot record child %d into '%s': %s", (int)note.pid, cap.path, why);
            else if (f->unrecorded == 1)
                error("cannot record child %d: %s", (int)note.pid, why);
            free(cap.command);
            continue;
        }
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 8;
            f->caps = realloc(f->caps, f->cap * sizeof *f->caps);
            if (!f->caps)
                die("out of memory");
        }
        f->caps[f->n++] = cap;
    }
}

/* How a process that is not ours ended, from /proc while it is a zombie.
 * @return 1 ended (*exit set, signal -1 when unknown), 0 still running. */
int session_process_ended(pid_t pid, struct mt_exit *exit)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    *exit = (struct mt_exit){0, -1};
    if (n <= 0)
        return 1;  /* reaped: gone, its status unknown to us */
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || p[2] != 'Z')
        return 0;
    /* Field 52 is the exit status as waitpid reports it. */
    char *last = strrchr(buf, ' ');
    int status = last ? atoi(last + 1) : 0;
    *exit = (struct mt_exit){WIFEXITED(status) ? WEXITSTATUS(status) : 0,
                             WIFSIGNALED(status) ? WTERMSIG(status) : 0};
    return 1;
}

/* SESSION_WAIT: the traced process is our child. @return 1 when it ended
 * (*status set). */
static int ended_waited(struct session *f, int *status)
{
    pid_t got = waitpid(f->caps[0].pid, status, WNOHANG);
    if (got == f->caps[0].pid)
        return 1;
    if (got < 0 && errno != EINTR) {
        *status = 0;
        return 1;
    }
    return 0;
}

#define SMALL_DRAIN 4096

void session_collect(struct session *f, int *status, struct mt_exit *exit)
{
    *status = 0;
    for (;;) {
        uint64_t now = session_now_us();
        long moved = 0;
        if (f->sock >= 0)
            follow_accept(f);
        for (size_t i = 0; i < f->n; i++)
            moved += session_capture_step(&f->caps[i], now);
        for (size_t i = 1; i < f->n; i++) {
            struct mt_exit child;
            if (session_process_ended(f->caps[i].pid, &child)) {
                /* A child that exec'd sent its note before it ended, maybe
                 * since the look above: the capture starts over with the
                 * program it ran, and takes its records, before it closes. */
                if (f->sock >= 0) {
                    follow_accept(f);
                    session_capture_step(&f->caps[i], now);
                }
                session_capture_close(&f->caps[i], &child);
                if (!f->quiet)
                    (void)error("child %d recorded in '%s'%s",
                            (int)f->caps[i].pid, f->caps[i].path,
                            f->caps[i].told ? " (incomplete: writing it failed)" : "");
                f->caps[i--] = f->caps[--f->n];
            }
        }
        if (f->end == SESSION_WAIT) {
            if (ended_waited(f, status)) {
                *exit = (struct mt_exit){WIFEXITED(*status) ? WEXITSTATUS(*status) : 0,
                                         WIFSIGNALED(*status) ? WTERMSIG(*status) : 0};
                return;
            }
        } else if (mt_collector_stopped(f->caps[0].c)) {
            *exit = (struct mt_exit){0, MT_EXIT_STOPPED};   /* it runs on */
            return;
        } else if (session_process_ended(f->caps[0].pid, exit)) {
            return;
        }
        /* A drain that found little: the program writes slower than we
         * read. Waiting lets events gather (a ring holds ~20,000), so each
         * pass moves thousands instead of a handful: the fixed cost of a
         * pass (listing rings, looking at the process) then stops costing
         * a core, and the ring heads the threads write stop moving to our
         * cache after every event. */
        if (moved < SMALL_DRAIN) {
            struct timespec ts = {0, moved == 0 ? 500 * 1000 : 200 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

uint64_t session_finish(struct session *f, const struct mt_exit *exit)
{
    if (f->sock >= 0) {
        follow_accept(f);
        close(f->sock);  /* later children are told at once: not followed */
        f->sock = -1;
    }
    if (f->unrecorded > 1)
        (void)error("%u more children were not recorded", f->unrecorded - 1);
    const char *exe;
    if (!f->quiet && mt_collector_execs(f->caps[0].c, &exe))
        (void)error("the program exec'd '%s'; the capture records it from "
                "there on", exe);
    if (f->end == SESSION_WAIT)  /* a Tracker's process had the shim from the start */
        shim_report(&f->caps[0], "the program");
    uint64_t events = session_capture_close(&f->caps[0], exit);
    f->incomplete = f->caps[0].told;
    for (size_t i = 1; i < f->n; i++) {
        struct mt_exit child;
        int ended = session_process_ended(f->caps[i].pid, &child);
        session_capture_close(&f->caps[i], ended ? &child : NULL);
        if (!f->quiet)
            (void)error("child %d recorded in '%s'%s",
                    (int)f->caps[i].pid, f->caps[i].path,
                    f->caps[i].told ? " (incomplete: writing it failed)"
                    : ended ? "" : " (still running: incomplete)");
    }
    free(f->caps);
    f->caps = NULL;
    f->n = f->cap = 0;
    return events;
}
