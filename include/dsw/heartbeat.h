/* heartbeat: the worker's beats over every pipeline holding a slot (SPEC §4 "Supervise"): every
 * queue.heartbeat one ChangeMessageVisibilityBatch per ten messages held, each to
 * queue.visibility_timeout (a round never starts while the previous one is still in flight:
 * that one already extended every message by a whole timeout); every claims.heartbeat the
 * lease of every running child (one statement per 500 leases); every runs.cancel_poll one status
 * poll for every watched run, and within 25 ms when a NOTIFY on run_events names one of them (one
 * poll per burst). */
#ifndef DSW_HEARTBEAT_H
#define DSW_HEARTBEAT_H

#include "dsw/pipeline.h"
#include "dsw/util.h"

#include <stdbool.h>

struct dsw_heartbeat;

/* Start the beats over env's pipelines (env is borrowed and must outlive the object);
 * visibility: also extend messages (not in exec mode). 0 with *out, or libuv's error. */
int dsw_heartbeat_start(struct dsw_pipeline_env *env, bool visibility,
                        struct dsw_heartbeat **out) DSW_WUR;

/* A NOTIFY on run_events (payload <run_id>_<event id>): poll within 25 ms when it names a
 * watched run. */
void dsw_heartbeat_notify(struct dsw_heartbeat *hb, const char *payload);

/* Stop the beats. The object is freed once its timers are closed and the calls it has in
 * flight have answered (closing the queue and db clients makes them answer). */
void dsw_heartbeat_close(struct dsw_heartbeat *hb);

#endif
