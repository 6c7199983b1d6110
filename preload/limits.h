/* RLIMIT_AS as the program sees it (preload/limits.c). */
#ifndef MT_LIMITS_H
#define MT_LIMITS_H

#include <sys/resource.h>
#include <sys/types.h>

/* prlimit(pid, resource, new, old) for the program: for its own RLIMIT_AS
 * while the shim maps its transport, the shim's share is added to what it
 * sets (the hard limit raised to make room where the process may, else set
 * as asked) and taken off what it reads, so that a limit means what it
 * does without memtap. Any other call passes through. @return as prlimit. */
int mt_limit(pid_t pid, int resource, const struct rlimit *new, struct rlimit *old);

/* A forked child that drops the transport (children not followed) gives
 * the share back: what it execs has the limit the program had. */
void mt_limit_share_dropped(void);

/* An untraced program is about to be exec'd by a child that still holds
 * the share (a vfork child, which must not write the parent's memory):
 * the soft limit goes back to the program's, by system calls alone.
 * @return 1 when it changed, *before holding what to put back with
 * mt_limit_exec_failed if the exec returns. */
int mt_limit_exec_untraced(struct rlimit *before);
void mt_limit_exec_failed(const struct rlimit *before);

/* The process was not started by memtap run (a Tracker's): no limit it
 * has holds the share. */
void mt_limit_not_raised(void);

#endif
