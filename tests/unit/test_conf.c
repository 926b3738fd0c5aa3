/* conf: every error path names file, line and key; units, bounds, env overrides, the
 * dagster-taskiq variables, permissions, and the shipped conf/worker.conf. */
#include "testutil.h"

#include "dsw/conf.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char *dir;

static int setup(void **state)
{
    dir = tu_tmpdir();
    return 0;
}

static int teardown(void **state)
{
    tu_rm_rf(dir);
    free(dir);
    return 0;
}

/* Load text written to a 0600 file; returns the rc and leaves the error in err. */
static int load_text(struct dsw_conf *c, const char *text, char *const envp[], char *err)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/w.conf", dir);
    tu_write_file(path, text, 0600);
    return dsw_conf_load(c, path, envp, err);
}

static void expect_error(const char *text, const char *fragment)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    int rc = load_text(&c, text, NULL, err);
    if (rc == 0) {
        dsw_conf_free(&c);
        fail_msg("accepted: %s", text);
    }
    assert_int_equal(rc, -EINVAL);
    if (!strstr(err, fragment))
        fail_msg("error '%s' lacks '%s'", err, fragment);
    assert_non_null(strstr(err, "w.conf:"));
}

static void test_defaults(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    assert_int_equal(dsw_conf_load(&c, NULL, NULL, err), 0);
    assert_int_equal(c.queue.wait_time_ms, 20000);
    assert_int_equal(c.queue.visibility_timeout_ms, 120000);
    assert_int_equal(c.queue.heartbeat_ms, 30000);
    assert_int_equal(c.queue.max_body, 256 * 1024);
    assert_int_equal(c.postgres.connect_timeout_ms, 10000);
    assert_int_equal(c.postgres.statement_timeout_ms, 15000);
    assert_int_equal(c.claims.ttl_ms, 60000);
    assert_int_equal(c.claims.heartbeat_ms, 10000);
    assert_int_equal(c.claims.sweep_ms, 30000);
    assert_true(c.runs.max_concurrent >= 1); /* number of CPUs */
    assert_int_equal(c.runs.instance_ref, DSW_INSTANCE_REF_STRIP);
    assert_string_equal(c.runs.env_passthrough, DSW_CONF_ENV_PASSTHROUGH_DEFAULT);
    assert_string_equal(DSW_CONF_ENV_PASSTHROUGH_DEFAULT,
                        "PATH HOME LANG LC_* TZ DAGSTER_* PYTHON*");
    assert_int_equal(c.runs.drain_timeout_ms, 300000);
    assert_int_equal(c.runs.kill_grace_ms, 30000);
    assert_int_equal(c.runs.timeout_ms, 0);
    assert_int_equal(c.runs.cancel_poll_ms, 2000);
    assert_int_equal(c.runs.max_receives, 5);
    assert_int_equal(c.runs.requeue_delay_ms, 30000);
    assert_false(c.runs.resume);
    assert_int_equal(c.runs.max_resumes, 1);
    assert_true(c.runs.strict_run_id);
    assert_int_equal(c.runs.warm, 0);
    assert_string_equal(c.runs.warm_imports, "dagster dagster_postgres dagster._cli");
    assert_string_equal(c.runs.warm_entry, "dagster._cli:main");
    assert_int_equal(c.runs.warm_max_age_ms, 600000);
    assert_string_equal(c.http.listen, "127.0.0.1:9464");
    assert_int_equal(c.log.level, 1);
    assert_int_equal(c.log.format, 0);
    assert_null(c.queue.url);
    dsw_conf_free(&c);
}

