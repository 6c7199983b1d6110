/* memtap collect (hidden; started by the Python API, memtap.Tracker): the
 * collector for a process that loads the shim at run time. Creates the
 * transport and the capture, prints "<collector pid> <memfd> <inode>" on
 * stdout, with --follow-fork " <fork socket name>" too (the parent opens
 * /proc/<pid>/fd/<memfd> and hands it and the name to the shim in
 * MEMTAP_SHM), then collects until the shim stops (memtap_stop) or the
 * process dies, and closes the capture. Exit 0 when the capture is
 * complete, 1 when it could not be created or written. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/transport.h"
#include "commands.h"
#include "session.h"
#include "util.h"

static const char collect_usage[] =
    "usage: memtap collect -o FILE --pid PID [-f] [--native] [--aggregate]\n"
    "                      [--trace-python-allocators] [--follow-fork]\n"
    "                      [--addresses] [--command TEXT]\n"
    "(used by the Python API, memtap.Tracker; not meant to be run by hand)";

int cmd_collect(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"pid", required_argument, NULL, 'p'},
        SESSION_MODE_OPTIONS,
        {"command", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *output = NULL, *command = "";
    struct session_modes modes = {0};
    int force = 0;
    long pid = 0;
    int ch;
    char *end;
    opterr = 0;  /* our own message, "memtap: ...", below */
    while ((ch = getopt_long(argc, argv, ":o:fh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'o': output = optarg; break;
        case 'f': force = 1; break;
        case 'p':
            errno = 0;
            pid = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || pid <= 0 || pid > INT_MAX)
                die_usage("--pid wants a process id, not '%s'\n%s", optarg, collect_usage);
            break;
        case 'C': command = optarg; break;
        case 'h': puts(collect_usage); return 0;
        case ':':
            die_usage("'%s' needs a value\n%s", argv[optind - 1], collect_usage);
        default:
            if (!session_modes_set(&modes, ch))
                die_usage("unknown option '%s'\n%s", argv[optind - 1], collect_usage);
        }
    }
    if (optind != argc)
        die_usage("unexpected argument '%s'\n%s", argv[optind], collect_usage);
    if (!output || !pid)
        die_usage("%s\n%s", output ? "--pid is needed" : "-o FILE is needed", collect_usage);
    const char *conflict = session_modes_conflict(&modes);
    if (conflict)
        die_usage("%s\n%s", conflict, collect_usage);
    /* Ctrl-C goes to the whole process group: the program decides what
     * happens, and we see it stop or die. */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);

    struct mt_collector *c;
    int shm_fd;
    if (mt_collector_new(session_shm_flags(&modes), (int)getpid(), &c, &shm_fd) != MT_OK)
        die("cannot set up shared memory: %s", strerror(errno));
    struct mt_header h = {
        .flags = session_header_flags(&modes),
        .pid = (int32_t)pid,
        .start_time_us = session_wall_us(),
        .command = command,
    };
    uint64_t start = session_now_us();
    struct session_capture cap = {.pid = (pid_t)pid, .c = c, .h = h, .start = start,
                                  .last_flush = start};
    snprintf(cap.path, sizeof cap.path, "%s", output);
    int rc = session_capture_open(&cap, force);
    if (rc == MT_E_EXISTS)
        die("'%s' exists; pass overwrite=True to replace it", output);
    if (rc != MT_OK)
        die("cannot create '%s': %s", output,
            rc == MT_E_IO ? strerror(errno) : mt_strerror(rc));

    int sock = -1;
    char fork_name[MT_FORK_NAME_MAX] = "";
    if (modes.follow_fork && (sock = session_fork_listen(fork_name, sizeof fork_name)) < 0)
        die("cannot create a socket: %s", strerror(errno));
    struct stat st;
    if (fstat(shm_fd, &st) != 0)
        die("cannot stat the transport: %s", strerror(errno));
    printf("%d %d %llu%s%s\n", (int)getpid(), shm_fd, (unsigned long long)st.st_ino,
           *fork_name ? " " : "", fork_name);
    if (fflush(stdout) != 0)
        die("cannot tell the parent where the transport is");

    /* The parent opens our descriptor through /proc; it then holds its own. */
    struct session s = {.n = 1, .cap = 8, .sock = sock, .h = &h, .force = force,
                        .quiet = 1, .end = SESSION_STOPPED};
    s.caps = calloc(s.cap, sizeof *s.caps);
    if (!s.caps)
        die("out of memory");
    s.caps[0] = cap;
    int status;
    struct mt_exit exit;
    session_collect(&s, &status, &exit);
    session_finish(&s, &exit);
    /* The program keeps its mapping of the transport (a thread still inside
     * a hook may write to it); its rings' pages need not stay: a Tracker
     * per test would otherwise keep ~1 MiB of shared memory per test. A
     * late write just faults in a fresh page nobody reads. */
    if (fallocate(shm_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)MT_SHM_RINGS_OFFSET,
                  (off_t)(MT_SHM_BYTES - MT_SHM_RINGS_OFFSET)) != 0 && errno != EOPNOTSUPP)
        fprintf(stderr, "memtap: cannot release the transport's memory: %s\n",
                strerror(errno));
    close(shm_fd);
    return 0;
}
