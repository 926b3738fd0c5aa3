/* pipeline: one message carried through decode -> load -> decide -> claim -> spawn ->
 * supervise -> record -> delete (SPEC §4). Every step continues from a callback of the loop:
 * a call refused at submission continues on the next loop turn, never inside the caller. */
#include "dsw/pipeline.h"

#include "dsw/dagster.h"
#include "dsw/execution.h"
#include "dsw/job.h"
#include "dsw/log.h"
#include "dsw/metrics.h"
#include "dsw/msg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_MIN_MS   500
#define RETRY_MAX_MS   30000
#define SQS_MAX_VIS_MS (12LL * 3600 * 1000)

enum state {
    S_LOADING,   /* reading the run and its claim */
    S_CLAIMING,  /* claim or takeover in flight */
    S_RUNNING,   /* the execution (child, launch and exit records) is in progress */
    S_RECORDING, /* writing the outcome */
    S_FINISHING, /* deleting / deferring / releasing the message */
};

struct dsw_pipeline;
typedef void (*step_fn)(struct dsw_pipeline *p, int status);

struct dsw_pipeline {
    struct dsw_pipeline_env *env;
    struct dsw_list link; /* in env->slots while the slot is held */
    enum state state;
    uv_timer_t step; /* the next step (retry, deferred failure, drain bound); freed on close */
    step_fn next;
    int next_status;
    uint64_t retry_ms;
    bool failed;        /* exec mode: the body was not processed */
    bool slot_returned; /* env->done was called */
    bool run_slot;      /* counted in env->runs_held */
    bool finishing;     /* counted in env->finishing */
    /* the message */
    bool has_message; /* false in exec mode */
    char message_id[128];
    char *receipt;
    int receive_count;
    uint64_t received_ms;
    char hash[13];
    struct dsw_msg_request req;
    /* the run */
    char *body;
    char *job_name; /* runs.pipeline_name as loaded */
    int64_t max_runtime_ms;
    struct dsw_job_facts facts;
    enum dsw_job_action action;
    int64_t seen_token;
    int64_t token;       /* 0: no claim held */
    const char *outcome; /* of an outcome without a child being recorded (static text) */
    char cause[192];
    /* the run worker */
    struct dsw_execution *exec;
};

static struct dsw_log_ctx log_ctx(const struct dsw_pipeline *p, const char *event)
{
    return (struct dsw_log_ctx){.event = event,
                                .run_id = p->req.run_id[0] ? p->req.run_id : NULL,
                                .message_id = p->has_message ? p->message_id : NULL,
                                .step_key = p->req.step_key[0] ? p->req.step_key : NULL,
                                .duration_ms = -1};
}

#define plog(level, p, event, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= dsw_log_threshold) {                                                        \
            struct dsw_log_ctx ctx_ = log_ctx((p), (event));                                       \
            dsw_log_emit((level), &ctx_, __VA_ARGS__);                                             \
        }                                                                                          \
    } while (0)

/* ---- lifetime and steps ----------------------------------------------------------------- */

struct dsw_pipeline *dsw_pipeline_new(struct dsw_pipeline_env *env)
{
    struct dsw_pipeline *p = dsw_xcalloc(1, sizeof(*p));
    p->env = env;
    dsw_list_push_back(&env->slots, &p->link);
    env->used++;
    p->received_ms = dsw_now_ms();
    int rc = uv_timer_init(env->loop, &p->step);
    if (rc) { /* only on a loop that was never initialised: a bug, not a condition */
        dsw_error("internal: uv_timer_init: %s", uv_strerror(rc));
        abort();
    }
    p->step.data = p;
    return p;
}

static void on_closed(uv_handle_t *h)
{
    struct dsw_pipeline *p = h->data;
    dsw_msg_request_clear(&p->req);
    free(p->receipt);
    free(p->body);
    free(p->job_name);
    free(p);
}

static void give_slot_back(struct dsw_pipeline *p)
{
    if (p->slot_returned)
        return;
    p->slot_returned = true;
    dsw_list_remove(&p->link);
    p->env->used--;
    if (p->finishing)
        p->env->finishing--;
    if (p->run_slot)
        p->env->runs_held--;
    p->env->done(p->failed, p->env->arg);
}

/* Nothing but a coalesced delete is left: the slot may take the next message now (it stays in
 * env->used, so a drain still waits for the delete). */