static void test_units(void **state)
{
    int64_t v;
    assert_int_equal(dsw_conf_parse_duration("500ms", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(dsw_conf_parse_duration("30s", &v), 0);
    assert_int_equal(v, 30000);
    assert_int_equal(dsw_conf_parse_duration("2m", &v), 0);
    assert_int_equal(v, 120000);
    assert_int_equal(dsw_conf_parse_duration("1h", &v), 0);
    assert_int_equal(v, 3600000);
    assert_int_equal(dsw_conf_parse_duration("7", &v), 0);
    assert_int_equal(v, 7000);
    assert_int_equal(dsw_conf_parse_size("256KiB", &v), 0);
    assert_int_equal(v, 262144);
    assert_int_equal(dsw_conf_parse_size("1MiB", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(dsw_conf_parse_size("100", &v), 0);
    assert_int_equal(v, 100);
    const char *bad[] = {
        "", "s", "-1s", "1x", "1.5s", "99999999999999999999s", "9223372036854775807h", " 1s"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++)
        assert_int_not_equal(dsw_conf_parse_duration(bad[i], &v), 0);
    assert_int_not_equal(dsw_conf_parse_size("1GiB", &v), 0);
    assert_int_not_equal(dsw_conf_parse_size("KiB", &v), 0);
}

static void test_file_values(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    const char *text = "# comment\n"
                       "[queue]\n"
                       "url = http://127.0.0.1:1/000000000000/q   # trailing comment\n"
                       "region = eu-west-1\n"
                       "wait_time = 5s\n"
                       "max_body = 1MiB\n"
                       "\n"
                       "[runs]\n"
                       "max_concurrent = 3\n"
                       "resume = on\n"
                       "instance_ref = forward\n"
                       "command = \"/opt/dagster #1/bin/dagster\"\n"
                       "env.DAGSTER_PG_HOST = db.internal\n"
                       "[log]\n"
                       "level = debug\n"
                       "format = json\n";
    assert_int_equal(load_text(&c, text, NULL, err), 0);
    assert_string_equal(c.queue.url, "http://127.0.0.1:1/000000000000/q");
    assert_string_equal(c.queue.region, "eu-west-1");
    assert_int_equal(c.queue.wait_time_ms, 5000);
    assert_int_equal(c.queue.max_body, 1048576);
    assert_int_equal(c.runs.max_concurrent, 3);
    assert_true(c.runs.resume);
    assert_int_equal(c.runs.instance_ref, DSW_INSTANCE_REF_FORWARD);
    assert_string_equal(c.runs.command, "/opt/dagster #1/bin/dagster");
    assert_int_equal(c.runs.nenv, 1);
    assert_string_equal(c.runs.env[0].name, "DAGSTER_PG_HOST");
    assert_string_equal(c.runs.env[0].value, "db.internal");
    assert_int_equal(c.log.level, 0);
    assert_int_equal(c.log.format, 1);
    assert_non_null(strstr(c.path, "w.conf"));
    dsw_conf_free(&c);
}

static void test_errors(void **state)
{
    expect_error("[queue]\nbogus = 1\n", "w.conf:2: queue.bogus: unknown key");
    expect_error("[nope]\n", "w.conf:1: unknown section [nope]");
    expect_error("url = x\n", "w.conf:1: url: key outside of a [section]");
    expect_error("[queue]\nurl = a\nurl = b\n", "w.conf:3: queue.url: set twice");
    expect_error("[queue]\nwait_time = 21s\n",
                 "w.conf:2: queue.wait_time: '21s' is out of range (0s..20s)");
    expect_error("[queue]\nwait_time = soon\n", "queue.wait_time: 'soon' is not valid");
    expect_error("[queue]\nmax_body = 2MiB\n", "queue.max_body: '2MiB' is out of range");
    expect_error("[queue]\nvisibility_timeout = 13h\n", "queue.visibility_timeout");
    expect_error("[queue]\nheartbeat = 200s\n",
                 "queue.heartbeat: must be shorter than queue.visibility_timeout");
    expect_error("[claims]\nheartbeat = 40s\n", "claims.heartbeat: must be at most half");
    expect_error("[runs]\nmax_concurrent = -1\n", "runs.max_concurrent: '-1' is out of range");
    expect_error("[runs]\nmax_concurrent = 4097\n", "runs.max_concurrent");
    expect_error("[runs]\nmax_concurrent = 3x\n", "runs.max_concurrent: '3x' is not valid");
    expect_error("[runs]\nmax_concurrent = 2\nstep_slots = 2\n",
                 "runs.step_slots: must be below runs.max_concurrent");
    expect_error("[runs]\nresume = maybe\n", "runs.resume: 'maybe' is not a boolean");
    expect_error("[runs]\ninstance_ref = keep\n", "runs.instance_ref: 'keep' is not one of");
    expect_error("[runs]\nenv.1BAD = x\n", "w.conf:2: runs.env.1BAD: not a valid variable name");
    expect_error("[runs]\nenv.A = x\nenv.A = y\n", "w.conf:3: runs.env.A: set twice");
    expect_error("[runs]\nwarm = 2\n", "runs.python: is required when runs.warm > 0");
    expect_error("[log]\nlevel = loud\n", "log.level: 'loud' is not one of");
    expect_error("[log]\nformat = xml\n", "log.format");
    expect_error("[queue]\nurl\n", "w.conf:2: expected 'key = value'");
    expect_error("[queue\n", "w.conf:1: malformed section header");
    expect_error("[queue]\nurl = \"open\n", "w.conf:2: queue.url: unterminated");
    expect_error("[postgres]\nconninfo = host=x password=hunter2\n",
                 "postgres.conninfo: must not hold a password");
    expect_error("[postgres]\nconninfo = postgresql://u:hunter2@h/db\n",
                 "postgres.conninfo: must not hold a password in the URI");
    expect_error("[http]\nlisten = 9464\n", "http.listen: expected HOST:PORT or off");
}

static void test_error_texts_hide_secrets(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    assert_int_not_equal(
        load_text(&c, "[postgres]\nconninfo = host=x password=hunter2\n", NULL, err), 0);
    assert_null(strstr(err, "hunter2"));
}

static void test_env_overrides(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    char *envp[] = {"DSW_QUEUE_WAIT_TIME=3s",
                    "DSW_RUNS_MAX_CONCURRENT=7",
                    "DSW_LOG_FORMAT=json",
                    "DSW_RUNS_ENV_DAGSTER_PG_PASSWORD=pw",
                    "DAGSTER_TASKIQ_SQS_QUEUE_URL=http://ignored/because/file/sets/it",
                    "DAGSTER_TASKIQ_SQS_ENDPOINT_URL=http://127.0.0.1:4566",
                    "AWS_DEFAULT_REGION=us-west-1",
                    "AWS_REGION=ap-south-1",
                    NULL};
    assert_int_equal(load_text(&c, "[queue]\nurl = http://from-file/1/q\n", envp, err), 0);
    assert_int_equal(c.queue.wait_time_ms, 3000);
    assert_int_equal(c.runs.max_concurrent, 7);
    assert_int_equal(c.log.format, 1);
    assert_string_equal(c.queue.url, "http://from-file/1/q");
    assert_string_equal(c.queue.endpoint, "http://127.0.0.1:4566");
    assert_string_equal(c.queue.region, "ap-south-1");
    assert_int_equal(c.runs.nenv, 1);
    assert_string_equal(c.runs.env[0].name, "DAGSTER_PG_PASSWORD");
    dsw_conf_free(&c);

    /* DSW_ wins over the file and the compatibility variables. */
    char *env2[] = {"DSW_QUEUE_URL=http://dsw/1/q", "DAGSTER_TASKIQ_SQS_QUEUE_URL=http://t/1/q",
                    NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, env2, err), 0);
    assert_string_equal(c.queue.url, "http://dsw/1/q");
    assert_null(c.path);
    dsw_conf_free(&c);
    char *env3[] = {"DAGSTER_TASKIQ_SQS_QUEUE_URL=http://t/1/q", NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, env3, err), 0);
    assert_string_equal(c.queue.url, "http://t/1/q");
    dsw_conf_free(&c);

    char *bad[] = {"DSW_CLAIMS_TTL=forever", NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, bad, err), -EINVAL);
    assert_string_equal(err, "env:DSW_CLAIMS_TTL: claims.ttl: 'forever' is not valid (a duration "
                             "like 500ms, 30s, 5m, 1h)");
}

static void test_permissions(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX], path[512];
    snprintf(path, sizeof(path), "%s/perm.conf", dir);
    tu_write_file(path, "[queue]\nurl = http://x/1/q\n", 0666);
    assert_int_equal(dsw_conf_load(&c, path, NULL, err), -EPERM);
    assert_non_null(strstr(err, "writable by group or others"));
    tu_write_file(path, "[runs]\nenv.DAGSTER_PG_PASSWORD = s3cret\n", 0644);
    assert_int_equal(dsw_conf_load(&c, path, NULL, err), -EPERM);
    assert_non_null(strstr(err, "readable by group or others"));
    assert_null(strstr(err, "s3cret"));
    tu_write_file(path, "[runs]\nenv.DAGSTER_PG_PASSWORD = s3cret\n", 0600);
    assert_int_equal(dsw_conf_load(&c, path, NULL, err), 0);
    dsw_conf_free(&c);
    snprintf(path, sizeof(path), "%s/missing.conf", dir);
    assert_int_equal(dsw_conf_load(&c, path, NULL, err), -ENOENT);
    assert_non_null(strstr(err, "missing.conf: cannot read"));

    /* A password file must be private. */
    snprintf(path, sizeof(path), "%s/pgpass", dir);
    tu_write_file(path, "*:*:*:*:pw\n", 0640);
    assert_int_equal(dsw_conf_check_private(path, err), -EPERM);
    tu_write_file(path, "*:*:*:*:pw\n", 0600);
    assert_int_equal(dsw_conf_check_private(path, err), 0);
}

