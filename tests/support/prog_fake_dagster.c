/* fake_dagster: a test double of `dagster api execute_run|resume_run <ExecuteRunArgs JSON>` and
 * of `dagster api execute_step <ExecuteStepArgs JSON>`.
 * It writes to Postgres what Dagster's run worker writes (vectors/event_logs_*.json), in
 * Dagster's byte form through the dagster module, and exits with Dagster's codes.
 *
 * Invocation: fake_dagster api execute_run|resume_run|execute_step '<..Args JSON>'
 *   (argv exactly as real dagster gets it; other argv: usage on stderr, exit 2 like click).
 * Postgres: DSW_FAKE_PG_CONNINFO (a libpq conninfo string) if set; else DAGSTER_PG_HOST,
 *   DAGSTER_PG_PORT, DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB (the names the
 *   vectors' dagster.yaml uses) if DAGSTER_PG_HOST is set; else libpq's own PGHOST, PGPORT,
 *   PGUSER, PGPASSWORD, PGDATABASE. Sessions use TimeZone=UTC.
 * Every start is counted first, in dagster_sqs_worker_test.child_starts(run_id, pid,
 *   started_at, argv_kind, step_key) (created if missing, step_key added if missing; NULL for
 *   runs); then the run is loaded from `runs`.
 * Behaviour: tag `dsw/test_behavior` from the run_tags table, else from run_body "tags":
 *   success (default)  START, a step, PIPELINE_SUCCESS + SUCCESS, exit 0
 *   failure            START, a step, PIPELINE_FAILURE + FAILURE, exit 1 (0 when the args'
 *                      set_exit_code_on_failure is not true)
 *   crash              START, a step, a log line, then _exit(3): the run stays STARTED
 *   sleep:N            sleep N seconds (fractions allowed) in the step, then succeed
 *   ignore_sigterm[:N] SIGTERM ignored; sleep N seconds (default 600), then succeed
 *   grandchild[:N]     fork a grandchild in the same process group that sleeps 600 s with
 *                      stdio on /dev/null (pid on stderr); then behave like sleep:N (default 0)
 *   linger[:N]         succeed, then stay N seconds (default 3) before exiting, as a run
 *                      worker with a slow atexit hook does (its own outcome is already written)
 *   flood[:N]          print N (default 20000) stdout lines at once, then succeed
 *   exit_early         exit 1 with an error on stderr before writing any event (bad args)
 *   fast               the least a successful run writes: START + STARTED, PIPELINE_SUCCESS +
 *                      SUCCESS (no step events), exit 0 at once (bench/: the worker's own cost)
 * DSW_FAKE_START_LOG=FILE (bench/): append "<run_id> <unix time at main() entry> <pid>\n" to
 *   FILE (one O_APPEND write), to measure dispatch latency without the child's own startup.
 * A run not in NOT_STARTED/STARTING (execute_run): finished -> "Ignoring a run worker that
 *   started after the run had already finished." and exit 0; else Dagster's "started a new
 *   run worker while the run was already in state DagsterRunStatus.X" notice, PIPELINE_FAILURE
 *   "This run has been marked as failed from outside the execution context." + FAILURE, exit 1
 *   (vectors/event_logs_concurrent_duplicate.json; a PIPELINE_FAILURE event sets Dagster's
 *   run_worker_failed, hence 1). resume_run accepts any unfinished run and writes no
 *   PIPELINE_START, as Dagster does when resuming.
 * SIGTERM (no vector covers it; this follows Dagster's pipeline_execution_iterator): the
 *   worker re-reads the status; CANCELING -> PIPELINE_CANCELED 'Execution of run for "job"
 *   canceled.' (level 40, PipelineCanceledData) + CANCELED, exit 0; CANCELED -> the engine
 *   event "Computational resources were cleaned up after the run was forcibly marked as
 *   canceled.", exit 0; otherwise PIPELINE_FAILURE "... Execution was interrupted
 *   unexpectedly. No user initiated termination request was found, treating as failure."
 *   + FAILURE, exit 1. The run worker never writes PIPELINE_CANCELING: whoever asks for the
 *   termination does. The interrupt's SerializableErrorInfo carries an empty stack.
 * Step-level events are minimal (STEP_START, then STEP_SUCCESS, STEP_FAILURE (failure, and
 * ErrorSource.INTERRUPT on SIGTERM) or nothing (crash)), each in Dagster's exact form; the
 * sequence of run-level events, step events and engine messages is what real Dagster writes for
 * an in-process job, which tests/dagster/harness.py (equivalence) checks against real Dagster.
 * DagsterEvent lines go to stdout at the end, as the real CLI buffers them.
 * execute_step (dagster/_cli/api.py execute_step_command, read on both trees): ExecuteStepArgs
 *   with exactly one key in step_keys_to_execute (else an error, exit 1); it never changes
 *   the run's status and writes only that step's events (key = the args' key): verify_step's
 *   first case (attempt 1 = no previous_retry_attempts for the key, and the key already has a
 *   STEP_START) -> the engine event "Attempted to run K again even though it was already
 *   started. Exiting to prevent re-running the step.", exit 0; else STEP_START, then by the
 *   run's tag: success -> STEP_SUCCESS, exit 0; failure -> STEP_FAILURE (USER_CODE_ERROR),
 *   exit 0 (raise_on_error is False in the CLI: a failed step is not a failed process);
 *   crash -> _exit(3); sleep:N, ignore_sigterm[:N], grandchild[:N], flood[:N] as for runs;
 *   SIGTERM -> STEP_FAILURE (ErrorSource.INTERRUPT), then the DagsterExecutionInterruptedError
 *   leaves click uncaught: a traceback line on stderr, exit 1. Not written (the event writer
 *   has no form for a step key without step handles): STEP_WORKER_STARTED and the engine event
 *   "Step execution terminated by interrupt". Event lines are printed unless the args'
 *   print_serialized_events is false (1.7 prints them only when true; 1.3 always). */
