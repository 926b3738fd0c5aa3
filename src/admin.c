/* admin: db-init, enqueue, status and check-config --connect. Each command is a short chain of
 * asynchronous steps on a private loop with one deadline (postgres.connect_timeout + 15 s): a
 * dependency that does not answer in time makes the command exit 69 instead of waiting. */
#include "dsw/admin.h"

#include "dsw/clients.h"
#include "dsw/dagster.h"
#include "dsw/log.h"
#include "dsw/msg.h"
#include "dsw/sqs.h"
#include "dsw/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_UNAVAILABLE 69

struct admin {
    uv_loop_t loop;
    struct dsw_clients cl;
    uv_timer_t deadline;
    uv_timer_t db_probe; /* Postgres refusing every attempt for connect_timeout: give up */
    const struct dsw_conf *conf;
    const char *run_id;
    int exit_code;
    int pending; /* steps still to answer */
    bool finished;
};

static void admin_closed(void *arg)
{
    (void)arg;
}

static void noop_close(uv_handle_t *h)
{
    (void)h;
}

static void admin_finish(struct admin *a, int exit_code)
{
    if (a->finished)
        return;
    a->finished = true;
    a->exit_code = exit_code;
    uv_close((uv_handle_t *)&a->deadline, noop_close);
    uv_close((uv_handle_t *)&a->db_probe, noop_close);
    dsw_clients_close(&a->cl, admin_closed, a);
}

/* One step answered: finish when it failed or when it was the last one. */
static void step_done(struct admin *a, int exit_code)
{
    if (exit_code && !a->exit_code)
        a->exit_code = exit_code;
    if (--a->pending == 0 || exit_code)
        admin_finish(a, a->exit_code);
}

static void on_deadline(uv_timer_t *t)
{
    struct admin *a = t->data;
    fprintf(stderr, "dagster-sqs-worker: no answer within %lld s from %s\n",
            (long long)(a->conf->postgres.connect_timeout_ms / 1000 + 15),
            a->cl.db && !a->cl.sqs ? "PostgreSQL" : "PostgreSQL or the queue");
    admin_finish(a, EXIT_UNAVAILABLE);
}

/* The db reconnects forever; a command should not. Still down after connect_timeout with
 * failed attempts behind it (a refused or unresolvable server): unreachable, exit 69, instead of
 * waiting for the whole deadline. */
static void on_db_probe(uv_timer_t *t)
{
    struct admin *a = t->data;
    struct dsw_db_state st;
    if (!a->cl.db)
        return;
    dsw_db_get_state(a->cl.db, &st);
    if (st.up || st.errors == 0)
        return;
    fprintf(stderr, "dagster-sqs-worker: PostgreSQL unreachable for %lld s\n",
            (long long)(a->conf->postgres.connect_timeout_ms / 1000));
    printf("postgres: unreachable\n");
    admin_finish(a, EXIT_UNAVAILABLE);
}

typedef void (*admin_start_fn)(struct admin *a);

static int admin_run(const struct dsw_conf *conf, unsigned needs, const char *run_id,
                     admin_start_fn start)
{
    struct admin a = {.conf = conf, .run_id = run_id};
    uv_loop_init(&a.loop);
    uv_timer_init(&a.loop, &a.deadline);
    a.deadline.data = &a;
    uv_timer_start(&a.deadline, on_deadline, (uint64_t)conf->postgres.connect_timeout_ms + 15000,
                   0);
    uv_timer_init(&a.loop, &a.db_probe);
    a.db_probe.data = &a;
    uv_timer_start(&a.db_probe, on_db_probe, (uint64_t)conf->postgres.connect_timeout_ms, 1000);
    if (dsw_clients_open(&a.cl, &a.loop, conf, needs))
        admin_finish(&a, 1);
    else
        start(&a);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&a.loop) != 0 && !a.exit_code)
        a.exit_code = 1;
    return a.exit_code;
}

/* ---- db-init ------------------------------------------------------------------------------- */

static void on_db_init(int status, const struct dsw_store_schema *res, void *arg)
{
    struct admin *a = arg;
    if (status == -EPROTO) {
        fprintf(stderr,
                "dagster-sqs-worker: the database holds schema version %d, newer than "
                "this daemon's %d: upgrade the daemon\n",
                res ? res->found : 0, DSW_STORE_SCHEMA_VERSION);
        step_done(a, 1);
        return;
    }
    if (status) {
        fprintf(stderr, "dagster-sqs-worker: db-init failed: %s\n", strerror(-status));
        step_done(a, status == -ECONNRESET ? EXIT_UNAVAILABLE : 1);
        return;
    }
    if (res->found == res->wanted)
        printf("dagster_sqs_worker schema is at version %d; nothing to do\n", res->wanted);
    else
        printf("dagster_sqs_worker schema %s version %d\n",
               res->found ? "upgraded to" : "created at", res->wanted);
    step_done(a, 0);
}

