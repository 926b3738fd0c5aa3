/* worker: the daemon's event loop, what the process does for all messages (SPEC §7): slots
 * without prefetch, the receive loop, the worker-wide timers (visibility batches, lease
 * heartbeats, status polls, the sweeper, the status line), signals and the drain, start-up and
 * stop. Each received message is handed to a pipeline in a slot of its own. */
#include "dsw/worker.h"

#include "dsw/buf.h"
#include "dsw/clients.h"
#include "dsw/db.h"
#include "dsw/heartbeat.h"
#include "dsw/httpd.h"
#include "dsw/launch.h"
#include "dsw/log.h"
#include "dsw/metrics.h"
#include "dsw/notify.h"
#include "dsw/pipeline.h"
#include "dsw/sweep.h"
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
#define RECEIVE_RETRY_MS 1000
/* While draining, a long poll in flight gets queue.wait_time plus this to come back. */
#define RECEIVE_SLACK_MS 2000
#define SQS_MAX_VIS_MS   (12LL * 3600 * 1000)
/* With a backlog, a receive waits up to this long for half a batch of free slots. */
#define RECEIVE_GATHER_MS 50

struct worker;

enum { T_RECEIVE, T_SWEEP, T_DRAIN, T_STATUS, T_COUNT };
enum { SIG_TERM, SIG_INT, SIG_HUP, SIG_COUNT };

struct worker {
    uv_loop_t loop;
    const struct dsw_conf *conf;
    enum dsw_worker_mode mode;
    const char *exec_path;
    struct dsw_clients cl;
    struct dsw_pipeline_env pl; /* pl.draining is the drain flag, pl.used the slots in use */
    struct dsw_heartbeat *hb;   /* from start_serving to the stop */
    struct dsw_watchdog *watchdog;
    struct dsw_httpd *httpd;
    bool queue_ok; /* the last receive succeeded */
    uint64_t sqs_seen[DSW_SQS_OP_COUNT][DSW_SQS_ERR_COUNT];
    uint64_t db_errors_seen;
    int nslots;
    bool receiving, received_once, stopped, db_up, ready_sent, notify_warned;
    bool started; /* the schema check passed: receiving may begin */
    int exit_code;
    uint64_t receive_retry_ms;
    bool backlog;          /* the last receive brought messages: more are likely waiting */
    uint64_t gather_since; /* when the receive started waiting for free slots (0: not) */
    uv_timer_t timers[T_COUNT];
    uv_signal_t sigs[SIG_COUNT];
    size_t ntimers, nsigs; /* initialised so far (closed at stop) */
    bool sweep_busy;
};

static void maybe_receive(struct worker *w);
static void maybe_stop(struct worker *w);
static void update_status(struct worker *w);

#define foreach_pipeline(p, w)                                                                     \
    for (struct dsw_pipeline *p = dsw_pipeline_next(&(w)->pl, NULL); p;                            \
         p = dsw_pipeline_next(&(w)->pl, p))

static int sqs_seconds(int64_t ms) /* a duration as SQS seconds, capped at 12 h */
{
    return (int)DSW_MIN(ms / 1000, SQS_MAX_VIS_MS / 1000);
}

/* Stop with exit_code once what is in flight is finished. */
static void stop_with(struct worker *w, int exit_code)
{
    w->exit_code = exit_code;
    w->pl.draining = true;
    maybe_stop(w);
}

static void notify_result(struct worker *w, int rc, const char *what)
{
    if (rc && !w->notify_warned) {
        w->notify_warned = true;
        dsw_warn("systemd notification %s failed (%s); further failures are not logged", what,
                 strerror(-rc));
    }
}

/* ---- slots ----------------------------------------------------------------------------- */

/* A pipeline gave its slot back. */
static void on_pipeline_done(bool failed, void *arg)
{
    struct worker *w = arg;
    if (failed)
        w->exit_code = 1;
    if (w->mode != DSW_WORKER_RUN && w->pl.used == 0)
        w->pl.draining = true;
    maybe_receive(w);
    maybe_stop(w);
}