#include "dsw/buf.h"
#include "dsw/dagster.h"
#include "dsw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STEP "fake_step"

struct fake {
    PGconn *pg;
    const char *kind; /* execute_run | resume_run | execute_step */
    char *run_id;
    const char *step; /* the step key the events name: STEP for runs */
    char *step_key;   /* execute_step: the one key of step_keys_to_execute */
    int attempt;      /* execute_step: 1 + previous_retry_attempts[step_key] */
    int print_events;
    char *job;
    char *status;
    char *body;
    char *behavior;
    int pid;
    int exit_code_on_failure;
    struct dsw_buf out; /* DagsterEvent lines, printed at exit */
};

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    got_term = 1;
}

static void die(const char *fmt, ...) DSW_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fake_dagster: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* One parameterized statement; any failure ends the process with exit 1, as a database error
 * ends the real run worker. The caller clears the result. */
static PGresult *sql(struct fake *f, const char *q, int n, const char *const *params)
{
    PGresult *r = PQexecParams(f->pg, q, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        die("postgres: %s", PQerrorMessage(f->pg));
    return r;
}

static void exec0(struct fake *f, const char *q, int n, const char *const *params)
{
    PQclear(sql(f, q, n, params));
}

static PGconn *connect_pg(void)
{
    const char *conninfo = getenv("DSW_FAKE_PG_CONNINFO");
    PGconn *pg;
    if (conninfo && *conninfo) {
        const char *k[] = {"dbname", "options", NULL},
                   *v[] = {conninfo, "-c TimeZone=UTC -c client_min_messages=warning", NULL};
        pg = PQconnectdbParams(k, v, 1);
    } else if (getenv("DAGSTER_PG_HOST")) {
        const char *k[] = {"host", "port", "user", "password", "dbname", "options", NULL};
        const char *v[] = {getenv("DAGSTER_PG_HOST"),
                           getenv("DAGSTER_PG_PORT"),
                           getenv("DAGSTER_PG_USER"),
                           getenv("DAGSTER_PG_PASSWORD"),
                           getenv("DAGSTER_PG_DB"),
                           "-c TimeZone=UTC -c client_min_messages=warning",
                           NULL};
        pg = PQconnectdbParams(k, v, 0);
    } else {
        const char *k[] = {"options", NULL},
                   *v[] = {"-c TimeZone=UTC -c client_min_messages=warning", NULL};
        pg = PQconnectdbParams(k, v, 0);
    }
    if (PQstatus(pg) != CONNECTION_OK)
        die("cannot connect to postgres: %s", PQerrorMessage(pg));
    return pg;
}

/* One row per start, so tests can count spawns; the lock makes concurrent CREATEs safe. */
static void count_start(struct fake *f)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", f->pid);
    const char *p[] = {f->run_id, pid, f->kind, f->step_key};
    exec0(f, "BEGIN", 0, NULL);
    exec0(f, "SELECT pg_advisory_xact_lock(7243)", 0, NULL);
    exec0(f, "CREATE SCHEMA IF NOT EXISTS dagster_sqs_worker_test", 0, NULL);
    exec0(f,
          "CREATE TABLE IF NOT EXISTS dagster_sqs_worker_test.child_starts (run_id text, pid int, "
          "started_at timestamptz DEFAULT now(), argv_kind text, step_key text)",
          0, NULL);
    exec0(f,
          "ALTER TABLE dagster_sqs_worker_test.child_starts ADD COLUMN IF NOT EXISTS step_key text",
          0, NULL);
    exec0(f, "COMMIT", 0, NULL);
    exec0(f,
          "INSERT INTO dagster_sqs_worker_test.child_starts (run_id, pid, argv_kind, step_key) "
          "VALUES ($1, $2::int, $3, $4)",
          4, p);
}

