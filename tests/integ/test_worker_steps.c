/* Step messages (issue 18, docs/steps.md §5, §6) under the real daemon: a STARTED run whose steps
 * the test sends as sqs_executor would (tu_send_step); the fake dagster's `api execute_step` writes
 * the step's events by the run's dsw/test_behavior tag. Each case checks the step claims, the
 * fake's starts (child_starts, argv_kind execute_step, per step key), the queue, and that the
 * run's status is never written by the daemon or the step. */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 20000

TU_WORKER_FIXTURE(false)

static struct tu_daemon *start(void)
{
    return tu_daemon_start(&env, (const char *const[]){"run", NULL});
}

/* SIGTERM, and the drain ends with exit 0. */
static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
}

static bool wait_log(struct tu_daemon *d, const char *needle)
{
    return tu_daemon_wait_log(d, needle, WAIT_MS);
}

/* A STARTED run with the behaviour, its step key's first attempt sent, a daemon started. */
static struct tu_daemon *one_step(char id[37], const char *behavior, const char *key)
{
    tu_run_new(id, "STARTED", behavior);
    tu_send_step(&q, id, key, 0, NULL, 0);
    return start();
}

/* A column of the step claim (run, key, attempt) as text (heap; NULL: no row or NULL). */
static char *step_col(const char *run, const char *key, int attempt, const char *col)
{
    char a[16];
    snprintf(a, sizeof(a), "%d", attempt);
    const char *p[] = {run, key, a, col};
    return tu_pg_str("SELECT to_jsonb(c) ->> $4 FROM dagster_sqs_worker.step_claims c "
                     "WHERE run_id = $1 AND step_key = $2 AND attempt = $3::int",
                     4, p);
}

struct step_cond {
    const char *run, *key, *col, *expect;
    int attempt;
};

static bool step_col_is(void *arg)
{
    const struct step_cond *c = arg;
    return tu_eq_free(step_col(c->run, c->key, c->attempt, c->col), c->expect);
}

static bool wait_step(const char *run, const char *key, int attempt, const char *col,
                      const char *expect)
{
    struct step_cond c = {run, key, col, expect, attempt};
    return tu_wait(step_col_is, &c, WAIT_MS);
}

/* The fake's execute_step starts for the step key (NULL: every step of the run). */
static long long step_starts(const char *run, const char *key)
{
    const char *p[] = {run, key};
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1 "
                    "AND argv_kind = 'execute_step' AND ($2::text IS NULL OR step_key = $2)",
                    2, p);
}

static long long step_claims(const char *run)
{
    const char *p[] = {run};
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.step_claims WHERE run_id = $1", 1, p);
}

static void set_status(const char *id, const char *status)
{
    const char *p[] = {id, status};
    PQclear(tu_pg_exec("UPDATE runs SET status = $2 WHERE run_id = $1", 2, p));
}

/* A finished step: claim done, outcome exited with code. */
static void assert_exited(const char *run, const char *key, int attempt, const char *code)
{
    assert_true(wait_step(run, key, attempt, "state", "done"));
    assert_true(tu_eq_free(step_col(run, key, attempt, "outcome"), "exited"));
    assert_true(tu_eq_free(step_col(run, key, attempt, "exit_code"), code));
    assert_null(step_col(run, key, attempt, "term_signal")); /* set only when killed */
}

static void test_three_steps(void **state)
{
    static const char *const keys[] = {"extract", "transform[a]", "load.final"};
    char id[37];
    tu_run_new(id, "STARTED", "success");
    for (int i = 0; i < 3; i++)
        tu_send_step(&q, id, keys[i], 0, NULL, 0);
    struct tu_daemon *d = start();
    for (int i = 0; i < 3; i++)
        assert_exited(id, keys[i], 1, "0");
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    for (int i = 0; i < 3; i++)
        assert_int_equal(step_starts(id, keys[i]), 1);
    assert_int_equal(tu_run_starts(id), 3); /* no execute_run */
    assert_int_equal(step_claims(id), 3);
    assert_int_equal(tu_run_events(id, "STEP_START"), 3);
    assert_int_equal(tu_run_events(id, "STEP_SUCCESS"), 3);
    assert_true(tu_run_event_has(id, "Finished execution of step \\\"transform[a]\\\""));
    assert_int_equal(tu_run_events(id, "PIPELINE_SUCCESS") + tu_run_events(id, "PIPELINE_FAILURE"),
                     0);
    assert_true(tu_eq_free(tu_run_status(id), "STARTED"));
    assert_null(tu_claim_col(id, "state")); /* no run claim for steps */
    stop(d);
}

