/* Exactly once: three daemons on one fauxqs queue, 200 runs, every message sent twice: every
 * run is executed by exactly one child (counted in the fake's child_starts) and every message
 * is gone at the end. */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNS    200
#define DAEMONS 3

TU_WORKER_FIXTURE(false)

static void test_exactly_once(void **state)
{
    static char ids[RUNS][37];
    char *arr = dsw_xmalloc(RUNS * 38 + 3), *o = arr;
    struct tu_daemon *d[DAEMONS];
    /* A lease of 5 s refreshed every second: two cores shared with other tests can delay a
     * heartbeat past the 2 s the other tests use, which would be a legitimate takeover. */
    tu_env_set(&env, "DSW_CLAIMS_TTL", "5s");
    tu_env_set(&env, "DSW_CLAIMS_HEARTBEAT", "1s");
    tu_env_set(&env, "DSW_RUNS_MAX_CONCURRENT", "6");
    tu_env_set(&env, "DSW_LOG_LEVEL", "warn");
    *o++ = '{';
    for (int i = 0; i < RUNS; i++) {
        tu_run_new(ids[i], "STARTING", "success");
        o += sprintf(o, "%s%s", i ? "," : "", ids[i]);
    }
    *o++ = '}';
    *o = '\0';
    for (int i = 0; i < DAEMONS; i++)
        d[i] = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    uint64_t t0 = dsw_now_ms();
    /* Both copies of a run in one batch, so they are often received together. */
    for (int i = 0; i < RUNS; i += 5) {
        char *bodies[10];
        for (int k = 0; k < 5; k++)
            bodies[2 * k] = bodies[2 * k + 1] = tu_run_envelope(ids[i + k]);
        tu_queue_send_batch(&q, (const char *const *)bodies, 10);
        for (int k = 0; k < 5; k++)
            free(bodies[2 * k]);
    }
    uint64_t t_sent = dsw_now_ms();
    char want[16];
    snprintf(want, sizeof(want), "%d", RUNS);
    assert_true(tu_wait_sql("SELECT count(*) FROM runs WHERE run_id = ANY($1::text[]) AND "
                            "status = 'SUCCESS'",
                            arr, want, 120000));
    uint64_t t_done = dsw_now_ms();
    assert_true(tu_wait_queue_empty(&q, 60000));
    uint64_t t_empty = dsw_now_ms();
    const char *p[] = {arr};
    long long starts = tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker_test.child_starts "
                                "WHERE run_id = ANY($1::text[])",
                                1, p);
    long long most = tu_pg_ll("SELECT max(n) FROM (SELECT count(*) AS n FROM "
                              "dagster_sqs_worker_test.child_starts WHERE run_id = ANY($1::text[]) "
                              "GROUP BY run_id) s",
                              1, p);
    long long failures = tu_pg_ll("SELECT count(*) FROM event_logs WHERE run_id = ANY($1::text[]) "
                                  "AND dagster_event_type = 'PIPELINE_FAILURE'",
                                  1, p);
    long long done = tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE "
                              "run_id = ANY($1::text[]) AND state = 'done' AND attempt = 1",
                              1, p);
    fprintf(stderr,
            "exactly once: %d runs, %d messages (each sent twice), %lld child starts (max %lld "
            "per run), %lld failures; sent in %.1f s, all SUCCESS after %.1f s, queue empty "
            "after %.1f s\n",
            RUNS, 2 * RUNS, starts, most, failures, (double)(t_sent - t0) / 1000.0,
            (double)(t_done - t0) / 1000.0, (double)(t_empty - t0) / 1000.0);
    assert_int_equal(starts, RUNS);
    assert_int_equal(most, 1);
    assert_int_equal(failures, 0);
    assert_int_equal(done, RUNS);
    for (int i = 0; i < DAEMONS; i++) {
        tu_daemon_signal(d[i], SIGTERM);
        assert_int_equal(tu_daemon_wait(d[i], 30000), 0);
    }
    free(arr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exactly_once, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
