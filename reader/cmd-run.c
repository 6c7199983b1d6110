/* memtap run: starts the program with the shim preloaded and collects its
 * events beside it, in this process (design.md §1), then ends the way the
 * program ended. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "session.h"
#include "util.h"

struct run_opts {
    const char *output;
    int force, quiet;
    struct session_modes modes;
    const char *python;          /* --python */
    const char *package_python;  /* MEMTAP_DEFAULT_PYTHON: the Python package's
                                    own, for `python -m memtap run` */
};

/* The interpreter for scripts, -m and -c: --python, else the one the Python
 * package's memtap command runs under, else python3 on PATH. A script's
 * "#!" still names its own. */
static const char *default_python(const struct run_opts *o)
{
    return o->python ? o->python : o->package_python ? o->package_python : "python3";
}

/* What to exec, and the name the default capture is called after. */
struct target {
    char **argv;
    char name[128];
    int is_python;
    int is_binary;  /* run as it is: never handed to /bin/sh */
};

static const char run_usage[] =
    "usage: memtap run [-o FILE] [-f|--force] [--native] [--python PY] [-q|--quiet]\n"
    "                  [--trace-python-allocators] [--follow-fork] [--aggregate]\n"
    "                  [--addresses]\n"
    "                  (SCRIPT | -m MODULE | -c CODE | - | EXECUTABLE) [ARGS...]";

/* The file on PATH (or the path itself when it has a slash), or NULL. */
static char *find_on_path(const char *cmd)
{
    if (!*cmd)
        return NULL;
    if (strchr(cmd, '/'))
        return access(cmd, F_OK) == 0 ? strdup(cmd) : NULL;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        char buf[PATH_MAX];
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, n ? path : ".", cmd);
        struct stat st;
        if (access(buf, X_OK) == 0 && stat(buf, &st) == 0 && !S_ISDIR(st.st_mode))
            return strdup(buf);
        path += n + (path[n] == ':');
    }
    return NULL;
}

/* The interpreter a "#!" line names, when it names a Python, else NULL. */
/* The "#!" line of file, read into line: its interpreter and first
 * argument (NULL when none). @return 0, or -1 when file has no such line. */
static int read_shebang(const char *file, char *line, size_t size, char **interp, char **arg)
{
    FILE *f = fopen(file, "re");
    if (!f)
        return -1;
    char *got = fgets(line, (int)size, f);
    fclose(f);
    if (!got || strncmp(line, "#!", 2) != 0)
        return -1;
    char *p = line + 2 + strspn(line + 2, " \t");
    *interp = strsep(&p, " \t\r\n");
    *arg = p ? strsep(&p, " \t\r\n") : NULL;
    return 0;
}

static char *python_shebang(const char *file)
{
    char line[PATH_MAX + 64], *interp, *arg;
    if (read_shebang(file, line, sizeof line, &interp, &arg))
        return NULL;
    const char *base = strrchr(interp, '/') ? strrchr(interp, '/') + 1 : interp;
    if (!strcmp(base, "env") && arg && *arg)
        base = interp = arg;  /* #!/usr/bin/env python3 */
    if (strncmp(base, "python", 6) != 0)
        return NULL;
    return strdup(interp);
}

static int is_elf(const char *file)
{
    char magic[4] = {0};
    FILE *f = fopen(file, "re");
    if (!f)
        return 0;
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(magic, "\x7f" "ELF", 4);
}

/* Whether file is no text for a shell: ELF's magic, or a NUL in its first
 * line, as shells judge a file the kernel would not run. */
static int is_binary(const char *file)
{
    char head[80];
    if (is_elf(file))
        return 1;
    FILE *f = fopen(file, "re");
    if (!f)
        return 0;
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    for (size_t i = 0; i < n && head[i] != '\n'; i++)
        if (!head[i])
            return 1;
    return 0;
}

/* The interpreter binary itself. A launcher script on PATH (pyenv's shims,
 * wrappers) would be traced in place of Python and exec it untraced; ask
 * such a launcher where the real interpreter is. */
