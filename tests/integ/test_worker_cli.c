/* The commands around the daemon (SPEC §9) run as the real binary: db-init (idempotent; `run`
 * refuses a missing schema with 78 naming db-init), check-config --connect (0, or 69 when
 * Postgres or the queue is down: a port nothing listens on), exec FILE|-, once, enqueue,
 * status; exec and once give up with 69 after postgres.connect_timeout when Postgres is down
 * (exec's unreadable file is 64 before any connection); the credentials' source logged once by
 * the worker and not at all by the one-shot commands; and a daemon whose Postgres goes away mid-run
 * (a TCP forwarder is cut): the child keeps running, nothing is deleted, the outcome is recorded
 * when Postgres is back. */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 30000

static struct tu_queue q;
static struct tu_env env;

static int setup(void **state)
{
    tu_worker_setup(&q, &env, false);
    return 0;
}

static int teardown(void **state)
{
    tu_worker_teardown(&env);
    tu_pg_fresh_db_drop();
    return 0;
}

static int cli(const char *const *args, char **out)
{
    return tu_cli(&env, args, out, WAIT_MS);
}

static void test_db_init_and_missing_schema(void **state)
{
    char *db = tu_pg_fresh_db(), *out = NULL;
    tu_env_set(&env, "DSW_POSTGRES_CONNINFO", "%s", db);
    assert_int_equal(cli((const char *const[]){"run", NULL}, &out), 78);
    assert_non_null(strstr(out, "db-init"));
    free(out);
    assert_int_equal(cli((const char *const[]){"db-init", NULL}, &out), 0);
    assert_non_null(strstr(out, "created at version 2"));
    free(out);
    assert_int_equal(cli((const char *const[]){"db-init", NULL}, &out), 0);
    assert_non_null(strstr(out, "nothing to do"));
    free(out);
    assert_int_equal(tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.schema_version", 0, NULL),
                     1);
    free(db);
}

static void test_check_config_connect(void **state)
{
    char *out = NULL;
    assert_int_equal(cli((const char *const[]){"check-config", "--connect", NULL}, &out), 0);
    assert_non_null(strstr(out, "postgres: reachable"));
    assert_non_null(strstr(out, "queue: reachable"));
    free(out);
    /* Postgres down: a port nothing listens on. */
    struct tu_env down = {0};
    tu_worker_env(&down, &q);
    tu_env_set(&down, "DSW_POSTGRES_CONNINFO", "%s port=1", tu_need_env("DSW_TEST_PG_CONNINFO"));
    uint64_t t0 = dsw_now_ms();
    int rc = tu_cli(&down, (const char *const[]){"check-config", "--connect", NULL}, &out, WAIT_MS);
    fprintf(stderr, "check-config --connect, postgres down: %d after %llu ms\n", rc,
            (unsigned long long)(dsw_now_ms() - t0));
    if (rc != 69)
        fprintf(stderr, "%s\n", out);
    assert_int_equal(rc, 69);
    free(out);
    tu_env_free(&down);
    /* The queue down. */
    tu_worker_env(&down, &q);
    tu_env_set(&down, "DSW_QUEUE_ENDPOINT", "http://127.0.0.1:1");
    t0 = dsw_now_ms();
    rc = tu_cli(&down, (const char *const[]){"check-config", "--connect", NULL}, &out, WAIT_MS);
    fprintf(stderr, "check-config --connect, queue down: %d after %llu ms\n", rc,
            (unsigned long long)(dsw_now_ms() - t0));
    if (rc != 69)
        fprintf(stderr, "%s\n", out);
    assert_int_equal(rc, 69);
    assert_non_null(strstr(out, "postgres: reachable"));
    free(out);
    tu_env_free(&down);
}

