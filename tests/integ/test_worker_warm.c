/* Warm runners under the real daemon (issue 10): with runs.warm = 1 and runs.python matching
 * the run's interpreter, the run (or step) is handed to the runner that was started (and had
 * imported its modules) before the message arrived; a run whose interpreter does not match goes
 * cold. (That the request never appears on a command line is checked in tests/unit/test_warm.c:
 * here the stand-in execs the fake dagster with it, as a cold child has it.) */
#include "testutil.h"

#include "dsw/util.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 30000

static struct tu_queue q;
static struct tu_env env;

static int setup(void **state)
{
    tu_worker_setup(&q, &env, false);
    char support[4096];
    snprintf(support, sizeof(support), "%s/tests/support", tu_need_env("DSW_SOURCE_DIR"));
    tu_env_set(&env, "DSW_RUNS_WARM", "1");
    tu_env_set(&env, "DSW_LOG_LEVEL", "debug");
    tu_env_set(&env, "DSW_RUNS_PYTHON", "/usr/bin/python3"); /* the vectors' executable_path */
    tu_env_set(&env, "DSW_RUNS_WARM_IMPORTS", "warm_standin");
    tu_env_set(&env, "DSW_RUNS_WARM_ENTRY", "warm_standin:exec_fake");
    tu_env_set(&env, "PYTHONPATH", "%s", support);
    tu_env_set(&env, "DSW_RUNS_ENV_DSW_FAKE_DAGSTER", "%s",
               tu_need_env("DSW_SUPPORT_fake_dagster"));
    return 0;
}

static int teardown(void **state)
{
    tu_worker_teardown(&env);
    return 0;
}

/* Pids of the daemon's descendants whose command line contains text (at most max): another
 * test's runners, running beside this one, are not counted. */
static size_t pids_with(const struct tu_daemon *daemon, const char *text, long *pids, size_t max)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t found = 0;
    while (d && found < max && (e = readdir(d)) != NULL) {
        char path[300], buf[8192];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++)
            if (buf[i] == '\0')
                buf[i] = ' ';
        buf[n] = '\0';
        if (strstr(buf, text) && tu_pid_descends((pid_t)atol(e->d_name), daemon->pid))
            pids[found++] = atol(e->d_name);
    }
    if (d)
        closedir(d);
    return found;
}

/* The pool logs (at debug) when a runner has imported its modules and said it is ready. */
static bool runner_ready(void *arg)
{
    return tu_daemon_log_has(arg, " ready in ");
}

/* A daemon with its one warm runner ready (that runner's pid in *runner). */
static struct tu_daemon *start_with_runner(long *runner)
{
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_daemon_wait_ready(d, WAIT_MS));
    assert_true(tu_wait(runner_ready, d, WAIT_MS));
    long runners[8];
    assert_int_equal(pids_with(d, "dsw-warm-runner.py", runners, 8), 1);
    *runner = runners[0];
    return d;
}

/* SIGTERM, and the drain ends with exit 0. */
static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
}

static void test_warm_run(void **state)
{
    /* The ready runner exists before the message does. */
    long runner;
    struct tu_daemon *d = start_with_runner(&runner);
    char id[37];
    tu_run_new(id, "STARTING", "success");
    tu_send_run(&q, id, NULL, 0);
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_int_equal(tu_run_starts(id), 1);
    /* The run was executed by that very process (the stand-in execs the fake dagster in it). */
    const char *p[] = {id};
    assert_int_equal(
        tu_pg_ll("SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1", 1, p),
        runner);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    assert_true(tu_daemon_log_has(d, "execute_run, warm"));
    stop(d);
}

/* A step (docs/steps.md §2) is handed to the ready runner as a run is: its execute_step child is
 * that process, and its claim records the exit. */
static void test_warm_step(void **state)
{
    long runner;
    struct tu_daemon *d = start_with_runner(&runner);
    char id[37];
    tu_run_new(id, "STARTED", "success");
    tu_send_step(&q, id, "s1", 0, NULL, 0);
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    const char *p[] = {id};
    assert_true(tu_eq_free(tu_pg_str("SELECT state || ' ' || outcome || ' ' || exit_code FROM "
                                     "dagster_sqs_worker.step_claims WHERE run_id = $1",
                                     1, p),
                           "done exited 0"));
    assert_int_equal(tu_pg_ll("SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE "
                              "run_id = $1 AND argv_kind = 'execute_step' AND step_key = 's1'",
                              1, p),
                     runner);
    assert_true(tu_daemon_log_has(d, "execute_step, warm"));
    stop(d);
}

static bool one_runner(void *arg)
{
    long pids[8];
    return pids_with(arg, "dsw-warm-runner.py", pids, 8) == 1;
}

/* runs.warm is bounded by the free slots: one slot, so one runner at start (not 2), none
 * started while the run holds the slot (the taken runner is the fake dagster now), one again
 * once it ends. */
static void test_warm_bounded_by_slots(void **state)
{
    tu_env_set(&env, "DSW_RUNS_WARM", "2");
    tu_env_set(&env, "DSW_RUNS_MAX_CONCURRENT", "1");
    long runner, pids[8];
    struct tu_daemon *d = start_with_runner(&runner);
    char id[37];
    tu_run_new(id, "STARTING", "sleep:1");
    tu_send_run(&q, id, NULL, 0);
    /* STARTED is written by the child, well after the loop turn a refill would start on. */
    assert_true(tu_wait_status(id, "STARTED", WAIT_MS));
    assert_int_equal(pids_with(d, "dsw-warm-runner.py", pids, 8), 0);
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_wait(one_runner, d, WAIT_MS));
    assert_true(tu_daemon_log_has(d, "execute_run, warm"));
    stop(d);
}

static void test_other_interpreter_goes_cold(void **state)
{
    /* Another name of a real interpreter (the daemon refuses a missing one, 78): not the
     * vectors' /usr/bin/python3, so the run goes cold. */
    tu_env_set(&env, "DSW_RUNS_PYTHON", "/bin/python3");
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_daemon_wait_ready(d, WAIT_MS));
    char id[37];
    tu_run_new(id, "STARTING", "success");
    tu_send_run(&q, id, NULL, 0);
    assert_true(tu_wait_status(id, "SUCCESS", WAIT_MS));
    assert_true(tu_daemon_log_has(d, "execute_run, cold"));
    stop(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_warm_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warm_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warm_bounded_by_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_interpreter_goes_cold, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
