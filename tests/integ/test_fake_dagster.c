/* Integration tests of the fake dagster child against the test Postgres: a fresh run from
 * vectors/runs_row.json per case, the child run with the argv real dagster gets (built by the
 * dagster module), then the runs / event_logs / child_starts rows checked against what real
 * Dagster writes in the vectors. */
#include "testutil.h"

#include "dsw/dagster.h"
#include "dsw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct run {
    char id[40];
    char *args; /* ExecuteRunArgs JSON */
};

static PGconn *pg;

static PGresult *q(const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    return r;
}

static int setup(void **state)
{
    pg = PQconnectdb(tu_need_env("DSW_TEST_PG_CONNINFO"));
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("postgres: %s", PQerrorMessage(pg));
    setenv("DSW_FAKE_PG_CONNINFO", tu_need_env("DSW_TEST_PG_CONNINFO"), 1);
    return 0;
}

static int teardown(void **state)
{
    PQfinish(pg);
    return 0;
}

/* Replace every occurrence of from in s (new heap string). */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t nf = strlen(from), nt = strlen(to), count = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + nf, from))
        count++;
    char *out = dsw_xmalloc(strlen(s) + count * nt + 1), *o = out;
    for (const char *p; (p = strstr(s, from)); s = p + nf) {
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, to, nt);
        o += nt;
    }
    strcpy(o, s);
    return out;
}

/* A NOT_STARTED copy of runs_row.json under a fresh id, tagged with behavior (may be NULL). */
static void new_run(struct run *r, const char *behavior)
{
    static unsigned counter;
    char *path = tu_vector_path("runs_row.json"), *origin = NULL;
    json_t *row = json_load_file(path, 0, NULL);
    assert_non_null(row);
    const char *old_id = json_string_value(json_object_get(row, "run_id"));
    const char *job = json_string_value(json_object_get(row, "pipeline_name"));
    snprintf(r->id, sizeof(r->id), "%08x-0000-4000-8000-%012llx", (unsigned)getpid(),
             (unsigned long long)(dsw_now_ns() / 1000) * 16 + counter++ % 16);
    char *body = replace_all(json_string_value(json_object_get(row, "run_body")), old_id, r->id);
    char *fresh = replace_all(body, "PipelineRunStatus.SUCCESS", "PipelineRunStatus.NOT_STARTED");
    const char *p[] = {r->id, job, fresh};
    PQclear(q("INSERT INTO runs (run_id, pipeline_name, status, run_body) "
              "VALUES ($1, $2, 'NOT_STARTED', $3)",
              3, p));
    if (behavior) {
        const char *t[] = {r->id, behavior};
        PQclear(q("INSERT INTO run_tags (run_id, key, value) VALUES ($1, 'dsw/test_behavior', $2)",
                  2, t));
    }
    assert_int_equal(dsw_dagster_body_origin(fresh, &origin, NULL, NULL), 0);
    assert_int_equal(dsw_dagster_run_args(r->id, origin, NULL, 0, &r->args), 0);
    free(origin);
    free(fresh);
    free(body);
    json_decref(row);
    free(path);
}

static int run_fake(const struct run *r, char **out)
{
    char *argv[] = {(char *)tu_need_env("DSW_SUPPORT_fake_dagster"), "api", "execute_run", r->args,
                    NULL};
    return tu_run(argv, NULL, out);
}

static char *status_of(const struct run *r)
{
    const char *p[] = {r->id};
    PGresult *res = q("SELECT status, run_body, start_time IS NOT NULL, end_time IS NOT NULL "
                      "FROM runs WHERE run_id = $1",
                      1, p);
    assert_int_equal(PQntuples(res), 1);
    char *s = dsw_xstrdup(PQgetvalue(res, 0, 0));
    char *want = dsw_xasprintf("\"status\": {\"__enum__\": \"PipelineRunStatus.%s\"}", s);
    assert_non_null(strstr(PQgetvalue(res, 0, 1), want)); /* body agrees with the column */
    free(want);
    PQclear(res);
    return s;
}

