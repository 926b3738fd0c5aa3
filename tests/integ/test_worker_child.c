/* The run worker's behaviours (the fake dagster's dsw/test_behavior tag) under the real daemon:
 * success, failure, crash, exit before starting, killed by SIGKILL, cancellation (also of a
 * child that ignores SIGTERM and of one that leaves a grandchild: nothing survives), a run made
 * terminal by someone else while it runs, the dagster/max_runtime tag, and a stdout flood (the
 * daemon's memory stays bounded). */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 20000

TU_WORKER_FIXTURE(false)

static void send_run(const char *id)
{
    tu_send_run(&q, id, NULL, 0);
}

static struct tu_daemon *start(void)
{
    return tu_daemon_start(&env, (const char *const[]){"run", NULL});
}

static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
}

static bool claim_done(const char *id)
{
    return tu_wait_sql("SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = $1", id,
                       "done", WAIT_MS);
}

/* The pid of the run's (only) fake dagster, once it has started and the run is STARTED. */
static pid_t child_pid(const char *id)
{
    const char *p[] = {id};
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    return (pid_t)tu_pg_ll("SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1",
                           1, p);
}

static void test_exits(void **state)
{
    static const struct {
        const char *behavior, *status, *exit_code;
        long long failures;
        const char *event;
    } c[] = {
        {"success", "SUCCESS", "0", 0, "Run worker exited with code 0"},
        {"failure", "FAILURE", "1", 1, "Run worker exited with code 1"},
        /* os._exit(3): the run is left STARTED with no failure event; the daemon closes it. */
        {"crash", "FAILURE", "3", 1, "This run has been marked as failed: run worker (pid "},
        /* exit 1 before any event (bad args): the run is still STARTING. */
        {"exit_early", "FAILURE", "1", 1, "This run has been marked as failed: run worker (pid "},
    };
    char id[4][37];
    for (int i = 0; i < 4; i++) {
        tu_run_new(id[i], "STARTING", c[i].behavior);
        send_run(id[i]);
    }
    struct tu_daemon *d = start();
    for (int i = 0; i < 4; i++)
        assert_true(claim_done(id[i]));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    for (int i = 0; i < 4; i++) {
        assert_true(tu_eq_free(tu_run_status(id[i]), c[i].status));
        assert_int_equal(tu_run_starts(id[i]), 1);
        assert_true(tu_eq_free(tu_claim_col(id[i], "exit_code"), c[i].exit_code));
        assert_true(tu_eq_free(tu_claim_col(id[i], "term_signal"), "0"));
        assert_int_equal(tu_run_events(id[i], "PIPELINE_FAILURE"), c[i].failures);
        assert_true(tu_run_event_has(id[i], c[i].event));
    }
    /* Only the crash and the early exit needed the daemon's own failure event. */
    assert_true(tu_run_event_has(id[2], "exited with code 3"));
    assert_int_equal(tu_run_events(id[3], "PIPELINE_START"), 0);
    stop(d);
}

static void test_sigkill(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", "sleep:30");
    send_run(id);
    struct tu_daemon *d = start();
    pid_t pid = child_pid(id);
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_true(tu_wait_status(id, "FAILURE", WAIT_MS));
    assert_true(claim_done(id));
    assert_true(tu_eq_free(tu_claim_col(id, "term_signal"), "9"));
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), "signaled"));
    assert_true(tu_run_event_has(id, "Run worker was killed by signal 9"));
    assert_int_equal(tu_run_events(id, "PIPELINE_FAILURE"), 1);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

static void set_status(const char *id, const char *status)
{
    const char *p[] = {id, status};
    PQclear(tu_pg_exec("UPDATE runs SET status = $2 WHERE run_id = $1", 2, p));
}

/* Set CANCELING while it runs; CANCELED within cancel_poll (200 ms) + kill_grace (1 s). */
static uint64_t cancel_run(const char *id, pid_t *pid)
{
    *pid = child_pid(id);
    uint64_t t0 = dsw_now_ms();
    set_status(id, "CANCELING");
    assert_true(tu_wait_status(id, "CANCELED", WAIT_MS));
    uint64_t took = dsw_now_ms() - t0;
    assert_true(claim_done(id));
    return took;
}

static void test_cancel(void **state)
{
    char id[37];
    pid_t pid;
    tu_run_new(id, "STARTING", "sleep:30");
    send_run(id);
    struct tu_daemon *d = start();
    uint64_t took = cancel_run(id, &pid);
    fprintf(stderr, "cancel: CANCELED %llu ms after CANCELING\n", (unsigned long long)took);
    assert_true(took < 200 + 1000 + 1000);
    /* The child handled SIGTERM itself: Dagster's own PIPELINE_CANCELED, exit 0. */
    assert_true(tu_eq_free(tu_claim_col(id, "exit_code"), "0"));
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), "canceled"));
    assert_int_equal(tu_run_events(id, "PIPELINE_CANCELED"), 1);
    assert_false(tu_pid_alive(pid));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

