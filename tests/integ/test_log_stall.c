/* Logging cannot stall the loop: the daemon's stderr is a pipe nobody reads, full before the
 * daemon starts. While runs flood the log (child output is logged line by line), a long run's
 * lease keeps being renewed well past claims.ttl, the flood runs finish, and once the pipe is
 * read the daemon says how many lines it dropped. */
#include "testutil.h"

#include "dsw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 30000

TU_WORKER_FIXTURE(false)

static pid_t daemon_pid;

/* The daemon with stdout and stderr on fd (tu_spawn's go to a file). */
static pid_t start_daemon(int fd)
{
    char *const argv[] = {(char *)tu_need_env("DSW_BIN"), "run", NULL};
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(126);
        execve(argv[0], argv, env.v);
        _exit(127);
    }
    daemon_pid = pid;
    return pid;
}

static int teardown_daemon(void **state)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = 0;
    }
    return teardown(state);
}

struct lease {
    const char *run_id;
    char *first; /* the first heartbeat_at seen */
};

static bool lease_seen(void *arg)
{
    struct lease *l = arg;
    const char *p[] = {l->run_id};
    l->first = tu_pg_str("SELECT heartbeat_at::text FROM dagster_sqs_worker.run_claims "
                         "WHERE run_id = $1 AND state = 'running'",
                         1, p);
    return l->first != NULL;
}

/* Renewed for more than three leases' worth (claims.ttl is 2 s) since first seen. */
static bool lease_renewed(void *arg)
{
    struct lease *l = arg;
    const char *p[] = {l->run_id, l->first};
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE run_id = $1 "
                    "AND heartbeat_at > $2::timestamptz + interval '6 seconds'",
                    2, p) == 1;
}

struct reader {
    int fd;
    char tail[8192];
    size_t len;
    unsigned long long dropped;
};

/* Read what is there; keep a tail; find "dropped N log lines". */
static bool reader_saw_drop(void *arg)
{
    struct reader *r = arg;
    char buf[65536];
    ssize_t n;
    while ((n = read(r->fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (r->len == sizeof(r->tail) - 1) {
                memmove(r->tail, r->tail + 4096, r->len - 4096);
                r->len -= 4096;
            }
            r->tail[r->len++] = buf[i];
        }
        r->tail[r->len] = '\0';
        const char *p = strstr(r->tail, "dropped ");
        if (p && sscanf(p, "dropped %llu log lines", &r->dropped) == 1)
            return true;
    }
    return false;
}

static void test_stalled_stderr_keeps_leases(void **state)
{
    char sleeper[37], flood[3][37];
    tu_run_new(sleeper, "STARTING", "sleep:12");
    tu_send_run(&q, sleeper, NULL, 0);
    for (int i = 0; i < 3; i++) {
        tu_run_new(flood[i], "STARTING", "flood:20000");
        tu_send_run(&q, flood[i], NULL, 0);
    }
    int fds[2];
    tu_full_pipe(fds);
    pid_t pid = start_daemon(fds[1]);
    close(fds[1]);

    struct lease l = {.run_id = sleeper};
    assert_true(tu_wait(lease_seen, &l, WAIT_MS));
    for (int i = 0; i < 3; i++)
        assert_true(tu_wait_status(flood[i], "SUCCESS", WAIT_MS));
    assert_true(tu_wait(lease_renewed, &l, WAIT_MS));
    assert_true(tu_eq_free(tu_run_status(sleeper), "STARTED"));

    struct reader r = {.fd = fds[0]};
    assert_true(tu_wait(reader_saw_drop, &r, WAIT_MS));
    assert_true(r.dropped > 0);
    assert_true(tu_wait_status(sleeper, "SUCCESS", WAIT_MS));
    assert_int_equal(kill(pid, SIGTERM), 0);
    int st = 0;
    pid_t got = 0;
    for (int i = 0; i < WAIT_MS / 20 && (got = waitpid(pid, &st, WNOHANG)) == 0; i++) {
        (void)reader_saw_drop(&r); /* keep reading: its exit flush may wait for the pipe */
        usleep(20000);
    }
    assert_int_equal(got, pid);
    daemon_pid = 0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(l.first);
    close(fds[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stalled_stderr_keeps_leases, setup, teardown_daemon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