static long count_starts(const struct run *r)
{
    const char *p[] = {r->id};
    PGresult *res =
        q("SELECT count(*) FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1", 1, p);
    long n = atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

/* The run's events as "TYPE|message" lines ("-" for a plain log record), after checking each
 * row is in Dagster's exact form and its timestamp column matches the event. */
static char *events_of(const struct run *r)
{
    const char *p[] = {r->id};
    PGresult *res = q("SELECT event, coalesce(dagster_event_type, '-'), "
                      "to_char(timestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
                      "FROM event_logs WHERE run_id = $1 ORDER BY id",
                      1, p);
    struct {
        char *s;
        size_t n;
    } acc = {dsw_xstrdup(""), 0};
    for (int i = 0; i < PQntuples(res); i++) {
        const char *event = PQgetvalue(res, i, 0);
        char *norm = NULL, ts[32];
        assert_int_equal(dsw_dagster_json_normalize(event, 1, &norm), 0);
        assert_string_equal(norm, event);
        free(norm);
        json_t *e = json_loads(event, 0, NULL);
        assert_true(json_is_real(json_object_get(e, "timestamp")));
        assert_int_equal(
            dsw_dagster_naive_utc(json_real_value(json_object_get(e, "timestamp")), ts), 0);
        assert_string_equal(ts, PQgetvalue(res, i, 2));
        const char *msg =
            json_string_value(json_object_get(json_object_get(e, "dagster_event"), "message"));
        char *line = dsw_xasprintf("%s%s|%s\n", acc.s, PQgetvalue(res, i, 1), msg ? msg : "");
        free(acc.s);
        acc.s = line;
        json_decref(e);
    }
    PQclear(res);
    return acc.s;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected %s in:\n%s", needle, hay);
}

static void test_success(void **state)
{
    struct run r;
    char *out, *status, *events;
    new_run(&r, NULL);
    assert_int_equal(run_fake(&r, &out), 0);
    assert_contains(out, "\"event_type_value\": \"PIPELINE_SUCCESS\"");
    status = status_of(&r);
    assert_string_equal(status, "SUCCESS");
    events = events_of(&r);
    /* The order real Dagster writes (event_logs_starting.json, in-process executor). */
    const char *order[] = {"ENGINE_EVENT|Started process for run (pid: ",
                           "PIPELINE_START|",
                           "ENGINE_EVENT|Executing steps in process",
                           "STEP_START|",
                           "STEP_SUCCESS|",
                           "ENGINE_EVENT|Finished steps in process",
                           "PIPELINE_SUCCESS|Finished execution of run for \"success_job\".",
                           "ENGINE_EVENT|Process for run exited (pid: "};
    const char *at = events;
    for (size_t i = 0; i < DSW_ARRAY_LEN(order); i++) {
        const char *next = strstr(at, order[i]);
        if (!next)
            fail_msg("missing %s after position %zu in:\n%s", order[i], (size_t)(at - events),
                     events);
        at = next + strlen(order[i]);
    }
    assert_int_equal(count_starts(&r), 1);

    /* A second call on the finished run is ignored, exit 0 (success_then_second_call). */
    free(out);
    assert_int_equal(run_fake(&r, &out), 0);
    free(events);
    events = events_of(&r);
    assert_contains(events, "ENGINE_EVENT|Ignoring a run worker that started after the run had "
                            "already finished.\nENGINE_EVENT|Process for run exited");
    free(status);
    status = status_of(&r);
    assert_string_equal(status, "SUCCESS");
    assert_int_equal(count_starts(&r), 2);
    free(status);
    free(events);
    free(out);
    free(r.args);
}

static void test_failure(void **state)
{
    struct run r;
    char *out, *status, *events;
    new_run(&r, "failure");
    assert_int_equal(run_fake(&r, &out), 1);
    status = status_of(&r);
    assert_string_equal(status, "FAILURE");
    events = events_of(&r);
    assert_contains(events, "PIPELINE_FAILURE|Execution of run for \"success_job\" failed. Steps "
                            "failed: ['fake_step'].\nENGINE_EVENT|Process for run exited");
    assert_null(strstr(events, "PIPELINE_SUCCESS"));
    free(status);
    free(events);
    free(out);
    free(r.args);
}

/* A crash leaves STARTED; a second execute_run on it is the concurrent duplicate of the
 * vectors: the run is marked failed and the worker exits 1. */
static void test_crash_then_duplicate(void **state)
{
    struct run r;
    char *out, *status, *events;
    new_run(&r, "crash");
    assert_int_equal(run_fake(&r, &out), 3);
    status = status_of(&r);
    assert_string_equal(status, "STARTED");
    events = events_of(&r);
    assert_contains(events, "STEP_START|");
    assert_null(strstr(events, "PIPELINE_FAILURE"));
    assert_null(strstr(events, "Process for run exited"));
    free(events);
    free(status);
    free(out);

    assert_int_equal(run_fake(&r, &out), 1);
    status = status_of(&r);
    assert_string_equal(status, "FAILURE");
    events = events_of(&r);
    char *want = dsw_xasprintf(
        "|success_job (%s) started a new run worker while the run was already in state "
        "DagsterRunStatus.STARTED. This most frequently happens when the run worker unexpectedly "
        "stops and is restarted by the cluster. Marking the run as failed.\n"
        "PIPELINE_FAILURE|This run has been marked as failed from outside the execution "
        "context.\nENGINE_EVENT|Process for run exited (pid: ",
        r.id);
    assert_contains(events, want);
    assert_contains(out, "\"event_type_value\": \"PIPELINE_FAILURE\"");
    assert_int_equal(count_starts(&r), 2);
    free(want);
    free(events);
    free(status);
    free(out);
    free(r.args);
}

static void test_exit_early(void **state)
{
    struct run r;
    char *out, *events, *status;
    new_run(&r, "exit_early");
    assert_int_equal(run_fake(&r, &out), 1);
    events = events_of(&r);
    assert_string_equal(events, "");
    status = status_of(&r);
    assert_string_equal(status, "NOT_STARTED");
    assert_int_equal(count_starts(&r), 1);
    free(status);
    free(events);
    free(out);
    free(r.args);
}

static int wait_status(const struct run *r, const char *want, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        char *s = status_of(r);
        int ok = strcmp(s, want) == 0;
        free(s);
        if (ok)
            return 1;
        usleep(20 * 1000);
    }
    return 0;
}