static int count_running(struct worker *w)
{
    int n = 0;
    foreach_pipeline(p, w) n += dsw_pipeline_running(p);
    return n;
}

/* ---- receiving ----------------------------------------------------------------------------- */

static void receive_later(struct worker *w, uint64_t ms);

static void on_received(int status, const struct dsw_sqs_message *msgs, size_t n, void *arg)
{
    struct worker *w = arg;
    w->receiving = false;
    if (status == -ECANCELED || (status && w->pl.draining)) {
        maybe_stop(w); /* a drain does not wait for the queue to come back */
        return;
    }
    w->queue_ok = status == 0;
    if (status) {
        w->receive_retry_ms =
            w->receive_retry_ms ? DSW_MIN(w->receive_retry_ms * 2, 30000) : RECEIVE_RETRY_MS;
        dsw_warn("receive failed (%s: %s); next try in %llu ms",
                 dsw_sqs_errclass_name(dsw_sqs_errclass(status)), strerror(-status),
                 (unsigned long long)w->receive_retry_ms);
        if (w->mode == DSW_WORKER_ONCE)
            stop_with(w, 1);
        else
            receive_later(w, w->receive_retry_ms);
        return;
    }
    w->receive_retry_ms = 0;
    w->backlog = n > 0;
    double now_wall_ms = dsw_wall_time() * 1000.0;
    for (size_t i = 0; i < n; i++) {
        dsw_metrics_inc(DSW_METRIC_MESSAGES_RECEIVED, NULL, 1);
        if (msgs[i].sent_timestamp > 0)
            dsw_metrics_observe(DSW_METRIC_QUEUE_WAIT,
                                (now_wall_ms - (double)msgs[i].sent_timestamp) / 1000.0);
        dsw_pipeline_start_message(dsw_pipeline_new(&w->pl), &msgs[i]);
    }
    if (w->mode == DSW_WORKER_ONCE) {
        w->received_once = true;
        if (n == 0) {
            dsw_info("no message arrived within the wait time");
            w->pl.draining = true;
        }
    }
    maybe_receive(w);
    maybe_stop(w);
}

static void on_receive_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->pl.draining && w->receiving) {
        dsw_warn("draining: the receive in flight did not come back in time; canceling it");
        dsw_sqs_cancel_receives(w->cl.sqs);
        return;
    }
    maybe_receive(w);
}

static void receive_later(struct worker *w, uint64_t ms)
{
    uv_timer_start(&w->timers[T_RECEIVE], on_receive_timer, ms, 0);
}

/* With a backlog and fewer than half a batch of slots free, a receive per freed slot would cost
 * about a request per run: wait for more to free up, RECEIVE_GATHER_MS at most. True: wait. */
static bool gather_slots(struct worker *w, int free_slots)
{
    int half = (DSW_MIN(w->nslots, DSW_SQS_MAX_BATCH) + 1) / 2;
    uint64_t now = dsw_now_ms();
    if (!w->backlog || free_slots >= half ||
        (w->gather_since && now - w->gather_since >= RECEIVE_GATHER_MS)) {
        w->gather_since = 0;
        return false;
    }
    if (!w->gather_since) {
        w->gather_since = now;
        receive_later(w, RECEIVE_GATHER_MS);
    }
    return true;
}

static void maybe_receive(struct worker *w)
{
    const struct dsw_conf *conf = w->conf;
    int free_slots = w->nslots - (w->pl.used - w->pl.finishing);
    if (w->pl.warm) /* called whenever a slot is taken or given back */
        dsw_warm_set_limit(w->pl.warm, (unsigned)DSW_MAX(free_slots, 0));
    if (!w->started || w->receiving || w->pl.draining || w->stopped || !w->db_up ||
        w->mode == DSW_WORKER_EXEC ||
        (uv_is_active((uv_handle_t *)&w->timers[T_RECEIVE]) && !w->gather_since))
        return;
    if (w->mode == DSW_WORKER_ONCE && w->received_once)
        return;
    if (free_slots <= 0 || gather_slots(w, free_slots))
        return;
    uv_timer_stop(&w->timers[T_RECEIVE]);
    int max = w->mode == DSW_WORKER_ONCE ? 1 : DSW_MIN(free_slots, DSW_SQS_MAX_BATCH);
    int rc = dsw_sqs_receive(w->cl.sqs, conf->queue.url, max, sqs_seconds(conf->queue.wait_time_ms),
                             sqs_seconds(conf->queue.visibility_timeout_ms), on_received, w);
    if (rc) {
        dsw_error("cannot receive: %s", strerror(-rc));
        receive_later(w, RECEIVE_RETRY_MS);
        return;
    }
    w->receiving = true;
}