static char *dup_or_null(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : dsw_xstrdup(PQgetvalue(r, row, col));
}

static void load_run(struct fake *f)
{
    const char *p[] = {f->run_id};
    PGresult *r =
        sql(f, "SELECT status, run_body, pipeline_name FROM runs WHERE run_id = $1", 1, p);
    if (PQntuples(r) != 1)
        die(f->step_key ? "dagster._check.CheckError: Run with id '%s' not found for step execution"
                        : "dagster._check.CheckError: Pipeline run with id '%s' not found for run "
                          "execution.",
            f->run_id);
    f->status = dup_or_null(r, 0, 0);
    f->body = dup_or_null(r, 0, 1);
    f->job = dup_or_null(r, 0, 2);
    PQclear(r);
    if (!f->status || !f->body || !f->job)
        die("run %s has no status, body or pipeline name", f->run_id);
    r = sql(f, "SELECT value FROM run_tags WHERE run_id = $1 AND key = 'dsw/test_behavior'", 1, p);
    if (PQntuples(r) > 0)
        f->behavior = dup_or_null(r, 0, 0);
    PQclear(r);
    if (!f->behavior && dsw_dagster_body_tag(f->body, "dsw/test_behavior", &f->behavior) < 0)
        die("run %s: run_body is not a PipelineRun", f->run_id);
}

/* Insert one event as Dagster's event storage does: row, NOTIFY, then the run update when the
 * event changes the status (handle_run_event: status, body, update_timestamp, start/end). */
static void record(struct fake *f, const struct dsw_dagster_event *ev, const char *status,
                   int printed)
{
    char ts[32], now_ts[32], now_s[32];
    char *entry = dsw_dagster_event_entry(ev);
    if (!entry || dsw_dagster_naive_utc(ev->timestamp, ts) < 0)
        die("cannot serialize event");
    const char *p[] = {f->run_id, entry, ev->event_type, ts, ev->step_key};
    PGresult *r = sql(f,
                      "INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, "
                      "step_key, asset_key, partition) VALUES ($1, $2, $3, $4, $5, NULL, NULL) "
                      "RETURNING id",
                      5, p);
    const char *n[] = {f->run_id, PQgetvalue(r, 0, 0)};
    exec0(f, "SELECT pg_notify('run_events', $1::text || '_' || $2::text)", 2, n);
    PQclear(r);
    free(entry);
    if (status) {
        char *body = NULL;
        double now = dsw_wall_time();
        if (dsw_dagster_body_set_status(f->body, status, &body) < 0 ||
            dsw_dagster_naive_utc(now, now_ts) < 0 || dsw_dagster_float_repr(now, now_s) < 0)
            die("cannot rewrite run_body");
        int start = strcmp(status, "STARTED") == 0;
        const char *u[] = {f->run_id,           status, body, now_ts, start ? now_s : NULL,
                           start ? NULL : now_s};
        exec0(f,
              "UPDATE runs SET status = $2, run_body = $3, update_timestamp = $4, "
              "start_time = COALESCE($5::float8, start_time), "
              "end_time = COALESCE($6::float8, end_time) WHERE run_id = $1",
              6, u);
        free(f->body);
        f->body = body;
    }
    if (printed && ev->event_type) {
        char *line = dsw_dagster_event_line(ev);
        if (!line || dsw_buf_puts(&f->out, line) < 0 || dsw_buf_puts(&f->out, "\n") < 0)
            die("stdout buffer");
        free(line);
    }
}

