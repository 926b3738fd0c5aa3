/* notify: the exact datagrams on a path socket and an abstract one, WATCHDOG_USEC/WATCHDOG_PID
 * parsing, and the loop watchdog (pings while the loop turns, none while the failpoint wedges
 * it). A receiver thread timestamps every datagram as it arrives. */
#include "testutil.h"

#include "dsw/failpoint.h"
#include "dsw/notify.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_MSGS 256

struct collector {
    int fd;
    pthread_t thread;
    atomic_int stop;
    pthread_mutex_t mu;
    size_t n;
    char *msgs[MAX_MSGS];
    uint64_t at_ns[MAX_MSGS];
    char *dir;
};

static void *collect(void *arg)
{
    struct collector *c = arg;
    while (!atomic_load(&c->stop)) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        char buf[4096];
        ssize_t r = recv(c->fd, buf, sizeof(buf) - 1, 0);
        uint64_t now = dsw_now_ns();
        if (r < 0)
            continue;
        buf[r] = '\0';
        pthread_mutex_lock(&c->mu);
        if (c->n < MAX_MSGS) {
            c->msgs[c->n] = strdup(buf);
            c->at_ns[c->n++] = now;
        }
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

/* Bind a receiver at NOTIFY_SOCKET: a file in a fresh directory, or an abstract name. */
static void collector_start(struct collector *c, int abstract)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    c->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    int big = 1 << 20;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char env[sizeof(sa.sun_path)];
    socklen_t len;
    if (abstract) {
        snprintf(env, sizeof(env), "@dsw-test-notify-%d", (int)getpid());
        size_t n = strlen(env);
        memcpy(sa.sun_path + 1, env + 1, n - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        c->dir = tu_tmpdir();
        snprintf(env, sizeof(env), "%s/notify", c->dir);
        strcpy(sa.sun_path, env);
        len = (socklen_t)sizeof(sa);
    }
    assert_int_equal(bind(c->fd, (struct sockaddr *)&sa, len), 0);
    setenv("NOTIFY_SOCKET", env, 1);
    assert_int_equal(pthread_create(&c->thread, NULL, collect, c), 0);
}

/* Wait until at least n datagrams arrived (or 2 s). */
static size_t collector_wait(struct collector *c, size_t n)
{
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&c->mu);
        size_t have = c->n;
        pthread_mutex_unlock(&c->mu);
        if (have >= n)
            return have;
        usleep(10000);
    }
    return c->n;
}

static void collector_stop(struct collector *c)
{
    atomic_store(&c->stop, 1);
    pthread_join(c->thread, NULL);
    close(c->fd);
    for (size_t i = 0; i < c->n; i++)
        free(c->msgs[i]);
    if (c->dir) {
        tu_rm_rf(c->dir);
        free(c->dir);
    }
    pthread_mutex_destroy(&c->mu);
    unsetenv("NOTIFY_SOCKET");
}

static void check_messages(int abstract)
{
    struct collector c;
    collector_start(&c, abstract);
    assert_true(dsw_notify_enabled());
    assert_int_equal(dsw_notify_ready(), 0);
    assert_int_equal(dsw_notify_status("running %d/%d,\nqueue ok", 3, 8), 0);
    assert_int_equal(dsw_notify_watchdog(), 0);
    assert_int_equal(dsw_notify_extend_timeout(330000000u), 0);
    assert_int_equal(dsw_notify_send("STATUS=draining\nSTOPPING=1"), 0);
    assert_int_equal(dsw_notify_stopping(), 0);
    assert_int_equal(collector_wait(&c, 6), 6);
    assert_string_equal(c.msgs[0], "READY=1");
    assert_string_equal(c.msgs[1], "STATUS=running 3/8, queue ok");
    assert_string_equal(c.msgs[2], "WATCHDOG=1");
    assert_string_equal(c.msgs[3], "EXTEND_TIMEOUT_USEC=330000000");
    assert_string_equal(c.msgs[4], "STATUS=draining\nSTOPPING=1");
    assert_string_equal(c.msgs[5], "STOPPING=1");
    collector_stop(&c);
}

static void test_path_socket(void **state)
{
    check_messages(0);
}

static void test_abstract_socket(void **state)
{
    check_messages(1);
}