static void delete_pending(struct dsw_pipeline *p)
{
    struct dsw_pipeline_env *env = p->env;
    p->finishing = true;
    env->finishing++;
    if (p->run_slot) {
        p->run_slot = false;
        env->runs_held--;
    }
    env->done(false, env->arg);
}

struct dsw_pipeline *dsw_pipeline_next(const struct dsw_pipeline_env *env,
                                       const struct dsw_pipeline *p)
{
    const struct dsw_list *n = p ? p->link.next : env->slots.next;
    return n == &env->slots ? NULL : dsw_list_entry(n, struct dsw_pipeline, link);
}

/* The message is dealt with: give the slot back and free the pipeline. */
static void finished(struct dsw_pipeline *p)
{
    p->next = NULL;
    give_slot_back(p);
    uv_close((uv_handle_t *)&p->step, on_closed);
}

static void on_step(uv_timer_t *t)
{
    struct dsw_pipeline *p = t->data;
    step_fn fn = p->next;
    p->next = NULL;
    if (fn)
        fn(p, p->next_status);
}

/* fn(p, status) from the loop after delay_ms (0: next turn), replacing a step still pending. */
static void schedule(struct dsw_pipeline *p, step_fn fn, int status, uint64_t delay_ms)
{
    p->next = fn;
    p->next_status = status;
    uv_timer_start(&p->step, on_step, delay_ms, 0);
}

/* fn again after a capped, doubling, jittered delay (the db or queue is away). */
static void retry(struct dsw_pipeline *p, step_fn fn)
{
    p->retry_ms = p->retry_ms ? DSW_MIN(p->retry_ms * 2, RETRY_MAX_MS) : RETRY_MIN_MS;
    uint64_t jitter = (uint64_t)rand() % (p->retry_ms / 2 + 1);
    schedule(p, fn, 0, p->retry_ms / 2 + jitter);
}

/* A statement failed with a database error: count it, say what could not be done, try again. */
static void retry_db(struct dsw_pipeline *p, step_fn fn, int status, const char *event,
                     const char *what)
{
    dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
    plog(DSW_LOG_WARN, p, event, "could not %s (%s); retrying", what, strerror(-status));
    retry(p, fn);
}

static void finished_step(struct dsw_pipeline *p, int status)
{
    (void)status;
    finished(p);
}

static int sqs_seconds(int64_t ms) /* a duration as SQS seconds, capped at 12 h */
{
    return (int)DSW_MIN(ms / 1000, SQS_MAX_VIS_MS / 1000);
}

/* ---- the message's end: delete, defer, release ------------------------------------------ */

static void final_call_overdue(struct dsw_pipeline *p, int status)
{
    (void)status;
    plog(DSW_LOG_WARN, p, "final_call_timeout",
         "the queue did not answer within %d ms while draining; giving up on the message",
         DSW_PIPELINE_FINAL_CALL_MS);
    give_slot_back(p); /* the call itself ends (canceled) when the worker closes the queue */
}

/* A delete or visibility call is in flight: while draining it is bounded. */
static void final_call_sent(struct dsw_pipeline *p)
{
    if (p->env->draining)
        schedule(p, final_call_overdue, 0, DSW_PIPELINE_FINAL_CALL_MS);
}

static void on_final_call(int status, const struct dsw_sqs_entry_result *res, size_t n, void *arg,
                          const char *event, const char *what)
{
    struct dsw_pipeline *p = arg;
    int st = status ? status : (n ? res[0].status : 0);
    if (st)
        plog(DSW_LOG_WARN, p, event, "could not %s (%s)", what, strerror(-st));
    uv_timer_stop(&p->step);
    finished(p);
}

static void on_deleted(int status, const struct dsw_sqs_entry_result *res, size_t n, void *arg)
{
    on_final_call(status, res, n, arg, "delete_failed",
                  "delete the message; a redelivery will find the run's outcome");
}

static void on_visibility_set(int status, const struct dsw_sqs_entry_result *res, size_t n,
                              void *arg)
{
    on_final_call(status, res, n, arg, "visibility_failed", "change the visibility");
}