/* An event from inside the run: pid set, level 10 (40 for failures), user_message = message. */
static void inside(struct fake *f, const char *type, const char *msg, const char *specific,
                   const char *step_key, int level, const char *status)
{
    struct dsw_dagster_event ev = {
        .run_id = f->run_id,
        .job_name = f->job,
        .event_type = type,
        .message = msg,
        .user_message = msg,
        .level = level,
        .pid = f->pid,
        .step_key = step_key,
        .specific = specific,
        .timestamp = dsw_wall_time(),
    };
    record(f, &ev, status, 1);
}

/* An engine event reported by the instance (pid null, level 20, user_message ""). */
static void engine(struct fake *f, const char *msg, const struct dsw_kv *meta, size_t nmeta,
                   int printed)
{
    char *data = dsw_dagster_engine_data(meta, nmeta);
    struct dsw_dagster_event ev = {
        .run_id = f->run_id,
        .job_name = f->job,
        .event_type = "ENGINE_EVENT",
        .message = msg,
        .level = 20,
        .pid = -1,
        .specific = data,
        .timestamp = dsw_wall_time(),
    };
    record(f, &ev, NULL, printed);
    free(data);
}

static void log_line(struct fake *f, const char *text)
{
    struct dsw_dagster_event ev = {
        .run_id = f->run_id,
        .job_name = f->job,
        .user_message = text,
        .level = 20,
        .pid = -1,
        .step_key = f->step,
        .timestamp = dsw_wall_time(),
    };
    record(f, &ev, NULL, 0);
}

/* STEP_FAILURE of f->step with StepFailureData made of error and source (ErrorSource member). */
static void step_failure(struct fake *f, const char *error, const char *source)
{
    char *data = dsw_xasprintf("{\"__class__\": \"StepFailureData\", \"error\": %s, "
                               "\"error_source\": {\"__enum__\": \"ErrorSource.%s\"}, "
                               "\"user_failure_data\": null}",
                               error, source);
    char *msg = dsw_xasprintf("Execution of step \"%s\" failed.", f->step);
    inside(f, "STEP_FAILURE", msg, data, f->step, 40, NULL);
    free(msg);
    free(data);
}

/* The op's own exception, as solid_execution_error_boundary wraps it. */
static void step_user_failure(struct fake *f)
{
    char *error = dsw_xasprintf(
        "{\"__class__\": \"SerializableErrorInfo\", \"cause\": {\"__class__\": "
        "\"SerializableErrorInfo\", \"cause\": null, \"cls_name\": \"Exception\", \"context\": "
        "null, \"message\": \"Exception: fake_dagster: failing as the run's dsw/test_behavior tag "
        "asks\\n\", \"stack\": []}, \"cls_name\": \"DagsterExecutionStepExecutionError\", "
        "\"context\": null, \"message\": "
        "\"dagster._core.errors.DagsterExecutionStepExecutionError: "
        "Error occurred while executing op \\\"%s\\\":\\n\", \"stack\": []}",
        f->step);
    log_line(f, "fake_dagster: failing as the run's dsw/test_behavior tag asks");
    step_failure(f, error, "USER_CODE_ERROR");
    free(error);
}

static void step_start(struct fake *f)
{
    char *msg = dsw_xasprintf("Started execution of step \"%s\".", f->step);
    inside(f, "STEP_START", msg, NULL, f->step, 10, NULL);
    free(msg);
}