static char *python_binary(const char *python)
{
    char *file = find_on_path(python);
    if (!file)
        die("cannot find the Python interpreter '%s'", python);
    if (is_elf(file))
        return file;
    char cmd[PATH_MAX + 128];
    snprintf(cmd, sizeof cmd,
             "'%s' -c 'import sys; sys.stdout.write(sys.executable)' 2>/dev/null",
             file);
    FILE *p = popen(cmd, "r");
    char exe[PATH_MAX] = {0};
    size_t n = p ? fread(exe, 1, sizeof exe - 1, p) : 0;
    if (p)
        pclose(p);
    exe[n] = 0;
    if (n == 0 || !is_elf(exe))
        return file;
    free(file);
    return strdup(exe);
}

static void name_from(struct target *t, const char *path)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(t->name, sizeof t->name, "%s", base);
    char *dot = strrchr(t->name, '.');
    if (dot && !strcmp(dot, ".py"))
        *dot = 0;
    for (char *c = t->name; *c; c++)
        if (*c == '/' || *c == ' ')
            *c = '_';
    mt_name_without_controls(t->name);
}

static char **python_argv(const char *python, char **rest, int nrest,
                          const char *flag)
{
    char **argv = calloc((size_t)nrest + 3, sizeof *argv);
    int n = 0;
    argv[n++] = (char *)python;
    if (flag)
        argv[n++] = (char *)flag;
    for (int i = 0; i < nrest; i++)
        argv[n++] = rest[i];
    return argv;
}

/* Whether path's name is an interpreter's: python, python3, python3.12. */
static int is_python_name(const char *path)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (strncmp(base, "python", 6))
        return 0;
    return strspn(base + 6, "0123456789.") == strlen(base + 6);
}

/* Whether path is named as a Python script: *.py, *.pyw, *.pyz. */
static int has_python_extension(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot && !strchr(dot, '/') && dot > path &&
           (!strcmp(dot, ".py") || !strcmp(dot, ".pyw") || !strcmp(dot, ".pyz"));
}

/* Whether the directory dir holds what `python dir` runs. */
static int has_main(const char *dir)
{
    char path[PATH_MAX];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/__main__.%s", dir, i ? "pyc" : "py");
        if (access(path, R_OK) == 0)
            return 1;
    }
    return 0;
}

/* Whether the existing path is for Python to run rather than to exec, as
 * `python PATH` takes it: a directory with a __main__.py, or a file without
 * execute permission (a zip application, a script without the extension)
 * that is no ELF program and whose "#!", if any, names a Python (else it
 * is a program that cannot run, as for a shell). */
static int for_python(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    if (S_ISDIR(st.st_mode))
        return has_main(path);
    if (!S_ISREG(st.st_mode) || access(path, X_OK) == 0 || is_elf(path))
        return 0;
    char head[2] = {0};
    FILE *f = fopen(path, "re");
    size_t n = f ? fread(head, 1, 2, f) : 0;
    if (f)
        fclose(f);
    if (n < 2 || memcmp(head, "#!", 2) != 0)
        return 1;
    char *interp = python_shebang(path);
    free(interp);
    return interp != NULL;
}

/* What a shell does for a program it cannot run (err from exec or a
 * lookup): one line, and 127 when something was not found, else 126. */
static __attribute__((noreturn)) void cannot_run(const char *what, const char *why, int err)
{
    error("cannot run '%s': %s", what, why);
    exit(err == ENOENT ? 127 : 126);
}

/* Why exec of file failed with e, in words: for a file that is there,
 * ENOENT means its "#!" interpreter is not (the kernel's errno names
 * neither). */
static const char *exec_why(const char *file, int e)
{
    static char why[PATH_MAX + 64];
    char line[PATH_MAX + 64], *interp, *arg;
    if (e != ENOENT || access(file, F_OK) != 0 ||
        read_shebang(file, line, sizeof line, &interp, &arg))
        return strerror(e);
    snprintf(why, sizeof why, "its interpreter '%s' (#! line) is not there", interp);
    mt_name_without_controls(why);
    return why;
}

/* Works out what to run: a Python script, -m, -c, a script whose "#!"
 * names a Python (pytest), or any other executable. */
