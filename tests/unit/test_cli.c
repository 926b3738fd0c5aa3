/* The command line of the real binary: --version, --help and each command's own help, usage
 * errors (64) naming the program, exec's unreadable input (64, before any connection),
 * configuration errors (78) naming file, line and key, misspelt DSW_* variables warned about,
 * check-config of a warm setup, and check-config on the shipped file (0). */
#include "testutil.h"

#include "dsw/util.h"

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
    unsetenv("DSW_RUNS_WARM");
    unsetenv("DSW_RUNS_PYTHON");
    unsetenv("DSW_RUNS_WARM_RUNNER");
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

/* One invocation: its arguments (up to four), the exit code, and what its output says: `want`
 * as a part of it (NULL: anything), or all of it when `exact`. */
struct cli_case {
    const char *argv[4];
    int code;
    const char *want;
    int exact;
};

static void expect_cases(const struct cli_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *out;
        int code = run(c[i].argv[0], c[i].argv[1], c[i].argv[2], c[i].argv[3], &out);
        if (code != c[i].code)
            fail_msg("%s %s: exit %d, not %d: %s", c[i].argv[0], c[i].argv[1] ? c[i].argv[1] : "",
                     code, c[i].code, out);
        if (c[i].want && c[i].exact)
            assert_string_equal(out, c[i].want);
        else if (c[i].want && !strstr(out, c[i].want))
            fail_msg("'%s' lacks '%s'", out, c[i].want);
        free(out);
    }
}

/* What every check-config case here starts from: a queue, a database and a DAGSTER_HOME. */
static void base_env(int set)
{
    static const char *const vars[][2] = {
        {"DSW_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/runs"},
        {"DSW_POSTGRES_CONNINFO", "host=127.0.0.1 dbname=dagster"},
        {"DSW_RUNS_DAGSTER_HOME", "/srv/dagster"},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(vars); i++) {
        if (set)
            setenv(vars[i][0], vars[i][1], 1);
        else
            unsetenv(vars[i][0]);
    }
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

static void expect_in(const char *out, const char *want)
{
    if (!strstr(out, want))
        fail_msg("'%s' lacks '%s'", out, want);
}

/* COMMAND --help (before or after the command, with or without its arguments) is that
 * command's help, not the global one. */
static void test_command_help(void **state)
{
    static const struct {
        const char *cmd, *synopsis, *word;
    } cases[] = {
        {"run", "run\n", "SIGHUP"},
        {"check-config", "check-config [--connect]", "--connect"},
        {"db-init", "db-init\n", "PGPASSFILE"},
        {"once", "once\n", "at most one message"},
        {"exec", "exec FILE|-", "64 when FILE cannot be read"},
        {"enqueue", "enqueue RUN_ID", "NOT_STARTED"},
        {"status", "status\n", "unfinished claims"},
    };
    char *out, want[128];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(want, sizeof(want), "usage: dagster-sqs-worker [global options] %s",
                 cases[i].synopsis);
        assert_int_equal(run(cases[i].cmd, "--help", NULL, NULL, &out), 0);
        expect_in(out, want);
        expect_in(out, cases[i].word);
        expect_in(out, "--config FILE");
        assert_null(strstr(out, "commands ("));
        free(out);
        assert_int_equal(run("-h", cases[i].cmd, NULL, NULL, &out), 0);
        expect_in(out, want);
        free(out);
    }
    /* With the argument it needs, or without it: help wins. */
    assert_int_equal(run("exec", "/no/such/file", "--help", NULL, &out), 0);
    expect_in(out, "exec FILE|-");
    free(out);
    assert_int_equal(run("enqueue", "--help", NULL, NULL, &out), 0);
    expect_in(out, "enqueue RUN_ID");
    free(out);
    /* Global help names every command and points at the per-command help. */
    assert_int_equal(run("--help", NULL, NULL, NULL, &out), 0);
    expect_in(out, "COMMAND --help");
    free(out);
    assert_int_equal(run("frobnicate", "--help", NULL, NULL, &out), 64);
    expect_in(out, "unknown command 'frobnicate'");
    free(out);
}