static void test_require(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX], pgpass[600], passenv[640];
    assert_int_equal(dsw_conf_load(&c, NULL, NULL, err), 0);
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_QUEUE, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "queue.url: is required"));
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_DB, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "postgres.conninfo: is required"));
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_RUNS, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "runs.dagster_home: is required"));
    char *home[] = {"DAGSTER_HOME=/srv/dh", NULL};
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_RUNS, home, err), 0);
    dsw_conf_free(&c);

    char *env[] = {"DSW_QUEUE_URL=http://127.0.0.1:9/000/q", NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, env, err), 0);
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_QUEUE, env, err), -EINVAL);
    assert_non_null(strstr(err, "queue.region: cannot be derived"));
    dsw_conf_free(&c);
    char *aws[] = {"DSW_QUEUE_URL=https://sqs.eu-central-1.amazonaws.com/1/q",
                   "DSW_POSTGRES_CONNINFO=host=127.0.0.1", NULL, NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, aws, err), 0);
    char region[64];
    assert_string_equal(dsw_conf_region(&c, region, sizeof(region)), "eu-central-1");
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB, aws, err), 0);
    snprintf(pgpass, sizeof(pgpass), "%s/pgpass", dir);
    tu_write_file(pgpass, "*:*:*:*:pw\n", 0644);
    snprintf(passenv, sizeof(passenv), "PGPASSFILE=%s", pgpass);
    aws[2] = passenv;
    assert_int_equal(dsw_conf_require(&c, DSW_CONF_NEED_DB, aws, err), -EPERM);
    assert_non_null(strstr(err, "pgpass"));
    dsw_conf_free(&c);
}