static void test_status_is_capped(void **state)
{
    struct collector c;
    collector_start(&c, 1);
    char big[1000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(dsw_notify_status("%s", big), 0);
    assert_int_equal(collector_wait(&c, 1), 1);
    assert_int_equal(strlen(c.msgs[0]), strlen("STATUS=") + 200);
    collector_stop(&c);
}

static void test_unset_and_malformed(void **state)
{
    unsetenv("NOTIFY_SOCKET");
    assert_false(dsw_notify_enabled());
    assert_int_equal(dsw_notify_ready(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 0); /* no socket, no watchdog */
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_false(dsw_notify_enabled());
    assert_int_equal(dsw_notify_ready(), -EINVAL);
    setenv("NOTIFY_SOCKET", "@", 1);
    assert_int_equal(dsw_notify_ready(), -EINVAL);
    /* Nobody listening: the errno of sendto comes back, nothing blocks. */
    setenv("NOTIFY_SOCKET", "/nonexistent/dsw-notify", 1);
    assert_int_equal(dsw_notify_ready(), -ENOENT);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
}

static void test_watchdog_env(void **state)
{
    char pid[32];
    setenv("NOTIFY_SOCKET", "@dsw-test-unused", 1);
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 15000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 15000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_PID", "12x", 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 0);
    unsetenv("WATCHDOG_PID");
    const char *bad[] = {"", "0", "-5", "30s", " 30", "99999999999999999999999"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++) {
        setenv("WATCHDOG_USEC", bad[i], 1);
        assert_int_equal(dsw_notify_watchdog_interval_ms(), 0);
    }
    setenv("WATCHDOG_USEC", "1", 1);
    assert_int_equal(dsw_notify_watchdog_interval_ms(), 1);
    unsetenv("WATCHDOG_USEC");
    unsetenv("NOTIFY_SOCKET");
}

static int never(void *arg)
{
    return 0;
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* READY, then the watchdog's pings while the loop runs, then STOPPING. */
static void test_watchdog_sequence(void **state)
{
    struct collector c;
    collector_start(&c, 0);
    setenv("WATCHDOG_USEC", "100000", 1); /* 50 ms pings */
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct dsw_watchdog *w;
    assert_int_equal(dsw_watchdog_init(&w, &loop, 0), 0);
    assert_int_equal(dsw_watchdog_interval_ms(w), 50);
    assert_int_equal(dsw_notify_ready(), 0);
    tu_run_until(&loop, never, NULL, 330);
    struct dsw_watchdog_stats st;
    dsw_watchdog_stats(w, &st);
    int closed = 0;
    dsw_watchdog_close(w, on_closed, &closed);
    assert_int_equal(dsw_notify_stopping(), 0);
    tu_loop_close(&loop);
    assert_int_equal(closed, 1);
    assert_true(st.pings >= 2 && st.pings <= 7); /* 6 on an idle machine */
    assert_int_equal(st.skipped, 0);
    size_t n = collector_wait(&c, st.pings + 2);
    assert_int_equal(n, st.pings + 2);
    assert_string_equal(c.msgs[0], "READY=1");
    for (size_t i = 1; i + 1 < n; i++)
        assert_string_equal(c.msgs[i], "WATCHDOG=1");
    assert_string_equal(c.msgs[n - 1], "STOPPING=1");
    unsetenv("WATCHDOG_USEC");
    collector_stop(&c);
}

/* No watchdog configured: nothing is sent, closing still works. */
static void test_watchdog_inactive(void **state)
{
    struct collector c;
    collector_start(&c, 1);
    unsetenv("WATCHDOG_USEC");
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct dsw_watchdog *w;
    assert_int_equal(dsw_watchdog_init(&w, &loop, 0), 0);
    assert_int_equal(dsw_watchdog_interval_ms(w), 0);
    tu_run_until(&loop, never, NULL, 100);
    int closed = 0;
    dsw_watchdog_close(w, on_closed, &closed);
    tu_loop_close(&loop);
    assert_int_equal(closed, 1);
    /* Positive control: a datagram sent now on the same path arrives, and it is the first one.
     * Datagrams reach the socket in the order they were sent, so a ping the watchdog had sent
     * would be ahead of it. */
    assert_int_equal(dsw_notify_send("STATUS=control"), 0);
    assert_int_equal(collector_wait(&c, 1), 1);
    assert_string_equal(c.msgs[0], "STATUS=control");
    collector_stop(&c);
}

#ifdef DSW_FAILPOINTS
/* The failpoint blocks the loop for 600 ms: the 50 ms pings stop for that long and resume. */
static void test_watchdog_wedged(void **state)
{
    struct collector c;
    collector_start(&c, 1);
    setenv("WATCHDOG_USEC", "100000", 1);
    assert_int_equal(dsw_failpoint_setup("watchdog_wedge=sleep:600@6"), 0); /* ~300 ms in */
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct dsw_watchdog *w;
    assert_int_equal(dsw_watchdog_init(&w, &loop, 0), 0);
    tu_run_until(&loop, never, NULL, 1300);
    struct dsw_watchdog_stats st;
    dsw_watchdog_stats(w, &st);
    dsw_watchdog_close(w, NULL, NULL);
    tu_loop_close(&loop);
    assert_int_equal(dsw_failpoint_setup(NULL), 0);
    collector_wait(&c, st.pings);
    assert_true(st.wedge_start_ns > 0);
    assert_true(st.wedge_end_ns - st.wedge_start_ns >= 600000000u);

    size_t before = 0, during = 0, after = 0;
    uint64_t max_gap = 0;
    pthread_mutex_lock(&c.mu);
    assert_int_equal(c.n, st.pings);
    for (size_t i = 0; i < c.n; i++) {
        assert_string_equal(c.msgs[i], "WATCHDOG=1");
        /* A ping sent just before the wedge may be received a little after its start (the
         * receiver thread's wakeup); 100 ms of slack still leaves 500 ms (10 intervals). */
        if (c.at_ns[i] < st.wedge_start_ns + 100000000u)
            before++;
        else if (c.at_ns[i] < st.wedge_end_ns)
            during++;
        else
            after++;
        if (i > 0 && c.at_ns[i] - c.at_ns[i - 1] > max_gap)
            max_gap = c.at_ns[i] - c.at_ns[i - 1];
    }
    pthread_mutex_unlock(&c.mu);
    print_message("pings before %zu, during %zu, after %zu, longest gap %llu ms\n", before, during,
                  after, (unsigned long long)(max_gap / 1000000u));
    assert_true(before >= 2);
    assert_int_equal(during, 0);
    assert_true(after >= 2);
    assert_true(max_gap >= 450000000u);
    unsetenv("WATCHDOG_USEC");
    collector_stop(&c);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_socket),       cmocka_unit_test(test_abstract_socket),
        cmocka_unit_test(test_status_is_capped),  cmocka_unit_test(test_unset_and_malformed),
        cmocka_unit_test(test_watchdog_env),      cmocka_unit_test(test_watchdog_sequence),
        cmocka_unit_test(test_watchdog_inactive),
#ifdef DSW_FAILPOINTS
        cmocka_unit_test(test_watchdog_wedged),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