static void delete_message(struct dsw_pipeline *p, const char *reason)
{
    p->state = S_FINISHING;
    if (!p->has_message) {
        schedule(p, finished_step, 0, 0);
        return;
    }
    if (strcmp(reason, "rejected") != 0) /* counted in dsw_messages_rejected_total */
        dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, reason, 1);
    plog(DSW_LOG_INFO, p, "delete", "deleting message (%s)", reason);
    /* Shares a DeleteMessageBatch with the other deletes of the next few ms (alone while
     * draining: nothing else is coming); a failed entry is this message's alone (on_deleted: a
     * redelivery finds the outcome). */
    struct dsw_sqs_entry e = {.id = "m", .receipt_handle = p->receipt};
    struct dsw_sqs *sqs = p->env->cl->sqs;
    const char *url = p->env->conf->queue.url;
    bool draining = p->env->draining;
    if (draining ? dsw_sqs_delete_batch(sqs, url, &e, 1, on_deleted, p)
                 : dsw_sqs_delete(sqs, url, p->receipt, on_deleted, p))
        schedule(p, finished_step, 0, 0);
    else if (draining)
        final_call_sent(p);
    else
        delete_pending(p);
}

/* Make the message visible again after visibility_s (0: at once). */
static void set_visibility(struct dsw_pipeline *p, int visibility_s, const char *why)
{
    p->state = S_FINISHING;
    if (!p->has_message) {
        plog(DSW_LOG_WARN, p, why, "not processed now (%s)", why);
        p->failed = true;
        schedule(p, finished_step, 0, 0);
        return;
    }
    dsw_metrics_inc(visibility_s == 0 ? DSW_METRIC_MESSAGES_RELEASED : DSW_METRIC_MESSAGES_DEFERRED,
                    NULL, 1);
    plog(DSW_LOG_INFO, p, why, "message visible again in %d s (%s)", visibility_s, why);
    struct dsw_sqs_entry e = {
        .id = "m", .receipt_handle = p->receipt, .visibility_s = visibility_s};
    if (dsw_sqs_change_visibility_batch(p->env->cl->sqs, p->env->conf->queue.url, &e, 1,
                                        on_visibility_set, p))
        schedule(p, finished_step, 0, 0);
    else
        final_call_sent(p);
}

static void release(struct dsw_pipeline *p)
{
    set_visibility(p, 0, "released");
}

/* ---- rejects -------------------------------------------------------------------------------- */

static void on_quarantined(int status, const char *message_id, void *arg)
{
    struct dsw_pipeline *p = arg;
    if (status) {
        /* Keep the original: it comes back and is tried again, nothing is lost. */
        plog(DSW_LOG_ERROR, p, "quarantine_failed",
             "could not move the rejected message to the quarantine queue (%s)", strerror(-status));
        set_visibility(p, sqs_seconds(p->env->conf->runs.requeue_delay_ms), "quarantine_failed");
        return;
    }
    delete_message(p, "rejected");
}

static void reject(struct dsw_pipeline *p, enum dsw_msg_reason reason, const char *detail,
                   const struct dsw_sqs_message *m)
{
    const char *name = dsw_msg_reason_name(reason);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_REJECTED, name, 1);
    plog(DSW_LOG_WARN, p, "reject", "rejected message: %s (%s); receive count %d, body sha256 %s",
         name, detail, p->receive_count, p->hash);
    if (!p->has_message) {
        p->failed = true;
        schedule(p, finished_step, 0, 0);
        return;
    }
    const char *q = p->env->conf->queue.quarantine_url;
    if (q && m) {
        struct dsw_sqs_attr attr = {.name = "dsw_reject_reason", .value = name};
        struct dsw_sqs_send_req req = {
            .body = m->body, .body_len = m->body_len, .attrs = &attr, .nattrs = 1};
        if (dsw_sqs_send(p->env->cl->sqs, q, &req, on_quarantined, p) == 0) {
            p->state = S_FINISHING;
            return;
        }
    }
    delete_message(p, "rejected");
}

/* ---- steps (STEPS: execute_step) ------------------------------------------------------- */

static bool is_step(const struct dsw_pipeline *p)
{
    return p->req.kind == DSW_MSG_STEP;
}

static struct dsw_store_step_claim_req step_req(const struct dsw_pipeline *p)
{
    return (struct dsw_store_step_claim_req){.key = {.run_id = p->req.run_id,
                                                     .step_key = p->req.step_key,
                                                     .attempt = p->req.step_attempt},
                                             .message_id = p->has_message ? p->message_id : NULL,
                                             .receive_count = p->receive_count};
}

static void step_closed_again(struct dsw_pipeline *p, int status);

