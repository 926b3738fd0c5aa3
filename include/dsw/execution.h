/* execution: one claimed run carried out by a supervised run worker (SPEC §4 spawn ->
 * supervise -> record): the child is started through launch, its launch recorded (retried
 * while the database is away; the lease holds the claim meanwhile), its lease refreshed on the
 * worker's beat, stopped on cancel, on a terminal status set by someone else, on the drain
 * deadline or its timeout (SIGTERM, SIGKILL after runs.kill_grace), and its exit recorded in one
 * fenced transaction (retried) that never overwrites a terminal status. A lost lease SIGKILLs
 * the child and records nothing. A step (launch.step, STEPS: execute_step) is the same with
 * its own claim: the launch and the exit are one fenced step-claim update each (no run status,
 * no event: the step writes its own), it is also stopped on request (stop_requested_at), and
 * any terminal run status stops it; done's res is then NULL. */
#ifndef DSW_EXECUTION_H
#define DSW_EXECUTION_H

#include "dsw/launch.h"
#include "dsw/store.h"
#include "dsw/util.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct dsw_execution;

/* The execution is over: status 0 with res (the exit is recorded), -ESTALE (the lease was lost:
 * nothing recorded, the message is not ours to delete) or -ENOENT (the run row is gone).
 * res is borrowed for the call; the execution frees itself afterwards. */
typedef void (*dsw_execution_done_cb)(int status, const struct dsw_store_record_result *res,
                                      void *arg);

/* Everything borrowed, read only during dsw_execution_start except store and hostname, which
 * must outlive the execution. launch's callbacks are the execution's own (left unset). */
struct dsw_execution_opts {
    uv_loop_t *loop;
    struct dsw_store *store;
    const char *hostname;     /* for the failure causes */
    struct dsw_launch launch; /* conf, run_id, body, instance_ref, resume, warm... */
    int64_t token;            /* the claim held */
    const char *message_id;   /* may be NULL (exec mode) */
    int receive_count;
    const char *job_name;    /* runs.pipeline_name as loaded, or NULL; with status_text, lets the
                                launch and exit records take their one-statement paths */
    const char *status_text; /* runs.status as loaded (launch.body is the body as loaded) */
    dsw_execution_done_cb done;
    void *arg;
};

/* Start the run worker. 0 with *out (done fires exactly once, later); else *out is NULL, done
 * never fires, nothing is recorded, and the error is launch's: -EBADMSG (no usable code
 * origin), or the spawn's. */
int dsw_execution_start(const struct dsw_execution_opts *o, struct dsw_execution **out) DSW_WUR;

/* Whether the child still runs. */
bool dsw_execution_running(const struct dsw_execution *e);

/* Whether the run's status is worth polling: the child runs and nothing has stopped it yet. */
bool dsw_execution_watching(const struct dsw_execution *e);

/* Refresh the lease (one heartbeat in flight at a time). */
void dsw_execution_heartbeat(struct dsw_execution *e);
/* The lease to refresh in a batch (dsw_store_heartbeat_batch): true with *token when the child
 * runs and no refresh of it is in flight; the refresh is then in flight until
 * dsw_execution_lease_result. */
bool dsw_execution_lease(struct dsw_execution *e, int64_t *token);
/* The batch's answer for the lease taken with token (ignored for another token): -ESTALE kills
 * the child and records nothing, as dsw_execution_heartbeat's. */
void dsw_execution_lease_result(struct dsw_execution *e, int64_t token, int status);

/* The run's status as polled: see dsw_pipeline_status. */
void dsw_execution_status(struct dsw_execution *e, const struct dsw_store_status_row *row);

/* A step whose stop is worth polling (dsw_store_step_stops): true with its claim's token while
 * the step worker runs and nothing has stopped it yet; false for runs. */
bool dsw_execution_step_token(const struct dsw_execution *e, int64_t *token);
/* The step's stop was requested (stop_requested_at): SIGTERM its group, SIGKILL after
 * runs.kill_grace; outcome "stopped". Nothing for runs. */
void dsw_execution_stop(struct dsw_execution *e);

/* Terminate the child because the daemon drains (outcome "drained"). */
void dsw_execution_terminate(struct dsw_execution *e);

#endif
