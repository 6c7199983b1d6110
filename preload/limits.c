/* See limits.h. memtap run raises the soft RLIMIT_AS it starts the program
 * with by the transport's size (and the hard one only when it must, to
 * exactly the soft one); the program's own settings get the same here. */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "../src/transport.h"
#include "limits.h"
#include "real.h"
#include "tracker.h"

/* Whether the soft and the hard limit hold the share; unknown (-1) until
 * first looked at, when they are inferred from how memtap run sets them. */
static int share_in_cur = -1, share_in_max = -1;

struct share { int cur, max; };

/* What holds the share in the limit now is: what is known, else what
 * memtap run would have made it. Writes nothing (a vfork child shares the
 * parent's memory). */
static struct share share_of(const struct rlimit *now)
{
    if (share_in_cur >= 0)
        return (struct share){share_in_cur, share_in_max};
    return (struct share){now->rlim_cur != RLIM_INFINITY,
                          now->rlim_max != RLIM_INFINITY && now->rlim_max == now->rlim_cur};
}

static rlim_t plus(rlim_t v, uint64_t own)
{
    return v == RLIM_INFINITY ? v : v < RLIM_INFINITY - own ? v + own : RLIM_INFINITY;
}

static rlim_t minus(rlim_t v, uint64_t own, int holds)
{
    return holds && v != RLIM_INFINITY && v >= own ? v - own : v;
}

/* rl as the program sees it: without the share where it holds it. */
static struct rlimit as_seen(struct rlimit rl, struct share sh, uint64_t own)
{
    return (struct rlimit){minus(rl.rlim_cur, own, sh.cur), minus(rl.rlim_max, own, sh.max)};
}

int mt_limit(pid_t pid, int resource, const struct rlimit *new, struct rlimit *old)
{
    uint64_t own = mt_own_address_space();
    if (resource != RLIMIT_AS || !own || (pid != 0 && pid != getpid()))
        return mt_real.prlimit(pid, resource, new, old);
    struct rlimit now;
    if (mt_real.prlimit(0, resource, NULL, &now) != 0)
        return -1;
    struct share had = share_of(&now), has = had;
    int rc = 0;
    if (new) {
        struct rlimit want = {plus(new->rlim_cur, own), new->rlim_max};
        has.cur = want.rlim_cur != new->rlim_cur;
        /* a request the kernel refuses (soft over hard) stays refused */
        has.max = new->rlim_cur <= new->rlim_max && want.rlim_max < want.rlim_cur;
        if (has.max)
            want.rlim_max = plus(new->rlim_max, own);
        rc = mt_real.prlimit(0, resource, &want, NULL);
        if (rc != 0 && errno == EPERM && has.max) {
            /* no raising the hard limit here: as asked, without the share */
            rc = mt_real.prlimit(0, resource, new, NULL);
            has = (struct share){0, 0};
        }
    }
    if (rc == 0 && old)
        *old = as_seen(now, had, own);
    if (rc == 0) {
        share_in_cur = has.cur;
        share_in_max = has.max;
    }
    return rc;
}

void mt_limit_share_dropped(void)
{
    struct rlimit now;
    if (mt_real.prlimit(0, RLIMIT_AS, NULL, &now) != 0)
        return;
    struct rlimit seen = as_seen(now, share_of(&now), MT_SHM_BYTES);
    if (mt_real.prlimit(0, RLIMIT_AS, &seen, NULL) == 0)
        share_in_cur = share_in_max = 0;
}

int mt_limit_exec_untraced(struct rlimit *before)
{
    /* The soft limit only, which the exec's failure can put back (an
     * exec along PATH fails and comes again). */
    if (mt_real.prlimit(0, RLIMIT_AS, NULL, before) != 0)
        return 0;
    struct rlimit less = {as_seen(*before, share_of(before), MT_SHM_BYTES).rlim_cur,
                          before->rlim_max};
    return less.rlim_cur != before->rlim_cur &&
           mt_real.prlimit(0, RLIMIT_AS, &less, NULL) == 0;
}

void mt_limit_exec_failed(const struct rlimit *before)
{
    mt_real.prlimit(0, RLIMIT_AS, before, NULL);
}

void mt_limit_not_raised(void)
{
    if (share_in_cur < 0)
        share_in_cur = share_in_max = 0;
}
