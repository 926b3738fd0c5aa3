/* execution: the run worker of one claimed run, from launch to its recorded exit. Retries
 * (launch record, exit record) run on the execution's own timer; the object is freed in that
 * timer's close callback, after the done callback. */
#include "dsw/execution.h"

#include "dsw/log.h"
#include "dsw/metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_MIN_MS 500
#define RETRY_MAX_MS 30000
/* A run made terminal elsewhere is given this long (at most runs.kill_grace) to end its run
 * worker itself before it is stopped: the run worker's own terminal write precedes its exit. */
#define TERMINAL_WAIT_MS 5000

struct dsw_execution {
    struct dsw_store *store;
    const char *hostname;
    const struct dsw_conf *conf;
    char run_id[80];
    char *message_id;
    char *job_name; /* as loaded, NULL when unknown */
    int receive_count;
    const char *seen_status, *seen_body; /* the first launch record's hints (during start) */
    int64_t token;
    char *step_key; /* a step's key (execute_step), NULL for a run */
    bool warm;      /* a warm runner took the run */
    dsw_execution_done_cb done;
    void *arg;
    uv_timer_t retry; /* launch and exit record retries; freed on close */
    void (*retry_fn)(struct dsw_execution *e);
    uint64_t retry_ms;
    struct dsw_proc *proc; /* NULL once the child exited */
    struct dsw_proc_exit exit;
    bool launched;          /* the launch is recorded */
    bool cancel;            /* the run went CANCELING / CANCELED */
    bool external;          /* the run was made SUCCESS / FAILURE by someone else */
    uint64_t terminal_seen; /* when a poll first found it terminal (0: not yet) */
    bool drained;
    bool stopped; /* a step whose stop was requested (stop_requested_at) */
    bool lease_lost;
    bool proc_closing; /* dsw_proc_close was called: exactly once per child */
    bool proc_closed;  /* and it finished */
    bool launch_busy;  /* a launch record is in flight */
    bool heartbeat_busy;
};

#define ctx_of(e, ev)                                                                              \
    ((struct dsw_log_ctx){.event = (ev),                                                           \
                          .run_id = (e)->run_id,                                                   \
                          .message_id = (e)->message_id,                                           \
                          .step_key = (e)->step_key,                                               \
                          .duration_ms = -1})
#define elog(level, e, event, ...) dsw_log((level), &ctx_of((e), (event)), __VA_ARGS__)

/* ---- lifetime ------------------------------------------------------------------------------ */

static void on_closed(uv_handle_t *h)
{
    struct dsw_execution *e = h->data;
    free(e->message_id);
    free(e->job_name);
    free(e->step_key);
    free(e);
}

static void finish(struct dsw_execution *e, int status, const struct dsw_store_record_result *res)
{
    e->done(status, res, e->arg);
    uv_close((uv_handle_t *)&e->retry, on_closed);
}

static void on_retry(uv_timer_t *t)
{
    struct dsw_execution *e = t->data;
    e->retry_fn(e);
}

/* fn after a capped, doubling, jittered delay (the database is away), replacing a retry still
 * pending. */
static void backoff(struct dsw_execution *e, void (*fn)(struct dsw_execution *e))
{
    e->retry_ms = e->retry_ms ? DSW_MIN(e->retry_ms * 2, RETRY_MAX_MS) : RETRY_MIN_MS;
    uint64_t jitter = (uint64_t)rand() % (e->retry_ms / 2 + 1);
    e->retry_fn = fn;
    uv_timer_start(&e->retry, on_retry, e->retry_ms / 2 + jitter, 0);
}

/* ---- the exit record ----------------------------------------------------------------------- */

static void record_exit(struct dsw_execution *e);

static void on_recorded(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct dsw_execution *e = arg;
    if (status && status != -ESTALE && status != -ENOENT) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
        elog(DSW_LOG_WARN, e, "record_retry", "could not record the outcome (%s); retrying",
             strerror(-status));
        backoff(e, record_exit);
        return;
    }
    if (status == -ESTALE)
        elog(DSW_LOG_WARN, e, "fenced", "lease lost before the outcome was recorded");
    finish(e, status, res);
}

/* Why the child ended, as the claim's outcome and the failure cause (*why NULL: the store's
 * default, which names the exit code or signal). */