static void target_resolve(struct target *t, const struct run_opts *o,
                           int argc, char **argv)
{
    const char *first = argv[0];
    if (!strcmp(first, "-m") || !strcmp(first, "-c")) {
        if (argc < 2)
            die_usage("'%s' needs an argument\n%s", first, run_usage);
        t->argv = python_argv(python_binary(default_python(o)), argv + 1, argc - 1, first);
        name_from(t, first[1] == 'm' ? argv[1] : "python");
        t->is_python = 1;
        return;
    }
    if (!strcmp(first, "-")) {  /* the script on standard input, as `python -` */
        t->argv = python_argv(python_binary(default_python(o)), argv, argc, NULL);
        name_from(t, "stdin");
        t->is_python = 1;
        return;
    }
    /* A bare name is a command first (a directory named "python" in the
     * current directory does not make `memtap run python` a script). */
    char *file = NULL;
    int script = has_python_extension(first) || (strchr(first, '/') && for_python(first));
    if (!script && !(file = find_on_path(first)) && access(first, F_OK) == 0) {
        script = for_python(first);  /* not on PATH, but here */
        if (!script && (file = malloc(strlen(first) + 3)))
            sprintf(file, "./%s", first);
    }
    if (script) {
        if (access(first, F_OK) != 0)
            cannot_run(first, strerror(errno), errno);
        t->argv = python_argv(python_binary(default_python(o)), argv, argc, NULL);
        name_from(t, first);
        t->is_python = 1;
        return;
    }
    if (!file)
        cannot_run(first, "no such file or command", ENOENT);
    struct stat st;
    if (stat(file, &st) == 0 && S_ISDIR(st.st_mode))
        cannot_run(first, "a directory, with no __main__.py to run", EISDIR);
    name_from(t, file);
    if (is_python_name(file) && !is_elf(file)) {
        /* "python3" that is a launcher (pyenv's shim): run what it would
         * run, as for scripts; its own shells and their children (with
         * --follow-fork, each a capture) are not the program. */
        t->argv = argv;
        argv[0] = python_binary(file);
        free(file);
        t->is_python = 1;
        return;
    }
    char *interp = is_elf(file) ? NULL : python_shebang(file);
    if (interp) {
        argv[0] = file;
        t->argv = python_argv(python_binary(o->python ? o->python : interp),
                              argv, argc, NULL);
        free(interp);
        t->is_python = 1;
        return;
    }
    t->argv = argv;
    argv[0] = file;
    t->is_binary = is_binary(file);
}

/* Starts the program in place of this process: execvp, which hands a
 * text file the kernel does not run to /bin/sh, as shells do, but not a
 * binary one (sh would try its bytes as commands). Returns on failure. */
static void exec_target(const struct target *t)
{
    if (t->is_binary)
        execv(t->argv[0], t->argv);
    else
        execvp(t->argv[0], t->argv);
}

static const char *shim_path(void)
{
    static char path[PATH_MAX + 64];
    const char *dir = self_dir();
    snprintf(path, sizeof path, "%s/libmemtap.so", dir);
    if (access(path, R_OK) == 0)
        return path;
    snprintf(path, sizeof path, "%s/../lib/memtap/libmemtap.so", dir);
    if (access(path, R_OK) == 0)
        return path;
    snprintf(path, sizeof path, "%s/../lib64/memtap/libmemtap.so", dir);
    if (access(path, R_OK) == 0)
        return path;
    die("cannot find the shim libmemtap.so next to '%s'", dir);
}

static char *join_argv(char **argv)
{
    size_t n = 1;
    for (char **a = argv; *a; a++)
        n += strlen(*a) + 1;
    char *s = calloc(1, n);
    for (char **a = argv; *a; a++) {
        if (a != argv)
            strcat(s, " ");
        strcat(s, *a);
    }
    return s;
}

/* The shim maps the rings into the program, where a ulimit -v counts them
 * against the program's own memory: the limit grows by their size, so the
 * program keeps the room it had (its children inherit the larger limit).
 * @return 0, or -1 when it may not grow (a hard limit, no CAP_SYS_RESOURCE):
 * recording would leave the program less memory than it has without us. */
static struct rlimit rlimit_before;  /* when raised: for a program run untracked */
static int rlimit_raised;