static void test_usage_errors(void **state)
{
    /* The program's name, not the path it was run by; and where to look. */
    static const struct cli_case cases[] = {
        {{"frobnicate"}, 64, "unknown command 'frobnicate'", 0},
        {{"--bogus"},
         64,
         "dagster-sqs-worker: unknown option '--bogus' (try 'dagster-sqs-worker --help')\n",
         1},
        {{"check-config", "--bogus=1"}, 64, "dagster-sqs-worker: unknown option '--bogus=1'", 0},
        {{"-x"},
         64,
         "dagster-sqs-worker: unknown option '-x' (try 'dagster-sqs-worker --help')\n",
         1},
        {{"-c"}, 64, "dagster-sqs-worker: option '-c' needs an argument", 0},
        {{"status", "extra"},
         64,
         "unexpected argument 'extra' (try 'dagster-sqs-worker status --help')",
         0},
        {{"exec"}, 64, "(try 'dagster-sqs-worker exec --help')", 0},
        {{"enqueue", "a", "b"}, 64, NULL, 0},
        {{"--log-level", "loud", "check-config"}, 64, NULL, 0},
        {{"run", "--connect"}, 64, NULL, 0},
    };
    expect_cases(cases, DSW_ARRAY_LEN(cases));
    char *out;
    assert_int_equal(run("--config", NULL, NULL, NULL, &out), 64);
    expect_in(out, "dagster-sqs-worker: option '--config' needs an argument");
    assert_null(strstr(out, tu_need_env("DSW_BIN")));
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

/* exec's input is opened before the configuration is even read, let alone a connection made:
 * a bad path is 64 at once, whatever else is wrong. */
static void test_exec_input_first(void **state)
{
    char *out;
    assert_int_equal(run("exec", "/no/such/dir/body.json", NULL, NULL, &out), 64);
    assert_string_equal(out, "dagster-sqs-worker: exec: cannot read /no/such/dir/body.json: No "
                             "such file or directory\n");
    free(out);
    assert_int_equal(run("exec", dir, NULL, NULL, &out), 64);
    expect_in(out, "Is a directory");
    free(out);
}

/* A misspelt variable is named, with the key it probably meant; the harness's own DSW_*
 * variables (this test runs with DSW_BIN and DSW_SOURCE_DIR set) are not. */
static void test_unknown_env_warned(void **state)
{
    char *out;
    base_env(1);
    assert_int_equal(run("check-config", NULL, NULL, NULL, &out), 0);
    assert_null(strstr(out, "not a configuration variable"));
    expect_in(out, "level = info");
    free(out);
    setenv("DSW_RUNS_KIL_GRACE", "5s", 1);
    assert_int_equal(run("check-config", NULL, NULL, NULL, &out), 0);
    expect_in(out, "env:DSW_RUNS_KIL_GRACE: not a configuration variable, ignored; did you mean "
                   "DSW_RUNS_KILL_GRACE?");
    expect_in(out, "kill_grace = 30s");
    free(out);
    /* Also for the commands that only warn (and in JSON when asked for). */
    assert_int_equal(run("--log-format", "json", "check-config", NULL, &out), 0);
    expect_in(out, "\"level\": \"warn\"");
    expect_in(out, "DSW_RUNS_KIL_GRACE");
    free(out);
    unsetenv("DSW_RUNS_KIL_GRACE");
    base_env(0);
}

/* runs.warm > 0: check-config fails (78) naming what is missing: runs.python, an interpreter
 * that is not there, a runs.warm_runner that is not there, or no runner beside a binary copied
 * out of its tree (naming every place it looked); a good setup passes. */
static void test_check_config_warm(void **state)
{
    /* Each step sets one more variable, then check-config. */
    static const struct {
        const char *name, *value;
        struct cli_case c;
    } steps[] = {
        {"DSW_RUNS_WARM",
         "1",
         {{"check-config"}, 78, "runs.python: is required when runs.warm > 0", 0}},
        {"DSW_RUNS_PYTHON",
         "/no/such/python3",
         {{"check-config"}, 78, "runs.python: /no/such/python3 is not an executable file", 0}},
        {"DSW_RUNS_PYTHON",
         "no-such-python-xyz",
         {{"check-config"}, 78, "runs.python: no-such-python-xyz is not found in $PATH", 0}},
        {"DSW_RUNS_PYTHON", "/usr/bin/python3", {{"check-config"}, 0, NULL, 0}},
        {"DSW_RUNS_WARM_RUNNER",
         "/no/such/runner.py",
         {{"check-config"}, 78, "runs.warm_runner: /no/such/runner.py is not a readable file", 0}},
    };
    char *out, lone[4096], runner[4096], cmd[8400];
    base_env(1);
    for (size_t i = 0; i < DSW_ARRAY_LEN(steps); i++) {
        setenv(steps[i].name, steps[i].value, 1);
        expect_cases(&steps[i].c, 1);
    }
    /* The daemon itself refuses to start the same way, before connecting anywhere. */
    assert_int_equal(run("run", NULL, NULL, NULL, &out), 78);
    expect_in(out, "runs.warm_runner: /no/such/runner.py");
    free(out);
    unsetenv("DSW_RUNS_WARM_RUNNER");

    /* The binary alone in a directory: no runner beside it nor in ../libexec. */
    snprintf(lone, sizeof(lone), "%s/bin/dagster-sqs-worker", dir);
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/bin' && cp '%s' '%s'", dir, tu_need_env("DSW_BIN"),
             lone);
    assert_int_equal(system(cmd), 0);
    char *argv[] = {lone, "check-config", NULL};
    assert_int_equal(tu_run(argv, NULL, &out), 78);
    expect_in(out, "the warm runner dsw-warm-runner.py is not found (looked for ");
    char place[4200];
    const char *const rel[] = {"/bin/../libexec/dagster-sqs-worker/dsw-warm-runner.py",
                               "/bin/../libexec/dsw-warm-runner.py", "/bin/dsw-warm-runner.py"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(place, sizeof(place), "%s%s", dir, rel[i]);
        expect_in(out, place);
    }
    expect_in(out, "set runs.warm_runner");
    free(out);
    /* ... found once runs.warm_runner names it, */
    snprintf(runner, sizeof(runner), "%s/libexec/dsw-warm-runner.py",
             tu_need_env("DSW_SOURCE_DIR"));
    setenv("DSW_RUNS_WARM_RUNNER", runner, 1);
    assert_int_equal(tu_run(argv, NULL, &out), 0);
    free(out);
    unsetenv("DSW_RUNS_WARM_RUNNER");
    /* ... or once it is installed in ../libexec/dagster-sqs-worker/ as cmake --install does. */
    snprintf(cmd, sizeof(cmd),
             "mkdir -p '%s/libexec/dagster-sqs-worker' && cp '%s' '%s/libexec/dagster-sqs-worker/'",
             dir, runner, dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(tu_run(argv, NULL, &out), 0);
    free(out);

    unsetenv("DSW_RUNS_WARM");
    unsetenv("DSW_RUNS_PYTHON");
    base_env(0);
}

/* Containers: no file at all, everything from the environment. */
static void test_env_only(void **state)
{
    char *out;
    base_env(1);
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
    base_env(0);
    unsetenv("DSW_LOG_LEVEL");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_and_help),   cmocka_unit_test(test_command_help),
        cmocka_unit_test(test_usage_errors),       cmocka_unit_test(test_exec_input_first),
        cmocka_unit_test(test_unknown_env_warned), cmocka_unit_test(test_check_config_warm),
        cmocka_unit_test(test_check_config),       cmocka_unit_test(test_env_only),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
