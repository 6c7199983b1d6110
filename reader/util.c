#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "../src/capture.h"
#include "util.h"

size_t mt_control_at(const unsigned char *p)
{
    if (p[0] < 0x20 || p[0] == 0x7f)
        return 1;
    if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)  /* C1, as UTF-8 */
        return 2;
    if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9))  /* U+2028/9 */
        return 3;
    return 0;
}

void mt_name_without_controls(char *s)
{
    const unsigned char *r = (const unsigned char *)s;
    char *w = s;
    while (*r) {
        size_t k = mt_control_at(r);
        *w++ = k ? '_' : (char)*r;
        r += k ? k : 1;
    }
    *w = 0;
}

void mt_put_printable(FILE *f, const char *s, int lines)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t k = lines && *p == '\n' ? 0 : mt_control_at(p);
        putc(k ? '?' : *p, f);
        p += k ? k : 1;
    }
}

/* Messages name files and programs, which may hold control characters
 * (an escape would reach the terminal): those become '?', and line
 * breaks too but in a usage text (lines). */
static void vsay(int lines, const char *fmt, va_list ap)
{
    char small[1024], *msg = small;
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= (int)sizeof small && (msg = malloc((size_t)n + 1)) != NULL)
        vsnprintf(msg, (size_t)n + 1, fmt, again);
    va_end(again);
    fflush(stdout);
    /* One write: the program may write to the same stderr meanwhile, and
     * its lines must not take memtap's characters in. */
    char *line = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&line, &len);
    FILE *f = mem ? mem : stderr;
    fputs("memtap: ", f);
    mt_put_printable(f, msg ? msg : small, lines);
    fputc('\n', f);
    if (mem && fclose(mem) == 0)
        mt_write_stderr(line, len);
    free(line);
    if (msg != small)
        free(msg);
}

void mt_write_stderr(const char *s, size_t n)
{
    while (n) {
        ssize_t k = write(2, s, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;
        s += k;
        n -= (size_t)k;
    }
}

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(0, fmt, ap);
    va_end(ap);
    exit(MT_EXIT_FAIL);
}

void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(1, fmt, ap);
    va_end(ap);
    exit(MT_EXIT_USAGE);
}

int error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(0, fmt, ap);
    va_end(ap);
    return -1;
}

void die_capture(const char *path, int err, uint32_t found_version)
{
    if (err == MT_E_IO)
        die("cannot read '%s': %s", path, strerror(errno));
    if (err == MT_E_VERSION)
        die("cannot read '%s': format version %u is newer than this memtap "
            "reads (%u); upgrade memtap", path, found_version,
            (unsigned)MT_FORMAT_VERSION);
    die("cannot read '%s': %s", path, mt_strerror(err));
}

char *fmt_size(char *buf, uint64_t bytes)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, 32, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, 32, "%.1f %s", v, units[u]);
    return buf;
}

int mt_utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    int n;
    unsigned char lo = 0x80, hi = 0xbf;  /* the second byte's range */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) n = 3;
    else if (c >= 0xf0 && c <= 0xf4) n = 4;
    else return 0;
    if (c == 0xe0) lo = 0xa0;        /* no overlong forms */
    else if (c == 0xed) hi = 0x9f;   /* no surrogates */
    else if (c == 0xf0) lo = 0x90;
    else if (c == 0xf4) hi = 0x8f;   /* nothing past U+10FFFF */
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    return n;
}

const char *mt_capture_arg(const char *arg)
{
    return arg && !strcmp(arg, "-") ? "/dev/stdin" : arg;
}

int mt_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && S_ISREG(sa.st_mode) &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The directory holding path p (its identity in *dir) and p's last name;
 * 0 when p has no last name of its own ("", "dir/", ".", ".."). */
static int split_path(const char *p, struct stat *dir, const char **base)
{
    const char *slash = strrchr(p, '/');
    *base = slash ? slash + 1 : p;
    if (!**base || !strcmp(*base, ".") || !strcmp(*base, ".."))
        return 0;
    if (!slash)
        return stat(".", dir) == 0;
    char *d = strndup(p, slash == p ? 1 : (size_t)(slash - p));
    int ok = d && stat(d, dir) == 0 && S_ISDIR(dir->st_mode);
    free(d);
    return ok;
}

int mt_same_path(const char *a, const char *b)
{
    if (mt_same_file(a, b))
        return 1;
    struct stat sa, sb;
    const char *ba, *bb;
    if (!a || !b || lstat(a, &sa) == 0 || lstat(b, &sb) == 0)
        return 0;
    return split_path(a, &sa, &ba) && split_path(b, &sb, &bb) && !strcmp(ba, bb) &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

const char *self_dir(void)
{
    static char dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0)
        return ".";
    dir[n] = 0;
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    return dir;
}

void mt_warn_incomplete(const char *file, uint64_t offset, int err)
{
    (void)error("warning: '%s' is incomplete (truncated at byte %llu: %s); "
                "reporting what it holds", file, (unsigned long long)offset,
                err ? mt_strerror(err) : "no trailer");
}