static int rlimit_make_room(void)
{
    struct rlimit as;
    if (getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY ||
        as.rlim_cur > RLIM_INFINITY - MT_SHM_BYTES)
        return 0;
    rlimit_before = as;
    as.rlim_cur += MT_SHM_BYTES;
    if (as.rlim_max != RLIM_INFINITY && as.rlim_max < as.rlim_cur)
        as.rlim_max = as.rlim_cur;
    if (setrlimit(RLIMIT_AS, &as) != 0)
        return -1;
    rlimit_raised = 1;
    return 0;
}

/* memtap's own address space is not the program's, which the limit is
 * for: each child --follow-fork follows maps a transport of its own here.
 * As far as the hard limit lets, after the program has its limit. */
static void rlimit_own_room(void)
{
    struct rlimit as;
    if (rlimit_raised && getrlimit(RLIMIT_AS, &as) == 0) {
        as.rlim_cur = as.rlim_max;
        setrlimit(RLIMIT_AS, &as);
    }
}

/* A program run untracked has the limit it was given. */
static void rlimit_restore(void)
{
    if (rlimit_raised)
        setrlimit(RLIMIT_AS, &rlimit_before);
}

/* What memtap was started with: the program gets it back. */
static struct sigaction inherited_int, inherited_quit, inherited_pipe;

/* The child: waits until the capture is ready, then becomes the program.
 * If it cannot, it writes errno to failed (closed on exec) for memtap. */
static void child_exec(struct target *t, int go, int failed, int shm_fd,
                       const char *fork_name)
{
    char token;
    ssize_t n;
    do
        n = read(go, &token, 1);
    while (n < 0 && errno == EINTR);
    close(go);
    if (n == 1 && token == 'T') {
        /* Inheritable only until the shim maps it and closes it; memtap
         * keeps its own copy under the same number, where the program's
         * shim finds it again after the program exec'd another one. */
        int fd = fcntl(shm_fd, F_SETFD, 0) == 0 ? shm_fd : -1;
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0) {
            /* Fixed width: the program's environment has the same size
             * in every run, so its own allocations repeat exactly. */
            char env[64 + MT_FORK_NAME_MAX];
            snprintf(env, sizeof env, "%05d:%020llu%s%s", fd,
                     (unsigned long long)st.st_ino, *fork_name ? ":" : "", fork_name);
            setenv(MT_ENV_SHM, env, 1);
            const char *old = getenv("LD_PRELOAD");
            size_t len = strlen(shim_path()) + (old ? strlen(old) : 0) + 2;
            char *pre = malloc(len);
            if (!pre)
                _exit(127);
            /* the program's own list after the shim's, as it was (the shim
             * gives it back so) */
            snprintf(pre, len, "%s%s%s", shim_path(), old ? ":" : "", old ? old : "");
            setenv("LD_PRELOAD", pre, 1);
        }
    } else if (n != 1) {
        _exit(127);  /* memtap gave up before starting the program */
    } else {
        rlimit_restore();  /* run untracked */
    }
    sigaction(SIGINT, &inherited_int, NULL);  /* ignored stays ignored (a `&` job) */
    sigaction(SIGQUIT, &inherited_quit, NULL);
    sigaction(SIGPIPE, &inherited_pipe, NULL);
    exec_target(t);
    int e = errno;
    if (write(failed, &e, sizeof e) != sizeof e) { /* memtap sees EOF: exit 126 */ }
    _exit(e == ENOENT ? 127 : 126);
}

/* memtap cannot record (its own memory or descriptors are short: a tight
 * ulimit): the program runs all the same, as this process. */
/* Runs the program without memtap, after one line saying why (and err's
 * text, when not 0). */
static __attribute__((noreturn)) void run_untracked(const struct target *t, const char *why,
                                                    int err)
{
    if (err)
        error("%s: %s; running the program untracked", why, strerror(err));
    else
        error("%s; running the program untracked", why);
    rlimit_restore();
    fflush(NULL);
    exec_target(t);
    int e = errno;
    cannot_run(t->argv[0], exec_why(t->argv[0], e), e);
}

/* The program did not start (not executable, a bad interpreter line):
 * there is nothing to record, and no capture is left behind; memtap exits
 * as a shell would (126, or 127 when something was not found). */