static void step_success(struct fake *f, double t0)
{
    char ms[32], *success, *msg;
    double elapsed = (dsw_wall_time() - t0) * 1000.0;
    if (dsw_dagster_float_repr(elapsed, ms) < 0)
        die("clock");
    success = dsw_xasprintf("{\"__class__\": \"StepSuccessData\", \"duration_ms\": %s}", ms);
    msg = dsw_xasprintf("Finished execution of step \"%s\" in %.0fms.", f->step, elapsed);
    inside(f, "STEP_SUCCESS", msg, success, f->step, 10, NULL);
    free(msg);
    free(success);
}

static double arg_of(const char *behavior, double dflt);
static int behaves(const struct fake *f, const char *name);

/* The end of _execute_run_command_body: the exit event, the buffered lines, the exit code. */
static void finish(struct fake *f, int code)
{
    char *msg =
        dsw_xasprintf(strcmp(f->kind, "resume_run") == 0 ? "Process for pipeline exited (pid: %d)."
                                                         : "Process for run exited (pid: %d).",
                      f->pid);
    engine(f, msg, NULL, 0, 0);
    free(msg);
    fputs(dsw_buf_str(&f->out), stdout);
    fflush(stdout);
    PQfinish(f->pg);
    if (behaves(f, "linger")) {
        double end = dsw_wall_time() + arg_of(f->behavior, 3);
        while (dsw_wall_time() < end) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    exit(code);
}

static int is_finished(const char *status)
{
    return !strcmp(status, "SUCCESS") || !strcmp(status, "FAILURE") || !strcmp(status, "CANCELED");
}

/* execute_run_iterator's refusal of a run that is not NOT_STARTED / STARTING. */
static void refuse(struct fake *f)
{
    if (is_finished(f->status)) {
        engine(f, "Ignoring a run worker that started after the run had already finished.", NULL, 0,
               1);
        finish(f, 0);
    }
    char *msg = dsw_xasprintf(
        "%s (%s) started a new run worker while the run was already in state "
        "DagsterRunStatus.%s. This most frequently happens when the run worker unexpectedly "
        "stops and is restarted by the cluster. Marking the run as failed.",
        f->job, f->run_id, f->status);
    engine(f, msg, NULL, 0, 1);
    free(msg);
    struct dsw_dagster_event ev = {
        .run_id = f->run_id,
        .job_name = f->job,
        .event_type = "PIPELINE_FAILURE",
        .message = "This run has been marked as failed from outside the execution context.",
        .level = 40,
        .pid = -1,
        .timestamp = dsw_wall_time(),
    };
    record(f, &ev, "FAILURE", 1);
    finish(f, f->exit_code_on_failure ? 1 : 0);
}

static void reload_status(struct fake *f)
{
    const char *p[] = {f->run_id};
    PGresult *r = sql(f, "SELECT status, run_body FROM runs WHERE run_id = $1", 1, p);
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) && !PQgetisnull(r, 0, 1)) {
        free(f->status);
        free(f->body);
        f->status = dsw_xstrdup(PQgetvalue(r, 0, 0));
        f->body = dsw_xstrdup(PQgetvalue(r, 0, 1));
    }
    PQclear(r);
}