/* A misspelt DSW_* variable is warned about by name with the closest key; what the test
 * harnesses and the fault-injection builds set is not. */
static void test_unknown_env(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    char *envp[] = {
        "DSW_RUNS_KIL_GRACE=5s", "DSW_QEUE_URL=http://x/1/q", "DSW_RUNS_BOGUS=1",
        /* ours, but no keys */
        "DSW_RUNS_ENV_FOO=bar", "DSW_FAILPOINTS=db_query=error", "DSW_TRAMPOLINE=/x",
        /* the test harnesses' (tests/, scripts/, bench/) */
        "DSW_BIN=/b", "DSW_SOURCE_DIR=/s", "DSW_VECTORS=/v", "DSW_TEST_PG_CONNINFO=x",
        "DSW_TEST_PG_PORT=1", "DSW_TEST_PG_DATA=x", "DSW_TEST_PG_BIN=x", "DSW_TEST_FAUXQS_URL=x",
        "DSW_TEST_MOTO_URL=x", "DSW_TEST_PYTHON=x", "DSW_TEST_VERBOSE=1", "DSW_TEST_KEEP_LOGS=1",
        "DSW_FAKE_START_LOG=x", "DSW_FAKE_PG_CONNINFO=x", "DSW_FAKE_DAGSTER=x", "DSW_FAULT_SEED=1",
        "DSW_FAULT_RUNS=1", "DSW_FAULT_FAULTS=x", "DSW_DEPLOY_CACHE=x", "DSW_BASE_IMAGE=x",
        "DSW_BASE_REBUILD=1", "DSW_DAGSTER_SRC=x", "DSW_TRAMPOLINE_HELPER=x", "DSW_BINARY_DIR=x",
        "DSW_DAGSTER_PYTHON=x", "DSW_HARNESS_MARK=x", "DSW_MSG_VERBOSE=1", "DSW_DEB_INSTALL_HOST=1",
        "DSW_DEPLOY_CONTEXT=x", "DSW_WARM_TEST_ENV=1", "DSW_SUPPORT_fake_dagster=x",
        /* a real key, set right */
        "DSW_RUNS_KILL_GRACE=7s", NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, envp, err), 0);
    assert_int_equal(c.runs.kill_grace_ms, 7000);
    for (size_t i = 0; i < c.nwarnings; i++)
        fprintf(stderr, "warning: %s\n", c.warnings[i]);
    assert_int_equal(c.nwarnings, 3);
    assert_string_equal(c.warnings[0], "env:DSW_RUNS_KIL_GRACE: not a configuration variable, "
                                       "ignored; did you mean DSW_RUNS_KILL_GRACE?");
    assert_string_equal(c.warnings[1], "env:DSW_QEUE_URL: not a configuration variable, "
                                       "ignored; did you mean DSW_QUEUE_URL?");
    assert_string_equal(c.warnings[2], "env:DSW_RUNS_BOGUS: not a configuration variable, "
                                       "ignored");
    dsw_conf_free(&c);
    assert_int_equal(c.nwarnings, 0);
    assert_null(c.warnings);
}