/* A step that fails exits 0 (its STEP_FAILURE tells the rest); its retry is a new attempt. */
static void test_failure_and_retry(void **state)
{
    char id[37];
    struct tu_daemon *d = one_step(id, "failure", "flaky");
    assert_exited(id, "flaky", 1, "0");
    assert_int_equal(tu_run_events(id, "STEP_FAILURE"), 1);
    tu_send_step(&q, id, "flaky", 1, NULL, 0);
    assert_exited(id, "flaky", 2, "0");
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(id, "flaky"), 2);
    assert_int_equal(tu_run_events(id, "STEP_FAILURE"), 2);
    assert_true(tu_eq_free(tu_run_status(id), "STARTED"));
    stop(d);
}

/* The same step twice (the executor's retry of a send, an SQS redelivery): one execution. */
static void test_duplicate(void **state)
{
    char id[37];
    tu_run_new(id, "STARTED", "sleep:0.5");
    tu_send_step(&q, id, "only_once", 0, NULL, 0);
    tu_send_step(&q, id, "only_once", 0, NULL, 0);
    struct tu_daemon *d = start();
    assert_exited(id, "only_once", 1, "0");
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(id, "only_once"), 1);
    assert_int_equal(step_claims(id), 1);
    assert_true(wait_log(d, "duplicate"));
    /* And once more after it is done. */
    tu_send_step(&q, id, "only_once", 0, NULL, 0);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(id, "only_once"), 1);
    stop(d);
}

/* Only a STARTED run's steps run: CANCELING and terminal runs' step messages are deleted. */
static void test_run_not_running(void **state)
{
    static const char *const st[] = {"CANCELING", "CANCELED", "SUCCESS", "FAILURE", "STARTING"};
    char id[5][37];
    for (int i = 0; i < 5; i++) {
        tu_run_new(id[i], st[i], "success");
        tu_send_step(&q, id[i], "a", 0, NULL, 0);
    }
    struct tu_daemon *d = start();
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(step_starts(id[i], NULL), 0);
        assert_int_equal(step_claims(id[i]), 0);
        assert_true(tu_eq_free(tu_run_status(id[i]), st[i]));
        assert_int_equal(tu_run_events(id[i], NULL), 0);
    }
    assert_true(wait_log(d, "terminal_skip"));
    assert_true(wait_log(d, "unexpected_status"));
    stop(d);
}

/* A claim whose worker died (heartbeat an hour old): closed lost, the step is not re-run. */
static void test_stale_claim(void **state)
{
    char id[37];
    tu_run_new(id, "STARTED", "success");
    const char *p[] = {id};
    long long token = tu_pg_ll(
        "INSERT INTO dagster_sqs_worker.step_claims (run_id, step_key, attempt, worker_id, "
        "fencing_token, message_id, receive_count, state, child_pid, claimed_at, heartbeat_at) "
        "VALUES ($1, 'lost_step', 1, 'testhost:1:1', nextval('dagster_sqs_worker.fence'), "
        "'a-lost-message', 1, 'running', 1, now() - interval '1 hour', now() - interval '1 hour') "
        "RETURNING fencing_token",
        1, p);
    assert_true(token > 0);
    tu_send_step(&q, id, "lost_step", 0, NULL, 0);
    struct tu_daemon *d = start();
    assert_true(wait_step(id, "lost_step", 1, "state", "done"));
    assert_true(tu_eq_free(step_col(id, "lost_step", 1, "outcome"), "lost"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(id, NULL), 0);
    assert_int_equal(step_claims(id), 1);
    assert_true(tu_eq_free(tu_run_status(id), "STARTED"));
    stop(d);
}

/* The pid of the step's fake dagster once its claim is running. */
static pid_t running_step(const char *run, const char *key)
{
    assert_true(wait_step(run, key, 1, "state", "running"));
    const char *p[] = {run, key};
    assert_true(tu_wait_sql("SELECT count(*) FROM event_logs WHERE run_id = $1 AND "
                            "dagster_event_type = 'STEP_START'",
                            run, "1", WAIT_MS));
    return (pid_t)tu_pg_ll("SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1 "
                           "AND step_key = $2",
                           2, p);
}

/* A stopped step: done with the outcome, its process gone, the message deleted. */
static void assert_stopped(const char *run, const char *key, pid_t pid, const char *outcome)
{
    assert_true(wait_step(run, key, 1, "state", "done"));
    assert_true(tu_eq_free(step_col(run, key, 1, "outcome"), outcome));
    assert_false(tu_pid_alive(pid));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(run, key), 1);
}