static const char *exit_outcome(const struct dsw_execution *e, char *cause, size_t n,
                                const char **why)
{
    *why = NULL;
    if (e->exit.killed == DSW_PROC_TIMEOUT) {
        snprintf(cause, n,
                 "Run exceeded its maximum runtime and was terminated by dagster-sqs-worker on %s",
                 e->hostname);
        *why = cause;
        return "timeout";
    }
    if (e->cancel)
        return "canceled";
    if (e->external) /* terminal already: the store writes no PIPELINE_* event over it */
        return "external";
    if (e->drained) {
        snprintf(cause, n, "Run worker terminated because dagster-sqs-worker on %s shut down",
                 e->hostname);
        *why = cause;
        return "drained";
    }
    return NULL;
}

static void on_step_recorded(int status, void *arg)
{
    on_recorded(status, NULL, arg);
}

/* A step's claim outcome (NULL: "exited" or "signaled"); no run status, no event: the step
 * writes its own, and the run worker's executor reads the claim (check_step_health). */
static const char *step_outcome(const struct dsw_execution *e)
{
    if (e->exit.killed == DSW_PROC_TIMEOUT)
        return "timeout";
    if (e->stopped)
        return "stopped";
    if (e->cancel || e->external)
        return "canceled";
    return e->drained ? "drained" : NULL;
}

static void record_step_exit(struct dsw_execution *e)
{
    struct dsw_store_step_exit r = {.token = e->token,
                                    .exit_code = e->exit.exit_code,
                                    .term_signal = e->exit.term_signal,
                                    .outcome = step_outcome(e)};
    if (dsw_store_step_exit(e->store, &r, on_step_recorded, e))
        backoff(e, record_exit);
}

static void record_exit(struct dsw_execution *e)
{
    char cause[256];
    if (e->step_key) {
        record_step_exit(e);
        return;
    }
    const char *why;
    const struct dsw_proc_exit *x = &e->exit;
    struct dsw_store_exit r = {
        .run_id = e->run_id,
        .token = e->token,
        .exit_code = x->exit_code,
        .term_signal = x->term_signal,
        .pid = x->pid,
        .duration_s = (double)x->duration_ms / 1000.0,
        .outcome = exit_outcome(e, cause, sizeof(cause), &why),
        .cause = why,
        .job_name = e->job_name,
    };
    int rc = dsw_store_record_exit(e->store, &r, on_recorded, e);
    if (rc) /* refused (the session is closing...): from the loop, as a db error would */
        backoff(e, record_exit);
}

/* ---- the child ----------------------------------------------------------------------------- */

static void on_child_line(struct dsw_proc *proc, enum dsw_proc_stream stream, const char *line,
                          size_t len, int truncated, void *arg)
{
    struct dsw_execution *e = arg;
    elog(DSW_LOG_INFO, e, stream == DSW_PROC_STDOUT ? "child_stdout" : "child_stderr", "%s%s", line,
         truncated ? " [truncated]" : "");
}

static void on_child_drop(struct dsw_proc *proc, uint64_t n, void *arg)
{
    struct dsw_execution *e = arg;
    elog(DSW_LOG_WARN, e, "child_output_dropped", "%llu output lines dropped (rate limit)",
         (unsigned long long)n);
}

static void after_child(struct dsw_execution *e)
{
    if (e->lease_lost) {
        elog(DSW_LOG_WARN, e, "fenced", "lease lost: run worker killed, nothing recorded");
        finish(e, -ESTALE, NULL);
        return;
    }
    e->retry_ms = 0;
    record_exit(e);
}

static void on_proc_closed(void *arg)
{
    struct dsw_execution *e = arg;
    uv_timer_stop(&e->retry); /* a launch record retry has nothing left to record */
    e->proc_closed = true;
    /* A launch record still in flight (its transaction may be queued behind anything, even
     * this exit's record) answers first: on_launched goes on from here, so the exit record
     * follows the launch and the execution outlives every call it made. */
    if (!e->launch_busy)
        after_child(e);
}

static void close_child(struct dsw_execution *e, struct dsw_proc *proc)
{
    if (!e->proc_closing) {
        e->proc_closing = true;
        dsw_proc_close(proc, on_proc_closed, e);
    }
}

