/* Drain (SPEC §7): SIGTERM with runs in flight and a message received but not yet claimed (its
 * claim is held up by a test transaction holding the same run_id): the unclaimed message is
 * visible again as soon as its claim resolves, one run finishes on its own, the other is
 * terminated at runs.drain_timeout, both outcomes are recorded and the daemon exits 0. A second
 * SIGTERM skips the wait. A drain also ends within its bounds when the queue endpoint is dead
 * (a closed port) or answers nothing (a listener that never accepts). Runs in a database of its
 * own (it looks at pg_stat_activity). */
#include "testutil.h"

#include "dsw/util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAIT_MS 30000

static struct tu_queue q;
static struct tu_env env;

static int setup(void **state)
{
    tu_worker_setup(&q, &env, true);
    tu_env_set(&env, "DSW_RUNS_DRAIN_TIMEOUT", "4s");
    return 0;
}

static int teardown(void **state)
{
    PQclear(PQexec(tu_pg(), "ROLLBACK"));
    tu_worker_teardown(&env);
    return 0;
}

static void send_run(const char *id)
{
    tu_send_run(&q, id, NULL, 0);
}

static bool claim_blocked(void *arg)
{
    return tu_pg_ll("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'dagster-sqs-worker' AND wait_event_type = 'Lock'",
                    0, NULL) > 0;
}

static bool visible_again(void *arg)
{
    long vis, inflight;
    tu_queue_counts(arg, &vis, &inflight);
    if (getenv("DSW_TEST_VERBOSE"))
        fprintf(stderr, "counts %ld %ld\n", vis, inflight);
    return vis == 1;
}

static void test_drain(void **state)
{
    char fin[37], slow[37], held[37];
    /* Three slots for three runs: no long poll is pending at SIGTERM. A poll the daemon aborts
     * stays alive in fauxqs for its wait time and swallows the message released right after
     * (it comes back only after the queue's visibility timeout). */
    tu_env_set(&env, "DSW_RUNS_MAX_CONCURRENT", "3");
    tu_run_new(fin, "STARTING", "sleep:2");
    tu_run_new(slow, "STARTING", "sleep:60");
    tu_run_new(held, "STARTING", "success");
    send_run(fin);
    send_run(slow);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(fin, "STARTED", WAIT_MS));
    assert_true(tu_wait_status(slow, "STARTED", WAIT_MS));
    /* An uncommitted claim row for the third run: the daemon's claim waits on it. */
    PQclear(tu_pg_exec("BEGIN", 0, NULL));
    tu_claim_insert(held, "claimed", "0", "held-by-the-test");
    send_run(held);
    assert_true(tu_wait(claim_blocked, NULL, WAIT_MS));
    uint64_t t0 = dsw_now_ms();
    tu_daemon_signal(d, SIGTERM);
    struct tu_daemon *dd = d;
    while (!tu_daemon_log_has(dd, "SIGTERM: draining"))
        assert_int_equal(tu_daemon_wait(dd, 10), -1);
    PQclear(tu_pg_exec("ROLLBACK", 0, NULL));
    /* The claim resolves (won, then released unused): the message is back at once. */
    assert_true(tu_wait(visible_again, &q, 5000));
    uint64_t t_back = dsw_now_ms();
    int rc = tu_daemon_wait(d, WAIT_MS);
    uint64_t t_exit = dsw_now_ms();
    fprintf(stderr,
            "drain: unclaimed message visible %llu ms after SIGTERM, exit %d after %llu ms"
            " (drain_timeout 4000 + kill_grace 1000)\n",
            (unsigned long long)(t_back - t0), rc, (unsigned long long)(t_exit - t0));
    if (rc != 0)
        tu_daemons_dump();
    assert_int_equal(rc, 0);
    assert_true(t_exit - t0 < 4000 + 1000 + 2000);
    /* The run that finished by itself, the one terminated at the deadline, the one released. */
    assert_true(tu_eq_free(tu_run_status(fin), "SUCCESS"));
    assert_true(tu_eq_free(tu_claim_col(fin, "state"), "done"));
    assert_true(tu_eq_free(tu_run_status(slow), "FAILURE"));
    assert_true(tu_eq_free(tu_claim_col(slow, "state"), "done"));
    assert_true(tu_eq_free(tu_claim_col(slow, "outcome"), "drained"));
    assert_true(tu_eq_free(tu_run_status(held), "STARTING"));
    assert_null(tu_claim_col(held, "state"));
    assert_int_equal(tu_run_starts(held), 0);
    long vis, inflight;
    tu_queue_counts(&q, &vis, &inflight);
    assert_int_equal(vis, 1); /* only the released one is left */
    assert_int_equal(inflight, 0);
    assert_true(tu_daemon_log_has(d, "(released)"));
}

