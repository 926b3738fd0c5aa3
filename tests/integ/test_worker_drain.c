/* Drain (SPEC §7): SIGTERM with runs in flight and a message received but not yet claimed (its
 * claim is held up by a test transaction holding the same run_id): the unclaimed message is
 * visible again as soon as its claim resolves, one run finishes on its own, the other is
 * terminated at runs.drain_timeout, both outcomes are recorded and the daemon exits 0. A second
 * SIGTERM skips the wait. A drain also ends within its bounds when the queue endpoint is dead
 * (a closed port) or answers nothing (a listener that never accepts), and when the queue hangs
 * while a run is in flight (the final delete is bounded). Runs in a database of its
 * own (it looks at pg_stat_activity). */
#include "testutil.h"

#include "dsw/pipeline.h"
#include "dsw/util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
    assert_true(t_exit - t0 < 4000 + 1000 + tu_slack_ms());
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
    assert_true(dsw_now_ms() - t0 < tu_slack_ms()); /* not the 60 s drain */
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

/* A forwarder to the queue server that can go silent: from then on it forwards nothing either
 * way and answers nothing, but keeps every connection open (a queue endpoint that hangs). */
#define FW_MAX 32
static struct {
    int lfd, target, n;
    int fd[2 * FW_MAX]; /* pairs: fd[2k] from the daemon, fd[2k + 1] to the server */
    atomic_bool silent, stop;
    pthread_t thread;
} fw;

static void fw_accept(void)
{
    int c = accept(fw.lfd, NULL, NULL), t = -1;
    if (c < 0)
        return;
    if (!atomic_load(&fw.silent) && fw.n < 2 * FW_MAX) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons((uint16_t)fw.target)};
        t = socket(AF_INET, SOCK_STREAM, 0);
        if (t >= 0 && connect(t, (struct sockaddr *)&a, sizeof(a)) == 0) {
            fw.fd[fw.n++] = c;
            fw.fd[fw.n++] = t;
            return;
        }
    }
    if (t >= 0)
        close(t);
    if (!atomic_load(&fw.silent))
        close(c); /* silent: c is leaked on purpose, open and unanswered until the test ends */
}

static void *fw_main(void *arg)
{
    char buf[65536];
    while (!atomic_load(&fw.stop)) {
        struct pollfd p[1 + 2 * FW_MAX] = {{.fd = fw.lfd, .events = POLLIN}};
        int n = atomic_load(&fw.silent) ? 0 : fw.n;
        for (int i = 0; i < n; i++)
            p[1 + i] = (struct pollfd){.fd = fw.fd[i], .events = POLLIN};
        if (poll(p, (nfds_t)(1 + n), 50) <= 0)
            continue;
        if (p[0].revents)
            fw_accept();
        for (int i = 0; i < n && !atomic_load(&fw.silent); i++) {
            if (!p[1 + i].revents)
                continue;
            ssize_t k = read(fw.fd[i], buf, sizeof(buf));
            if (k > 0 && write(fw.fd[i ^ 1], buf, (size_t)k) == k)
                continue;
            shutdown(fw.fd[i ^ 1], SHUT_RDWR); /* one side closed: close the other (kept) */
        }
    }
    return arg;
}

static int fw_start(const char *endpoint)
{
    const char *colon = strrchr(endpoint, ':');
    assert_non_null(colon);
    fw.target = atoi(colon + 1);
    fw.n = 0;
    atomic_store(&fw.silent, false);
    atomic_store(&fw.stop, false);
    int port = loopback_port(true, &fw.lfd);
    assert_int_equal(pthread_create(&fw.thread, NULL, fw_main, NULL), 0);
    return port;
}

static void fw_stop(void)
{
    atomic_store(&fw.stop, true);
    pthread_join(fw.thread, NULL);
    for (int i = 0; i < fw.n; i++)
        close(fw.fd[i]);
    close(fw.lfd);
}

/* The queue hangs while a run is in flight and SIGTERM arrives: the run finishes and is
 * recorded, the delete that follows gets DSW_PIPELINE_FINAL_CALL_MS (the HTTP client alone
 * would wait 15 s an attempt, five attempts), the receive in flight wait_time + 2 s; then the
 * daemon exits 0. The message stays in the queue: its next delivery finds the run finished. */
static void test_drain_bounds_final_calls(void **state)
{
    char id[37];
    int port = fw_start(q.endpoint);
    tu_env_set(&env, "DSW_QUEUE_ENDPOINT", "http://127.0.0.1:%d", port);
    tu_env_set(&env, "DSW_RUNS_DRAIN_TIMEOUT", "10s");
    tu_run_new(id, "STARTING", "sleep:2");
    send_run(id);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    atomic_store(&fw.silent, true);
    uint64_t t0 = dsw_now_ms();
    tu_daemon_signal(d, SIGTERM);
    int rc = tu_daemon_wait(d, 2000 + DSW_PIPELINE_FINAL_CALL_MS + 15000);
    uint64_t took = dsw_now_ms() - t0;
    fprintf(stderr,
            "drain with the queue hanging: exit %d after %llu ms (final call bound %d ms)\n", rc,
            (unsigned long long)took, DSW_PIPELINE_FINAL_CALL_MS);
    if (rc != 0)
        tu_daemons_dump();
    fw_stop();
    assert_int_equal(rc, 0);
    assert_true(took < 2000 + DSW_PIPELINE_FINAL_CALL_MS + tu_slack_ms());
    assert_true(tu_eq_free(tu_run_status(id), "SUCCESS"));
    assert_true(tu_eq_free(tu_claim_col(id, "state"), "done"));
    assert_true(tu_daemon_log_has(d, "giving up on the message"));
    assert_false(tu_queue_empty(&q));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_sigterm_skips_the_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_queue_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_bounds_final_calls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