static void exec_check(const struct target *t, int failed, pid_t pid,
                       struct session_capture *cap)
{
    int e;
    ssize_t n;
    do
        n = read(failed, &e, sizeof e);
    while (n < 0 && errno == EINTR);
    close(failed);
    if (n != sizeof e)
        return;  /* closed by the exec: it runs */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    session_capture_discard(cap);
    cannot_run(t->argv[0], exec_why(t->argv[0], e), e);
}

static volatile sig_atomic_t forward_pid;
static volatile sig_atomic_t session_leader;  /* memtap leads its session */

/* The signals memtap passes on to the program: what a supervisor sends
 * the process it started (to stop it, reopen its logs...), which would
 * otherwise end memtap and leave the program running unrecorded. SIGINT
 * and SIGQUIT too when a process sends them (`kill -INT`, a container's
 * stop signal): from the terminal, they reach the program's process group
 * themselves. */
static const int forwarded[] = {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGINT, SIGQUIT};

static void forward(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    /* Not back to the program, which signals its parent ("ready"); not a
     * terminal's Ctrl-C, Ctrl-\ or hangup, which went to the program's
     * process group already (a hangup only to the leader when memtap leads
     * the session). An alarm from the kernel is ours to pass on (one set
     * before memtap was exec'd: it was meant for what runs now). */
    int from_terminal = info->si_code == SI_KERNEL &&
                        (sig == SIGINT || sig == SIGQUIT || (sig == SIGHUP && !session_leader));
    if (forward_pid <= 0 || info->si_pid == forward_pid || from_terminal)
        return;
    kill((pid_t)forward_pid, sig);
}

/* Ends this process the way the program ended. */
static __attribute__((noreturn)) void end_like(int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);  /* the program's core, not ours */
        signal(sig, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(sig);
        exit(128 + sig);
    }
    exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

static void parse(int argc, char **argv, struct run_opts *o, int *first)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        SESSION_MODE_OPTIONS,
        {"python", required_argument, NULL, 'P'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    opterr = 0;  /* our own message, "memtap: ...", below */
    /* "+": options stop at the program; -m and -c are its options too. */
    for (;;) {
        if (optind < argc &&
            (!strcmp(argv[optind], "-m") || !strcmp(argv[optind], "-c")))
            break;
        if ((ch = getopt_long(argc, argv, "+:o:fqh", longopts, NULL)) == -1)
            break;
        switch (ch) {
        case 'o': o->output = optarg; break;
        case 'f': o->force = 1; break;
        case 'P': o->python = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'h': puts(run_usage); exit(0);
        case ':':
            die_usage("'%s' needs a value\n%s", argv[optind - 1], run_usage);
        default:
            if (!session_modes_set(&o->modes, ch))
                die_usage("unknown option '%s'\n%s", argv[optind - 1], run_usage);
        }
    }
    if (optind >= argc)
        die_usage("nothing to run\n%s", run_usage);
    if (o->output && !strcmp(o->output, "-"))
        die_usage("-o -: standard output is the program's; name a file (./- for one "
                  "called '-')\n%s", run_usage);
    const char *conflict = session_modes_conflict(&o->modes);
    if (conflict)
        die_usage("%s\n%s", conflict, run_usage);
    *first = optind;
}

/* Whether s holds a control character (mt_control_at). */
static int has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (mt_control_at(p))
            return 1;
    return 0;
}

/* A path with control characters, as bash's $'...' spells it: printed
 * raw, they would move the terminal's cursor or break the line. */
static void put_escaped_word(FILE *f, const char *path)
{
    fputs("$'", f);
    for (const unsigned char *p = (const unsigned char *)path; *p;) {
        size_t k = mt_control_at(p);
        if (*p == '\'' || *p == '\\')
            fprintf(f, "\\%c", *p++);
        else if (!k)
            putc(*p++, f);
        else
            for (; k; k--)
                fprintf(f, "\\x%02x", *p++);
    }
    putc('\'', f);
}

/* path as a shell word: quoted where a shell would split or expand it, and
 * not taken for an option. */
