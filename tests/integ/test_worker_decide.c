/* The SPEC §4 decision table, row by row, against the real daemon (DSW_BIN), the test Postgres
 * and fauxqs (moto for one row): each case makes its runs (and claim rows), sends their
 * messages on a fresh queue, runs the daemon and checks the database (status, events, claim)
 * and the queue (deleted, deferred, still there). */
#include "testutil.h"

#include "dsw/util.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 20000

TU_WORKER_FIXTURE(false)

static void send_run(const char *id, char *msg_id, size_t n)
{
    tu_send_run(&q, id, msg_id, n);
}

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

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static int log_count(struct tu_daemon *d, const char *needle)
{
    char *log = tu_daemon_log(d);
    int n = count(log, needle);
    free(log);
    return n;
}

struct log_cond {
    struct tu_daemon *d;
    const char *needle;
    int n;
};

static bool log_reached(void *arg)
{
    struct log_cond *c = arg;
    return log_count(c->d, c->needle) >= c->n;
}

static void wait_log(struct tu_daemon *d, const char *needle, int n)
{
    struct log_cond c = {d, needle, n};
    if (!tu_wait(log_reached, &c, WAIT_MS))
        fail_msg("the daemon's log never had %d x '%s'", n, needle);
}

/* n runs of the "success" job in the statuses st, one message each on the queue. */
static void new_runs_sent(int n, const char *const *st, char (*id)[37])
{
    for (int i = 0; i < n; i++) {
        tu_run_new(id[i], st[i], "success");
        send_run(id[i], NULL, 0);
    }
}

/* The run as it was made: its status, never started, no event written. */
static void assert_untouched(const char *id, const char *status)
{
    assert_true(tu_eq_free(tu_run_status(id), status));
    assert_int_equal(tu_run_starts(id), 0);
    assert_int_equal(tu_run_events(id, NULL), 0);
}

/* Every run's claim reached state done, then the queue is empty. */
static void wait_claims_done(int n, char (*id)[37])
{
    for (int i = 0; i < n; i++)
        assert_true(tu_wait_sql("SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = $1",
                                id[i], "done", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
}

/* SUCCESS / FAILURE / CANCELED, any claim: delete (terminal_skip), nothing written. */
static void test_terminal_skip(void **state)
{
    const char *st[] = {"SUCCESS", "FAILURE", "CANCELED"};
    char id[3][37];
    new_runs_sent(3, st, id);
    tu_claim_insert(id[2], "done", "0", "an-old-message");
    struct tu_daemon *d = start();
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    wait_log(d, "deleting message (terminal_skip)", 3);
    for (int i = 0; i < 3; i++)
        assert_untouched(id[i], st[i]);
    assert_null(tu_claim_col(id[0], "state"));
    assert_true(tu_eq_free(tu_claim_col(id[2], "message_id"), "an-old-message"));
    stop(d);
}

/* NOT_STARTED / STARTING, no claim: claim, spawn execute_run, record, delete. */
static void execute_fresh(const char *endpoint)
{
    const char *st[] = {"NOT_STARTED", "STARTING"};
    char id[2][37];
    if (endpoint) {
        tu_queue_create(&q, endpoint, 10);
        tu_env_free(&env);
        tu_worker_env(&env, &q);
    }
    new_runs_sent(2, st, id);
    struct tu_daemon *d = start();
    wait_claims_done(2, id);
    for (int i = 0; i < 2; i++) {
        assert_true(tu_eq_free(tu_run_status(id[i]), "SUCCESS"));
        assert_int_equal(tu_run_starts(id[i]), 1);
        assert_int_equal(tu_run_events(id[i], "PIPELINE_SUCCESS"), 1);
        assert_int_equal(tu_run_events(id[i], "PIPELINE_FAILURE"), 0);
        assert_true(tu_run_event_has(id[i], "[dagster-sqs-worker] Launching run worker on "));
        assert_true(tu_run_event_has(id[i], "[dagster-sqs-worker] Run worker exited with code 0"));
        assert_true(tu_eq_free(tu_claim_col(id[i], "exit_code"), "0"));
        assert_true(tu_eq_free(tu_claim_col(id[i], "attempt"), "1"));
        assert_true(tu_eq_free(tu_claim_col(id[i], "kind"), "execute"));
    }
    wait_log(d, "deleting message (recorded)", 2);
    stop(d);
}

static void test_execute_fresh(void **state)
{
    execute_fresh(NULL);
}

static void test_execute_fresh_moto(void **state)
{
    execute_fresh(tu_need_env("DSW_TEST_MOTO_URL"));
}

/* Any non-terminal status, a live claim for another message: delete (duplicate). */
static void test_duplicate_of_live_claim(void **state)
{
    const char *st[] = {"STARTING", "STARTED", "CANCELING"};
    char id[3][37], tok[3][32];
    tu_env_set(&env, "DSW_CLAIMS_TTL", "60s");
    for (int i = 0; i < 3; i++) {
        tu_run_new(id[i], st[i], "success");
        snprintf(tok[i], sizeof(tok[i]), "%lld",
                 tu_claim_insert(id[i], "running", "0", "the-owners-message"));
        send_run(id[i], NULL, 0);
    }
    struct tu_daemon *d = start();
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    wait_log(d, "deleting message (duplicate)", 3);
    for (int i = 0; i < 3; i++) {
        assert_untouched(id[i], st[i]);
        assert_true(tu_eq_free(tu_claim_col(id[i], "fencing_token"), tok[i]));
        assert_true(tu_eq_free(tu_claim_col(id[i], "worker_id"), "testhost:1:1"));
    }
    stop(d);
}

/* A live claim for this very message: defer for claims.ttl (the owner deletes it). */
static void test_defer_owned(void **state)
{
    char id[37], mid[128];
    long vis, inflight;
    tu_env_set(&env, "DSW_CLAIMS_TTL", "4s");
    tu_run_new(id, "STARTED", "success");
    send_run(id, mid, sizeof(mid));
    tu_claim_insert(id, "running", "0", mid);
    struct tu_daemon *d = start();
    wait_log(d, "deferred_owned", 1);
    stop(d);
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(vis, 0);
    assert_int_equal(inflight, 1);
    assert_untouched(id, "STARTED");
    /* Back after claims.ttl (4 s), not after the queue's 10 s. */
    void *msgs = NULL;
    assert_int_equal(tu_queue_receive(&q, 1, 30, 8, &msgs), 1);
    json_t *m = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(m, "MessageId")), mid);
    json_decref(msgs);
}

