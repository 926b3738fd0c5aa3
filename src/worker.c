/* worker: the daemon's event loop. Each received message becomes a job that moves through
 * decode -> load -> decide -> claim -> spawn -> supervise -> record -> delete; worker-wide timers
 * extend visibility, refresh leases, poll for cancellation and sweep dead workers' claims.
 * Nothing is deleted before the outcome it stands for is committed. */
#include "dsw/worker.h"

#include "dsw/buf.h"
#include "dsw/clients.h"
#include "dsw/dagster.h"
#include "dsw/httpd.h"
#include "dsw/db.h"
#include "dsw/job.h"
#include "dsw/log.h"
#include "dsw/metrics.h"
#include "dsw/msg.h"
#include "dsw/notify.h"
#include "dsw/proc.h"
#include "dsw/sqs.h"
#include "dsw/store.h"
#include "dsw/trampoline.h"
#include "dsw/warm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define EXIT_UNAVAILABLE 69
#define EXIT_CONFIG      78
#define RETRY_MIN_MS     500
#define RETRY_MAX_MS     30000
#define SQS_MAX_VIS_MS   (12LL * 3600 * 1000)

enum job_state {
    J_LOADING,   /* reading the run and its claim */
    J_CLAIMING,  /* claim or takeover in flight */
    J_LAUNCHING, /* child spawned, launch record in flight */
    J_RUNNING,   /* child running */
    J_RECORDING, /* writing the outcome */
    J_FINISHING, /* deleting / deferring / releasing the message */
};

struct worker;

struct job {
    struct worker *w;
    struct job *prev, *next;
    enum job_state state;
    uv_timer_t retry; /* backoff of retried steps; the job is freed in its close callback */
    uint64_t retry_ms;
    /* the message */
    bool has_message; /* false in exec mode */
    char message_id[128];
    char *receipt;
    int receive_count;
    int64_t sent_ms;
    uint64_t received_ms;
    char hash[13];
    struct dsw_msg_request req;
    /* the run */
    enum dsw_store_status status;
    char *job_name;
    char *body;
    int64_t max_runtime_ms;
    struct dsw_job_facts facts;
    enum dsw_job_action action;
    int64_t seen_token;
    int64_t token; /* 0: no claim held */
    /* the child */
    struct dsw_proc *proc;
    struct dsw_proc_exit exit;
    bool exited;
    bool cancel; /* the run went CANCELING / CANCELED */
    bool drained;
    bool lease_lost;
    bool proc_closing; /* dsw_proc_close was called: exactly once per child */
    bool heartbeat_busy;
    bool warm; /* the child is a warm runner that was handed this run */
};

struct worker {
    uv_loop_t loop;
    const struct dsw_conf *conf;
    enum dsw_worker_mode mode;
    const char *exec_path;
    struct dsw_clients cl;
    struct dsw_watchdog *watchdog;
    struct dsw_httpd *httpd;
    struct dsw_warm *warm;  /* NULL when runs.warm = 0 */
    const char *trampoline; /* dsw-exec, or NULL: re-exec ourselves */
    bool queue_ok;          /* the last receive succeeded */
    uint64_t sqs_seen[DSW_SQS_OP_COUNT][DSW_SQS_ERR_COUNT];
    uint64_t db_errors_seen;
    struct job *jobs;
    int njobs;
    int slots;
    enum dsw_log_level level;
    bool receiving;
    bool received_once;
    bool draining;
    bool stopped;
    bool db_up;
    bool ready_sent;
    bool started; /* the schema check passed: receiving may begin */
    int exit_code;
    uint64_t receive_retry_ms;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t t_receive, t_visibility, t_lease, t_cancel, t_sweep, t_drain, t_status;
    bool cancel_poll_busy, sweep_busy, visibility_busy;
};

static void job_finish(struct job *j);
static void maybe_receive(struct worker *w);
static void maybe_stop(struct worker *w);

static struct dsw_log_ctx job_ctx(const struct job *j, const char *event)
{
    return (struct dsw_log_ctx){.event = event,
                                .run_id = j->req.run_id[0] ? j->req.run_id : NULL,
                                .message_id = j->has_message ? j->message_id : NULL,
                                .duration_ms = -1};
}

#define jlog(level, j, event, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= dsw_log_threshold) {                                                        \
            struct dsw_log_ctx ctx_ = job_ctx((j), (event));                                       \
            dsw_log_emit((level), &ctx_, __VA_ARGS__);                                             \
        }                                                                                          \
    } while (0)

/* ---- job lifetime ------------------------------------------------------------------------ */

static struct job *job_new(struct worker *w)
{
    struct job *j = dsw_xcalloc(1, sizeof(*j));
    j->w = w;
    j->received_ms = dsw_now_ms();
    uv_timer_init(&w->loop, &j->retry);
    j->retry.data = j;
    j->next = w->jobs;
    if (w->jobs)
        w->jobs->prev = j;
    w->jobs = j;
    w->njobs++;
    return j;
}

static void job_freed(uv_handle_t *h)
{
    struct job *j = h->data;
    dsw_msg_request_clear(&j->req);
    free(j->receipt);
    free(j->job_name);
    free(j->body);
    free(j);
}

/* The job is over: unlink it, free it, and let the worker receive again. */
static void job_done(struct job *j)
{
    struct worker *w = j->w;
    if (j->prev)
        j->prev->next = j->next;
    else
        w->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    w->njobs--;
    uv_close((uv_handle_t *)&j->retry, job_freed);
    if (w->mode != DSW_WORKER_RUN && w->njobs == 0)
        w->draining = true;
    maybe_receive(w);
    maybe_stop(w);
}

/* Call fn again after a capped, doubling delay (the db or queue is away). */
static void job_retry(struct job *j, uv_timer_cb fn)
{
    j->retry_ms = j->retry_ms ? DSW_MIN(j->retry_ms * 2, RETRY_MAX_MS) : RETRY_MIN_MS;
    uint64_t jitter = (uint64_t)rand() % (j->retry_ms / 2 + 1);
    uv_timer_start(&j->retry, fn, j->retry_ms / 2 + jitter, 0);
}

/* ---- the message's end: delete, defer, release --------------------------------------- */

static void on_deleted(int status, const struct dsw_sqs_entry_result *res, size_t n, void *arg)
{
    struct job *j = arg;
    int st = status ? status : (n ? res[0].status : 0);
    if (st)
        jlog(DSW_LOG_WARN, j, "delete_failed",
             "could not delete the message (%s); a redelivery will find the run's outcome",
             strerror(-st));
    job_done(j);
}

static void job_delete(struct job *j, const char *reason)
{
    j->state = J_FINISHING;
    if (!j->has_message) {
        job_done(j);
        return;
    }
    if (strcmp(reason, "rejected") != 0) /* counted in dsw_messages_rejected_total */
        dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, reason, 1);
    jlog(DSW_LOG_INFO, j, "delete", "deleting message (%s)", reason);
    struct dsw_sqs_entry e = {.id = "m", .receipt_handle = j->receipt};
    if (dsw_sqs_delete_batch(j->w->cl.sqs, j->w->conf->queue.url, &e, 1, on_deleted, j))
        job_done(j);
}

