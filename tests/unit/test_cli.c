/* The command line of the real binary: --version, --help, usage errors (64), configuration
 * errors (78) naming file, line and key, and check-config on the shipped file (0). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dir;

static int setup(void **state)
{
    dir = tu_tmpdir();
    /* The suite's own environment must not configure the daemon under test. */
    unsetenv("DSW_QUEUE_URL");
    unsetenv("DAGSTER_TASKIQ_SQS_QUEUE_URL");
    unsetenv("DAGSTER_HOME");
    return 0;
}

static int teardown(void **state)
{
    tu_rm_rf(dir);
    free(dir);
    return 0;
}

static int run(const char *a1, const char *a2, const char *a3, const char *a4, char **out)
{
    char *argv[] = {
        (char *)tu_need_env("DSW_BIN"), (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    return tu_run(argv, NULL, out);
}

static void test_version_and_help(void **state)
{
    char *out;
    assert_int_equal(run("--version", NULL, NULL, NULL, &out), 0);
    assert_non_null(strstr(out, "dagster-sqs-worker " DSW_VERSION));
    free(out);
    assert_int_equal(run("-V", NULL, NULL, NULL, &out), 0);
    free(out);
    assert_int_equal(run("--help", NULL, NULL, NULL, &out), 0);
    const char *commands[] = {"run",         "check-config",   "db-init", "once",
                              "exec FILE|-", "enqueue RUN_ID", "status",  "exit codes"};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        assert_non_null(strstr(out, commands[i]));
    free(out);
}

static void test_usage_errors(void **state)
{
    char *out;
    assert_int_equal(run("frobnicate", NULL, NULL, NULL, &out), 64);
    assert_non_null(strstr(out, "unknown command 'frobnicate'"));
    free(out);
    assert_int_equal(run("--frob", NULL, NULL, NULL, &out), 64);
    free(out);
    assert_int_equal(run("exec", NULL, NULL, NULL, &out), 64);
    free(out);
    assert_int_equal(run("enqueue", "a", "b", NULL, &out), 64);
    free(out);
    assert_int_equal(run("status", "extra", NULL, NULL, &out), 64);
    free(out);
    assert_int_equal(run("--log-level", "loud", "check-config", NULL, &out), 64);
    free(out);
    assert_int_equal(run("run", "--connect", NULL, NULL, &out), 64);
    free(out);
}

static void test_check_config(void **state)
{
    char *out, path[4096];
    snprintf(path, sizeof(path), "%s/conf/worker.conf", tu_need_env("DSW_SOURCE_DIR"));
    assert_int_equal(run("check-config", "-c", path, NULL, &out), 0);
    assert_non_null(strstr(out, "is valid"));
    assert_non_null(strstr(out, "wait_time = 20s"));
    free(out);

    snprintf(path, sizeof(path), "%s/broken.conf", dir);
    tu_write_file(path, "[queue]\nurl = http://x/1/q\n\n[runs]\nkill_grace = 2 weeks\n", 0600);
    assert_int_equal(run("-c", path, "check-config", NULL, &out), 78);
    char want[4200];
    snprintf(want, sizeof(want), "%s:5: runs.kill_grace: '2 weeks' is not valid", path);
    if (!strstr(out, want))
        fail_msg("'%s' lacks '%s'", out, want);
    free(out);

    tu_write_file(path, "[queue]\nurl = http://x/1/q\n", 0666);
    assert_int_equal(run("-c", path, "check-config", NULL, &out), 78);
    assert_non_null(strstr(out, "writable by group or others"));
    free(out);

    snprintf(path, sizeof(path), "%s/absent.conf", dir);
    assert_int_equal(run("-c", path, "check-config", NULL, &out), 78);
    free(out);

    /* Valid syntax but missing what the daemon needs. */
    snprintf(path, sizeof(path), "%s/empty.conf", dir);
    tu_write_file(path, "# nothing\n", 0600);
    assert_int_equal(run("-c", path, "check-config", NULL, &out), 78);
    assert_non_null(strstr(out, "queue.url: is required"));
    free(out);
}

/* Containers: no file at all, everything from the environment. */
static void test_env_only(void **state)
{
    char *out;
    setenv("DSW_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/runs", 1);
    setenv("DSW_POSTGRES_CONNINFO", "host=127.0.0.1 dbname=dagster", 1);
    setenv("DSW_RUNS_DAGSTER_HOME", "/srv/dagster", 1);
    setenv("DSW_LOG_LEVEL", "debug", 1);
    assert_int_equal(run("check-config", NULL, NULL, NULL, &out), 0);
    assert_non_null(strstr(out, "(environment)"));
    assert_non_null(strstr(out, "level = debug"));
    free(out);
    setenv("DSW_CLAIMS_TTL", "0s", 1);
    assert_int_equal(run("check-config", NULL, NULL, NULL, &out), 78);
    assert_non_null(strstr(out, "env:DSW_CLAIMS_TTL: claims.ttl"));
    free(out);
    unsetenv("DSW_CLAIMS_TTL");
    unsetenv("DSW_QUEUE_URL");
    unsetenv("DSW_POSTGRES_CONNINFO");
    unsetenv("DSW_RUNS_DAGSTER_HOME");
    unsetenv("DSW_LOG_LEVEL");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_and_help),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_check_config),
        cmocka_unit_test(test_env_only),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