/* STARTING / NOT_STARTED with a stale claim: take over (attempt + 1), spawn execute_run. */
static void test_takeover_stale(void **state)
{
    const char *st[] = {"STARTING", "NOT_STARTED"};
    char id[2][37];
    new_runs_sent(2, st, id);
    for (int i = 0; i < 2; i++)
        tu_claim_insert(id[i], "claimed", "1 hour", "a-lost-message");
    struct tu_daemon *d = start();
    wait_claims_done(2, id);
    for (int i = 0; i < 2; i++) {
        assert_true(tu_eq_free(tu_run_status(id[i]), "SUCCESS"));
        assert_int_equal(tu_run_starts(id[i]), 1);
        assert_true(tu_eq_free(tu_claim_col(id[i], "attempt"), "2"));
        char *w = tu_claim_col(id[i], "worker_id");
        assert_non_null(w);
        assert_string_not_equal(w, "testhost:1:1");
        free(w);
    }
    stop(d);
}

/* STARTED with a stale claim (resume off): record FAILURE "run worker lost", delete. STARTED
 * with no claim row is not ours: the message is deleted and the run left alone. */
static void test_started_lost(void **state)
{
    char id[2][37];
    new_runs_sent(2, (const char *[]){"STARTED", "STARTED"}, id);
    tu_claim_insert(id[1], "running", "1 hour", "a-lost-message");
    struct tu_daemon *d = start();
    assert_true(tu_wait_status(id[1], "FAILURE", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(tu_run_starts(id[1]), 0);
    assert_int_equal(tu_run_events(id[1], "PIPELINE_FAILURE"), 1);
    assert_true(tu_run_event_has(id[1], "Run worker lost"));
    assert_true(tu_eq_free(tu_claim_col(id[1], "state"), "done"));
    assert_true(tu_eq_free(tu_claim_col(id[1], "outcome"), "lost"));
    /* not ours: untouched */
    assert_true(tu_eq_free(tu_run_status(id[0]), "STARTED"));
    assert_int_equal(tu_run_starts(id[0]), 0);
    assert_int_equal(tu_run_events(id[0], "PIPELINE_FAILURE"), 0);
    stop(d);
}

/* CANCELING with no claim or a stale one: record CANCELED, delete. */
static void test_canceling_unowned(void **state)
{
    char id[2][37];
    new_runs_sent(2, (const char *[]){"CANCELING", "CANCELING"}, id);
    tu_claim_insert(id[1], "running", "1 hour", "a-lost-message");
    struct tu_daemon *d = start();
    for (int i = 0; i < 2; i++)
        assert_true(tu_wait_status(id[i], "CANCELED", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tu_run_starts(id[i]), 0);
        assert_int_equal(tu_run_events(id[i], "PIPELINE_CANCELED"), 1);
        assert_int_equal(tu_run_events(id[i], "PIPELINE_FAILURE"), 0);
        assert_true(tu_eq_free(tu_claim_col(id[i], "outcome"), "canceled"));
    }
    stop(d);
}

/* QUEUED: defer for requeue_delay; past max_receives delete (not_launched), run untouched. */
static void test_queued(void **state)
{
    char id[37];
    long vis, inflight;
    tu_env_set(&env, "DSW_RUNS_REQUEUE_DELAY", "3s");
    tu_env_set(&env, "DSW_RUNS_MAX_RECEIVES", "1");
    tu_run_new(id, "QUEUED", "success");
    send_run(id, NULL, 0);
    struct tu_daemon *d = start();
    wait_log(d, "deferred_queued", 1);
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(vis + inflight, 1);
    assert_int_equal(vis, 0);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    wait_log(d, "deleting message (not_launched)", 1);
    assert_int_equal(log_count(d, "(deferred_queued)"), 1);
    assert_untouched(id, "QUEUED");
    assert_null(tu_claim_col(id, "state"));
    stop(d);
}

/* More deliveries than runs.max_receives, unowned (STARTED: our claim, stale): record FAILURE
 * "gave up", delete. */
static void test_give_up(void **state)
{
    const char *st[] = {"STARTING", "STARTED"};
    char id[2][37];
    tu_env_set(&env, "DSW_RUNS_MAX_RECEIVES", "1");
    new_runs_sent(2, st, id);
    tu_claim_insert(id[1], "running", "1 hour", "a-lost-message");
    /* A first delivery that dies without a trace (visibility 0: back at once). */
    assert_int_equal(tu_queue_receive(&q, 10, 0, 1, NULL), 2);
    struct tu_daemon *d = start();
    for (int i = 0; i < 2; i++)
        assert_true(tu_wait_status(id[i], "FAILURE", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tu_run_starts(id[i]), 0);
        assert_true(tu_run_event_has(id[i], "gave up after 2 deliveries"));
        assert_true(tu_eq_free(tu_claim_col(id[i], "outcome"), "gave_up"));
    }
    stop(d);
}

/* §1.5: rejects are deleted without touching the database. */
static void test_rejects(void **state)
{
    char ghost[37];
    tu_queue_send(&q, "{not json", NULL, 0);
    tu_queue_send(&q,
                  "{\"task_id\": \"x\", \"task_name\": \"execute_plan\", \"labels\": {}, "
                  "\"labels_types\": null, \"args\": [], \"kwargs\": {}}",
                  NULL, 0);
    /* A well-formed message for a run that does not exist (its row is deleted). */
    tu_run_new(ghost, "STARTING", "success");
    char *body = tu_run_envelope(ghost);
    const char *p[] = {ghost};
    PQclear(tu_pg_exec("DELETE FROM runs WHERE run_id = $1", 1, p));
    tu_queue_send(&q, body, NULL, 0);
    free(body);
    struct tu_daemon *d = start();
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    wait_log(d, "rejected message: ", 3);
    assert_true(tu_daemon_log_has(d, "rejected message: bad_json"));
    assert_true(tu_daemon_log_has(d, "rejected message: unsupported_task"));
    assert_true(tu_daemon_log_has(d, "rejected message: unknown_run"));
    assert_false(tu_daemon_log_has(d, "execute_plan")); /* never the body */
    assert_null(tu_claim_col(ghost, "state"));
    stop(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_terminal_skip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_execute_fresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_execute_fresh_moto, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_of_live_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defer_owned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_started_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canceling_unowned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_give_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