/* A step claim closed (or the step worker's exit recorded): the message is done with. */
static void on_step_closed(int status, void *arg)
{
    struct dsw_pipeline *p = arg;
    if (status == -ESTALE) {
        plog(DSW_LOG_WARN, p, "fenced", "the step claim changed meanwhile; leaving the message");
        release(p);
        return;
    }
    if (status) {
        retry_db(p, step_closed_again, status, "record_retry", "record the step's outcome");
        return;
    }
    p->token = 0;
    dsw_metrics_inc(DSW_METRIC_STEPS_FINISHED, p->outcome ? p->outcome : "exited", 1);
    plog(DSW_LOG_INFO, p, "recorded", "step claim closed (%s)", p->outcome ? p->outcome : "exit");
    delete_message(p, "recorded");
}

static void step_close_refused(struct dsw_pipeline *p, int status)
{
    on_step_closed(status, p);
}

/* Close the step's claim with p->outcome: without a child (a stale claim: lost; too many
 * deliveries: gave_up, a new done row) or after a failed start (spawn_failed, bad_run). */
static void step_closed_again(struct dsw_pipeline *p, int status)
{
    (void)status;
    p->state = S_RECORDING;
    struct dsw_store *store = p->env->cl->store;
    struct dsw_store_step_claim_req r = step_req(p);
    struct dsw_store_step_exit x = {.token = p->token, .exit_code = -1, .outcome = p->outcome};
    int rc = p->token
                 ? dsw_store_step_exit(store, &x, on_step_closed, p)
                 : dsw_store_step_close(store, &r, p->seen_token, p->outcome, on_step_closed, p);
    if (rc)
        schedule(p, step_close_refused, rc, 0);
}

static void step_close(struct dsw_pipeline *p, const char *outcome)
{
    p->outcome = outcome;
    step_closed_again(p, 0);
}

/* ---- recording outcomes ----------------------------------------------------------------- */

static void record_outcome_again(struct dsw_pipeline *p, int status);

static void on_recorded(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct dsw_pipeline *p = arg;
    if (status == -ESTALE) {
        /* Another worker took the run over: its outcome is theirs to record. The message is
         * left to come back; the new owner or the terminal status deals with it. */
        plog(DSW_LOG_WARN, p, "fenced", "lease lost before the outcome was recorded");
        release(p);
        return;
    }
    if (status == -ENOENT) {
        plog(DSW_LOG_WARN, p, "record", "the run row is gone; nothing to record");
        delete_message(p, "unknown_run");
        return;
    }
    if (status) {
        retry_db(p, record_outcome_again, status, "record_retry", "record the outcome");
        return;
    }
    p->token = 0;
    const char *after = dsw_store_status_name(res->after);
    dsw_metrics_inc(DSW_METRIC_RUNS_FINISHED, after, 1);
    plog(DSW_LOG_INFO, p, "recorded", "outcome recorded: run %s%s", after,
         res->changed ? " (written by dagster-sqs-worker)" : "");
    delete_message(p, "recorded");
}

static void record_refused(struct dsw_pipeline *p, int status)
{
    on_recorded(status, NULL, p);
}

static void record_outcome_again(struct dsw_pipeline *p, int status)
{
    (void)status;
    p->state = S_RECORDING;
    struct dsw_store_outcome o = {
        .run_id = p->req.run_id, .token = p->token, .outcome = p->outcome, .cause = p->cause};
    int rc = dsw_store_record_outcome(p->env->cl->store, &o, on_recorded, p);
    if (rc)
        schedule(p, record_refused, rc, 0);
}

/* An outcome without a child (lost, gave up, canceled before a start, no start possible). */
static void record_outcome(struct dsw_pipeline *p, const char *outcome, const char *cause)
{
    if (is_step(p)) {
        step_close(p, outcome);
        return;
    }
    p->outcome = outcome;
    dsw_strlcpy(p->cause, cause, sizeof(p->cause));
    record_outcome_again(p, 0);
}

/* ---- the run worker ------------------------------------------------------------------------ */

static void on_executed(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct dsw_pipeline *p = arg;
    p->exec = NULL;
    if (status == -ESTALE) /* the execution said why; the message is the new owner's */
        release(p);
    else if (is_step(p))
        on_step_closed(status, p);
    else
        on_recorded(status, res, p);
}