/* The drain stops receiving. A long poll in flight is normally left to finish: an abandoned
 * poll can still take messages on the server side, the ones released just now included, and
 * hide them for a whole visibility timeout; what it brings back is released at once. But a
 * drain ends within its bounds whatever SQS does: when the queue is not answering (the last
 * receive failed, so nothing is held that a release could lose) the receive is canceled now,
 * otherwise it gets queue.wait_time + RECEIVE_SLACK_MS. */
static void stop_receiving(struct worker *w)
{
    uv_timer_stop(&w->timers[T_RECEIVE]);
    if (!w->receiving)
        return;
    if (!w->queue_ok)
        dsw_sqs_cancel_receives(w->cl.sqs);
    else
        receive_later(w, (uint64_t)w->conf->queue.wait_time_ms + RECEIVE_SLACK_MS);
}

/* ---- worker-wide timers: the sweeper (the beats are in heartbeat) --------------------------- */

static void on_db_notify(struct dsw_db *db, const char *channel, const char *payload, void *arg)
{
    struct worker *w = arg;
    if (w->hb)
        dsw_heartbeat_notify(w->hb, payload);
}

static void on_swept(int status, void *arg)
{
    struct worker *w = arg;
    w->sweep_busy = false;
}

static void on_sweep_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    const struct dsw_sweep_policy policy = {.resume = w->conf->runs.resume,
                                            .max_resumes = (int)w->conf->runs.max_resumes};
    if (!w->sweep_busy && w->db_up && dsw_sweep(w->cl.store, &policy, on_swept, w) == 0)
        w->sweep_busy = true;
}

/* ---- status line and counters ------------------------------------------------------------ */

static void update_status(struct worker *w)
{
    dsw_metrics_set(DSW_METRIC_SLOTS, w->nslots);
    dsw_metrics_set(DSW_METRIC_DRAINING, w->pl.draining);
    int rc = dsw_notify_status("%s %d/%d, db %s", w->pl.draining ? "draining" : "running",
                               count_running(w), w->nslots, w->db_up ? "ok" : "down");
    notify_result(w, rc, "STATUS");
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
    *reason = w->pl.draining                              ? "draining"
              : !w->db_up                                 ? "postgres unreachable"
              : !w->queue_ok && w->mode == DSW_WORKER_RUN ? "queue unreachable"
                                                          : "ok";
    return strcmp(*reason, "ok") == 0;
}

/* ---- signals, drain, stop ---------------------------------------------------------------- */

static void terminate_all(struct worker *w)
{
    foreach_pipeline(p, w) dsw_pipeline_terminate(p);
}

static void on_drain_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    dsw_warn("drain timeout: terminating %d running run(s)", count_running(w));
    terminate_all(w);
}

static void close_warm(struct worker *w)
{
    if (w->pl.warm)
        dsw_warm_close(w->pl.warm, NULL, NULL);
    w->pl.warm = NULL;
}

static void start_drain(struct worker *w, const char *why)
{
    const struct dsw_conf *c = w->conf;
    if (w->pl.draining) {
        dsw_warn("second %s: terminating running runs now", why);
        if (w->cl.sqs)
            dsw_sqs_cancel_receives(w->cl.sqs);
        terminate_all(w);
        return;
    }
    w->pl.draining = true;
    dsw_info("%s: draining (%d job(s) in progress)", why, w->pl.used);
    notify_result(w, dsw_notify_stopping(), "STOPPING");
    notify_result(w,
                  dsw_notify_extend_timeout(
                      (uint64_t)(c->runs.drain_timeout_ms + c->runs.kill_grace_ms + 30000) * 1000),
                  "EXTEND_TIMEOUT_USEC");
    stop_receiving(w);
    close_warm(w);
    foreach_pipeline(p, w) dsw_pipeline_drain(p);
    uv_timer_start(&w->timers[T_DRAIN], on_drain_timer, (uint64_t)c->runs.drain_timeout_ms, 0);
    update_status(w);
    maybe_stop(w);
}

