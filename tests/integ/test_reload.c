/* SIGHUP (SPEC §7, README "Signals"): the daemon re-reads its configuration file and applies
 * the reloadable keys, log.level and runs.max_concurrent, while runs are in flight; a file that
 * no longer parses is refused with one error line and the daemon carries on with what it had.
 * Each test in a database of its own (it counts every running claim). */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAIT_MS 30000
#define RUN     "sleep:6"

TU_WORKER_FIXTURE(true)

static char conf_path[256];

/* Keys come from the file here: the fixture's environment must not override them. */
static void env_unset(struct tu_env *e, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], name, nl) == 0 && e->v[i][nl] == '=') {
            free(e->v[i]);
            memmove(&e->v[i], &e->v[i + 1], (e->n - i) * sizeof(char *)); /* the NULL too */
            e->n--;
            return;
        }
    }
}

static void write_conf(int slots, const char *level)
{
    char text[256];
    snprintf(text, sizeof(text), "[runs]\nmax_concurrent = %d\n\n[log]\nlevel = %s\n", slots,
             level);
    tu_write_file(conf_path, text, 0600);
}

static int http_port;

/* A loopback port nobody listens on now (the kernel's pick for a socket closed at once). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* GET /healthz; whether the answer was a 200. The daemon logs each request at debug. */
static bool healthz(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    const char req[] = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_int_equal(write(fd, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
    char buf[512] = "";
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
        n += (size_t)r;
    close(fd);
    return strncmp(buf, "HTTP/1.1 200", 12) == 0 || strncmp(buf, "HTTP/1.0 200", 12) == 0;
}

static struct tu_daemon *start(int slots, const char *level)
{
    http_port = free_port();
    tu_env_set(&env, "DSW_HTTP_LISTEN", "127.0.0.1:%d", http_port);
    snprintf(conf_path, sizeof(conf_path), "/tmp/dsw-reload-%d.conf", (int)getpid());
    env_unset(&env, "DSW_RUNS_MAX_CONCURRENT");
    env_unset(&env, "DSW_LOG_LEVEL");
    write_conf(slots, level);
    struct tu_daemon *d =
        tu_daemon_start(&env, (const char *const[]){"-c", conf_path, "run", NULL});
    assert_true(tu_daemon_wait_ready(d, WAIT_MS));
    return d;
}

static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
    unlink(conf_path);
}

static long long running(void)
{
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE state = 'running'", 0,
                    NULL);
}

static long long starts(void)
{
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker_test.child_starts", 0, NULL);
}

/* One run in flight whose lease has been renewed for a second: the daemon has had time to
 * take more messages, had it had the slots. */
static bool one_running_a_while(void *arg)
{
    return running() == 1 &&
           tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE state = 'running' "
                    "AND heartbeat_at > claimed_at + interval '1 second'",
                    0, NULL) == 1;
}

static bool three_running(void *arg)
{
    return running() == 3;
}

static void test_sighup_applies_slots_and_level(void **state)
{
    struct tu_daemon *d = start(1, "info");
    char id[3][37];
    for (int i = 0; i < 3; i++) {
        tu_run_new(id[i], "STARTING", RUN);
        tu_send_run(&q, id[i], NULL, 0);
    }
    assert_true(tu_wait(one_running_a_while, NULL, WAIT_MS));
    assert_int_equal(starts(), 1);
    assert_true(healthz());
    assert_false(tu_daemon_log_has(d, "httpd: GET /healthz"));

    write_conf(3, "debug");
    tu_daemon_signal(d, SIGHUP);
    assert_true(tu_wait(three_running, NULL, WAIT_MS));
    assert_true(
        tu_daemon_log_has(d, "SIGHUP: reloaded log.level and runs.max_concurrent (3 slots)"));
    assert_true(healthz()); /* answered after its debug line was written */
    assert_true(tu_daemon_log_has(d, "httpd: GET /healthz"));
    for (int i = 0; i < 3; i++)
        assert_true(tu_wait_status(id[i], "SUCCESS", WAIT_MS));
    stop(d);
}

static bool refused(void *arg)
{
    return tu_daemon_log_has(arg, "SIGHUP: configuration not reloaded");
}

static void test_sighup_with_a_bad_file_keeps_the_old(void **state)
{
    struct tu_daemon *d = start(2, "info");
    tu_write_file(conf_path, "[runs]\nmax_concurrent = lots\n", 0600);
    tu_daemon_signal(d, SIGHUP);
    assert_true(tu_wait(refused, d, WAIT_MS));
    assert_true(tu_daemon_log_has(d, "max_concurrent"));
    char id[37];
    tu_run_new(id, "STARTING", "success");
    tu_send_run(&q, id, NULL, 0);
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(healthz());
    assert_false(tu_daemon_log_has(d, "httpd: GET /healthz")); /* still at info */
    stop(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sighup_applies_slots_and_level, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_with_a_bad_file_keeps_the_old, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