static void test_cancel_ignores_sigterm(void **state)
{
    char id[37];
    pid_t pid;
    tu_run_new(id, "STARTING", "ignore_sigterm:600");
    send_run(id);
    struct tu_daemon *d = start();
    uint64_t took = cancel_run(id, &pid);
    fprintf(stderr, "cancel (SIGTERM ignored): CANCELED %llu ms after CANCELING\n",
            (unsigned long long)took);
    assert_true(took >= 1000); /* SIGKILL only after kill_grace */
    assert_true(took < 200 + 1000 + 1500);
    assert_true(tu_eq_free(tu_claim_col(id, "term_signal"), "9"));
    assert_true(tu_run_event_has(id, "This run has been marked as canceled"));
    assert_false(tu_pid_alive(pid));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

/* Someone else makes the run terminal while the child runs (run monitoring fails it, a user
 * marks it): the child is stopped with the usual escalation (this one ignores SIGTERM, so
 * SIGKILL after kill_grace), its exit is recorded in the claim, and the status that someone
 * set is kept: no PIPELINE_* event, no status write from the daemon. */
static void test_terminal_elsewhere(void **state)
{
    static const char *const statuses[] = {"FAILURE", "SUCCESS"};
    static const char *const ends[] = {"PIPELINE_FAILURE", "PIPELINE_SUCCESS", "PIPELINE_CANCELED"};
    char id[2][37];
    pid_t pid[2];
    for (int i = 0; i < 2; i++) {
        tu_run_new(id[i], "STARTING", "ignore_sigterm:600");
        send_run(id[i]);
    }
    struct tu_daemon *d = start();
    for (int i = 0; i < 2; i++) {
        pid[i] = child_pid(id[i]);
        assert_true(pid[i] > 0);
        set_status(id[i], statuses[i]);
    }
    for (int i = 0; i < 2; i++) {
        assert_true(claim_done(id[i]));
        assert_true(tu_eq_free(tu_claim_col(id[i], "outcome"), "external"));
        assert_true(tu_eq_free(tu_claim_col(id[i], "term_signal"), "9"));
        assert_true(tu_eq_free(tu_run_status(id[i]), statuses[i]));
        for (size_t e = 0; e < DSW_ARRAY_LEN(ends); e++)
            assert_int_equal(tu_run_events(id[i], ends[e]), 0);
        assert_false(tu_run_event_has(id[i], "This run has been marked as"));
        assert_true(tu_run_event_has(id[i], "Run worker was killed by signal 9"));
        assert_false(tu_pid_alive(pid[i]));
    }
    assert_true(tu_daemon_log_has(d, "outside its run worker"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

/* A run worker that lingers after writing its own SUCCESS (a slow atexit hook) is not taken for
 * a run made terminal elsewhere: it exits by itself with code 0 and outcome "exited". The linger
 * (3 s) is well past the wait for an external status (min(kill_grace 1 s, 5 s) + a 200 ms poll). */
static void test_lingers_after_own_outcome(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", "linger:3");
    send_run(id);
    struct tu_daemon *d = start();
    assert_true(claim_done(id));
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), "exited"));
    assert_true(tu_eq_free(tu_claim_col(id, "exit_code"), "0"));
    assert_true(tu_eq_free(tu_run_status(id), "SUCCESS"));
    assert_true(tu_run_event_has(id, "Run worker exited with code 0"));
    assert_false(tu_daemon_log_has(d, "outside its run worker"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

/* The grandchild's pid, from the fake's stderr line in the daemon's log. */
static pid_t grandchild_of(struct tu_daemon *d)
{
    char *log = tu_daemon_log(d), *p = strstr(log, "fake_dagster: grandchild pid ");
    pid_t pid = p ? (pid_t)atoi(p + strlen("fake_dagster: grandchild pid ")) : 0;
    free(log);
    return pid;
}

static bool has_grandchild(void *arg)
{
    return grandchild_of(arg) > 0;
}

/* The child exits on SIGTERM and leaves a grandchild in its group: the group is killed. */
static void test_cancel_grandchild(void **state)
{
    char id[37];
    pid_t pid;
    tu_run_new(id, "STARTING", "grandchild:600");
    send_run(id);
    struct tu_daemon *d = start();
    assert_true(tu_wait(has_grandchild, d, WAIT_MS));
    pid_t gc = grandchild_of(d);
    assert_true(tu_pid_alive(gc));
    (void)cancel_run(id, &pid);
    assert_false(tu_pid_alive(pid));
    assert_false(tu_pid_alive(gc));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

static void test_max_runtime(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", "ignore_sigterm:600");
    const char *p[] = {id};
    PQclear(tu_pg_exec(
        "INSERT INTO run_tags (run_id, key, value) VALUES ($1, 'dagster/max_runtime', '1')", 1, p));
    send_run(id);
    struct tu_daemon *d = start();
    assert_true(tu_wait_status(id, "FAILURE", WAIT_MS));
    assert_true(claim_done(id));
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), "timeout"));
    assert_true(tu_run_event_has(id, "exceeded its maximum runtime"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

struct flood {
    const char *id;
    struct tu_daemon *d;
    long peak_kb;
};

static bool flood_done(void *arg)
{
    struct flood *f = arg;
    long kb = tu_daemon_rss_kb(f->d);
    if (kb > f->peak_kb)
        f->peak_kb = kb;
    return tu_eq_free(tu_claim_col(f->id, "state"), "done");
}

static void test_flood(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", "flood:300000");
    struct tu_daemon *d = start();
    /* The idle daemon's size, then the peak while the child writes ~35 MB to stdout. */
    assert_true(tu_wait_sql("SELECT 1", NULL, "1", WAIT_MS));
    while (!tu_daemon_log_has(d, "ready:"))
        assert_int_equal(tu_daemon_wait(d, 20), -1);
    long base = tu_daemon_rss_kb(d);
    send_run(id);
    struct flood f = {id, d, 0};
    assert_true(tu_wait(flood_done, &f, 60000));
    fprintf(stderr, "flood: daemon RSS %ld KiB idle, %ld KiB peak\n", base, f.peak_kb);
    assert_true(f.peak_kb - base < 32 * 1024);
    assert_true(tu_eq_free(tu_run_status(id), "SUCCESS"));
    assert_true(tu_daemon_log_has(d, "output lines dropped (rate limit)"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    stop(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigkill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_ignores_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_grandchild, setup, teardown),
        cmocka_unit_test_setup_teardown(test_terminal_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lingers_after_own_outcome, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_runtime, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