/* The executor's terminate_step: stop_requested_at on the claim. */
static void test_stop_requested(void **state)
{
    char id[37];
    struct tu_daemon *d = one_step(id, "sleep:30", "long");
    pid_t pid = running_step(id, "long");
    assert_true(pid > 0);
    uint64_t t0 = dsw_now_ms();
    const char *p[] = {id};
    PQclear(tu_pg_exec("UPDATE dagster_sqs_worker.step_claims SET stop_requested_at = now() "
                       "WHERE run_id = $1 AND step_key = 'long' AND attempt = 1 AND state <> "
                       "'done' AND stop_requested_at IS NULL",
                       1, p));
    assert_stopped(id, "long", pid, "stopped");
    uint64_t took = dsw_now_ms() - t0;
    fprintf(stderr, "stop: step done %llu ms after stop_requested_at\n", (unsigned long long)took);
    /* The child handled SIGTERM as Dagster does: STEP_FAILURE (interrupt), exit 1. */
    assert_true(tu_run_event_has(id, "ErrorSource.INTERRUPT"));
    assert_true(tu_eq_free(step_col(id, "long", 1, "exit_code"), "1"));
    assert_true(tu_eq_free(tu_run_status(id), "STARTED"));
    stop(d);
}

/* A step of a run whose status the test then sets: the step is stopped, outcome canceled. */
static struct tu_daemon *stop_by_status(char id[37], const char *behavior, const char *key,
                                        const char *status)
{
    struct tu_daemon *d = one_step(id, behavior, key);
    pid_t pid = running_step(id, key);
    set_status(id, status);
    assert_stopped(id, key, pid, "canceled");
    return d;
}

static void test_run_canceling(void **state)
{
    char id[37];
    struct tu_daemon *d = stop_by_status(id, "sleep:30", "long", "CANCELING");
    assert_true(tu_eq_free(tu_run_status(id), "CANCELING")); /* the run worker's to finish */
    assert_true(tu_eq_free(step_col(id, "long", 1, "exit_code"), "1"));
    stop(d);
}

/* A step worker that ignores SIGTERM is killed after kill_grace (1 s). */
static void test_stop_ignores_sigterm(void **state)
{
    char id[37];
    struct tu_daemon *d = stop_by_status(id, "ignore_sigterm:600", "stubborn", "CANCELED");
    assert_true(tu_eq_free(step_col(id, "stubborn", 1, "term_signal"), "9"));
    assert_null(step_col(id, "stubborn", 1, "exit_code"));
    stop(d);
}

static void test_crash(void **state)
{
    char id[37];
    struct tu_daemon *d = one_step(id, "crash", "boom");
    assert_exited(id, "boom", 1, "3");
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_starts(id, "boom"), 1);
    assert_int_equal(tu_run_events(id, "STEP_FAILURE"), 0); /* the daemon writes no event */
    assert_true(tu_eq_free(tu_run_status(id), "STARTED"));
    stop(d);
}

/* Two keys in step_keys_to_execute: rejected (bad_envelope), nothing claimed or started. */
static void test_bad_step(void **state)
{
    char id[37];
    tu_run_new(id, "STARTED", "success");
    char *body = tu_step_envelope(id, "one", 0);
    const char *at = strstr(body, "[\"one\"]");
    assert_non_null(at);
    char *two = dsw_xasprintf("%.*s[\"one\", \"two\"]%s", (int)(at - body), body, at + 7);
    tu_queue_send(&q, two, NULL, 0);
    free(two);
    free(body);
    struct tu_daemon *d = start();
    assert_true(wait_log(d, "rejected message: bad_envelope"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(step_claims(id), 0);
    assert_int_equal(step_starts(id, NULL), 0);
    stop(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_three_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_and_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_not_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_requested, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_canceling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_ignores_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_step, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