static void on_visibility_set(int status, const struct dsw_sqs_entry_result *res, size_t n,
                              void *arg)
{
    struct job *j = arg;
    int st = status ? status : (n ? res[0].status : 0);
    if (st)
        jlog(DSW_LOG_WARN, j, "visibility_failed", "could not change the visibility (%s)",
             strerror(-st));
    job_done(j);
}

/* Make the message visible again after visibility_s (0: at once). */
static void job_set_visibility(struct job *j, int visibility_s, const char *why)
{
    j->state = J_FINISHING;
    if (!j->has_message) {
        jlog(DSW_LOG_WARN, j, why, "not processed now (%s)", why);
        j->w->exit_code = 1;
        job_done(j);
        return;
    }
    dsw_metrics_inc(visibility_s == 0 ? DSW_METRIC_MESSAGES_RELEASED : DSW_METRIC_MESSAGES_DEFERRED,
                    NULL, 1);
    jlog(DSW_LOG_INFO, j, why, "message visible again in %d s (%s)", visibility_s, why);
    struct dsw_sqs_entry e = {
        .id = "m", .receipt_handle = j->receipt, .visibility_s = visibility_s};
    if (dsw_sqs_change_visibility_batch(j->w->cl.sqs, j->w->conf->queue.url, &e, 1,
                                        on_visibility_set, j))
        job_done(j);
}

static int secs(int64_t ms)
{
    return (int)DSW_MIN(ms / 1000, SQS_MAX_VIS_MS / 1000);
}

/* ---- rejects ------------------------------------------------------------------------------ */

static void on_quarantined(int status, const char *message_id, void *arg)
{
    struct job *j = arg;
    if (status) {
        /* Keep the original: it comes back and is tried again, nothing is lost. */
        jlog(DSW_LOG_ERROR, j, "quarantine_failed",
             "could not move the rejected message to the quarantine queue (%s)", strerror(-status));
        job_set_visibility(j, secs(j->w->conf->runs.requeue_delay_ms), "quarantine_failed");
        return;
    }
    job_delete(j, "rejected");
}

static void job_reject(struct job *j, enum dsw_msg_reason reason, const char *detail,
                       const struct dsw_sqs_message *m)
{
    const char *name = dsw_msg_reason_name(reason);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_REJECTED, name, 1);
    jlog(DSW_LOG_WARN, j, "reject", "rejected message: %s (%s); receive count %d, body sha256 %s",
         name, detail, j->receive_count, j->hash);
    if (!j->has_message) {
        j->w->exit_code = 1;
        job_done(j);
        return;
    }
    const char *q = j->w->conf->queue.quarantine_url;
    if (q && m) {
        struct dsw_sqs_attr attr = {.name = "dsw_reject_reason", .value = name};
        struct dsw_sqs_send_req req = {
            .body = m->body, .body_len = m->body_len, .attrs = &attr, .nattrs = 1};
        if (dsw_sqs_send(j->w->cl.sqs, q, &req, on_quarantined, j) == 0) {
            j->state = J_FINISHING;
            return;
        }
    }
    job_delete(j, "rejected");
}

/* ---- recording outcomes ------------------------------------------------------------------ */

static void record_exit(uv_timer_t *t);

static void on_recorded(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct job *j = arg;
    if (status == -ESTALE) {
        /* Another worker took the run over: its outcome is theirs to record. The message is
         * left to come back; the new owner or the terminal status deals with it. */
        jlog(DSW_LOG_WARN, j, "fenced", "lease lost before the outcome was recorded");
        job_set_visibility(j, 0, "fenced");
        return;
    }
    if (status == -ENOENT) {
        jlog(DSW_LOG_WARN, j, "record", "the run row is gone; nothing to record");
        job_delete(j, "unknown_run");
        return;
    }
    if (status) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
        jlog(DSW_LOG_WARN, j, "record_retry", "could not record the outcome (%s); retrying",
             strerror(-status));
        job_retry(j, record_exit);
        return;
    }
    j->token = 0;
    const char *after = dsw_store_status_name(res->after);
    dsw_metrics_inc(DSW_METRIC_RUNS_FINISHED, after, 1);
    jlog(DSW_LOG_INFO, j, "recorded", "outcome recorded: run %s%s", after,
         res->changed ? " (written by dagster-sqs-worker)" : "");
    job_delete(j, "recorded");
}

static void record_outcome(struct job *j, const char *outcome, const char *cause)
{
    j->state = J_RECORDING;
    struct dsw_store_outcome o = {
        .run_id = j->req.run_id, .token = j->token, .outcome = outcome, .cause = cause};
    int rc = dsw_store_record_outcome(j->w->cl.store, &o, on_recorded, j);
    if (rc)
        on_recorded(rc, NULL, j);
}

static void record_exit(uv_timer_t *t)
{
    struct job *j = t->data;
    const struct dsw_proc_exit *x = &j->exit;
    struct worker *w = j->w;
    char cause[256];
    const char *outcome = NULL, *why = NULL;
    if (x->killed == DSW_PROC_TIMEOUT) {
        outcome = "timeout";
        snprintf(cause, sizeof(cause),
                 "Run exceeded its maximum runtime and was terminated by dagster-sqs-worker on %s.",
                 w->cl.hostname);
        why = cause;
    } else if (j->cancel) {
        outcome = "canceled";
    } else if (j->drained) {
        outcome = "drained";
        snprintf(cause, sizeof(cause),
                 "Run worker terminated because dagster-sqs-worker on %s shut down.",
                 w->cl.hostname);
        why = cause;
    }
    j->state = J_RECORDING;
    struct dsw_store_exit e = {
        .run_id = j->req.run_id,
        .token = j->token,
        .exit_code = x->exit_code,
        .term_signal = x->term_signal,
        .pid = x->pid,
        .duration_s = (double)x->duration_ms / 1000.0,
        .outcome = outcome,
        .cause = why,
    };
    int rc = dsw_store_record_exit(w->cl.store, &e, on_recorded, j);
    if (rc)
        on_recorded(rc, NULL, j);
}

/* ---- the child ------------------------------------------------------------------------- */

static void on_child_line(struct dsw_proc *p, enum dsw_proc_stream stream, const char *line,
                          size_t len, int truncated, void *arg)
{
    struct job *j = arg;
    jlog(DSW_LOG_INFO, j, stream == DSW_PROC_STDOUT ? "child_stdout" : "child_stderr", "%s%s", line,
         truncated ? " [truncated]" : "");
}

static void on_child_drop(struct dsw_proc *p, uint64_t n, void *arg)
{
    struct job *j = arg;
    jlog(DSW_LOG_WARN, j, "child_output_dropped", "%llu output lines dropped (rate limit)",
         (unsigned long long)n);
}

static void on_proc_closed(void *arg)
{
    struct job *j = arg;
    if (j->lease_lost) {
        jlog(DSW_LOG_WARN, j, "fenced", "lease lost: run worker killed, nothing recorded");
        job_set_visibility(j, 0, "fenced");
        return;
    }
    record_exit(&j->retry);
}

