/* pipeline: the life of one message (SPEC §4): decode, load the run and its claim, decide
 * (job), claim or take over, start the run worker (launch), supervise it (launch record,
 * lease, status changes, drain), record the outcome in one fenced transaction, and only then
 * delete the message -- or defer, release, reject or quarantine it. Nothing is deleted before
 * the outcome it stands for is committed.
 *
 * The worker owns the slots, receiving and the periodic timers: each pipeline holds one slot
 * (it is in env->slots from dsw_pipeline_new until it gives the slot back through the done
 * callback, which fires exactly once and never from inside a call of this module); the
 * worker-wide beats (heartbeat.h) reach the pipelines there through the supervision calls. */
#ifndef DSW_PIPELINE_H
#define DSW_PIPELINE_H

#include "dsw/clients.h"
#include "dsw/conf.h"
#include "dsw/list.h"
#include "dsw/sqs.h"
#include "dsw/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct dsw_pipeline;
struct dsw_warm;

/* A pipeline is over and gave its slot back (it is out of env->slots). failed: a body of exec
 * mode (no queue) was rejected or not processed (the command then exits 1). The pipeline must
 * not be used any more (it frees itself once its last callback has fired). */
typedef void (*dsw_pipeline_done_cb)(bool failed, void *arg);

/* What every pipeline shares with the worker. Borrowed: it must outlive every pipeline (until
 * the loop ends). The worker updates draining and warm in place. */
struct dsw_pipeline_env {
    uv_loop_t *loop;
    const struct dsw_conf *conf;
    struct dsw_clients *cl;
    struct dsw_warm *warm;  /* NULL: cold run workers only (set NULL when the pool closes) */
    const char *trampoline; /* as dsw_proc_opts.trampoline */
    bool draining;          /* no new claim or child; received messages are released */
    dsw_pipeline_done_cb done;
    void *arg;
    /* Slots a run (not a step) may hold: the worker's slots less runs.step_slots, set by the
     * worker (also on SIGHUP). A run message past it is deferred (runs.requeue_delay). */
    int run_slots;
    /* Kept by this module (dsw_list_init it): the pipelines holding a slot, and how many; and
     * how many of them hold it for a run that is claimed or about to be. */
    struct dsw_list slots;
    int used;
    int runs_held;
    int finishing; /* of used: done but for their coalesced delete (env->done was called) */
};

/* ---- one message -------------------------------------------------------------------------- */

/* A pipeline in a new slot. Start it with exactly one of the two calls below. */
struct dsw_pipeline *dsw_pipeline_new(struct dsw_pipeline_env *env);

/* The pipeline after p in env->slots (NULL p: the first one), NULL at the end. No pipeline
 * leaves the list during a supervision call, so the calls below may be made while iterating. */
struct dsw_pipeline *dsw_pipeline_next(const struct dsw_pipeline_env *env,
                                       const struct dsw_pipeline *p);

/* A received message (m is only read during the call): decode it, or release it at once when
 * the worker is draining (a long poll that outlived the start of the drain). */
void dsw_pipeline_start_message(struct dsw_pipeline *p, const struct dsw_sqs_message *m);

/* A body without a message (exec mode): decode it and carry it through; nothing to delete. */
void dsw_pipeline_start_body(struct dsw_pipeline *p, const char *body, size_t len);

/* ---- supervision, driven by the worker's timers -------------------------------------------- */

/* The run id once the message is decoded, else NULL. */
const char *dsw_pipeline_run_id(const struct dsw_pipeline *p);

/* Whether a run worker (child) runs for this pipeline now. */
bool dsw_pipeline_running(const struct dsw_pipeline *p);

/* The entry that extends the visibility of the message p holds to visibility_s (e->id is left
 * to the caller; e->receipt_handle is borrowed from p until its next callback). false when
 * there is nothing to extend: no message, the message is being finished, or it would go past
 * the SQS 12-hour limit (from then on the claim alone protects the run). */
bool dsw_pipeline_visibility_entry(const struct dsw_pipeline *p, uint64_t now_ms, int visibility_s,
                                   struct dsw_sqs_entry *e);

/* Refresh the lease of the running child's claim (one heartbeat in flight at a time); a lost
 * lease SIGKILLs the child and records nothing. */
void dsw_pipeline_heartbeat(struct dsw_pipeline *p);
/* The same, batched by the caller: the lease to refresh (dsw_execution_lease), and the answer
 * for it (dsw_execution_lease_result). */
bool dsw_pipeline_lease(struct dsw_pipeline *p, int64_t *token);
void dsw_pipeline_lease_result(struct dsw_pipeline *p, int64_t token, int status);

/* Whether the run's status is worth polling: a child runs and nothing has stopped it yet. */
bool dsw_pipeline_watching(const struct dsw_pipeline *p);

/* The run's status as the poll found it. CANCELING or CANCELED: cancel; SUCCESS or FAILURE set
 * by someone else (its event has no run worker's pid): stop the child too and record its exit
 * without touching the outcome. Both SIGTERM the child's group, SIGKILL after runs.kill_grace.
 * A terminal status the run worker wrote itself, and other statuses: nothing (a run worker that
 * lingers after its own outcome is left to exit, bounded by max_runtime). */
void dsw_pipeline_status(struct dsw_pipeline *p, const struct dsw_store_status_row *row);

/* A step worker whose stop request is worth polling: true with its claim's token (see
 * dsw_execution_step_token). */
bool dsw_pipeline_step_token(const struct dsw_pipeline *p, int64_t *token);
/* Its stop was requested: terminate the step worker (outcome "stopped"). */
void dsw_pipeline_stop(struct dsw_pipeline *p);
/* The drain deadline passed (or a second signal): terminate the child (outcome "drained"). */
void dsw_pipeline_terminate(struct dsw_pipeline *p);

/* The drain began: the message's final queue call (delete, release, defer) gets
 * DSW_PIPELINE_FINAL_CALL_MS; past it the pipeline gives its slot back anyway (the call itself
 * ends when the worker closes the queue client). */
void dsw_pipeline_drain(struct dsw_pipeline *p);
#define DSW_PIPELINE_FINAL_CALL_MS 10000

#endif