static void test_second_sigterm_skips_the_wait(void **state)
{
    char id[37];
    tu_env_set(&env, "DSW_RUNS_DRAIN_TIMEOUT", "60s");
    tu_run_new(id, "STARTING", "sleep:60");
    send_run(id);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    tu_daemon_signal(d, SIGTERM);
    while (!tu_daemon_log_has(d, "SIGTERM: draining"))
        assert_int_equal(tu_daemon_wait(d, 10), -1);
    uint64_t t0 = dsw_now_ms();
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
    assert_true(dsw_now_ms() - t0 < 5000);
    assert_true(tu_eq_free(tu_claim_col(id, "outcome"), "drained"));
    assert_true(tu_eq_free(tu_run_status(id), "FAILURE"));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
}

/* A TCP socket on a free loopback port, listening (backlog: connections complete, nobody ever
 * accepts or answers) or, when !listening, closed again so that the port refuses. */
static int loopback_port(bool listening, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (listening)
        assert_int_equal(listen(fd, 16), 0);
    else
        close(fd);
    *fd_out = listening ? fd : -1;
    return ntohs(a.sin_port);
}

static bool receive_tried(void *arg)
{
    return tu_daemon_log_has(arg, "receive failed") || tu_daemon_log_has(arg, "ready:");
}

/* SIGTERM while ReceiveMessage cannot succeed: the daemon exits 0 well within runs.drain_timeout
 * + runs.kill_grace (here 2 s + 1 s), instead of retrying the receive for ever. */
static void test_drain_queue_unreachable(void **state)
{
    static const bool listening[] = {false, true};
    for (size_t i = 0; i < DSW_ARRAY_LEN(listening); i++) {
        int fd;
        int port = loopback_port(listening[i], &fd);
        tu_env_set(&env, "DSW_QUEUE_ENDPOINT", "http://127.0.0.1:%d", port);
        tu_env_set(&env, "DSW_RUNS_DRAIN_TIMEOUT", "2s");
        struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
        assert_true(tu_daemon_wait_ready(d, WAIT_MS));
        assert_true(tu_wait(receive_tried, d, WAIT_MS));
        if (!listening[i]) /* refused at once: wait until the failure was reported */
            while (!tu_daemon_log_has(d, "receive failed"))
                assert_int_equal(tu_daemon_wait(d, 10), -1);
        uint64_t t0 = dsw_now_ms();
        tu_daemon_signal(d, SIGTERM);
        int rc = tu_daemon_wait(d, 3 * (2000 + 1000));
        uint64_t took = dsw_now_ms() - t0;
        fprintf(stderr, "drain with the queue %s: exit %d after %llu ms\n",
                listening[i] ? "silent" : "refusing", rc, (unsigned long long)took);
        if (rc != 0)
            tu_daemons_dump();
        assert_int_equal(rc, 0);
        assert_true(tu_daemon_log_has(d, "SIGTERM: draining"));
        if (fd >= 0)
            close(fd);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_sigterm_skips_the_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_queue_unreachable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