static void on_child_exit(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct job *j = arg;
    j->exit = *st;
    j->exited = true;
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, -1);
    dsw_metrics_observe(DSW_METRIC_RUN_DURATION, (double)st->duration_ms / 1000.0);
    if (st->first_line_ms >= 0)
        dsw_metrics_observe_label(DSW_METRIC_RUN_START, j->warm ? "warm" : "cold",
                                  (double)st->first_line_ms / 1000.0);
    struct dsw_log_ctx ctx = job_ctx(j, "child_exit");
    ctx.has_exit_code = st->term_signal == 0;
    ctx.exit_code = st->exit_code;
    ctx.duration_ms = (long long)st->duration_ms;
    dsw_log(DSW_LOG_INFO, &ctx, "run worker pid %d %s %d", st->pid,
            st->term_signal ? "killed by signal" : "exited with code",
            st->term_signal ? st->term_signal : st->exit_code);
    j->proc = NULL;
    if (!j->proc_closing) {
        j->proc_closing = true;
        dsw_proc_close(p, on_proc_closed, j);
    }
}

/* The lease is gone: another worker owns the run now. SIGKILL the group at once (a SIGTERM
 * would let the child write events into a run that is no longer ours); nothing is recorded. */
static void kill_fenced_child(struct job *j)
{
    j->lease_lost = true;
    if (j->proc && !j->proc_closing) {
        j->proc_closing = true;
        dsw_proc_close(j->proc, on_proc_closed, j);
    }
}

static void record_launch(uv_timer_t *t);

static void on_launched(int status, void *arg)
{
    struct job *j = arg;
    if (!j->proc)
        return; /* the child already ended; its exit path continues */
    if (status == -ESTALE || status == -ENOENT) {
        jlog(DSW_LOG_WARN, j, "fenced", "launch not recorded (%s): killing the run worker",
             strerror(-status));
        kill_fenced_child(j);
        return;
    }
    if (status) {
        /* Until the launch is recorded the claim says no child runs; keep trying (the lease
         * heartbeat holds the claim meanwhile). */
        jlog(DSW_LOG_WARN, j, "launch_record_retry",
             "could not record the launch (%s); the run continues, retrying", strerror(-status));
        job_retry(j, record_launch);
        return;
    }
    j->retry_ms = 0;
    if (j->state == J_LAUNCHING)
        j->state = J_RUNNING;
}

static void record_launch(uv_timer_t *t)
{
    struct job *j = t->data;
    if (!j->proc || j->proc_closing)
        return;
    struct dsw_store_launch l = {.run_id = j->req.run_id,
                                 .token = j->token,
                                 .child_pid = dsw_proc_pid(j->proc),
                                 .message_id = j->has_message ? j->message_id : NULL,
                                 .receive_count = j->receive_count};
    int rc = dsw_store_record_launch(j->w->cl.store, &l, on_launched, j);
    if (rc)
        on_launched(rc, j);
}

/* runs.command split on blanks, else the run's entry point, else <python> -m dagster. */
static char **child_argv(struct job *j, const char *args_json)
{
    const struct dsw_conf *conf = j->w->conf;
    char **entry = NULL, *exe = NULL;
    char **argv = dsw_xcalloc(40, sizeof(char *));
    size_t n = 0;
    if (conf->runs.command) {
        char *copy = dsw_xstrdup(conf->runs.command), *save = NULL;
        for (char *t = strtok_r(copy, " \t", &save); t && n < 32; t = strtok_r(NULL, " \t", &save))
            argv[n++] = dsw_xstrdup(t);
        free(copy);
    } else if (dsw_dagster_body_origin(j->body, NULL, &entry, &exe) == 0 && entry && entry[0]) {
        for (size_t i = 0; entry[i] && n < 32; i++)
            argv[n++] = dsw_xstrdup(entry[i]);
    } else {
        argv[n++] = dsw_xstrdup(exe ? exe : "python3");
        argv[n++] = dsw_xstrdup("-m");
        argv[n++] = dsw_xstrdup("dagster");
    }
    for (size_t i = 0; entry && entry[i]; i++)
        free(entry[i]);
    free(entry);
    free(exe);
    argv[n++] = dsw_xstrdup("api");
    argv[n++] = dsw_xstrdup(j->action == DSW_JOB_RESUME ? "resume_run" : "execute_run");
    argv[n++] = dsw_xstrdup(args_json);
    return argv;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static int child_env(const struct dsw_conf *conf, char ***out)
{
    char *copy = dsw_xstrdup(conf->runs.env_passthrough ? conf->runs.env_passthrough : "");
    const char *allow[64];
    size_t na = 0;
    char *save = NULL;
    for (char *t = strtok_r(copy, " \t,", &save); t && na < 63; t = strtok_r(NULL, " \t,", &save))
        allow[na++] = t;
    allow[na] = NULL;
    char **set = dsw_xcalloc(conf->runs.nenv + 2, sizeof(char *));
    size_t ns = 0;
    for (size_t i = 0; i < conf->runs.nenv; i++)
        set[ns++] = dsw_xasprintf("%s=%s", conf->runs.env[i].name, conf->runs.env[i].value);
    if (conf->runs.dagster_home)
        set[ns++] = dsw_xasprintf("DAGSTER_HOME=%s", conf->runs.dagster_home);
    int rc = dsw_proc_env_build((const char *const *)environ, allow, (const char *const *)set, out);
    free_strv(set);
    free(copy);
    return rc;
}

static void spawned(struct job *j);

static void job_spawn(struct job *j)
{
    struct worker *w = j->w;
    const struct dsw_conf *conf = w->conf;
    char *origin = NULL, *json = NULL, **env = NULL, *exe = NULL;
    const char *iref =
        conf->runs.instance_ref == DSW_INSTANCE_REF_FORWARD ? j->req.instance_ref : NULL;
    int rc = dsw_dagster_body_origin(j->body, &origin, NULL, &exe);
    if (!rc)
        rc = dsw_dagster_run_args(j->req.run_id, origin, iref, j->action == DSW_JOB_RESUME, &json);
    free(origin);
    if (rc) {
        jlog(DSW_LOG_ERROR, j, "bad_run_body", "the stored run has no usable code origin");
        record_outcome(j, "bad_run", "dagster-sqs-worker could not read the run's code origin.");
        return;
    }
    uint64_t timeout = (uint64_t)conf->runs.timeout_ms;
    if (j->max_runtime_ms > 0 && (timeout == 0 || (uint64_t)j->max_runtime_ms < timeout))
        timeout = (uint64_t)j->max_runtime_ms;
    if (w->warm && dsw_warm_python_matches(w->warm, exe)) {
        const char *args[] = {"api", j->action == DSW_JOB_RESUME ? "resume_run" : "execute_run",
                              json, NULL};
        struct dsw_proc_hooks h = {.timeout_ms = timeout,
                                   .kill_grace_ms = (uint64_t)conf->runs.kill_grace_ms,
                                   .on_line = on_child_line,
                                   .on_drop = on_child_drop,
                                   .on_exit = on_child_exit,
                                   .arg = j};
        rc = dsw_warm_take(w->warm, args, &h, &j->proc);
        j->warm = rc == 0;
        if (rc && rc != -EAGAIN)
            jlog(DSW_LOG_WARN, j, "warm_failed", "warm hand-over failed (%s); starting cold",
                 strerror(-rc));
    }
    free(exe);
    if (j->warm) {
        free(json);
        spawned(j);
        return;
    }
    char **argv = child_argv(j, json);
    free(json);
    rc = child_env(conf, &env);
    struct dsw_proc_opts o = {
        .argv = (const char *const *)argv,
        .env = (const char *const *)env,
        .timeout_ms = timeout,
        .kill_grace_ms = (uint64_t)conf->runs.kill_grace_ms,
        .on_line = on_child_line,
        .on_drop = on_child_drop,
        .on_exit = on_child_exit,
        .arg = j,
    };
    o.trampoline = w->trampoline;
    if (!rc)
        rc = dsw_proc_spawn(&w->loop, &o, &j->proc);
    free_strv(argv);
    dsw_proc_env_free(env);
    if (rc) {
        jlog(DSW_LOG_ERROR, j, "spawn_failed", "could not start the run worker: %s", strerror(-rc));
        record_outcome(j, "spawn_failed", "dagster-sqs-worker could not start the run worker.");
        return;
    }
    spawned(j);
}

/* A child (cold or warm) now runs the job's run: count it and record the launch. */
static void spawned(struct job *j)
{
    j->state = J_LAUNCHING;
    dsw_metrics_inc(DSW_METRIC_RUNS_STARTED, j->action == DSW_JOB_RESUME ? "resume" : "execute", 1);
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, 1);
    jlog(DSW_LOG_INFO, j, "spawn", "run worker started (pid %d, %s, %s)", dsw_proc_pid(j->proc),
         j->action == DSW_JOB_RESUME ? "resume_run" : "execute_run", j->warm ? "warm" : "cold");
    record_launch(&j->retry);
}