static void reload(struct worker *w)
{
    struct dsw_conf fresh;
    char err[DSW_CONF_ERR_MAX];
    if (dsw_conf_load(&fresh, w->conf->path, environ, err)) {
        dsw_error("SIGHUP: configuration not reloaded: %s", err);
        return;
    }
    dsw_log_set_level((enum dsw_log_level)fresh.log.level);
    w->nslots = (int)fresh.runs.max_concurrent;
    w->pl.run_slots = (int)(fresh.runs.max_concurrent - fresh.runs.step_slots);
    dsw_conf_free(&fresh);
    dsw_info("SIGHUP: reloaded log.level and runs.max_concurrent (%d slots)%s", w->nslots,
             w->pl.warm ? "; warm runners recycled" : "");
    if (w->pl.warm)
        dsw_warm_recycle(w->pl.warm);
    update_status(w);
    maybe_receive(w);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct worker *w = s->data;
    if (signum == SIGHUP)
        reload(w);
    else
        start_drain(w, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void close_handles(struct worker *w)
{
    for (size_t i = 0; i < w->ntimers; i++)
        uv_close((uv_handle_t *)&w->timers[i], NULL);
    for (size_t i = 0; i < w->nsigs; i++)
        uv_close((uv_handle_t *)&w->sigs[i], NULL);
    w->ntimers = w->nsigs = 0;
    dsw_proc_reaper_stop();
}

static void maybe_stop(struct worker *w)
{
    if (!w->pl.draining || w->stopped || w->pl.used > 0 || w->receiving)
        return;
    w->stopped = true;
    dsw_info("all jobs finished; stopping");
    close_handles(w);
    if (w->hb)
        dsw_heartbeat_close(w->hb);
    w->hb = NULL;
    if (w->watchdog)
        dsw_watchdog_close(w->watchdog, NULL, NULL);
    if (w->httpd)
        dsw_httpd_close(w->httpd, NULL, NULL);
    w->httpd = NULL;
    w->watchdog = NULL;
    close_warm(w);
    dsw_clients_close(&w->cl, NULL, NULL); /* cancels what is left (abandoned final calls) */
}

/* ---- start --------------------------------------------------------------------------------- */

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

static void start_periodic(struct worker *w, int t, uv_timer_cb cb, int64_t ms)
{
    uv_timer_start(&w->timers[t], cb, (uint64_t)ms, (uint64_t)ms);
}

/* READY=1 once, then the watchdog pings from the loop while it makes progress. */
static int announce_ready(struct worker *w)
{
    if (w->ready_sent)
        return 0;
    w->ready_sent = true;
    int rc = dsw_notify_ready();
    if (rc) {
        dsw_error("cannot tell systemd the daemon is ready (READY=1: %s)", strerror(-rc));
        return rc;
    }
    uint64_t wd = dsw_notify_watchdog_interval_ms();
    if (wd && (rc = dsw_watchdog_init(&w->watchdog, &w->loop, wd)) != 0) {
        dsw_error("cannot start the watchdog (%s)", strerror(-rc));
        w->watchdog = NULL;
    }
    return rc;
}

/* The schema is current: start the timers, say READY=1, begin receiving. */
static void start_serving(struct worker *w)
{
    const struct dsw_conf *c = w->conf;
    w->started = true;
    if (dsw_heartbeat_start(&w->pl, w->mode != DSW_WORKER_EXEC, &w->hb)) {
        stop_with(w, 1);
        return;
    }
    if (w->mode == DSW_WORKER_RUN)
        start_periodic(w, T_SWEEP, on_sweep_timer, c->claims.sweep_ms);
    start_periodic(w, T_STATUS, on_status_timer, 1000);
    if (announce_ready(w)) {
        stop_with(w, 1);
        return;
    }
    update_status(w);
    dsw_info("worker %s ready: %d slot(s), queue %s", w->cl.worker_id, w->nslots,
             w->mode == DSW_WORKER_EXEC ? "(none: exec)" : "configured");
    maybe_receive(w);
}

/* exec mode: the body from a file or stdin, capped at queue.max_body (+1 to say it is over). */
static void exec_body(struct worker *w)
{
    struct dsw_buf b;
    size_t cap = (size_t)w->conf->queue.max_body + 1;
    int fd = strcmp(w->exec_path, "-") == 0 ? 0 : open(w->exec_path, O_RDONLY | O_CLOEXEC);
    char chunk[65536];
    ssize_t n = 0;
    bool too_big = false;
    if (fd < 0) {
        dsw_error("exec: cannot open %s: %s", w->exec_path, strerror(errno));
        stop_with(w, 1);
        return;
    }
    dsw_buf_init(&b, cap);
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        if (!too_big && dsw_buf_append(&b, chunk, (size_t)n))
            too_big = true;
    if (fd)
        close(fd);
    if (too_big) { /* decode sees a body one byte over the cap, and says so */
        char *big = dsw_xcalloc(cap, 1);
        dsw_pipeline_start_body(dsw_pipeline_new(&w->pl), big, cap);
        free(big);
    } else {
        dsw_pipeline_start_body(dsw_pipeline_new(&w->pl), dsw_buf_str(&b), b.len);
    }
    dsw_buf_free(&b);
}

static void on_schema(int status, const struct dsw_store_schema *res, void *arg)
{
    struct worker *w = arg;
    if (status == -ECANCELED && w->stopped)
        return; /* on_db_give_up stopped us before the check could run */
    if (status) {
        bool version = status == -ENOENT || status == -EPROTO;
        if (version)
            dsw_error("the dagster_sqs_worker schema is %s (found version %d, need %d): run "
                      "'dagster-sqs-worker db-init'",
                      status == -ENOENT ? "missing" : "at another version", res ? res->found : 0,
                      DSW_STORE_SCHEMA_VERSION);
        else
            dsw_error("cannot check the dagster_sqs_worker schema: %s", strerror(-status));
        stop_with(w, version ? EXIT_CONFIG : EXIT_UNAVAILABLE);
        return;
    }
    if (w->mode != DSW_WORKER_EXEC) {
        int rc = dsw_db_listen(w->cl.db, "run_events", NULL, NULL);
        if (rc) /* the status poll still notices every change, only later */
            dsw_warn("cannot LISTEN run_events (%s); relying on the status poll", strerror(-rc));
    }
    start_serving(w);
    if (w->mode == DSW_WORKER_EXEC && !w->stopped)
        exec_body(w);
}

/* once/exec: PostgreSQL still unreachable after postgres.connect_timeout (failed attempts behind
 * it): exit 69, as db-init and enqueue do; the daemon (run) waits for it instead. Runs on
 * the status timer, which start_serving takes over once the schema check passed. */
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
    stop_with(w, EXIT_UNAVAILABLE);
}

/* The loop's own handles: every timer and signal watcher, each checked. */
static int init_loop_handles(struct worker *w)
{
    static const int signums[SIG_COUNT] = {
        [SIG_TERM] = SIGTERM, [SIG_INT] = SIGINT, [SIG_HUP] = SIGHUP};
    int rc = 0;
    for (; w->ntimers < T_COUNT && !rc; w->ntimers++) {
        rc = uv_timer_init(&w->loop, &w->timers[w->ntimers]);
        w->timers[w->ntimers].data = w;
    }
    if (rc) {
        w->ntimers--;
        dsw_error("cannot set up the event loop: uv_timer_init: %s", uv_strerror(rc));
        return rc;
    }
    for (; w->nsigs < SIG_COUNT; w->nsigs++) {
        uv_signal_t *s = &w->sigs[w->nsigs];
        if ((rc = uv_signal_init(&w->loop, s)) != 0)
            break;
        s->data = w;
        if ((rc = uv_signal_start(s, on_signal, signums[w->nsigs])) != 0) {
            w->nsigs++; /* initialised: closed at stop */
            break;
        }
    }
    if (!rc) /* PID 1 or a subreaper: reap the strays nobody else will (not fatal) */
        (void)dsw_proc_reaper_start(&w->loop, 0);
    if (rc)
        dsw_error("cannot set up the event loop: uv_signal_init/start: %s", uv_strerror(rc));
    return rc;
}

/* What serves beside the loop: /healthz and /metrics, the warm pool. A failure is a
 * configuration error (the address is taken, the runner or interpreter is missing). */
static int init_services(struct worker *w)
{
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
    if (w->conf->runs.warm <= 0 || w->mode == DSW_WORKER_EXEC)
        return 0;
    return dsw_launch_warm_init(&w->loop, w->conf, w->pl.trampoline, &w->pl.warm);
}

/* Everything up to the schema check; the exit code when start-up failed, else 0. */
static int start(struct worker *w)
{
    unsigned needs = DSW_CLIENTS_DB | (w->mode == DSW_WORKER_EXEC ? 0 : DSW_CLIENTS_SQS);
    w->cl.on_db_state = on_db_state;
    w->cl.on_db_notify = on_db_notify;
    w->cl.cb_arg = w;
    if (init_loop_handles(w))
        return 1;
    int rc = dsw_clients_open(&w->cl, &w->loop, w->conf, needs);
    dsw_log_set_worker_id(w->cl.worker_id);
    if (rc)
        return rc == -EINVAL ? EXIT_CONFIG : 1;
    if (init_services(w))
        return EXIT_CONFIG;
    if (w->conf->queue.url && strstr(w->conf->queue.url, ".fifo"))
        dsw_warn("FIFO queue: dagster-taskiq puts every run in one message group, so runs "
                 "execute one at a time across the whole fleet");
    if (dsw_store_check_schema(w->cl.store, on_schema, w))
        return 1;
    if (w->mode != DSW_WORKER_RUN)
        uv_timer_start(&w->timers[T_STATUS], on_db_give_up,
                       (uint64_t)w->conf->postgres.connect_timeout_ms, 1000);
    return 0;
}

int dsw_worker_main(const struct dsw_conf *conf, enum dsw_worker_mode mode, const char *exec_path)
{
    struct worker *w = dsw_xcalloc(1, sizeof(*w));
    w->conf = conf;
    w->mode = mode;
    w->exec_path = exec_path;
    w->nslots = (int)conf->runs.max_concurrent;
    w->pl = (struct dsw_pipeline_env){.loop = &w->loop,
                                      .conf = conf,
                                      .cl = &w->cl,
                                      .run_slots =
                                          (int)(conf->runs.max_concurrent - conf->runs.step_slots),
                                      .done = on_pipeline_done,
                                      .arg = w};
    dsw_list_init(&w->pl.slots);
    w->pl.trampoline = dsw_trampoline_helper();
#ifdef DSW_FAILPOINTS
    /* Under valgrind /proc/self/exe is valgrind itself: tests name the trampoline. */
    if (getenv("DSW_TRAMPOLINE"))
        w->pl.trampoline = getenv("DSW_TRAMPOLINE");
#endif
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)(dsw_now_ns() ^ (uint64_t)getpid()));
    int rc = uv_loop_init(&w->loop);
    if (rc) {
        dsw_error("cannot create the event loop: %s", uv_strerror(rc));
        free(w);
        return 1;
    }
    if ((rc = dsw_log_attach(&w->loop)) != 0)
        dsw_warn("log: stderr cannot be polled (%s): writes may wait", uv_strerror(rc));
    int failed = start(w);
    if (failed)
        stop_with(w, failed);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    int exit_code = w->exit_code;
    dsw_log_detach(&w->loop);
    rc = uv_loop_close(&w->loop);
    if (rc) {
        dsw_error("internal: handles left open at exit");
        exit_code = exit_code ? exit_code : 1;
    }
    free(w);
    return exit_code;
}