static void start_db_init(struct admin *a)
{
    a->pending = 1;
    if (dsw_store_db_init(a->cl.store, on_db_init, a))
        step_done(a, 1);
}

int dsw_admin_db_init(const struct dsw_conf *conf)
{
    return admin_run(conf, DSW_CLIENTS_DB, NULL, start_db_init);
}

/* ---- check-config --connect -------------------------------------------------------------- */

static void on_schema_checked(int status, const struct dsw_store_schema *res, void *arg)
{
    struct admin *a = arg;
    if (status == 0)
        printf("postgres: reachable, dagster_sqs_worker schema version %d\n", res->found);
    else if (status == -ENOENT || status == -EPROTO)
        printf("postgres: reachable, but the dagster_sqs_worker schema is %s: run "
               "'dagster-sqs-worker db-init'\n",
               status == -ENOENT ? "missing" : "at another version");
    else
        printf("postgres: unreachable or failing: %s\n", strerror(-status));
    step_done(a, status == 0 ? 0 : status == -ENOENT || status == -EPROTO ? 1 : EXIT_UNAVAILABLE);
}

static void on_queue_attrs(int status, const struct dsw_sqs_attr *attrs, size_t n, void *arg)
{
    struct admin *a = arg;
    if (status) {
        printf("queue: unreachable or refused: %s (%s)\n",
               dsw_sqs_errclass_name(dsw_sqs_errclass(status)), strerror(-status));
        step_done(a, status == -ENOENT || status == -EACCES ? 1 : EXIT_UNAVAILABLE);
        return;
    }
    printf("queue: reachable");
    for (size_t i = 0; i < n; i++)
        printf(", %s=%s", attrs[i].name, attrs[i].value ? attrs[i].value : "");
    printf("\n");
    step_done(a, 0);
}

static const char *const queue_attr_names[] = {
    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "VisibilityTimeout"};

static void start_check(struct admin *a)
{
    a->pending = 2;
    if (dsw_store_check_schema(a->cl.store, on_schema_checked, a))
        step_done(a, 1);
    if (!a->finished && dsw_sqs_get_attributes(a->cl.sqs, a->conf->queue.url, queue_attr_names,
                                               DSW_ARRAY_LEN(queue_attr_names), on_queue_attrs, a))
        step_done(a, 1);
}

int dsw_admin_check_connect(const struct dsw_conf *conf)
{
    return admin_run(conf, DSW_CLIENTS_DB | DSW_CLIENTS_SQS, NULL, start_check);
}

/* ---- status ---------------------------------------------------------------------------------- */

static void on_summary(int status, const struct dsw_store_summary_row *rows, size_t n, void *arg)
{
    struct admin *a = arg;
    static const char *const states[] = {"none", "claimed", "running", "done"};
    if (status) {
        printf("claims: cannot read: %s\n", strerror(-status));
        step_done(a, status == -ENOENT ? 1 : EXIT_UNAVAILABLE);
        return;
    }
    printf("claims (unfinished), per worker (run: run claims, step: step claims):\n");
    if (n == 0)
        printf("  none\n");
    for (size_t i = 0; i < n; i++)
        printf("  %-48s %-4s %-8s live %lld  stale %lld\n",
               rows[i].worker_id ? rows[i].worker_id : "", rows[i].step ? "step" : "run",
               states[rows[i].state & 3], (long long)rows[i].live, (long long)rows[i].stale);
    step_done(a, 0);
}

static void start_status(struct admin *a)
{
    a->pending = 2;
    if (dsw_sqs_get_attributes(a->cl.sqs, a->conf->queue.url, queue_attr_names,
                               DSW_ARRAY_LEN(queue_attr_names), on_queue_attrs, a))
        step_done(a, 1);
    if (!a->finished && dsw_store_claims_summary(a->cl.store, on_summary, a))
        step_done(a, 1);
}

int dsw_admin_status(const struct dsw_conf *conf)
{
    return admin_run(conf, DSW_CLIENTS_DB | DSW_CLIENTS_SQS, NULL, start_status);
}

/* ---- enqueue ------------------------------------------------------------------------------- */

