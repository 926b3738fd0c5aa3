/* failpoint: named fault-injection points for the fault-injection suite, compiled only into
 * builds with DSW_FAILPOINTS (test builds) and armed by the environment:
 *   DSW_FAILPOINTS="after_claim=kill,before_delete=fail@3,heartbeat=sleep:1500"
 * Actions: abort (SIGABRT), kill (SIGKILL to ourselves), sleep:MS (block the loop), fail (the
 * operation reports an error). "@N" fires only at the N-th hit, "%N" on every N-th hit;
 * otherwise every hit fires. Without DSW_FAILPOINTS the calls compile to nothing. This is the
 * only fault-injection seam: no module reads a failpoint from the environment itself.
 * Points: after_receive, after_claim, after_spawn, after_record, before_delete,
 * heartbeat_visibility, heartbeat_lease, visibility_round, watchdog_wedge (hit at every
 * watchdog ping: "watchdog_wedge=sleep:1000@10" blocks the loop 1 s at the 10th ping). */
#ifndef DSW_FAILPOINT_H
#define DSW_FAILPOINT_H

#include "dsw/util.h"

#ifdef DSW_FAILPOINTS
/* Read the environment (once; later calls re-read, for tests). 0, or -EINVAL for a malformed
 * specification (nothing armed then). */
int dsw_failpoint_setup(const char *spec) DSW_WUR;
/* Hit point name: 0 to carry on, -EIO when the armed action is "fail". abort/kill do not
 * return; sleep returns 0 after blocking. */
int dsw_failpoint_hit(const char *name);
/* How many times point name fired (its action ran) so far; for callers that time a sleep. */
long dsw_failpoint_fired(const char *name);
#define DSW_FAILPOINT(name)       dsw_failpoint_hit(name)
#define DSW_FAILPOINT_FIRED(name) dsw_failpoint_fired(name)
#else
#define DSW_FAILPOINT(name)       0
#define DSW_FAILPOINT_FIRED(name) 0L
#endif

#endif