static void test_exec(void **state)
{
    char id[2][37], path[] = "/tmp/dsw-exec-XXXXXX";
    tu_run_new(id[0], "STARTING", "success");
    tu_run_new(id[1], "STARTING", "failure");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char *body = tu_run_envelope(id[0]);
    tu_write_file(path, body, 0600);
    free(body);
    assert_int_equal(cli((const char *const[]){"exec", path, NULL}, NULL), 0);
    assert_true(tu_eq_free(tu_run_status(id[0]), "SUCCESS"));
    assert_true(tu_eq_free(tu_claim_col(id[0], "state"), "done"));
    body = tu_run_envelope(id[1]);
    tu_write_file(path, body, 0600);
    free(body);
    /* From stdin; a failed run is still a processed message: exit 0. */
    assert_int_equal(tu_cli_in(&env, (const char *const[]){"exec", "-", NULL}, path, NULL, WAIT_MS),
                     0);
    assert_true(tu_eq_free(tu_run_status(id[1]), "FAILURE"));
    assert_int_equal(tu_run_starts(id[0]) + tu_run_starts(id[1]), 2);
    /* A body that is rejected: exit 1. */
    tu_write_file(path, "{\"not\": \"a message\"}", 0600);
    assert_int_equal(cli((const char *const[]){"exec", path, NULL}, NULL), 1);
    unlink(path);
}

static void test_enqueue_once_status(void **state)
{
    char id[2][37], done[37], *out = NULL;
    long vis, inflight;
    tu_run_new(id[0], "NOT_STARTED", "success");
    tu_run_new(id[1], "STARTING", "success");
    tu_run_new(done, "SUCCESS", "success");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cli((const char *const[]){"enqueue", id[i], NULL}, &out), 0);
        assert_non_null(strstr(out, "enqueued run "));
        free(out);
    }
    assert_true(tu_eq_free(tu_run_status(id[0]), "STARTING"));
    assert_int_equal(tu_run_events(id[0], "PIPELINE_STARTING"), 1);
    assert_int_equal(tu_run_events(id[1], "PIPELINE_STARTING"), 0);
    assert_int_equal(cli((const char *const[]){"enqueue", done, NULL}, NULL), 1);
    assert_int_equal(cli((const char *const[]){"enqueue", "not-a-run-id", NULL}, NULL), 64);
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(vis, 2);
    /* status: the queue's depth and the claims per worker. */
    tu_claim_insert(done, "running", "0", "m");
    assert_int_equal(cli((const char *const[]){"status", NULL}, &out), 0);
    assert_non_null(strstr(out, "ApproximateNumberOfMessages=2"));
    assert_non_null(strstr(out, "testhost:1:1"));
    free(out);
    /* once: one message, processed to the end; the other stays. */
    assert_int_equal(cli((const char *const[]){"once", NULL}, NULL), 0);
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(vis + inflight, 1);
    assert_int_equal(cli((const char *const[]){"once", NULL}, NULL), 0);
    assert_true(tu_queue_empty(&q));
    for (int i = 0; i < 2; i++) {
        assert_true(tu_eq_free(tu_run_status(id[i]), "SUCCESS"));
        assert_int_equal(tu_run_starts(id[i]), 1);
    }
    /* An empty queue: once waits wait_time and exits 0. */
    assert_int_equal(cli((const char *const[]){"once", NULL}, &out), 0);
    assert_non_null(strstr(out, "no message arrived"));
    free(out);
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Postgres refusing connections (a port nothing listens on): exec and once exit 69 once
 * postgres.connect_timeout (2 s here) has passed with failed attempts, as db-init does;
 * `run` would wait. exec's unreadable input is 64 at once, before any connection. */