static void spawn(struct dsw_pipeline *p)
{
    struct dsw_pipeline_env *env = p->env;
    struct dsw_dagster_step step = {.step_key = p->req.step_key,
                                    .known_state = p->req.step_known_state,
                                    .retry_mode = p->req.step_retry_mode,
                                    .print_events = p->req.step_print_events};
    struct dsw_execution_opts o = {
        .loop = env->loop,
        .store = env->cl->store,
        .hostname = env->cl->hostname,
        .launch = {.conf = env->conf,
                   .run_id = p->req.run_id,
                   .body = p->body,
                   .instance_ref = p->req.instance_ref,
                   .resume = p->action == DSW_JOB_RESUME,
                   .max_runtime_ms = p->max_runtime_ms,
                   .step = is_step(p) ? &step : NULL,
                   .warm = env->warm,
                   .trampoline = env->trampoline},
        .token = p->token,
        .message_id = p->has_message ? p->message_id : NULL,
        .receive_count = p->receive_count,
        .job_name = p->job_name,
        .status_text = p->facts.status,
        .done = on_executed,
        .arg = p,
    };
    int rc = dsw_execution_start(&o, &p->exec);
    if (rc == -EBADMSG) {
        plog(DSW_LOG_ERROR, p, "bad_run_body", "the stored run has no usable code origin");
        record_outcome(p, "bad_run", "dagster-sqs-worker could not read the run's code origin");
    } else if (rc) {
        plog(DSW_LOG_ERROR, p, "spawn_failed", "could not start the run worker: %s", strerror(-rc));
        record_outcome(p, "spawn_failed", "dagster-sqs-worker could not start the run worker");
    } else {
        p->state = S_RUNNING;
    }
}

/* ---- claims -------------------------------------------------------------------------------- */

static void act(struct dsw_pipeline *p);

static void on_claimed(int status, const struct dsw_store_claim *claim, void *arg)
{
    struct dsw_pipeline *p = arg;
    int ttl_s = sqs_seconds(p->env->conf->claims.ttl_ms);
    if (status == 0) {
        p->token = claim->token;
        dsw_metrics_inc(DSW_METRIC_CLAIMS, "won", 1);
        act(p);
        return;
    }
    if (status == -EEXIST || status == -EBUSY) {
        /* Someone got there first: its owner finishes the run and deletes the message. */
        dsw_metrics_inc(DSW_METRIC_CLAIMS, "lost", 1);
        plog(DSW_LOG_INFO, p, "claim_lost", "another worker holds the run");
        set_visibility(p, ttl_s, "claim_lost");
        return;
    }
    dsw_metrics_inc(DSW_METRIC_CLAIMS, "error", 1);
    plog(DSW_LOG_WARN, p, "claim_failed", "claim failed (%s)", strerror(-status));
    set_visibility(p, ttl_s, "claim_failed");
}

static void claim_refused(struct dsw_pipeline *p, int status)
{
    on_claimed(status, NULL, p);
}

/* What a claim of this run records about its owner: kind, message and delivery. */
static struct dsw_store_claim_req claim_req(const struct dsw_pipeline *p, const char *kind)
{
    return (struct dsw_store_claim_req){.run_id = p->req.run_id,
                                        .kind = kind,
                                        .message_id = p->has_message ? p->message_id : NULL,
                                        .receive_count = p->receive_count};
}

static void claim(struct dsw_pipeline *p)
{
    p->state = S_CLAIMING;
    if (p->env->draining) {
        release(p);
        return;
    }
    struct dsw_store_claim_req r = claim_req(p, p->action == DSW_JOB_RESUME ? "resume" : "execute");
    struct dsw_store *store = p->env->cl->store;
    struct dsw_store_step_claim_req sr = step_req(p);
    int rc = is_step(p) ? dsw_store_step_claim(store, &sr, on_claimed, p)
             : p->facts.claim == DSW_JOB_CLAIM_NONE
                 ? dsw_store_claim(store, &r, on_claimed, p)
                 : dsw_store_takeover(store, &r, p->seen_token, on_claimed, p);
    if (rc)
        schedule(p, claim_refused, rc, 0);
}

static void on_released(int status, void *arg)
{
    (void)arg;
    if (status)
        dsw_warn("could not release a claim (%s); it will go stale", strerror(-status));
}

/* Give the claim (token) back unused. */
static void drop_claim(struct dsw_pipeline *p)
{
    struct dsw_store *store = p->env->cl->store;
    if (is_step(p) ? dsw_store_step_release(store, p->token, on_released, NULL)
                   : dsw_store_release(store, p->req.run_id, p->token, on_released, NULL))
        dsw_warn("could not release the claim; it will go stale");
    p->token = 0;
}

