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

#endif
