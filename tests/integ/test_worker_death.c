/* Worker death: `kill -9` of a daemon during a run takes its child with it (PR_SET_PDEATHSIG),
 * and another daemon's sweeper makes the run terminal within claims.ttl + claims.sweep; the
 * message, back after its visibility timeout, is then deleted as terminal. Runs in a database
 * of its own: the sweeper takes every stale claim it sees, and other tests make stale claims
 * on purpose. */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 30000

TU_WORKER_FIXTURE(true)

static bool gone(void *arg)
{
    return !tu_pid_alive(*(pid_t *)arg);
}

static void kill9_during(const char *status_after, const char *canceling)
{
    char id[37];
    tu_run_new(id, "STARTING", "sleep:60");
    tu_send_run(&q, id, NULL, 0);
    struct tu_daemon *a = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    const char *p[] = {id};
    pid_t child = (pid_t)tu_pg_ll(
        "SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1", 1, p);
    assert_true(tu_pid_alive(child));
    /* The survivor sweeps every 500 ms with a 2 s ttl. */
    struct tu_env e2 = {0};
    tu_worker_env(&e2, &q);
    tu_env_set(&e2, "DSW_CLAIMS_SWEEP", "500ms");
    struct tu_daemon *b = tu_daemon_start(&e2, (const char *const[]){"run", NULL});
    assert_true(tu_daemon_wait_ready(b, WAIT_MS));
    uint64_t t0 = dsw_now_ms();
    tu_daemon_signal(a, SIGKILL);
    assert_int_equal(tu_daemon_wait(a, WAIT_MS), 128 + SIGKILL);
    /* A cancel asked for after the worker died: nobody is left to terminate the child. */
    if (canceling)
        PQclear(tu_pg_exec("UPDATE runs SET status = 'CANCELING' WHERE run_id = $1", 1, p));
    assert_true(tu_wait(gone, &child, 5000));
    uint64_t t_child = dsw_now_ms();
    assert_true(tu_wait_status(id, status_after, WAIT_MS));
    uint64_t t_terminal = dsw_now_ms();
    fprintf(stderr,
            "worker death: child gone %llu ms after kill -9, run %s after %llu ms "
            "(ttl 2000 + sweep 500)\n",
            (unsigned long long)(t_child - t0), status_after,
            (unsigned long long)(t_terminal - t0));
    /* ttl + sweep, plus one lease interval the dead worker may have refreshed just before. */
    assert_true(t_terminal - t0 < 2000 + 500 + 500 + 1000);
    assert_true(tu_eq_free(tu_claim_col(id, "state"), "done"));
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), canceling ? "canceled" : "lost"));
    assert_int_equal(tu_run_starts(id), 1);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_true(tu_daemon_log_has(b, "(terminal_skip)"));
    tu_daemon_signal(b, SIGTERM);
    assert_int_equal(tu_daemon_wait(b, WAIT_MS), 0);
    tu_env_free(&e2);
}

static void test_kill9_sweeper_fails_run(void **state)
{
    kill9_during("FAILURE", NULL);
    assert_true(tu_pg_ll("SELECT count(*) FROM event_logs WHERE strpos(event, "
                         "'Run worker lost') > 0",
                         0, NULL) == 1);
}

static void test_kill9_sweeper_cancels_canceling_run(void **state)
{
    kill9_during("CANCELED", "yes");
}

/* runs.resume = on on both: the survivor's sweeper closes the dead worker's claim ("lost") and
 * leaves the STARTED run alone (no FAILURE), so that a resume can follow; the message, back after
 * its visibility timeout, resumes the run on the survivor (kind "resume", a second start). */
static void test_kill9_sweeper_leaves_run_for_resume(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", "sleep:4");
    tu_send_run(&q, id, NULL, 0);
    tu_env_set(&env, "DSW_RUNS_RESUME", "on");
    struct tu_daemon *a = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    struct tu_env e2 = {0};
    tu_worker_env(&e2, &q);
    tu_env_set(&e2, "DSW_CLAIMS_SWEEP", "500ms");
    tu_env_set(&e2, "DSW_RUNS_RESUME", "on");
    struct tu_daemon *b = tu_daemon_start(&e2, (const char *const[]){"run", NULL});
    assert_true(tu_daemon_wait_ready(b, WAIT_MS));
    tu_daemon_signal(a, SIGKILL);
    assert_int_equal(tu_daemon_wait(a, WAIT_MS), 128 + SIGKILL);
    assert_true(tu_wait_sql("SELECT outcome FROM dagster_sqs_worker.run_claims WHERE run_id = $1",
                            id, "lost", WAIT_MS));
    /* Logged once the sweep's statement has answered, after the commit seen above. */
    assert_true(tu_daemon_wait_log(b, "left STARTED for a resume", WAIT_MS));
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_pg_ll("SELECT count(*) FROM event_logs WHERE run_id = $1 AND "
                         "dagster_event_type = 'PIPELINE_FAILURE'",
                         1, (const char *const[]){id}) == 0);
    assert_true(tu_eq_free(tu_claim_col(id, "kind"), "resume"));
    /* SUCCESS is the run worker's own write; our exit record commits after it. */
    assert_true(tu_wait_sql("SELECT outcome FROM dagster_sqs_worker.run_claims WHERE run_id = $1",
                            id, "exited", WAIT_MS));
    assert_int_equal(tu_run_starts(id), 2);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    tu_daemon_signal(b, SIGTERM);
    assert_int_equal(tu_daemon_wait(b, WAIT_MS), 0);
    tu_env_free(&e2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill9_sweeper_fails_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_sweeper_cancels_canceling_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_sweeper_leaves_run_for_resume, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