static void on_child_exit(struct dsw_proc *proc, const struct dsw_proc_exit *st, void *arg)
{
    struct dsw_execution *e = arg;
    e->exit = *st;
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, -1);
    dsw_metrics_observe(DSW_METRIC_RUN_DURATION, (double)st->duration_ms / 1000.0);
    if (st->first_line_ms >= 0)
        dsw_metrics_observe_label(DSW_METRIC_RUN_START, e->warm ? "warm" : "cold",
                                  (double)st->first_line_ms / 1000.0);
    struct dsw_log_ctx ctx = ctx_of(e, "child_exit");
    ctx.has_exit_code = st->term_signal == 0;
    ctx.exit_code = st->exit_code;
    ctx.duration_ms = (long long)st->duration_ms;
    dsw_log(DSW_LOG_INFO, &ctx, "%s worker pid %d %s %d", e->step_key ? "step" : "run", st->pid,
            st->term_signal ? "killed by signal" : "exited with code",
            st->term_signal ? st->term_signal : st->exit_code);
    e->proc = NULL;
    close_child(e, proc);
}

/* The lease is gone: another worker owns the run now. SIGKILL the group at once (a SIGTERM
 * would let the child write events into a run that is no longer ours); nothing is recorded. */
static void kill_fenced_child(struct dsw_execution *e)
{
    e->lease_lost = true;
    if (e->proc)
        close_child(e, e->proc);
}

/* ---- the launch record ------------------------------------------------------------------- */

static void record_launch(struct dsw_execution *e);

static void on_launched(int status, void *arg)
{
    struct dsw_execution *e = arg;
    e->launch_busy = false;
    if (e->proc_closed) {
        after_child(e); /* the exit path waited for this answer */
        return;
    }
    if (!e->proc)
        return; /* the child already ended; its exit path continues */
    if (status == -ESTALE || status == -ENOENT) {
        elog(DSW_LOG_WARN, e, "fenced", "launch not recorded (%s): killing the run worker",
             strerror(-status));
        kill_fenced_child(e);
        return;
    }
    if (status) {
        /* Until the launch is recorded the claim says no child runs; keep trying (the lease
         * heartbeat holds the claim meanwhile). */
        elog(DSW_LOG_WARN, e, "launch_record_retry",
             "could not record the launch (%s); the run continues, retrying", strerror(-status));
        backoff(e, record_launch);
        return;
    }
    e->retry_ms = 0;
    e->launched = true;
}

static void record_launch(struct dsw_execution *e)
{
    if (!e->proc || e->proc_closing)
        return;
    struct dsw_store_launch l = {.run_id = e->run_id,
                                 .token = e->token,
                                 .child_pid = dsw_proc_pid(e->proc),
                                 .message_id = e->message_id,
                                 .receive_count = e->receive_count,
                                 .job_name = e->job_name,
                                 .seen_status = e->seen_status,
                                 .seen_body = e->seen_body};
    e->seen_status = e->seen_body = NULL; /* retries read the run afresh */
    int rc = e->step_key ? dsw_store_step_launch(e->store, e->token, l.child_pid, on_launched, e)
                         : dsw_store_record_launch(e->store, &l, on_launched, e);
    if (rc)
        backoff(e, record_launch);
    else
        e->launch_busy = true;
}

int dsw_execution_start(const struct dsw_execution_opts *o, struct dsw_execution **out)
{
    struct dsw_execution *e = dsw_xcalloc(1, sizeof(*e));
    *out = NULL;
    int rc = uv_timer_init(o->loop, &e->retry);
    e->retry.data = e;
    if (rc) {
        free(e);
        return rc;
    }
    struct dsw_launch l = o->launch;
    l.on_line = on_child_line;
    l.on_drop = on_child_drop;
    l.on_exit = on_child_exit;
    l.arg = e;
    rc = dsw_launch_start(o->loop, &l, &e->proc, &e->warm);
    if (rc) {
        uv_close((uv_handle_t *)&e->retry, on_closed);
        return rc;
    }
    e->store = o->store;
    e->hostname = o->hostname;
    e->conf = o->launch.conf;
    dsw_strlcpy(e->run_id, o->launch.run_id, sizeof(e->run_id));
    e->message_id = o->message_id ? dsw_xstrdup(o->message_id) : NULL;
    e->receive_count = o->receive_count;
    e->job_name = o->job_name ? dsw_xstrdup(o->job_name) : NULL;
    e->seen_status = o->status_text;
    e->seen_body = o->launch.body;
    e->token = o->token;
    e->step_key = o->launch.step ? dsw_xstrdup(o->launch.step->step_key) : NULL;
    e->done = o->done;
    e->arg = o->arg;
    const char *cmd = e->step_key        ? "execute_step"
                      : o->launch.resume ? "resume_run"
                                         : "execute_run";
    dsw_metrics_inc(DSW_METRIC_RUNS_STARTED,
                    e->step_key        ? "step"
                    : o->launch.resume ? "resume"
                                       : "execute",
                    1);
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, 1);
    elog(DSW_LOG_INFO, e, "spawn", "%s worker started (pid %d, %s, %s)",
         e->step_key ? "step" : "run", dsw_proc_pid(e->proc), cmd, e->warm ? "warm" : "cold");
    record_launch(e);
    *out = e;
    return 0;
}