/* pipeline_execution_iterator's finally block after an interrupt. */
static void interrupted(struct fake *f)
{
    static const char error[] =
        "{\"__class__\": \"SerializableErrorInfo\", \"cause\": null, \"cls_name\": "
        "\"DagsterExecutionInterruptedError\", \"context\": null, \"message\": "
        "\"dagster._core.errors.DagsterExecutionInterruptedError\\n\", \"stack\": []}";
    char *msg, *data;
    /* The step's own failure first: _dagster_event_sequence_for_step turns the interrupt into
     * STEP_FAILURE with ErrorSource.INTERRUPT before the run-level handling below. */
    step_failure(f, error, "INTERRUPT");
    if (f->step_key) {
        /* execute_step_command re-raises it: no handler up to the interpreter. */
        fputs(dsw_buf_str(&f->out), stdout);
        fputs("dagster._core.errors.DagsterExecutionInterruptedError\n", stderr);
        exit(1);
    }
    reload_status(f);
    if (!strcmp(f->status, "CANCELING")) {
        msg = dsw_xasprintf("Execution of run for \"%s\" canceled.", f->job);
        data = dsw_xasprintf("{\"__class__\": \"PipelineCanceledData\", \"error\": %s}", error);
        inside(f, "PIPELINE_CANCELED", msg, data, NULL, 40, "CANCELED");
        free(msg);
        free(data);
        finish(f, 0);
    }
    if (!strcmp(f->status, "CANCELED")) {
        data = dsw_dagster_engine_data(NULL, 0);
        inside(f, "ENGINE_EVENT",
               "Computational resources were cleaned up after the run was forcibly marked as "
               "canceled.",
               data, NULL, 10, NULL);
        free(data);
        finish(f, 0);
    }
    msg = dsw_xasprintf("Execution of run for \"%s\" failed. Execution was interrupted "
                        "unexpectedly. No user initiated termination request was found, treating "
                        "as failure.",
                        f->job);
    data = dsw_xasprintf("{\"__class__\": \"PipelineFailureData\", \"error\": %s}", error);
    inside(f, "PIPELINE_FAILURE", msg, data, NULL, 40, "FAILURE");
    free(msg);
    free(data);
    finish(f, f->exit_code_on_failure ? 1 : 0);
}

/* Sleep up to secs, waking early on SIGTERM (which leads to interrupted()). */
static void nap(struct fake *f, double secs)
{
    double end = dsw_wall_time() + secs;
    while (!got_term && dsw_wall_time() < end) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (got_term)
        interrupted(f);
}

static double arg_of(const char *behavior, double dflt)
{
    const char *colon = strchr(behavior, ':');
    return colon ? strtod(colon + 1, NULL) : dflt;
}

static int behaves(const struct fake *f, const char *name)
{
    size_t n = strlen(name);
    return !strncmp(f->behavior, name, n) && (f->behavior[n] == '\0' || f->behavior[n] == ':');
}

static void spawn_grandchild(void)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        signal(SIGTERM, SIG_DFL);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        sleep(600);
        _exit(0);
    }
    fprintf(stderr, "fake_dagster: grandchild pid %d\n", (int)pid);
}

static void flood(double lines)
{
    for (long i = 0; i < (long)lines; i++)
        printf("fake_dagster flood line %ld: lorem ipsum dolor sit amet, consectetur adipiscing "
               "elit, sed do eiusmod tempor\n",
               i);
    fflush(stdout);
}

/* Inside the step, after STEP_START: the behaviours that do not decide its outcome. */
static void step_body(struct fake *f)
{
    if (behaves(f, "crash")) {
        char *msg = dsw_xasprintf("calling os._exit(3) in pid %d", f->pid);
        log_line(f, msg);
        free(msg);
        _exit(3);
    }
    if (behaves(f, "grandchild"))
        spawn_grandchild();
    if (behaves(f, "flood"))
        flood(arg_of(f->behavior, 20000));
    if (behaves(f, "sleep") || behaves(f, "grandchild"))
        nap(f, arg_of(f->behavior, 0));
    if (behaves(f, "ignore_sigterm"))
        nap(f, arg_of(f->behavior, 600));
    if (got_term)
        interrupted(f);
}

/* The in-process executor's closing engine event (data: its EngineEventData). */
static void steps_finished(struct fake *f, const char *data, double t0)
{
    double elapsed = (dsw_wall_time() - t0) * 1000.0;
    char *msg = dsw_xasprintf("Finished steps in process (pid: %d) in %.0fms", f->pid, elapsed);
    inside(f, "ENGINE_EVENT", msg, data, NULL, 10, NULL);
    free(msg);
}