/* ---- claims ---------------------------------------------------------------------------- */

static void job_act(struct job *j);

static void on_claimed(int status, const struct dsw_store_claim *claim, void *arg)
{
    struct job *j = arg;
    if (status == 0) {
        j->token = claim->token;
        dsw_metrics_inc(DSW_METRIC_CLAIMS, "won", 1);
        job_act(j);
        return;
    }
    if (status == -EEXIST || status == -EBUSY) {
        /* Someone got there first: decide again from what the claim is now. */
        dsw_metrics_inc(DSW_METRIC_CLAIMS, "lost", 1);
        jlog(DSW_LOG_INFO, j, "claim_lost", "another worker holds the run");
        job_set_visibility(j, secs(j->w->conf->claims.ttl_ms), "claim_lost");
        return;
    }
    dsw_metrics_inc(DSW_METRIC_CLAIMS, "error", 1);
    jlog(DSW_LOG_WARN, j, "claim_failed", "claim failed (%s)", strerror(-status));
    job_set_visibility(j, secs(j->w->conf->claims.ttl_ms), "claim_failed");
}

static void job_claim(struct job *j)
{
    j->state = J_CLAIMING;
    if (j->w->draining) {
        job_set_visibility(j, 0, "released");
        return;
    }
    bool resume = j->action == DSW_JOB_RESUME;
    struct dsw_store_claim_req r = {.run_id = j->req.run_id,
                                    .kind = resume ? "resume" : "execute",
                                    .message_id = j->has_message ? j->message_id : NULL,
                                    .receive_count = j->receive_count};
    int rc = j->facts.claim == DSW_JOB_CLAIM_NONE
                 ? dsw_store_claim(j->w->cl.store, &r, on_claimed, j)
                 : dsw_store_takeover(j->w->cl.store, &r, j->seen_token, on_claimed, j);
    if (rc)
        on_claimed(rc, NULL, j);
}

static void on_released(int status, void *arg)
{
    if (status)
        dsw_warn("could not release a claim (%s); it will go stale", strerror(-status));
}

/* With the claim held (token), carry out the decision. */
static void job_act(struct job *j)
{
    char cause[160];
    switch (j->action) {
    case DSW_JOB_EXECUTE:
    case DSW_JOB_RESUME:
        if (j->w->draining) {
            /* Not started: give the claim and the message back at once. */
            if (dsw_store_release(j->w->cl.store, j->req.run_id, j->token, on_released, NULL))
                dsw_warn("could not release the claim; it will go stale");
            j->token = 0;
            job_set_visibility(j, 0, "released");
            return;
        }
        job_spawn(j);
        return;
    case DSW_JOB_RECORD_LOST:
        record_outcome(j, "lost",
                       "Run worker lost: the worker that started this run stopped heartbeating "
                       "(recorded by dagster-sqs-worker).");
        return;
    case DSW_JOB_RECORD_GIVE_UP:
        snprintf(cause, sizeof(cause),
                 "dagster-sqs-worker gave up after %d deliveries of this run's message.",
                 j->receive_count);
        record_outcome(j, "gave_up", cause);
        return;
    case DSW_JOB_RECORD_CANCELED:
        record_outcome(j, "canceled", "Run canceled before a run worker started it.");
        return;
    default:
        job_finish(j);
        return;
    }
}

/* Decisions that need no claim. */
static void job_finish(struct job *j)
{
    const struct dsw_conf *conf = j->w->conf;
    switch (j->action) {
    case DSW_JOB_DELETE_TERMINAL:
        job_delete(j, "terminal_skip");
        return;
    case DSW_JOB_DELETE_DUPLICATE:
        job_delete(j, "duplicate");
        return;
    case DSW_JOB_DELETE_NOT_LAUNCHED:
        job_delete(j, "not_launched");
        return;
    case DSW_JOB_DELETE_UNEXPECTED:
        job_delete(j, "unexpected_status");
        return;
    case DSW_JOB_DEFER_OWNED:
        job_set_visibility(j, secs(conf->claims.ttl_ms), "deferred_owned");
        return;
    case DSW_JOB_DEFER_QUEUED:
        job_set_visibility(j, secs(conf->runs.requeue_delay_ms), "deferred_queued");
        return;
    default:
        job_claim(j);
        return;
    }
}

/* ---- load and decide ---------------------------------------------------------------------- */

static void job_load(uv_timer_t *t);

static enum dsw_job_claim claim_view(const struct dsw_store_claim *c)
{
    if (c->state == DSW_CLAIM_NONE)
        return DSW_JOB_CLAIM_NONE;
    if (c->state == DSW_CLAIM_DONE)
        return DSW_JOB_CLAIM_DONE;
    return c->live ? DSW_JOB_CLAIM_LIVE : DSW_JOB_CLAIM_STALE;
}

