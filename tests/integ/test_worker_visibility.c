/* Visibility: a run longer than the queue's visibility timeout (10 s, the minimum the daemon
 * allows) is never redelivered while the daemon's visibility heartbeats work; with them blocked
 * (failpoint visibility_round=fail) the message comes back during the run and
 * the claim alone keeps a second child from starting. Two daemons share each queue. */
#include "testutil.h"

#include "dsw/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 30000
#define RUN     "sleep:13"

TU_WORKER_FIXTURE(false)

static int count(const struct tu_daemon *d, const char *needle)
{
    char *log = tu_daemon_log(d);
    int n = 0;
    for (const char *p = strstr(log, needle); p; p = strstr(p + 1, needle))
        n++;
    free(log);
    return n;
}

static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
}

static void test_heartbeats_keep_it_invisible(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", RUN);
    tu_send_run(&q, id, NULL, 0);
    struct tu_daemon *a = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    struct tu_daemon *b = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    uint64_t t0 = dsw_now_ms();
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    fprintf(stderr, "visibility: run took %.1f s more after the second daemon started\n",
            (double)(dsw_now_ms() - t0) / 1000.0);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_int_equal(tu_run_starts(id), 1);
    /* One delivery in all: the first. */
    assert_int_equal(count(a, "execute request") + count(b, "execute request"), 1);
    assert_int_equal(count(a, "receive count 1"), 1);
    assert_int_equal(count(a, "visibility extension"), 0); /* no failure logged */
    stop(a);
    stop(b);
}

#ifdef DSW_FAILPOINTS /* it arms a failpoint: a release build has none, and no such case */
static void test_blocked_heartbeats_no_second_child(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", RUN);
    tu_send_run(&q, id, NULL, 0);
    struct tu_env blocked = {0};
    tu_worker_env(&blocked, &q);
    tu_env_set(&blocked, "DSW_FAILPOINTS", "visibility_round=fail");
    tu_env_set(&blocked, "DSW_CLAIMS_TTL", "3s");
    tu_env_set(&env, "DSW_CLAIMS_TTL", "3s");
    struct tu_daemon *a = tu_daemon_start(&blocked, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    struct tu_daemon *b = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    int redeliveries = count(a, "receive count 2") + count(b, "receive count 2");
    int deferred = count(a, "(deferred_owned)") + count(b, "(deferred_owned)");
    fprintf(stderr, "blocked heartbeats: %d redelivery, %d deferral(s) to the owner\n",
            redeliveries, deferred);
    assert_true(redeliveries >= 1);
    assert_true(deferred >= 1);
    assert_int_equal(tu_run_starts(id), 1);
    assert_int_equal(tu_run_events(id, "PIPELINE_FAILURE"), 0);
    assert_true(tu_eq_free(tu_claim_col(id, "attempt"), "1"));
    stop(a);
    stop(b);
    tu_env_free(&blocked);
}

/* One daemon, heartbeats blocked: the message comes back to the daemon that holds it. The
 * redelivery defers to the owner and hands it the newest receipt handle (SQS honours only the
 * newest), so the owner's delete after SUCCESS empties the queue. */
static void test_redelivery_refreshes_receipt(void **state)
{
    char id[37];
    tu_run_new(id, "STARTING", RUN);
    tu_send_run(&q, id, NULL, 0);
    tu_env_set(&env, "DSW_FAILPOINTS", "visibility_round=fail");
    tu_env_set(&env, "DSW_CLAIMS_TTL", "3s");
    struct tu_daemon *a = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_true(count(a, "receive count 2") >= 1);
    assert_true(count(a, "receipt_refreshed") >= 1);
    assert_int_equal(count(a, "delete_failed"), 0);
    assert_int_equal(tu_run_starts(id), 1);
    stop(a);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_heartbeats_keep_it_invisible, setup, teardown),
#ifdef DSW_FAILPOINTS
        cmocka_unit_test_setup_teardown(test_blocked_heartbeats_no_second_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redelivery_refreshes_receipt, setup, teardown),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