/* The body of the run: what core_execute_run yields for a one-step in-process job. */
static void execute(struct fake *f)
{
    char pid[16], *msg;
    double t0 = dsw_wall_time();
    if (behaves(f, "fast") && strcmp(f->kind, "resume_run") != 0) {
        msg = dsw_xasprintf("Started execution of run for \"%s\".", f->job);
        inside(f, "PIPELINE_START", msg, NULL, NULL, 10, "STARTED");
        free(msg);
        msg = dsw_xasprintf("Finished execution of run for \"%s\".", f->job);
        inside(f, "PIPELINE_SUCCESS", msg, NULL, NULL, 10, "SUCCESS");
        free(msg);
        finish(f, 0);
    }
    snprintf(pid, sizeof(pid), "%d", f->pid);
    struct dsw_kv meta[] = {{"pid", pid}, {"step_keys", "['" STEP "']"}};
    char *data = dsw_dagster_engine_data(meta, 2);

    if (strcmp(f->kind, "resume_run") != 0) {
        msg = dsw_xasprintf("Started execution of run for \"%s\".", f->job);
        inside(f, "PIPELINE_START", msg, NULL, NULL, 10, "STARTED");
        free(msg);
    }
    msg = dsw_xasprintf("Executing steps in process (pid: %d)", f->pid);
    inside(f, "ENGINE_EVENT", msg, data, NULL, 10, NULL);
    free(msg);
    step_start(f);
    step_body(f);

    if (behaves(f, "failure")) {
        step_user_failure(f);
        steps_finished(f, data, t0);
        msg = dsw_xasprintf("Execution of run for \"%s\" failed. Steps failed: ['" STEP "'].",
                            f->job);
        inside(f, "PIPELINE_FAILURE", msg,
               "{\"__class__\": \"PipelineFailureData\", \"error\": null}", NULL, 40, "FAILURE");
        free(msg);
        free(data);
        finish(f, f->exit_code_on_failure ? 1 : 0);
    }

    step_success(f, t0);
    steps_finished(f, data, t0);
    free(data);
    msg = dsw_xasprintf("Finished execution of run for \"%s\".", f->job);
    inside(f, "PIPELINE_SUCCESS", msg, NULL, NULL, 10, "SUCCESS");
    free(msg);
    finish(f, 0);
}

/* deserialize_value(input_json, ExecuteRunArgs): the run id and set_exit_code_on_failure. */
/* DSW_FAKE_START_LOG: one line per start, written at once with O_APPEND (atomic). */
static void log_start(const struct fake *f, double t_main)
{
    const char *path = getenv("DSW_FAKE_START_LOG");
    if (!path || !*path)
        return;
    char line[160];
    int n = snprintf(line, sizeof(line), "%s %.6f %d\n", f->run_id, t_main, f->pid);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0 && n > 0 && (size_t)n < sizeof(line) && write(fd, line, (size_t)n) < 0)
        fprintf(stderr, "fake_dagster: %s: %s\n", path, strerror(errno));
    if (fd >= 0)
        close(fd);
}

/* ExecuteStepArgs: the one step key, its attempt (1 + previous_retry_attempts[key]) and
 * print_serialized_events (absent: print, as 1.3 does). */
static void parse_step(struct fake *f, json_t *args)
{
    json_t *keys = json_object_get(args, "step_keys_to_execute");
    const char *key = json_string_value(json_array_get(keys, 0));
    if (json_array_size(keys) != 1 || !key || !*key)
        die("step_keys_to_execute must hold exactly one step key (fake_dagster runs one step)");
    f->step_key = dsw_xstrdup(key);
    f->step = f->step_key;
    json_t *prev = json_object_get(
        json_object_get(json_object_get(args, "known_state"), "previous_retry_attempts"), key);
    f->attempt = 1 + (json_is_integer(prev) ? (int)json_integer_value(prev) : 0);
    f->print_events = !json_is_false(json_object_get(args, "print_serialized_events"));
}