static void on_loaded(int status, const struct dsw_store_run *run, void *arg)
{
    struct job *j = arg;
    const struct dsw_conf *conf = j->w->conf;
    if (status == -ENOENT) {
        job_reject(j, DSW_MSG_UNKNOWN_RUN, "no such run in the runs table", NULL);
        return;
    }
    if (status) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
        if (j->w->draining) {
            job_set_visibility(j, 0, "released");
            return;
        }
        jlog(DSW_LOG_WARN, j, "load_retry", "could not load the run (%s); retrying",
             strerror(-status));
        job_retry(j, job_load);
        return;
    }
    j->status = run->status;
    j->job_name = run->job_name ? dsw_xstrdup(run->job_name) : NULL;
    j->body = run->body ? dsw_xstrdup(run->body) : NULL;
    j->max_runtime_ms = run->max_runtime_ms;
    j->seen_token = run->claim.token;
    j->facts = (struct dsw_job_facts){
        .status = dsw_store_status_name(run->status),
        .claim = claim_view(&run->claim),
        .claim_same_message = j->has_message && run->claim.message_id &&
                              strcmp(run->claim.message_id, j->message_id) == 0,
        .receive_count = j->receive_count,
        .max_receives = (int)conf->runs.max_receives,
        .resume_requested = j->req.kind == DSW_MSG_RESUME,
        .resume_enabled = conf->runs.resume,
        .resumes_done = run->claim.state != DSW_CLAIM_NONE && run->claim.kind &&
                                strcmp(run->claim.kind, "resume") == 0
                            ? run->claim.attempt
                            : 0,
        .max_resumes = (int)conf->runs.max_resumes,
    };
    j->action = dsw_job_decide(&j->facts);
    jlog(DSW_LOG_INFO, j, "decide", "run %s, claim %s: %s", j->facts.status,
         (const char *const[]){"none", "live", "stale", "done"}[j->facts.claim],
         dsw_job_action_name(j->action));
    if (j->w->draining && j->action != DSW_JOB_DELETE_TERMINAL &&
        j->action != DSW_JOB_DELETE_DUPLICATE) {
        job_set_visibility(j, 0, "released");
        return;
    }
    job_finish(j);
}

static void job_load(uv_timer_t *t)
{
    struct job *j = t->data;
    j->state = J_LOADING;
    int rc = dsw_store_load(j->w->cl.store, j->req.run_id, on_loaded, j);
    if (rc)
        on_loaded(rc, NULL, j);
}

/* A new message (or exec body): decode, then load. */
static void job_start(struct job *j, const struct dsw_sqs_message *m, const char *body, size_t len)
{
    const struct dsw_conf *conf = j->w->conf;
    dsw_short_hash(body, len, j->hash);
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
    if (dsw_msg_decode(body, len, &o, &j->req, &rej)) {
        job_reject(j, rej.reason, rej.detail, m);
        return;
    }
    jlog(DSW_LOG_INFO, j, "receive", "%s request (%s form), receive count %d",
         dsw_msg_kind_name(j->req.kind), dsw_msg_form_name(j->req.form), j->receive_count);
    job_load(&j->retry);
}

/* ---- receiving -------------------------------------------------------------------------- */

static void on_receive_timer(uv_timer_t *t)
{
    maybe_receive(t->data);
}

static void on_received(int status, const struct dsw_sqs_message *msgs, size_t n, void *arg)
{
    struct worker *w = arg;
    w->receiving = false;
    if (status == -ECANCELED) {
        maybe_stop(w);
        return;
    }
    w->queue_ok = status == 0;
    if (status) {
        w->receive_retry_ms = w->receive_retry_ms ? DSW_MIN(w->receive_retry_ms * 2, 30000) : 1000;
        dsw_warn("receive failed (%s: %s); next try in %llu ms",
                 dsw_sqs_errclass_name(dsw_sqs_errclass(status)), strerror(-status),
                 (unsigned long long)w->receive_retry_ms);
        if (w->mode == DSW_WORKER_ONCE) {
            w->exit_code = 1;
            w->draining = true;
            maybe_stop(w);
            return;
        }
        uv_timer_start(&w->t_receive, on_receive_timer, w->receive_retry_ms, 0);
        return;
    }
    w->receive_retry_ms = 0;
    uint64_t now_wall = (uint64_t)(dsw_wall_time() * 1000.0);
    for (size_t i = 0; i < n; i++) {
        const struct dsw_sqs_message *m = &msgs[i];
        struct job *j = job_new(w);
        j->has_message = true;
        dsw_strlcpy(j->message_id, m->message_id ? m->message_id : "", sizeof(j->message_id));
        j->receipt = dsw_xstrdup(m->receipt_handle ? m->receipt_handle : "");
        j->receive_count = m->receive_count;
        j->sent_ms = m->sent_timestamp;
        dsw_metrics_inc(DSW_METRIC_MESSAGES_RECEIVED, NULL, 1);
        if (m->sent_timestamp > 0)
            dsw_metrics_observe(DSW_METRIC_QUEUE_WAIT,
                                ((double)now_wall - (double)m->sent_timestamp) / 1000.0);
        if (w->draining) /* the poll outlived the start of the drain: give it straight back */
            job_set_visibility(j, 0, "released");
        else
            job_start(j, m, m->body, m->body_len);
    }
    if (w->mode == DSW_WORKER_ONCE) {
        w->received_once = true;
        if (n == 0) {
            dsw_info("no message arrived within the wait time");
            w->draining = true;
        }
    }
    maybe_receive(w);
    maybe_stop(w);
}

static void maybe_receive(struct worker *w)
{
    const struct dsw_conf *conf = w->conf;
    if (!w->started || w->receiving || w->draining || w->stopped || !w->db_up ||
        w->mode == DSW_WORKER_EXEC || uv_is_active((uv_handle_t *)&w->t_receive))
        return;
    if (w->mode == DSW_WORKER_ONCE && w->received_once)
        return;
    int free_slots = w->slots - w->njobs;
    if (free_slots <= 0)
        return;
    int max = w->mode == DSW_WORKER_ONCE ? 1 : DSW_MIN(free_slots, DSW_SQS_MAX_BATCH);
    int rc = dsw_sqs_receive(w->cl.sqs, conf->queue.url, max, secs(conf->queue.wait_time_ms),
                             secs(conf->queue.visibility_timeout_ms), on_received, w);
    if (rc) {
        dsw_error("cannot receive: %s", strerror(-rc));
        uv_timer_start(&w->t_receive, on_receive_timer, 1000, 0);
        return;
    }
    w->receiving = true;
}

/* ---- heartbeats: visibility, leases, cancellation, sweeping ---------------------------- */

struct vis_batch {
    struct worker *w;
};

static void on_extended(int status, const struct dsw_sqs_entry_result *res, size_t n, void *arg)
{
    struct worker *w = arg;
    w->visibility_busy = false;
    if (status) {
        dsw_warn("visibility extension failed (%s)", strerror(-status));
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (res[i].status)
            dsw_warn("visibility extension of entry %s failed (%s)", res[i].id, res[i].code);
}

/* One ChangeMessageVisibilityBatch per 10 messages held, each to queue.visibility_timeout,
 * except messages past the SQS 12-hour limit: from then on the claim alone protects them. */
static void on_visibility_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
    char ids[DSW_SQS_MAX_BATCH][8];
    size_t n = 0;
    uint64_t now = dsw_now_ms();
    int vis = secs(w->conf->queue.visibility_timeout_ms);
#ifdef DSW_FAILPOINTS
    /* Failpoint: the queue heartbeat is blocked (the message comes back while its run is
     * still running; the claim alone must keep a second child from starting). */
    if (getenv("DSW_FAILPOINT_NO_VISIBILITY_HEARTBEAT"))
        return;
#endif
    for (struct job *j = w->jobs; j; j = j->next) {
        if (!j->has_message || j->state == J_FINISHING ||
            (int64_t)(now - j->received_ms) + w->conf->queue.visibility_timeout_ms > SQS_MAX_VIS_MS)
            continue;
        snprintf(ids[n], sizeof(ids[n]), "e%zu", n);
        e[n] =
            (struct dsw_sqs_entry){.id = ids[n], .receipt_handle = j->receipt, .visibility_s = vis};
        if (++n == DSW_SQS_MAX_BATCH || !j->next) {
            if (dsw_sqs_change_visibility_batch(w->cl.sqs, w->conf->queue.url, e, n, on_extended,
                                                w) == 0)
                w->visibility_busy = true;
            n = 0;
        }
    }
    if (n &&
        dsw_sqs_change_visibility_batch(w->cl.sqs, w->conf->queue.url, e, n, on_extended, w) == 0)
        w->visibility_busy = true;
}