/* Not started (draining): give the claim and the message back at once. */
static void give_back(struct dsw_pipeline *p)
{
    drop_claim(p);
    release(p);
}

/* With the claim held (token), carry out the decision. */
static void act(struct dsw_pipeline *p)
{
    char cause[160];
    switch (p->action) {
    case DSW_JOB_EXECUTE:
    case DSW_JOB_RESUME:
        if (p->env->draining)
            give_back(p);
        else
            spawn(p);
        return;
    case DSW_JOB_RECORD_LOST:
        record_outcome(p, "lost",
                       "Run worker lost: the worker that started this run stopped heartbeating "
                       "(recorded by dagster-sqs-worker)");
        return;
    case DSW_JOB_RECORD_GIVE_UP:
        snprintf(cause, sizeof(cause),
                 "dagster-sqs-worker gave up after %d deliveries of this run's message",
                 p->receive_count);
        record_outcome(p, "gave_up", cause);
        return;
    case DSW_JOB_RECORD_CANCELED:
        record_outcome(p, "canceled", "Run canceled before a run worker started it");
        return;
    default:
        claim(p);
        return;
    }
}

/* A run about to be claimed takes one of env->run_slots (runs.step_slots keeps the rest for
 * steps, so run workers waiting for their steps never hold every slot); false when none is
 * left. Steps, and runs that only get an outcome recorded, take none. */
static bool take_run_slot(struct dsw_pipeline *p)
{
    struct dsw_pipeline_env *env = p->env;
    if (is_step(p) || (p->action != DSW_JOB_EXECUTE && p->action != DSW_JOB_RESUME))
        return true;
    if (env->runs_held >= env->run_slots)
        return false;
    p->run_slot = true;
    env->runs_held++;
    return true;
}

/* Carry out the decision: the rows that need no claim end here, the others claim first. */
static void carry_out(struct dsw_pipeline *p)
{
    static const char *const deleted[] = {
        [DSW_JOB_DELETE_TERMINAL] = "terminal_skip",
        [DSW_JOB_DELETE_DUPLICATE] = "duplicate",
        [DSW_JOB_DELETE_NOT_LAUNCHED] = "not_launched",
        [DSW_JOB_DELETE_UNEXPECTED] = "unexpected_status",
    };
    const struct dsw_conf *conf = p->env->conf;
    if ((size_t)p->action < DSW_ARRAY_LEN(deleted) && deleted[p->action])
        delete_message(p, deleted[p->action]);
    else if (p->action == DSW_JOB_DEFER_OWNED)
        set_visibility(p, sqs_seconds(conf->claims.ttl_ms), "deferred_owned");
    else if (p->action == DSW_JOB_DEFER_QUEUED)
        set_visibility(p, sqs_seconds(conf->runs.requeue_delay_ms), "deferred_queued");
    else if (is_step(p) && p->action == DSW_JOB_RECORD_LOST)
        step_close(p, "lost"); /* a CAS on the stale claim: the executor reports it unhealthy */
    else if (is_step(p) && p->action == DSW_JOB_RECORD_GIVE_UP)
        step_close(p, "gave_up");
    else if (!take_run_slot(p))
        set_visibility(p, sqs_seconds(conf->runs.requeue_delay_ms), "deferred_step_slots");
    else
        claim(p);
}

/* ---- load and decide -------------------------------------------------------------------- */

static void load(struct dsw_pipeline *p, int status);

static enum dsw_job_claim claim_view(const struct dsw_store_claim *c)
{
    if (c->state == DSW_CLAIM_NONE)
        return DSW_JOB_CLAIM_NONE;
    if (c->state == DSW_CLAIM_DONE)
        return DSW_JOB_CLAIM_DONE;
    return c->live ? DSW_JOB_CLAIM_LIVE : DSW_JOB_CLAIM_STALE;
}

static struct dsw_job_facts facts_of(const struct dsw_pipeline *p, const struct dsw_store_run *run)
{
    const struct dsw_conf *conf = p->env->conf;
    const struct dsw_store_claim *c = &run->claim;
    bool resumed = c->state != DSW_CLAIM_NONE && c->kind && strcmp(c->kind, "resume") == 0;
    return (struct dsw_job_facts){
        .status = dsw_store_status_name(run->status),
        .claim = claim_view(c),
        .claim_same_message =
            p->has_message && c->message_id && strcmp(c->message_id, p->message_id) == 0,
        .receive_count = p->receive_count,
        .max_receives = (int)conf->runs.max_receives,
        .resume_requested = p->req.kind == DSW_MSG_RESUME,
        .resume_enabled = conf->runs.resume,
        .resumes_done = resumed ? c->attempt : 0,
        .max_resumes = (int)conf->runs.max_resumes,
    };
}