static void put_shell_word(FILE *f, const char *path)
{
    if (path[0] == '-')
        fputs("./", f);
    if (path[0] && strspn(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789_./+,:@%=-") == strlen(path)) {
        fputs(path, f);
        return;
    }
    if (has_control(path)) {
        put_escaped_word(f, path);
        return;
    }
    putc('\'', f);
    for (; *path; path++) {
        if (*path == '\'')
            fputs("'\\''", f);
        else
            putc(*path, f);
    }
    putc('\'', f);
}

/* A copy of fd high up, where the program is unlikely to have a
 * descriptor of its own (the number is the program's too: see
 * child_exec): from 500, or the highest the descriptor limit allows when
 * it is lower (ulimit -n 256). @return it, or -1. */
static int high_descriptor(int fd)
{
    int from = 500;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur <= (rlim_t)from)
        from = (int)rl.rlim_cur - 1;  /* at least MIN_DESCRIPTORS - 1 */
    int high = fcntl(fd, F_DUPFD_CLOEXEC, from);
    return high >= 0 ? high : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* memtap's own descriptors (pipes, the capture, children's captures and
 * their sockets with --follow-fork) need some room under the limit. */
#define MIN_DESCRIPTORS 64

/* Whether the descriptor limit leaves memtap that room. */
static int descriptors_enough(void)
{
    struct rlimit rl;
    return getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= MIN_DESCRIPTORS;
}

/* Exits when output is the program's executable, its script or another
 * file it is given, or will create: the capture would replace it (`-f`)
 * before the program runs, or both would write it. */
static void refuse_program_file(const char *output, const struct target *t)
{
    for (char **a = t->argv; *a; a++) {
        /* `--input=FILE` names a file as much as `FILE` does */
        const char *eq = **a == '-' ? strchr(*a, '=') : NULL;
        if (mt_same_path(output, *a) || (eq && mt_same_path(output, eq + 1)))
            die("'%s' is %s; give another output", output,
                a == t->argv ? "the program memtap runs"
                : a == t->argv + 1 && t->is_python ? "the script memtap runs"
                : "a file the program is given");
    }
}

/* The closing line, with the command to read the capture when it is a
 * file (a FIFO or a device has streamed it away). */
static void say_written(const char *output, uint64_t events)
{
    struct stat st;
    char *line = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&line, &len);  /* for one write (see vsay) */
    FILE *f = mem ? mem : stderr;
    fprintf(f, "memtap: wrote %llu events to ", (unsigned long long)events);
    if (has_control(output))
        put_escaped_word(f, output);
    else
        fprintf(f, "'%s'", output);
    if (stat(output, &st) == 0 && S_ISREG(st.st_mode)) {
        fputs("; next: memtap stats ", f);
        put_shell_word(f, output);
    }
    putc('\n', f);
    if (mem && fclose(mem) == 0)
        mt_write_stderr(line, len);
    free(line);
}