static void on_heartbeat(int status, void *arg)
{
    struct job *j = arg;
    j->heartbeat_busy = false;
    if (status == -ESTALE && j->proc) {
        jlog(DSW_LOG_ERROR, j, "lease_lost", "lease lost: killing the run worker");
        kill_fenced_child(j);
    } else if (status && status != -ESTALE) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
    }
}

static void on_lease_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    for (struct job *j = w->jobs; j; j = j->next) {
        if (!j->token || !j->proc || j->heartbeat_busy)
            continue;
        if (dsw_store_heartbeat(w->cl.store, j->req.run_id, j->token, on_heartbeat, j) == 0)
            j->heartbeat_busy = true;
    }
}

static void on_polled(int status, const struct dsw_store_status_row *rows, size_t n, void *arg)
{
    struct worker *w = arg;
    w->cancel_poll_busy = false;
    if (status)
        return;
    for (size_t i = 0; i < n; i++) {
        if (rows[i].status != DSW_STATUS_CANCELING && rows[i].status != DSW_STATUS_CANCELED)
            continue;
        for (struct job *j = w->jobs; j; j = j->next) {
            if (j->proc && !j->cancel && strcmp(j->req.run_id, rows[i].run_id) == 0) {
                j->cancel = true;
                jlog(DSW_LOG_INFO, j, "cancel", "run is %s: terminating the run worker",
                     dsw_store_status_name(rows[i].status));
                dsw_proc_terminate(j->proc, DSW_PROC_TERMINATE);
            }
        }
    }
}

static void on_cancel_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    const char *ids[1000];
    size_t n = 0;
    if (w->cancel_poll_busy)
        return;
    for (struct job *j = w->jobs; j && n < DSW_ARRAY_LEN(ids); j = j->next)
        if (j->proc && !j->cancel)
            ids[n++] = j->req.run_id;
    if (n && dsw_store_poll_status(w->cl.store, ids, n, on_polled, w) == 0)
        w->cancel_poll_busy = true;
}

static void on_db_notify(struct dsw_db *db, const char *channel, const char *payload, void *arg)
{
    struct worker *w = arg;
    /* payload is <run_id>_<event id>: poll at once when it is one of ours. */
    for (struct job *j = w->jobs; j; j = j->next) {
        size_t n = strlen(j->req.run_id);
        if (j->proc && n && strncmp(payload, j->req.run_id, n) == 0 && payload[n] == '_') {
            uv_timer_start(&w->t_cancel, on_cancel_timer, 0,
                           (uint64_t)w->conf->runs.cancel_poll_ms);
            return;
        }
    }
}

struct swept {
    struct worker *w;
    char *run_id;
};

static void on_swept_recorded(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct swept *s = arg;
    if (status == 0)
        dsw_info("sweeper: run %s of a dead worker is now %s", s->run_id,
                 dsw_store_status_name(res->after));
    else
        dsw_warn("sweeper: could not record run %s (%s)", s->run_id, strerror(-status));
    free(s->run_id);
    free(s);
}

static void on_swept(int status, const struct dsw_store_swept *items, size_t n, void *arg)
{
    struct worker *w = arg;
    w->sweep_busy = false;
    if (status)
        return;
    for (size_t i = 0; i < n; i++) {
        const struct dsw_store_swept *it = &items[i];
        struct swept *s = dsw_xcalloc(1, sizeof(*s));
        s->w = w;
        s->run_id = dsw_xstrdup(it->run_id);
        struct dsw_store_outcome o = {.run_id = it->run_id, .token = it->claim.token};
        if (it->run_status == DSW_STATUS_CANCELING) {
            o.outcome = "canceled";
            o.cause = "Run canceled; its worker was lost.";
        } else if (it->run_status == DSW_STATUS_STARTED || it->prev_state == DSW_CLAIM_RUNNING) {
            o.outcome = "lost";
            o.cause = "Run worker lost: its dagster-sqs-worker stopped heartbeating (recorded by "
                      "the sweeper).";
        } else {
            /* The dead worker never started a child: release, its message will come back. */
            o.outcome = "released";
            o.cause = NULL;
        }
        int rc = o.cause ? dsw_store_record_outcome(w->cl.store, &o, on_swept_recorded, s)
                         : dsw_store_release(w->cl.store, it->run_id, it->claim.token, on_released,
                                             NULL);
        if (!o.cause || rc) {
            free(s->run_id);
            free(s);
        }
    }
}

static void on_sweep_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (!w->sweep_busy && w->db_up && dsw_store_sweep(w->cl.store, 100, on_swept, w) == 0)
        w->sweep_busy = true;
}

/* ---- status, signals, drain, stop ---------------------------------------------------- */

static int count_running(const struct worker *w)
{
    int n = 0;
    for (const struct job *j = w->jobs; j; j = j->next)
        n += j->proc != NULL;
    return n;
}

static void update_status(struct worker *w)
{
    dsw_metrics_set(DSW_METRIC_SLOTS, w->slots);
    dsw_metrics_set(DSW_METRIC_DRAINING, w->draining);
    int rc = dsw_notify_status("%s %d/%d, db %s", w->draining ? "draining" : "running",
                               count_running(w), w->slots, w->db_up ? "ok" : "down");
    (void)rc;
}

/* Carry the SQS client's and the db's own counters into the metrics registry. */
static void sync_counters(struct worker *w)
{
    for (int op = 0; w->cl.sqs && op < DSW_SQS_OP_COUNT; op++) {
        for (int c = 0; c < DSW_SQS_ERR_COUNT; c++) {
            uint64_t now =
                dsw_sqs_requests(w->cl.sqs, (enum dsw_sqs_op)op, (enum dsw_sqs_errclass)c);
            if (now > w->sqs_seen[op][c])
                dsw_metrics_inc2(DSW_METRIC_SQS_REQUESTS, dsw_sqs_op_name((enum dsw_sqs_op)op),
                                 dsw_sqs_errclass_name((enum dsw_sqs_errclass)c),
                                 now - w->sqs_seen[op][c]);
            w->sqs_seen[op][c] = now;
        }
    }
    if (w->cl.db) {
        struct dsw_db_state st;
        dsw_db_get_state(w->cl.db, &st);
        if (st.errors > w->db_errors_seen)
            dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, st.errors - w->db_errors_seen);
        w->db_errors_seen = st.errors;
    }
}