/* The load took the claim too (dsw_store_load_claim's condition leaves execute as the only
 * decision): go on as claim() would once won. Draining, or no run slot left since the load was
 * sent: the claim is given back. */
static void took_claim(struct dsw_pipeline *p, const struct dsw_store_run *run)
{
    if (run->claim_status) {
        on_claimed(run->claim_status, NULL, p);
        return;
    }
    p->token = run->won.token;
    if (p->env->draining) {
        give_back(p);
        return;
    }
    if (p->action == DSW_JOB_EXECUTE && take_run_slot(p)) {
        on_claimed(0, &run->won, p);
        return;
    }
    drop_claim(p);
    carry_out(p);
}

static void on_loaded(int status, const struct dsw_store_run *run, void *arg)
{
    struct dsw_pipeline *p = arg;
    if (status == -ENOENT) {
        reject(p, DSW_MSG_UNKNOWN_RUN, "no such run in the runs table", NULL);
        return;
    }
    if (status && p->env->draining) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
        release(p);
        return;
    }
    if (status) {
        retry_db(p, load, status, "load_retry", "load the run");
        return;
    }
    free(p->body);
    free(p->job_name);
    p->body = run->body ? dsw_xstrdup(run->body) : NULL;
    p->job_name = run->job_name ? dsw_xstrdup(run->job_name) : NULL;
    p->max_runtime_ms = run->max_runtime_ms;
    p->seen_token = run->claim.token;
    p->facts = facts_of(p, run);
    p->action = is_step(p) ? dsw_job_decide_step(&p->facts) : dsw_job_decide(&p->facts);
    plog(DSW_LOG_INFO, p, "decide", "run %s, %sclaim %s: %s", p->facts.status,
         is_step(p) ? "step " : "",
         (const char *const[]){"none", "live", "stale", "done"}[p->facts.claim],
         dsw_job_action_name(p->action));
    if (run->claimed) {
        took_claim(p, run);
        return;
    }
    if (p->env->draining && p->action != DSW_JOB_DELETE_TERMINAL &&
        p->action != DSW_JOB_DELETE_DUPLICATE) {
        release(p);
        return;
    }
    carry_out(p);
}

static void load_refused(struct dsw_pipeline *p, int status)
{
    on_loaded(status, NULL, p);
}

static void load(struct dsw_pipeline *p, int status)
{
    (void)status;
    p->state = S_LOADING;
    struct dsw_pipeline_env *env = p->env;
    struct dsw_store_step_claim_req sr = step_req(p);
    struct dsw_store_claim_req r = claim_req(p, "execute");
    /* A run slot free now: claim with the load (the common case, one round trip less). */
    bool claim_too = !env->draining && env->runs_held < env->run_slots;
    int rc = is_step(p)  ? dsw_store_step_load(env->cl->store, &sr.key, on_loaded, p)
             : claim_too ? dsw_store_load_claim(env->cl->store, &r,
                                                (int)env->conf->runs.max_receives, on_loaded, p)
                         : dsw_store_load(env->cl->store, p->req.run_id, on_loaded, p);
    if (rc)
        schedule(p, load_refused, rc, 0);
}

/* Decode the body, then load the run (m: the message it came in, NULL in exec mode). */
static void decode(struct dsw_pipeline *p, const struct dsw_sqs_message *m, const char *body,
                   size_t len)
{
    const struct dsw_conf *conf = p->env->conf;
    dsw_short_hash(body, len, p->hash);
    struct dsw_msg_attr attrs[16];
    size_t na = 0;
    for (size_t i = 0; m && i < m->nattrs && na < DSW_ARRAY_LEN(attrs); i++, na++)
        attrs[na] = (struct dsw_msg_attr){.name = m->attrs[i].name,
                                          .data_type = m->attrs[i].data_type,
                                          .value = m->attrs[i].value};
    struct dsw_msg_opts o = {.max_body = (size_t)conf->queue.max_body,
                             .strict_run_id = conf->runs.strict_run_id,
                             .attrs = attrs,
                             .nattrs = na};
    struct dsw_msg_reject rej;
    if (dsw_msg_decode(body, len, &o, &p->req, &rej)) {
        reject(p, rej.reason, rej.detail, m);
        return;
    }
    plog(DSW_LOG_INFO, p, "receive", "%s request (%s form), receive count %d",
         dsw_msg_kind_name(p->req.kind), dsw_msg_form_name(p->req.form), p->receive_count);
    load(p, 0);
}