/* SIGTERM while CANCELING: PIPELINE_CANCELED + CANCELED, exit 0; SIGTERM without a cancel
 * request: PIPELINE_FAILURE, exit 1. */
static void test_sigterm(void **state)
{
    for (int canceling = 1; canceling >= 0; canceling--) {
        struct run r;
        new_run(&r, "sleep:60");
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            execl(tu_need_env("DSW_SUPPORT_fake_dagster"), "fake_dagster", "api", "execute_run",
                  r.args, (char *)NULL);
            _exit(127);
        }
        assert_true(wait_status(&r, "STARTED", 10000));
        if (canceling) {
            const char *p[] = {r.id};
            PQclear(q("UPDATE runs SET status = 'CANCELING' WHERE run_id = $1", 1, p));
        }
        assert_int_equal(kill(pid, SIGTERM), 0);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), canceling ? 0 : 1);
        char *status = status_of(&r), *events = events_of(&r);
        if (canceling) {
            assert_string_equal(status, "CANCELED");
            assert_contains(events, "PIPELINE_CANCELED|Execution of run for \"success_job\" "
                                    "canceled.\nENGINE_EVENT|Process for run exited");
        } else {
            assert_string_equal(status, "FAILURE");
            assert_contains(events, "PIPELINE_FAILURE|Execution of run for \"success_job\" failed. "
                                    "Execution was interrupted unexpectedly.");
        }
        free(status);
        free(events);
        free(r.args);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success),
        cmocka_unit_test(test_failure),
        cmocka_unit_test(test_crash_then_duplicate),
        cmocka_unit_test(test_exit_early),
        cmocka_unit_test(test_sigterm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