/* Every key's own variable, set to its printed default, loads without a warning. */
struct env_state {
    char *env[64];
    int n;
};

static void collect_env(const char *section, const char *key, const char *value, void *arg)
{
    struct env_state *st = arg;
    if (strncmp(key, "env.", 4) == 0)
        return;
    char *v = dsw_xasprintf("DSW_%s_%s=%s", section, key, value);
    for (char *q = v; *q != '='; q++)
        *q = (char)toupper((unsigned char)*q);
    assert_true(st->n < 63);
    st->env[st->n++] = v;
}

static void test_every_key_env_no_warning(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    struct env_state st = {0};
    assert_int_equal(dsw_conf_load(&c, NULL, NULL, err), 0);
    dsw_conf_visit(&c, collect_env, &st);
    dsw_conf_free(&c);
    assert_int_equal(st.n, 38);
    assert_int_equal(dsw_conf_load(&c, NULL, st.env, err), 0);
    for (size_t i = 0; i < c.nwarnings; i++)
        fprintf(stderr, "warning: %s\n", c.warnings[i]);
    assert_int_equal(c.nwarnings, 0);
    dsw_conf_free(&c);
    for (int i = 0; i < st.n; i++)
        free(st.env[i]);
}

/* runs.warm_runner: a path from the file or DSW_RUNS_WARM_RUNNER; unset by default. */
static void test_warm_runner_key(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX];
    assert_int_equal(load_text(&c, "[runs]\nwarm_runner = /opt/r.py\n", NULL, err), 0);
    assert_string_equal(c.runs.warm_runner, "/opt/r.py");
    dsw_conf_free(&c);
    char *envp[] = {"DSW_RUNS_WARM_RUNNER=/srv/runner.py", NULL};
    assert_int_equal(dsw_conf_load(&c, NULL, envp, err), 0);
    assert_string_equal(c.runs.warm_runner, "/srv/runner.py");
    assert_int_equal(c.nwarnings, 0);
    dsw_conf_free(&c);
    assert_int_equal(dsw_conf_load(&c, NULL, NULL, err), 0);
    assert_null(c.runs.warm_runner);
    dsw_conf_free(&c);
}

/* The password file: PGPASSFILE, else $CREDENTIALS_DIRECTORY/pgpass when it exists, else the
 * fallback (the README's /etc/dagster-sqs-worker/pgpass) when it exists. */
static void test_pgpass_path(void **state)
{
    char buf[4096], creds[600], fallback[600], pgpass[640];
    snprintf(creds, sizeof(creds), "CREDENTIALS_DIRECTORY=%s/creds", dir);
    snprintf(fallback, sizeof(fallback), "%s/etc-pgpass", dir);
    char *both[] = {"PGPASSFILE=/run/p", creds, NULL};
    assert_string_equal(dsw_conf_pgpass_path(both, fallback, buf, sizeof(buf)), "/run/p");
    char *only_creds[] = {creds, NULL};
    /* Neither the credential nor the fallback exists yet. */
    assert_null(dsw_conf_pgpass_path(only_creds, fallback, buf, sizeof(buf)));
    assert_null(dsw_conf_pgpass_path(NULL, fallback, buf, sizeof(buf)));
    tu_write_file(fallback, "*:*:*:*:pw\n", 0600);
    assert_string_equal(dsw_conf_pgpass_path(only_creds, fallback, buf, sizeof(buf)), fallback);
    assert_string_equal(dsw_conf_pgpass_path(NULL, fallback, buf, sizeof(buf)), fallback);
    snprintf(pgpass, sizeof(pgpass), "%s/creds", dir);
    assert_int_equal(mkdir(pgpass, 0700), 0);
    snprintf(pgpass, sizeof(pgpass), "%s/creds/pgpass", dir);
    tu_write_file(pgpass, "*:*:*:*:pw\n", 0600);
    assert_string_equal(dsw_conf_pgpass_path(only_creds, fallback, buf, sizeof(buf)), pgpass);
    assert_null(dsw_conf_pgpass_path(NULL, NULL, buf, sizeof(buf)));
}