static void on_sent(int status, const char *message_id, void *arg)
{
    struct admin *a = arg;
    if (status) {
        fprintf(stderr, "dagster-sqs-worker: send failed: %s (%s)\n",
                dsw_sqs_errclass_name(dsw_sqs_errclass(status)), strerror(-status));
        step_done(a, status == -ENOENT || status == -EACCES ? 1 : EXIT_UNAVAILABLE);
        return;
    }
    printf("enqueued run %s as message %s\n", a->run_id, message_id);
    step_done(a, 0);
}

/* The TaskIQ envelope dagster-taskiq's launcher sends, with instance_ref null. */
static char *envelope(const char *run_id, const char *args)
{
    unsigned char rnd[16];
    char task_id[33];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(rnd, 1, sizeof(rnd), f) != sizeof(rnd))
        memset(rnd, 0, sizeof(rnd));
    if (f)
        fclose(f);
    for (int i = 0; i < 16; i++)
        snprintf(task_id + 2 * i, 3, "%02x", rnd[i]);
    return dsw_xasprintf("{\"task_id\": \"%s\", \"task_name\": \"execute_job\", \"labels\": {}, "
                         "\"labels_types\": null, \"args\": [], \"kwargs\": "
                         "{\"execute_job_args_packed\": %s}}",
                         task_id, args);
}

static void send_for(struct admin *a, const char *body_json)
{
    char *origin = NULL, *args = NULL;
    int rc = dsw_dagster_body_origin(body_json, &origin, NULL, NULL);
    if (!rc)
        rc = dsw_dagster_run_args(a->run_id, origin, NULL, 0, &args);
    free(origin);
    if (rc) {
        fprintf(stderr, "dagster-sqs-worker: run %s has no usable code origin\n", a->run_id);
        step_done(a, 1);
        return;
    }
    char *body = envelope(a->run_id, args);
    free(args);
    struct dsw_sqs_send_req req = {.body = body, .body_len = strlen(body)};
    rc = dsw_sqs_send(a->cl.sqs, a->conf->queue.url, &req, on_sent, a);
    free(body);
    if (rc) {
        fprintf(stderr, "dagster-sqs-worker: cannot send: %s\n", strerror(-rc));
        step_done(a, 1);
    }
}

static char *loaded_body;

static void on_marked(int status, const struct dsw_store_record_result *res, void *arg)
{
    struct admin *a = arg;
    if (status) {
        fprintf(stderr, "dagster-sqs-worker: cannot move run %s to STARTING: %s\n", a->run_id,
                strerror(-status));
        step_done(a, 1);
        return;
    }
    if (res->changed)
        printf("run %s: %s -> STARTING\n", a->run_id, dsw_store_status_name(res->before));
    send_for(a, loaded_body);
}

static void on_enqueue_loaded(int status, const struct dsw_store_run *run, void *arg)
{
    struct admin *a = arg;
    if (status) {
        fprintf(stderr, "dagster-sqs-worker: run %s: %s\n", a->run_id,
                status == -ENOENT ? "no such run" : strerror(-status));
        step_done(a, status == -ENOENT ? 1 : EXIT_UNAVAILABLE);
        return;
    }
    if (dsw_store_status_terminal(run->status)) {
        fprintf(stderr, "dagster-sqs-worker: run %s is already %s; not enqueued\n", a->run_id,
                run->status_text);
        step_done(a, 1);
        return;
    }
    free(loaded_body);
    loaded_body = dsw_xstrdup(run->body ? run->body : "");
    if (run->status == DSW_STATUS_NOT_STARTED || run->status == DSW_STATUS_QUEUED) {
        if (dsw_store_mark_starting(a->cl.store, a->run_id, on_marked, a))
            step_done(a, 1);
        return;
    }
    send_for(a, loaded_body);
}

static void start_enqueue(struct admin *a)
{
    a->pending = 1;
    if (dsw_store_load(a->cl.store, a->run_id, on_enqueue_loaded, a))
        step_done(a, 1);
}

int dsw_admin_enqueue(const struct dsw_conf *conf, const char *run_id)
{
    if (!dsw_msg_run_id_valid(run_id, conf->runs.strict_run_id)) {
        fprintf(stderr, "dagster-sqs-worker: '%s' is not a run id\n", run_id);
        return 64;
    }
    int rc = admin_run(conf, DSW_CLIENTS_DB | DSW_CLIENTS_SQS, run_id, start_enqueue);
    free(loaded_body);
    loaded_body = NULL;
    return rc;
}