/* ---- supervision --------------------------------------------------------------------------- */

bool dsw_execution_running(const struct dsw_execution *e)
{
    return e->proc != NULL;
}

bool dsw_execution_watching(const struct dsw_execution *e)
{
    return e->proc && !e->cancel && !e->external;
}

static void on_heartbeat(int status, void *arg)
{
    struct dsw_execution *e = arg;
    e->heartbeat_busy = false;
    if (status == -ESTALE && e->proc) {
        elog(DSW_LOG_ERROR, e, "lease_lost", "lease lost: killing the run worker");
        kill_fenced_child(e);
    } else if (status && status != -ESTALE) {
        dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
    }
}

bool dsw_execution_lease(struct dsw_execution *e, int64_t *token)
{
    if (!e->proc || e->heartbeat_busy)
        return false;
    e->heartbeat_busy = true;
    *token = e->token;
    return true;
}

void dsw_execution_lease_result(struct dsw_execution *e, int64_t token, int status)
{
    if (token == e->token && e->heartbeat_busy)
        on_heartbeat(status, e);
}

void dsw_execution_heartbeat(struct dsw_execution *e)
{
    if (!e->proc || e->heartbeat_busy)
        return;
    if (dsw_store_heartbeat(e->store, e->run_id, e->token, on_heartbeat, e) == 0)
        e->heartbeat_busy = true;
}

/* A terminal status set by someone else: its event carries no run worker's pid (Dagster's run
 * worker writes its own; report_run_failed from run monitoring or the UI writes none). Dagster
 * writes the event before the status, so the poll sees both; the wait (and at least one more
 * poll) keeps a margin anyway. A run worker lingering after its own outcome (atexit hooks,
 * flushing) is not stopped. */
static bool terminal_elsewhere(struct dsw_execution *e, const struct dsw_store_status_row *row)
{
    if (row->by_run_worker && !e->step_key) { /* a step outliving its run is stopped anyway */
        e->terminal_seen = 0;
        return false;
    }
    uint64_t now = dsw_now_ms();
    uint64_t wait = (uint64_t)DSW_MIN(e->conf->runs.kill_grace_ms, TERMINAL_WAIT_MS);
    if (!e->terminal_seen) {
        e->terminal_seen = now;
        return false;
    }
    return now - e->terminal_seen >= wait;
}

void dsw_execution_status(struct dsw_execution *e, const struct dsw_store_status_row *row)
{
    enum dsw_store_status status = row->status;
    if (!dsw_execution_watching(e))
        return;
    if (status == DSW_STATUS_CANCELING || status == DSW_STATUS_CANCELED) {
        e->cancel = true;
        elog(DSW_LOG_INFO, e, "cancel", "run is %s: terminating the run worker",
             dsw_store_status_name(status));
    } else if (status == DSW_STATUS_SUCCESS || status == DSW_STATUS_FAILURE) {
        if (!terminal_elsewhere(e, row))
            return;
        e->external = true;
        elog(DSW_LOG_WARN, e, "terminal_elsewhere",
             "run was made %s %s: terminating the %s worker (its outcome is kept)",
             dsw_store_status_name(status),
             e->step_key ? "while the step ran" : "outside its run worker",
             e->step_key ? "step" : "run");
    } else {
        e->terminal_seen = 0;
        return;
    }
    dsw_proc_terminate(e->proc, DSW_PROC_TERMINATE);
}

bool dsw_execution_step_token(const struct dsw_execution *e, int64_t *token)
{
    if (!e->step_key || !dsw_execution_watching(e) || e->stopped)
        return false;
    *token = e->token;
    return true;
}

void dsw_execution_stop(struct dsw_execution *e)
{
    if (!e->proc || !e->step_key || e->stopped)
        return;
    e->stopped = true;
    elog(DSW_LOG_INFO, e, "stop",
         "stop requested by the run's executor: terminating the step "
         "worker");
    dsw_proc_terminate(e->proc, DSW_PROC_TERMINATE);
}

void dsw_execution_terminate(struct dsw_execution *e)
{
    if (!e->proc)
        return;
    e->drained = true;
    dsw_proc_terminate(e->proc, DSW_PROC_TERMINATE);
}
