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

static void share_infer(const struct rlimit *now)
{
    if (share_in_cur >= 0)
        return;
    share_in_cur = now->rlim_cur != RLIM_INFINITY;
    share_in_max = now->rlim_max != RLIM_INFINITY && now->rlim_max == now->rlim_cur;
}

static rlim_t plus(rlim_t v, uint64_t own)
{
    return v == RLIM_INFINITY ? v : v < RLIM_INFINITY - own ? v + own : RLIM_INFINITY;
}

static void as_seen(struct rlimit *rl, uint64_t own)
{
    if (share_in_cur && rl->rlim_cur != RLIM_INFINITY && rl->rlim_cur >= own)
        rl->rlim_cur -= own;
    if (share_in_max && rl->rlim_max != RLIM_INFINITY && rl->rlim_max >= own)
        rl->rlim_max -= own;
}

int mt_limit(pid_t pid, int resource, const struct rlimit *new, struct rlimit *old)
{
    uint64_t own = mt_own_address_space();
    if (resource != RLIMIT_AS || !own || (pid != 0 && pid != getpid()))
        return mt_real.prlimit(pid, resource, new, old);
    struct rlimit now;
    if (mt_real.prlimit(0, resource, NULL, &now) != 0)
        return -1;
    share_infer(&now);
    int rc = 0, cur = share_in_cur, max = share_in_max;
    if (new) {
        struct rlimit want = {plus(new->rlim_cur, own), new->rlim_max};
        cur = want.rlim_cur != new->rlim_cur;
        /* a request the kernel refuses (soft over hard) stays refused */
        max = new->rlim_cur <= new->rlim_max && want.rlim_max < want.rlim_cur;
        if (max)
            want.rlim_max = plus(new->rlim_max, own);
        rc = mt_real.prlimit(0, resource, &want, NULL);
        if (rc != 0 && errno == EPERM && max) {
            /* no raising the hard limit here: as asked, without the share */
            rc = mt_real.prlimit(0, resource, new, NULL);
            cur = max = 0;
        }
    }
    if (rc == 0 && old) {
        *old = now;
        as_seen(old, own);
    }
    if (rc == 0 && new) {
        share_in_cur = cur;
        share_in_max = max;
    }
    return rc;
}

/* Lowers the limit to what the program sees; @return whether it did. No
 * write to memory the process may share with its parent. */
static int share_give_back(void)
{
    struct rlimit now;
    if (mt_real.prlimit(0, RLIMIT_AS, NULL, &now) != 0)
        return 0;
    int cur = share_in_cur, max = share_in_max;
    if (cur < 0) {  /* as share_infer would say */
        cur = now.rlim_cur != RLIM_INFINITY;
        max = now.rlim_max != RLIM_INFINITY && now.rlim_max == now.rlim_cur;
    }
    struct rlimit seen = now;
    if (cur && seen.rlim_cur != RLIM_INFINITY && seen.rlim_cur >= MT_SHM_BYTES)
        seen.rlim_cur -= MT_SHM_BYTES;
    if (max && seen.rlim_max != RLIM_INFINITY && seen.rlim_max >= MT_SHM_BYTES)
        seen.rlim_max -= MT_SHM_BYTES;
    return (seen.rlim_cur != now.rlim_cur || seen.rlim_max != now.rlim_max) &&
           mt_real.prlimit(0, RLIMIT_AS, &seen, NULL) == 0;
}

void mt_limit_share_dropped(void)
{
    if (share_give_back())
        share_in_cur = share_in_max = 0;
}

int mt_limit_exec_untraced(struct rlimit *before)
{
    /* The soft limit only, which the exec's failure can put back (an
     * exec along PATH fails and comes again). */
    if (mt_real.prlimit(0, RLIMIT_AS, NULL, before) != 0)
        return 0;
    int cur = share_in_cur < 0 ? before->rlim_cur != RLIM_INFINITY : share_in_cur;
    if (!cur || before->rlim_cur == RLIM_INFINITY || before->rlim_cur < MT_SHM_BYTES)
        return 0;
    struct rlimit less = {before->rlim_cur - MT_SHM_BYTES, before->rlim_max};
    return mt_real.prlimit(0, RLIMIT_AS, &less, NULL) == 0;
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