/* A redelivery of a message another slot still holds (its visibility ran out: SQS was slow or
 * the heartbeat was blocked) comes with a new receipt handle, and SQS honours only the newest:
 * the holder deletes and extends with it from now on. */
static void refresh_receipts(struct dsw_pipeline *p)
{
    for (struct dsw_pipeline *q = dsw_pipeline_next(p->env, NULL); q;
         q = dsw_pipeline_next(p->env, q)) {
        if (q == p || !q->has_message || strcmp(q->message_id, p->message_id) != 0 ||
            strcmp(q->receipt, p->receipt) == 0)
            continue;
        free(q->receipt);
        q->receipt = dsw_xstrdup(p->receipt);
        plog(DSW_LOG_INFO, q, "receipt_refreshed",
             "message delivered again (receive count %d): its newest receipt handle is used",
             p->receive_count);
    }
}

void dsw_pipeline_start_message(struct dsw_pipeline *p, const struct dsw_sqs_message *m)
{
    p->has_message = true;
    dsw_strlcpy(p->message_id, m->message_id ? m->message_id : "", sizeof(p->message_id));
    p->receipt = dsw_xstrdup(m->receipt_handle ? m->receipt_handle : "");
    p->receive_count = m->receive_count;
    if (p->message_id[0] && p->receipt[0])
        refresh_receipts(p);
    if (p->env->draining) /* the poll outlived the start of the drain: give it straight back */
        release(p);
    else
        decode(p, m, m->body, m->body_len);
}

void dsw_pipeline_start_body(struct dsw_pipeline *p, const char *body, size_t len)
{
    decode(p, NULL, body, len);
}

/* ---- supervision ----------------------------------------------------------------------------- */

const char *dsw_pipeline_run_id(const struct dsw_pipeline *p)
{
    return p->req.run_id[0] ? p->req.run_id : NULL;
}

bool dsw_pipeline_running(const struct dsw_pipeline *p)
{
    return p->exec && dsw_execution_running(p->exec);
}

bool dsw_pipeline_visibility_entry(const struct dsw_pipeline *p, uint64_t now_ms, int visibility_s,
                                   struct dsw_sqs_entry *e)
{
    int64_t held_ms = (int64_t)(now_ms - p->received_ms);
    if (!p->has_message || p->state == S_FINISHING ||
        held_ms + (int64_t)visibility_s * 1000 > SQS_MAX_VIS_MS)
        return false;
    e->receipt_handle = p->receipt;
    e->visibility_s = visibility_s;
    return true;
}

void dsw_pipeline_heartbeat(struct dsw_pipeline *p)
{
    if (p->exec)
        dsw_execution_heartbeat(p->exec);
}

bool dsw_pipeline_lease(struct dsw_pipeline *p, int64_t *token)
{
    return p->exec && dsw_execution_lease(p->exec, token);
}

void dsw_pipeline_lease_result(struct dsw_pipeline *p, int64_t token, int status)
{
    if (p->exec)
        dsw_execution_lease_result(p->exec, token, status);
}

bool dsw_pipeline_watching(const struct dsw_pipeline *p)
{
    return p->exec && dsw_execution_watching(p->exec);
}

void dsw_pipeline_status(struct dsw_pipeline *p, const struct dsw_store_status_row *row)
{
    if (p->exec)
        dsw_execution_status(p->exec, row);
}

bool dsw_pipeline_step_token(const struct dsw_pipeline *p, int64_t *token)
{
    return p->exec && dsw_execution_step_token(p->exec, token);
}

void dsw_pipeline_stop(struct dsw_pipeline *p)
{
    if (p->exec)
        dsw_execution_stop(p->exec);
}

void dsw_pipeline_terminate(struct dsw_pipeline *p)
{
    if (p->exec)
        dsw_execution_terminate(p->exec);
}

void dsw_pipeline_drain(struct dsw_pipeline *p)
{
    if (p->state == S_FINISHING && p->has_message && !p->next)
        final_call_sent(p);
}