static void on_status_timer(uv_timer_t *t)
{
    sync_counters(t->data);
    update_status(t->data);
}

static int is_ready(const char **reason, void *arg)
{
    struct worker *w = arg;
    *reason = w->draining                                 ? "draining"
              : !w->db_up                                 ? "postgres unreachable"
              : !w->queue_ok && w->mode == DSW_WORKER_RUN ? "queue unreachable"
                                                          : "ok";
    return strcmp(*reason, "ok") == 0;
}

static void terminate_all(struct worker *w)
{
    for (struct job *j = w->jobs; j; j = j->next) {
        if (j->proc) {
            j->drained = true;
            dsw_proc_terminate(j->proc, DSW_PROC_TERMINATE);
        }
    }
}

static void on_drain_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    dsw_warn("drain timeout: terminating %d running run(s)", count_running(w));
    terminate_all(w);
}

static void on_warm_closed(void *arg)
{
    (void)arg;
}

static void close_warm(struct worker *w)
{
    if (w->warm)
        dsw_warm_close(w->warm, on_warm_closed, NULL);
    w->warm = NULL;
}

static void start_drain(struct worker *w, const char *why)
{
    if (w->draining) {
        dsw_warn("second %s: terminating running runs now", why);
        if (w->cl.sqs)
            dsw_sqs_cancel_receives(w->cl.sqs);
        terminate_all(w);
        return;
    }
    w->draining = true;
    dsw_info("%s: draining (%d job(s) in progress)", why, w->njobs);
    int rc = dsw_notify_stopping();
    (void)rc;
    rc = dsw_notify_extend_timeout(
        (uint64_t)(w->conf->runs.drain_timeout_ms + w->conf->runs.kill_grace_ms + 30000) * 1000);
    (void)rc;
    /* A long poll in flight is left to finish (at most queue.wait_time): an abandoned poll can
     * still take messages on the server side, including the ones released just now, and hide
     * them for a whole visibility timeout. What it brings back is released at once. */
    uv_timer_stop(&w->t_receive);
    close_warm(w);
    uv_timer_start(&w->t_drain, on_drain_timer, (uint64_t)w->conf->runs.drain_timeout_ms, 0);
    update_status(w);
    maybe_stop(w);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct worker *w = s->data;
    if (signum == SIGHUP) {
        struct dsw_conf fresh;
        char err[DSW_CONF_ERR_MAX];
        if (dsw_conf_load(&fresh, w->conf->path, environ, err)) {
            dsw_error("SIGHUP: configuration not reloaded: %s", err);
            return;
        }
        dsw_log_set_level((enum dsw_log_level)fresh.log.level);
        w->slots = (int)fresh.runs.max_concurrent;
        dsw_conf_free(&fresh);
        dsw_info("SIGHUP: reloaded log.level and runs.max_concurrent (%d slots)%s", w->slots,
                 w->warm ? "; warm runners recycled" : "");
        if (w->warm)
            dsw_warm_recycle(w->warm);
        update_status(w);
        maybe_receive(w);
        return;
    }
    start_drain(w, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void close_cb_noop(uv_handle_t *h)
{
    (void)h;
}

static void on_watchdog_closed(void *arg)
{
    (void)arg;
}

static void maybe_stop(struct worker *w)
{
    if (!w->draining || w->stopped || w->njobs > 0 || w->receiving)
        return;
    w->stopped = true;
    dsw_info("all jobs finished; stopping");
    uv_timer_t *timers[] = {&w->t_receive, &w->t_visibility, &w->t_lease, &w->t_cancel,
                            &w->t_sweep,   &w->t_drain,      &w->t_status};
    for (size_t i = 0; i < DSW_ARRAY_LEN(timers); i++)
        uv_close((uv_handle_t *)timers[i], close_cb_noop);
    uv_signal_t *sigs[] = {&w->sig_term, &w->sig_int, &w->sig_hup};
    for (size_t i = 0; i < DSW_ARRAY_LEN(sigs); i++)
        uv_close((uv_handle_t *)sigs[i], close_cb_noop);
    if (w->watchdog)
        dsw_watchdog_close(w->watchdog, on_watchdog_closed, NULL);
    if (w->httpd)
        dsw_httpd_close(w->httpd, on_watchdog_closed, NULL);
    w->httpd = NULL;
    w->watchdog = NULL;
    close_warm(w);
    dsw_clients_close(&w->cl, NULL, NULL);
}

/* ---- start -------------------------------------------------------------------------------- */

static void on_db_state(struct dsw_db *db, bool up, void *arg)
{
    struct worker *w = arg;
    w->db_up = up;
    if (up)
        dsw_info("PostgreSQL session up");
    else
        dsw_warn("PostgreSQL session down: not receiving until it is back");
    update_status(w);
    maybe_receive(w);
}

static void start_timer(struct worker *w, uv_timer_t *t, uv_timer_cb cb, int64_t every_ms)
{
    uv_timer_start(t, cb, (uint64_t)every_ms, (uint64_t)every_ms);
}

static void go(struct worker *w)
{
    const struct dsw_conf *c = w->conf;
    w->started = true;
    if (w->mode != DSW_WORKER_EXEC)
        start_timer(w, &w->t_visibility, on_visibility_timer, c->queue.heartbeat_ms);
    start_timer(w, &w->t_lease, on_lease_timer, c->claims.heartbeat_ms);
    start_timer(w, &w->t_cancel, on_cancel_timer, c->runs.cancel_poll_ms);
    if (w->mode == DSW_WORKER_RUN)
        start_timer(w, &w->t_sweep, on_sweep_timer, c->claims.sweep_ms);
    start_timer(w, &w->t_status, on_status_timer, 1000);
    if (!w->ready_sent) {
        w->ready_sent = true;
        int rc = dsw_notify_ready();
        (void)rc;
        /* Watchdog pings follow READY=1, from the loop, while it makes progress. */
        uint64_t wd = dsw_notify_watchdog_interval_ms();
        if (wd && dsw_watchdog_init(&w->watchdog, &w->loop, wd) != 0)
            w->watchdog = NULL;
    }
    update_status(w);
    dsw_info("worker %s ready: %d slot(s), queue %s", w->cl.worker_id, w->slots,
             w->mode == DSW_WORKER_EXEC ? "(none: exec)" : "configured");
    maybe_receive(w);
}

static void exec_body(struct worker *w)
{
    struct dsw_buf b;
    dsw_buf_init(&b, (size_t)w->conf->queue.max_body + 1);
    int fd = strcmp(w->exec_path, "-") == 0 ? 0 : open(w->exec_path, O_RDONLY | O_CLOEXEC);
    char chunk[65536];
    ssize_t n = 0;
    int too_big = 0;
    if (fd < 0) {
        dsw_error("exec: cannot open %s: %s", w->exec_path, strerror(errno));
        w->exit_code = 1;
        w->draining = true;
        dsw_buf_free(&b);
        maybe_stop(w);
        return;
    }
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        if (!too_big && dsw_buf_append(&b, chunk, (size_t)n))
            too_big = 1;
    if (fd)
        close(fd);
    struct job *j = job_new(w);
    if (too_big) {
        /* Decode sees a body one byte over the cap, and says so. */
        dsw_buf_reset(&b);
        char *big = dsw_xcalloc((size_t)w->conf->queue.max_body + 1, 1);
        job_start(j, NULL, big, (size_t)w->conf->queue.max_body + 1);
        free(big);
    } else
        job_start(j, NULL, dsw_buf_str(&b), b.len);
    dsw_buf_free(&b);
}

static void on_schema(int status, const struct dsw_store_schema *res, void *arg)
{
    struct worker *w = arg;
    if (status == -ECANCELED && w->stopped)
        return; /* on_db_give_up stopped us before the check could run */
    if (status) {
        if (status == -ENOENT || status == -EPROTO)
            dsw_error("the dagster_sqs_worker schema is %s (found version %d, need %d): run "
                      "'dagster-sqs-worker db-init'",
                      status == -ENOENT ? "missing" : "at another version", res ? res->found : 0,
                      DSW_STORE_SCHEMA_VERSION);
        else
            dsw_error("cannot check the dagster_sqs_worker schema: %s", strerror(-status));
        w->exit_code = status == -ENOENT || status == -EPROTO ? EXIT_CONFIG : EXIT_UNAVAILABLE;
        w->draining = true;
        maybe_stop(w);
        return;
    }
    if (w->mode != DSW_WORKER_EXEC) {
        int rc = dsw_db_listen(w->cl.db, "run_events", NULL, NULL);
        (void)rc;
    }
    go(w);
    if (w->mode == DSW_WORKER_EXEC)
        exec_body(w);
}

/* once/exec: PostgreSQL still unreachable after postgres.connect_timeout (failed attempts behind
 * it): exit 69, as db-init and enqueue do; the daemon (run) waits for it instead. Runs on
 * t_status, which go() takes over once the schema check passed. */
static void on_db_give_up(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct dsw_db_state st;
    dsw_db_get_state(w->cl.db, &st);
    if (w->started || st.up || st.errors == 0)
        return;
    uv_timer_stop(t);
    dsw_error("PostgreSQL unreachable for %lld s: giving up",
              (long long)(w->conf->postgres.connect_timeout_ms / 1000));
    w->exit_code = EXIT_UNAVAILABLE;
    w->draining = true;
    maybe_stop(w);
}

static int init_warm(struct worker *w)
{
    const struct dsw_conf *c = w->conf;
    if (c->runs.warm <= 0 || w->mode == DSW_WORKER_EXEC)
        return 0;
    char **env = NULL;
    int rc = child_env(c, &env);
    struct dsw_warm_opts wo = {.n = (unsigned)c->runs.warm,
                               .python = c->runs.python,
                               .runner = c->runs.warm_runner,
                               .imports = c->runs.warm_imports,
                               .entry = c->runs.warm_entry,
                               .max_age_ms = (uint64_t)c->runs.warm_max_age_ms,
                               .env = (const char *const *)env,
                               .trampoline = w->trampoline};
    if (!rc)
        rc = dsw_warm_init(&w->loop, &wo, &w->warm);
    dsw_proc_env_free(env);
    char why[8192];
    if (rc)
        dsw_error("cannot start the warm runner pool: %s",
                  dsw_warm_strerror(rc, c->runs.python, c->runs.warm_runner, why, sizeof(why)));
    else
        dsw_info("keeping %u warm runner(s) ready (%s)", wo.n, c->runs.python);
    return rc;
}

static int init_handles(struct worker *w)
{
    uv_timer_t *timers[] = {&w->t_receive, &w->t_visibility, &w->t_lease, &w->t_cancel,
                            &w->t_sweep,   &w->t_drain,      &w->t_status};
    for (size_t i = 0; i < DSW_ARRAY_LEN(timers); i++) {
        uv_timer_init(&w->loop, timers[i]);
        timers[i]->data = w;
    }
    struct {
        uv_signal_t *s;
        int signum;
    } sigs[] = {{&w->sig_term, SIGTERM}, {&w->sig_int, SIGINT}, {&w->sig_hup, SIGHUP}};
    for (size_t i = 0; i < DSW_ARRAY_LEN(sigs); i++) {
        uv_signal_init(&w->loop, sigs[i].s);
        sigs[i].s->data = w;
        uv_signal_start(sigs[i].s, on_signal, sigs[i].signum);
    }
    const char *listen = w->conf->http.listen;
    if (w->mode == DSW_WORKER_RUN && listen && strcmp(listen, "off") != 0) {
        struct dsw_httpd_opts ho = {.listen = listen, .ready = is_ready, .ready_arg = w};
        int rc = dsw_httpd_init(&w->httpd, &w->loop, &ho);
        if (rc) {
            dsw_error("cannot listen on %s (%s)", listen, strerror(-rc));
            return rc;
        }
        dsw_info("metrics and health on http://%s/", listen);
    }
    return init_warm(w);
}

int dsw_worker_main(const struct dsw_conf *conf, enum dsw_worker_mode mode, const char *exec_path)
{
    struct worker *w = dsw_xcalloc(1, sizeof(*w));
    w->conf = conf;
    w->mode = mode;
    w->exec_path = exec_path;
    w->slots = (int)conf->runs.max_concurrent;
    w->trampoline = dsw_trampoline_helper();
#ifdef DSW_FAILPOINTS
    /* Under valgrind /proc/self/exe is valgrind itself: tests name the trampoline. */
    if (getenv("DSW_TRAMPOLINE"))
        w->trampoline = getenv("DSW_TRAMPOLINE");
#endif
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)(dsw_now_ns() ^ (uint64_t)getpid()));
    uv_loop_init(&w->loop);
    w->cl.on_db_state = on_db_state;
    w->cl.on_db_notify = on_db_notify;
    w->cl.cb_arg = w;
    unsigned needs = DSW_CLIENTS_DB | (mode == DSW_WORKER_EXEC ? 0 : DSW_CLIENTS_SQS);
    int rc = dsw_clients_open(&w->cl, &w->loop, conf, needs);
    dsw_log_set_worker_id(w->cl.worker_id);
    if (init_handles(w) && !rc)
        rc = -EADDRINUSE;
    if (rc) {
        w->exit_code = rc == -EINVAL || rc == -EADDRINUSE ? EXIT_CONFIG : 1;
        w->draining = true;
        maybe_stop(w);
    } else if (conf->queue.url && strstr(conf->queue.url, ".fifo")) {
        dsw_warn("FIFO queue: dagster-taskiq puts every run in one message group, so runs "
                 "execute one at a time across the whole fleet");
    }
    if (!rc) {
        rc = dsw_store_check_schema(w->cl.store, on_schema, w);
        if (rc) {
            w->exit_code = 1;
            w->draining = true;
            maybe_stop(w);
        } else if (mode != DSW_WORKER_RUN) {
            uv_timer_start(&w->t_status, on_db_give_up, (uint64_t)conf->postgres.connect_timeout_ms,
                           1000);
        }
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    int exit_code = w->exit_code;
    rc = uv_loop_close(&w->loop);
    if (rc) {
        dsw_error("internal: handles left open at exit");
        exit_code = exit_code ? exit_code : 1;
    }
    free(w);
    return exit_code;
}