int cmd_run(int argc, char **argv)
{
    struct run_opts o = {0};
    int first;
    parse(argc, argv, &o, &first);
    /* Not the program's to see. */
    const char *pkg = getenv("MEMTAP_DEFAULT_PYTHON");
    if (pkg && *pkg)
        o.package_python = strdup(pkg);
    unsetenv("MEMTAP_DEFAULT_PYTHON");
    struct target t = {0};
    target_resolve(&t, &o, argc - first, argv + first);

    if (rlimit_make_room() < 0)
        run_untracked(&t, "a hard ulimit -v leaves no room for memtap's rings beside "
                          "the program's own memory (a soft limit, ulimit -S -v, does)", errno);
    if (!descriptors_enough())
        run_untracked(&t, "the limit on open files (ulimit -n) is under 64, which leaves "
                          "memtap no room for its own", 0);
    struct mt_collector *c;
    int shm_fd;
    if (mt_collector_new(session_shm_flags(&o.modes), (int)getpid(), &c, &shm_fd) != MT_OK)
        run_untracked(&t, "cannot set up shared memory", errno);
    int high = high_descriptor(shm_fd);
    if (high < 0)
        run_untracked(&t, "cannot set up shared memory", errno);
    close(shm_fd);
    shm_fd = high;

    if (o.output)
        refuse_program_file(o.output, &t);
    struct stat ost;
    if (o.output && stat(o.output, &ost) == 0 && S_ISDIR(ost.st_mode))
        die("'%s' is a directory; give a file to write the capture to", o.output);
    if (o.output && !o.force && mt_output_exists(o.output))
        die("'%s' exists; use -f to overwrite it", o.output);

    int sock = -1;
    char fork_name[MT_FORK_NAME_MAX] = "";
    if (o.modes.follow_fork && (sock = session_fork_listen(fork_name, sizeof fork_name)) < 0)
        die("cannot create a socket: %s", strerror(errno));
    int go[2], failed[2];
    if (pipe2(go, O_CLOEXEC) != 0 || pipe2(failed, O_CLOEXEC) != 0)
        die("cannot create a pipe: %s", strerror(errno));
    /* Ctrl-C is the program's to handle (forward() passes on a SIGINT that
     * a process sends memtap) */
    sigaction(SIGINT, &(struct sigaction){.sa_handler = SIG_IGN}, &inherited_int);
    sigaction(SIGQUIT, &(struct sigaction){.sa_handler = SIG_IGN}, &inherited_quit);
    /* A reader of our stderr that went away (`memtap run ... 2>&1 | head`)
     * must not kill memtap in the middle of a capture: its lines are lost,
     * the capture and the program's exit status are not. */
    sigaction(SIGPIPE, &(struct sigaction){.sa_handler = SIG_IGN}, &inherited_pipe);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("cannot fork: %s", strerror(errno));
    if (pid == 0) {
        close(go[1]);
        close(failed[0]);
        child_exec(&t, go[0], failed[1], shm_fd, fork_name);
    }
    close(go[0]);
    close(failed[1]);
    rlimit_own_room();
    forward_pid = pid;
    session_leader = getsid(0) == getpid();
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaction(forwarded[i], &(struct sigaction){.sa_sigaction = forward,
                                                    .sa_flags = SA_SIGINFO | SA_RESTART},
                  NULL);

    char output[PATH_MAX];
    if (o.output)
        snprintf(output, sizeof output, "%s", o.output);
    else
        snprintf(output, sizeof output, "memtap-%s.%d.bin", t.name, (int)pid);
    uint64_t start = session_now_us();
    struct mt_header h = {
        .flags = session_header_flags(&o.modes),
        .pid = (int32_t)pid,
        .start_time_us = session_wall_us(),
        .command = join_argv(t.argv),
    };
    struct session_capture main_cap = {.pid = pid, .c = c, .h = h, .start = start,
                               .last_flush = start};
    snprintf(main_cap.path, sizeof main_cap.path, "%s", output);
    int rc = session_capture_open(&main_cap, o.force);
    if (rc == MT_E_EXISTS) {
        close(go[1]);  /* the child exits without running the program */
        waitpid(pid, NULL, 0);
        die("'%s' exists; use -f to overwrite it", output);
    }
    if (rc != MT_OK) {
        error("cannot create '%s': %s; running the program untracked", output,
              rc == MT_E_IO ? strerror(errno) : mt_strerror(rc));
        if (write(go[1], "U", 1) != 1) { /* the child sees EOF and stops */ }
        close(go[1]);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        mt_collector_free(c);
        end_like(status);
    }
    if (write(go[1], "T", 1) != 1)
        die("cannot start '%s': %s", t.argv[0], strerror(errno));
    close(go[1]);
    exec_check(&t, failed[0], pid, &main_cap);

    struct session f = {.n = 1, .cap = 8, .sock = sock, .h = &h,
                        .force = o.force, .quiet = o.quiet, .end = SESSION_WAIT};
    f.caps = calloc(f.cap, sizeof *f.caps);
    if (!f.caps)
        die("out of memory");
    f.caps[0] = main_cap;
    int status;
    struct mt_exit exit;
    session_collect(&f, &status, &exit);
    uint64_t events = session_finish(&f, &exit);
    close(shm_fd);  /* kept open for a program that exec'd another */
    if (f.incomplete)  /* said even with -q: the file is not what it seems */
        (void)error("'%s' is incomplete: it holds what was written before "
                "writing failed", output);
    else if (!o.quiet)
        say_written(output, events);
    end_like(status);
}
