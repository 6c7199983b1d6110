/* The CLI's error chokepoint and small shared helpers. Messages are one
 * lowercase line, "memtap: <problem>", the subject in quotes.
 * Exit codes: 0 ok, 1 runtime failure (bad file, I/O), 2 usage. */
#ifndef MT_UTIL_H
#define MT_UTIL_H

#include <stdint.h>
#include <stdio.h>

#define MT_EXIT_FAIL 1
#define MT_EXIT_USAGE 2

/* Prints "memtap: <message>" and exits with MT_EXIT_FAIL. */
__attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...);
/* Prints "memtap: <message>" and exits with MT_EXIT_USAGE. */
__attribute__((noreturn, format(printf, 1, 2))) void die_usage(const char *fmt, ...);
/* Prints "memtap: <message>"; returns -1 so callers can `return error(...)`. */
__attribute__((format(printf, 1, 2))) int error(const char *fmt, ...);

/* Dies with a message for an mt_err from opening/reading `path`. */
__attribute__((noreturn)) void die_capture(const char *path, int err,
                                           uint32_t found_version);

/* "12.3 MiB" etc. into buf (at least 32 bytes); returns buf. */
char *fmt_size(char *buf, uint64_t bytes);

/* The length of the well-formed UTF-8 sequence p starts with (1-4), or 0
 * when it starts with none (a byte of a name in another encoding). Reads
 * no further than the first byte that does not fit (a NUL ends). */
int mt_utf8_len(const unsigned char *p);

/* The length of the control character p starts with (C0, DEL, C1 as UTF-8,
 * U+2028/2029: what can move a terminal's cursor or break a line), 0 when
 * none. */
size_t mt_control_at(const unsigned char *p);

/* Replaces each control character of s (mt_control_at) with one '_', in
 * place: a file name memtap makes up is printed, and must be the name the
 * message shows. */
void mt_name_without_controls(char *s);

/* s to f with control characters as '?' (line breaks kept when lines):
 * a name in a message must not move the terminal's cursor. */
void mt_put_printable(FILE *f, const char *s, int lines);

/* The path to read a capture named arg on the command line from: "-" is
 * standard input (a pipe or a file; read once, front to back). */
const char *mt_capture_arg(const char *arg);

/* Whether a and b name the same regular file (themselves, or through
 * links); 0 when either does not exist. */
int mt_same_file(const char *a, const char *b);

/* Whether a and b name the same regular file, or, when neither exists
 * yet, the same name in the same directory: the file that creating
 * either would make. */
int mt_same_path(const char *a, const char *b);

/* s (n bytes) to file descriptor 2 in as few writes as it takes: one,
 * unless a pipe is nearly full; a line of memtap's stays whole beside the
 * program's own. */
void mt_write_stderr(const char *s, size_t n);

/* Directory holding the running memtap binary (static buffer). */
const char *self_dir(void);

/* The one-line warning for a capture that stops at byte offset (err: why,
 * 0 for a missing trailer), on stderr. */
void mt_warn_incomplete(const char *file, uint64_t offset, int err);

#endif