static void test_exec_once_postgres_down(void **state)
{
    char *out = NULL, path[] = "/tmp/dsw-exec-down-XXXXXX", id[37];
    struct tu_env down = {0};
    tu_worker_env(&down, &q);
    tu_env_set(&down, "DSW_POSTGRES_CONNINFO", "%s port=1", tu_need_env("DSW_TEST_PG_CONNINFO"));
    tu_run_new(id, "STARTING", "success");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char *body = tu_run_envelope(id);
    tu_write_file(path, body, 0600);
    free(body);
    const char *const *cmds[] = {(const char *const[]){"exec", path, NULL},
                                 (const char *const[]){"exec", "-", NULL},
                                 (const char *const[]){"once", NULL}};
    for (size_t i = 0; i < 3; i++) {
        uint64_t t0 = dsw_now_ms();
        int rc = i == 1 ? tu_cli_in(&down, cmds[i], path, &out, WAIT_MS)
                        : tu_cli(&down, cmds[i], &out, WAIT_MS);
        uint64_t took = dsw_now_ms() - t0;
        fprintf(stderr, "%s %s, postgres down: %d after %llu ms\n", cmds[i][0],
                cmds[i][1] ? cmds[i][1] : "", rc, (unsigned long long)took);
        if (rc != 69)
            fprintf(stderr, "%s\n", out);
        assert_int_equal(rc, 69);
        assert_true(took >= 2000 && took < 2000 + tu_slack_ms());
        assert_non_null(strstr(out, "PostgreSQL unreachable for 2 s: giving up"));
        assert_null(strstr(out, "cannot check the dagster_sqs_worker schema"));
        free(out);
    }
    assert_true(tu_eq_free(tu_run_status(id), "STARTING"));
    /* A bad path: at once, whatever the database does. */
    uint64_t t0 = dsw_now_ms();
    assert_int_equal(cli((const char *const[]){"exec", "/no/such/body.json", NULL}, &out), 64);
    assert_int_equal(
        tu_cli(&down, (const char *const[]){"exec", "/no/such/body.json", NULL}, NULL, WAIT_MS),
        64);
    uint64_t took = dsw_now_ms() - t0;
    assert_true(took < tu_slack_ms() && took < 2000); /* not the 2 s wait for Postgres */
    assert_non_null(strstr(out, "exec: cannot read /no/such/body.json: No such file or directory"));
    free(out);
    unlink(path);
    tu_env_free(&down);
}

/* Which provider gave the AWS credentials: said once by a worker, and not by the one-shot
 * commands, which print their own results. */
static void test_credentials_logged_once(void **state)
{
    char id[37], *out = NULL;
    tu_run_new(id, "STARTING", "success");
    assert_int_equal(cli((const char *const[]){"enqueue", id, NULL}, &out), 0);
    assert_int_equal(count_of(out, "aws: credentials from"), 0);
    assert_non_null(strstr(out, "enqueued run "));
    free(out);
    assert_int_equal(cli((const char *const[]){"status", NULL}, &out), 0);
    assert_int_equal(count_of(out, "aws: credentials from"), 0);
    free(out);
    /* --log-level asks for them. */
    assert_int_equal(cli((const char *const[]){"--log-level", "info", "status", NULL}, &out), 0);
    assert_int_equal(count_of(out, "aws: credentials from env"), 1);
    free(out);
    assert_int_equal(cli((const char *const[]){"once", NULL}, &out), 0);
    assert_int_equal(count_of(out, "aws: credentials from env"), 1);
    free(out);
    assert_true(tu_eq_free(tu_run_status(id), "SUCCESS"));
}

static bool child_exited(void *arg)
{
    return tu_daemon_log_has(arg, "event=child_exit");
}

static bool session_down(void *arg)
{
    return tu_daemon_log_has(arg, "PostgreSQL session down");
}

/* Postgres away mid-run: the child goes on, nothing is deleted, the outcome waits. */
static void test_postgres_down_mid_run(void **state)
{
    char id[37];
    const char *port = strstr(tu_need_env("DSW_TEST_PG_CONNINFO"), "port=");
    assert_non_null(port);
    int proxy = tu_proxy_start(atoi(port + 5));
    tu_env_set(&env, "DSW_POSTGRES_CONNINFO", "%s port=%d", tu_need_env("DSW_TEST_PG_CONNINFO"),
               proxy);
    tu_run_new(id, "STARTING", "sleep:2");
    tu_send_run(&q, id, NULL, 0);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    tu_proxy_set(false);
    assert_true(tu_wait(session_down, d, WAIT_MS));
    /* The child (on its own connection) finishes; the daemon cannot record it yet. */
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_wait(child_exited, d, WAIT_MS));
    long vis, inflight;
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(inflight, 1);
    assert_true(tu_eq_free(tu_claim_col(id, "state"), "running"));
    tu_proxy_set(true);
    assert_true(tu_wait_sql("SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = $1", id,
                            "done", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_true(tu_run_event_has(id, "Run worker exited with code 0"));
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
    tu_proxy_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_db_init_and_missing_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_config_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enqueue_once_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_once_postgres_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credentials_logged_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_postgres_down_mid_run, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