struct visit_state {
    const char *text;
    int n;
};

/* Every key of the table is documented in the shipped file, set or commented out. */
static void visit(const char *section, const char *key, const char *value, void *arg)
{
    struct visit_state *st = arg;
    char set[96], commented[96];
    st->n++;
    if (strncmp(key, "env.", 4) == 0)
        return;
    snprintf(set, sizeof(set), "\n%s = ", key);
    snprintf(commented, sizeof(commented), "\n# %s = ", key);
    if (!strstr(st->text, set) && !strstr(st->text, commented))
        fail_msg("conf/worker.conf does not document %s.%s", section, key);
}

/* The shipped file parses and passes every command's requirements. */
static void test_shipped_conf(void **state)
{
    struct dsw_conf c;
    char err[DSW_CONF_ERR_MAX], path[4096];
    snprintf(path, sizeof(path), "%s/conf/worker.conf", tu_need_env("DSW_SOURCE_DIR"));
    char *text = tu_read_file(path, NULL);
    /* Parse a private copy: git keeps no file modes but 0644/0755. */
    assert_int_equal(load_text(&c, text, NULL, err), 0);
    assert_int_equal(dsw_conf_require(&c,
                                      DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS,
                                      NULL, err),
                     0);
    struct visit_state st = {.text = text};
    dsw_conf_visit(&c, visit, &st);
    assert_int_equal(st.n, 38);
    dsw_conf_free(&c);
    free(text);
}

/* runs.env_passthrough and runs.command have caps: at the cap the configuration loads (every
 * name kept), one past it is an error naming the key and the cap, never a silent cut. */
static void load_words(const char *var, const char *word, const char *sep, int n, char *err,
                       int *rc)
{
    char value[4096] = "";
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(value + len, sizeof(value) - len, "%s%s%d", i ? sep : "", word, i);
    char assign[4200];
    snprintf(assign, sizeof(assign), "%s=%s", var, value);
    char *envp[] = {assign, NULL};
    struct dsw_conf c;
    *rc = dsw_conf_load(&c, NULL, envp, err);
    if (*rc == 0)
        dsw_conf_free(&c);
}

static void test_list_caps_are_errors(void **state)
{
    char err[DSW_CONF_ERR_MAX];
    int rc;
    load_words("DSW_RUNS_ENV_PASSTHROUGH", "NAME_", ", ", DSW_CONF_PASSTHROUGH_MAX, err, &rc);
    assert_int_equal(rc, 0);
    load_words("DSW_RUNS_ENV_PASSTHROUGH", "NAME_", " ", DSW_CONF_PASSTHROUGH_MAX + 1, err, &rc);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "runs.env_passthrough"));
    assert_non_null(strstr(err, "more than 64 names"));
    load_words("DSW_RUNS_COMMAND", "w", " ", DSW_CONF_COMMAND_WORDS_MAX, err, &rc);
    assert_int_equal(rc, 0);
    load_words("DSW_RUNS_COMMAND", "w", "\t", DSW_CONF_COMMAND_WORDS_MAX + 1, err, &rc);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "runs.command"));
    assert_non_null(strstr(err, "more than 32 words"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_file_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_texts_hide_secrets),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_permissions),
        cmocka_unit_test(test_require),
        cmocka_unit_test(test_shipped_conf),
        cmocka_unit_test(test_unknown_env),
        cmocka_unit_test(test_every_key_env_no_warning),
        cmocka_unit_test(test_warm_runner_key),
        cmocka_unit_test(test_pgpass_path),
        cmocka_unit_test(test_list_caps_are_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