static void parse_args(struct fake *f, const char *input)
{
    json_error_t err;
    json_t *args = json_loads(input, JSON_REJECT_DUPLICATES, &err);
    const char *want = !strcmp(f->kind, "resume_run")     ? "ResumeRunArgs"
                       : !strcmp(f->kind, "execute_step") ? "ExecuteStepArgs"
                                                          : "ExecuteRunArgs";
    const char *cls = json_string_value(json_object_get(args, "__class__"));
    const char *id = json_string_value(json_object_get(args, "pipeline_run_id"));
    if (!args)
        die("dagster._serdes.errors.DeserializationError: %s", err.text);
    if (!cls || strcmp(cls, want) != 0 || !id)
        die("dagster._check.CheckError: Deserialized object was not expected type %s", want);
    f->run_id = dsw_xstrdup(id);
    f->exit_code_on_failure = json_is_true(json_object_get(args, "set_exit_code_on_failure"));
    if (!strcmp(f->kind, "execute_step"))
        parse_step(f, args);
    json_decref(args);
}

/* verify_step's first case: attempt 1 of a step that has already started. */
static int already_started(struct fake *f)
{
    const char *p[] = {f->run_id, f->step_key};
    PGresult *r = sql(f,
                      "SELECT count(*) FROM event_logs WHERE run_id = $1 AND step_key = $2 AND "
                      "dagster_event_type = 'STEP_START'",
                      2, p);
    int started = atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    return f->attempt == 1 && started;
}

/* _execute_step_command_body for one step: the step's events only, never the run's status. */
static void execute_step(struct fake *f)
{
    double t0 = dsw_wall_time();
    if (already_started(f)) {
        char *msg = dsw_xasprintf("Attempted to run %s again even though it was already "
                                  "started. Exiting to prevent re-running the step.",
                                  f->step_key);
        engine(f, msg, NULL, 0, 1);
        free(msg);
    } else {
        step_start(f);
        step_body(f);
        if (behaves(f, "failure"))
            step_user_failure(f);
        else
            step_success(f, t0);
    }
    if (f->print_events)
        fputs(dsw_buf_str(&f->out), stdout);
    fflush(stdout);
    PQfinish(f->pg);
    exit(0);
}

/* execute_run / resume_run after the start is counted and the run loaded. */
static void start_run(struct fake *f)
{
    char pid[16], *msg;
    snprintf(pid, sizeof(pid), "%d", f->pid);
    struct dsw_kv meta[] = {{"pid", pid}};
    msg = dsw_xasprintf(strcmp(f->kind, "resume_run") == 0
                            ? "Started process for resuming pipeline (pid: %d)."
                            : "Started process for run (pid: %d).",
                        f->pid);
    engine(f, msg, meta, 1, 0);
    free(msg);
    fprintf(stderr, "fake_dagster: run %s (%s) status %s behavior %s\n", f->run_id, f->job,
            f->status, f->behavior);
    fflush(stdout);

    int startable = !strcmp(f->status, "NOT_STARTED") || !strcmp(f->status, "STARTING");
    if (strcmp(f->kind, "resume_run") == 0 ? is_finished(f->status) : !startable)
        refuse(f);
    execute(f);
}

int main(int argc, char **argv)
{
    struct fake f = {0};
    double t_main = dsw_wall_time();
    if (argc != 4 || strcmp(argv[1], "api") != 0 ||
        (strcmp(argv[2], "execute_run") != 0 && strcmp(argv[2], "resume_run") != 0 &&
         strcmp(argv[2], "execute_step") != 0)) {
        fprintf(stderr, "Usage: dagster api execute_run|resume_run|execute_step INPUT_JSON\n");
        return 2;
    }
    f.kind = argv[2];
    f.pid = (int)getpid();
    f.step = STEP;
    dsw_buf_init(&f.out, (size_t)16 << 20);
    parse_args(&f, argv[3]);
    log_start(&f, t_main);
    f.pg = connect_pg();
    count_start(&f);
    load_run(&f);
    if (!f.behavior)
        f.behavior = dsw_xstrdup("success");
    if (behaves(&f, "exit_early"))
        die("dagster._core.errors.DagsterInvariantViolationError: exit_early requested by the "
            "run's dsw/test_behavior tag");

    struct sigaction sa = {0};
    sa.sa_handler = behaves(&f, "ignore_sigterm") ? SIG_IGN : on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (f.step_key) {
        fprintf(stderr, "fake_dagster: run %s step %s attempt %d behavior %s\n", f.run_id,
                f.step_key, f.attempt, f.behavior);
        execute_step(&f);
    }
    start_run(&f);
    return 0;
}
