/* Helpers shared by the cmocka tests: environment of the services scripts/test.sh started,
 * vector files, and running a libuv loop until a condition holds (never a bare sleep). */
#ifndef DSW_TESTUTIL_H
#define DSW_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <uv.h>

/* The value of an environment variable the harness must set; fails the test (never skips)
 * when it is missing, naming the variable. */
const char *tu_need_env(const char *name);
/* Whole file into a NUL-terminated heap buffer (caller frees); fails the test when unreadable. */
char *tu_read_file(const char *path, size_t *len);
/* Path of a file in the vectors (DSW_VECTORS, tests/vectors by default; caller frees). */
char *tu_vector_path(const char *name);
/* A pipe already full: the next write to fds[1] (left blocking) would block; fds[0] is
 * non-blocking; both are close-on-exec. */
void tu_full_pipe(int fds[2]);
/* A fresh temporary directory (caller frees the path, and removes it with tu_rm_rf). */
char *tu_tmpdir(void);
void tu_rm_rf(const char *path);
/* Write a file with the given mode. */
void tu_write_file(const char *path, const char *text, int mode);

/* Run loop until cond(arg) returns non-zero or timeout_ms passes; returns cond's last value. */
int tu_run_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, uint64_t timeout_ms);
/* Close every handle still open, run the loop dry and assert uv_loop_close() == 0. */
void tu_loop_close(uv_loop_t *loop);

/* Timing bounds relative to this machine as it is during the run, never absolute. The baseline
 * is the slowest of five runs of `$DSW_BIN --version` (fork, exec, dynamic linking, sanitizer
 * start-up: what every process a test starts pays; /bin/true when DSW_BIN is unset), measured
 * on first use in each test program and printed. tu_slack_ms() is what start-up, scheduling and
 * polling may add to a wait: TU_SLACK_BASELINES baselines. A bound is then "the configured
 * delay + tu_slack_ms()" for something that waits it out, and "< tu_slack_ms()" (or "< the
 * configured delay" it must not wait for) for something that must happen at once. */
#define TU_SLACK_BASELINES 200
uint64_t tu_baseline_us(void);
uint64_t tu_slack_ms(void);

/* Run argv (no shell; argv[0] searched in PATH) with stdin on /dev/null, stdout+stderr appended to
 * log (NULL: /dev/null) and only descriptors 0-2 inherited, so a server it starts keeps nothing of
 * ours open; waits and returns the exit status (or 128+signal). */
int tu_run_quiet(char *const argv[], const char *log);
/* pg_ctl ACTION ("start", "stop", "status") on the suite's PostgreSQL, as scripts/services.sh
 * runs it (same port, socket dir and options; as the postgres user when root). */
int tu_pg_ctl(const char *action);

/* Run argv (no shell) with stdin from in (may be NULL), capture stdout+stderr into *out (caller
 * frees); returns the exit status (or 128+signal). */
int tu_run(char *const argv[], const char *in, char **out);

/* ---- the worker's integration tests: Postgres, SQS, the daemon ----------------------------
 * Blocking helpers: every failure fails the test. Conditions are polled with a deadline
 * (tu_wait*), never slept on. Every daemon started with tu_daemon_start is registered and
 * tu_daemons_cleanup (call it from the cmocka teardown) SIGKILLs and reaps the ones still
 * running, and kills what is left of the fake dagster children of the runs made here. */
#include <libpq-fe.h>
#include <stdbool.h>
#include <sys/types.h>

/* A process-wide session on DSW_TEST_PG_CONNINFO (TimeZone UTC), connected on first use. */
PGconn *tu_pg(void);
/* A fresh database on the test server with vectors/schema.sql loaded (for a test whose sweeper
 * or missing schema must not meet other tests' rows): returns a conninfo for it (heap), and
 * makes tu_pg() use it until tu_pg_fresh_db_drop. */
char *tu_pg_fresh_db(void);
/* Back to DSW_TEST_PG_CONNINFO; the fresh database is dropped (WITH (FORCE)). */
void tu_pg_fresh_db_drop(void);
/* One parameterized statement; fails the test on an error. The caller clears the result. */
PGresult *tu_pg_exec(const char *sql, int n, const char *const *params);
/* First column of the first row as a heap string (NULL: no row or SQL NULL). */
char *tu_pg_str(const char *sql, int n, const char *const *params);
/* First column of the first row as a number (0: no row or NULL). */
long long tu_pg_ll(const char *sql, int n, const char *const *params);

/* A random lowercase UUID v4 (37 bytes with the NUL). */
void tu_uuid(char out[37]);
/* A run from vectors/runs_row.json under a fresh id with status and the dsw/test_behavior tag
 * (NULL: no tag). */
void tu_run_new(char id[37], const char *status, const char *behavior);
/* runs.status (heap string, NULL when the run is gone). */
char *tu_run_status(const char *run_id);
/* Fake-dagster starts recorded for the run (dagster_sqs_worker_test.child_starts). */
long long tu_run_starts(const char *run_id);
/* event_logs rows of the run with that dagster_event_type (NULL: every row). */
long long tu_run_events(const char *run_id, const char *type);
/* An event_logs row of the run whose event text contains needle. */
bool tu_run_event_has(const char *run_id, const char *needle);
/* A column of the run's claim row as text (heap; NULL when there is no claim or it is NULL). */
char *tu_claim_col(const char *run_id, const char *column);
/* The TaskIQ execute_job envelope admin.c's enqueue sends, for an existing run (heap). */
char *tu_run_envelope(const char *run_id);
/* The TaskIQ execute_step envelope sqs_executor sends for step_key of an existing run, attempt
 * 1 + previous (known_state null when previous is 0; no instance_ref) (heap). */
char *tu_step_envelope(const char *run_id, const char *step_key, int previous);
/* Whether str equals expect (NULL-safe); frees str. */
bool tu_eq_free(char *str, const char *expect);

/* A queue on an SQS-compatible server (AWS JSON 1.0, signed with test credentials). */
struct tu_queue {
    char endpoint[256];
    char url[512];
};
/* One call; returns the HTTP status and the reply (heap) in *reply (may be NULL). */
long tu_sqs_call(const char *endpoint, const char *action, const char *body, char **reply);
/* A queue with a unique name on endpoint, with that VisibilityTimeout. */
void tu_queue_create(struct tu_queue *q, const char *endpoint, int visibility_s);
/* SendMessage; the message id goes to id (may be NULL). */
void tu_queue_send(const struct tu_queue *q, const char *body, char *id, size_t idlen);
/* SendMessageBatch of n (<= 10) bodies. */
void tu_queue_send_batch(const struct tu_queue *q, const char *const *bodies, size_t n);
/* ApproximateNumberOfMessages and ApproximateNumberOfMessagesNotVisible. */
void tu_queue_counts(const struct tu_queue *q, long *visible, long *inflight);
/* ReceiveMessage (with ApproximateReceiveCount); returns the number of messages, the reply's
 * Messages array in *msgs (json_t *, decref it; may be NULL). */
int tu_queue_receive(const struct tu_queue *q, int max, int visibility_s, int wait_s, void **msgs);
/* Whether the queue holds no message, visible or not (both counts 0). */
bool tu_queue_empty(const struct tu_queue *q);

/* An environment for the daemon: name=value strings. */
struct tu_env {
    char **v;
    size_t n;
};
/* Set (or replace) name in e to the formatted value. */
void tu_env_set(struct tu_env *e, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void tu_env_free(struct tu_env *e);
/* The daemon's whole environment for queue q (no config file): fauxqs/moto endpoint, test
 * Postgres, the fake dagster as runs.command, scaled-down durations (claims ttl 2s, heartbeat
 * 500ms, sweep 1h i.e. off unless a test turns it on, cancel_poll 200ms, kill_grace 1s, queue
 * heartbeat 1s, visibility 10s, wait 1s, requeue_delay 1s), http off, 4 slots. */
void tu_worker_env(struct tu_env *e, const struct tu_queue *q);

struct tu_daemon {
    pid_t pid;
    bool reaped;
    int status; /* exit code, or 128 + signal, once reaped */
    char log[64];
};
/* Start DSW_BIN with args (NULL-terminated, after the binary) and exactly env; stdout and
 * stderr go to d->log. Registered for tu_daemons_cleanup. */
struct tu_daemon *tu_daemon_start(const struct tu_env *env, const char *const *args);
/* Wait up to timeout_ms for the daemon to exit; its status, or -1 on timeout. */
int tu_daemon_wait(struct tu_daemon *d, uint64_t timeout_ms);
/* Wait until the daemon logged that it is ready (receiving). */
bool tu_daemon_wait_ready(struct tu_daemon *d, uint64_t timeout_ms);
/* Send a signal to the daemon (no-op once reaped). */
void tu_daemon_signal(struct tu_daemon *d, int sig);
/* Its log so far (heap). */
char *tu_daemon_log(const struct tu_daemon *d);
/* Whether its log contains needle. */
bool tu_daemon_log_has(const struct tu_daemon *d, const char *needle);
/* Wait up to timeout_ms for needle in the daemon's log (a line written after what the test
 * saw, e.g. after the commit it waited for). */
bool tu_daemon_wait_log(const struct tu_daemon *d, const char *needle, uint64_t timeout_ms);
/* Resident set size in KiB (0 when gone). */
long tu_daemon_rss_kb(const struct tu_daemon *d);
/* Print every registered daemon's log tail to stderr (after a failed wait). */
void tu_daemons_dump(void);
/* SIGKILL and reap every registered daemon still running, kill fake dagster children (and
 * their process groups) of the runs made with tu_run_new, forget everything. */
void tu_daemons_cleanup(void);
/* Start a program (argv[0] a path) with env, output into a log like a daemon (registered). */
struct tu_daemon *tu_spawn(const struct tu_env *env, char *const *argv);
/* Run DSW_BIN args to completion with env; returns its exit status, output in *out (heap,
 * may be NULL). Fails the test after timeout_ms. */
int tu_cli(const struct tu_env *env, const char *const *args, char **out, uint64_t timeout_ms);

/* `db-init` against the test database (once per process); fails the test unless it exits 0. */
void tu_worker_db_init(void);

/* The worker tests' fixture: the claims schema, a fresh queue on fauxqs (visibility 10 s), the
 * worker environment for it; with fresh_db, a database of the test's own first (tu_pg_fresh_db).
 * Teardown kills and reaps every daemon and frees the environment (and drops the database). */
void tu_worker_setup(struct tu_queue *q, struct tu_env *env, bool fresh_db);
void tu_worker_teardown(struct tu_env *env);

/* The fixture every daemon test file shares: its queue q, its env, and cmocka's setup (a fresh
 * database when fresh_db) and teardown. */
#define TU_WORKER_FIXTURE(fresh_db)                                                                \
    static struct tu_queue q;                                                                      \
    static struct tu_env env;                                                                      \
    static int setup(void **state)                                                                 \
    {                                                                                              \
        (void)state;                                                                               \
        tu_worker_setup(&q, &env, fresh_db);                                                       \
        return 0;                                                                                  \
    }                                                                                              \
    static int teardown(void **state)                                                              \
    {                                                                                              \
        (void)state;                                                                               \
        tu_worker_teardown(&env);                                                                  \
        return 0;                                                                                  \
    }
/* Send run_id's execute_job envelope to q (msg_id, when not NULL, receives the MessageId). */
void tu_send_run(const struct tu_queue *q, const char *run_id, char *msg_id, size_t n);
/* Send tu_step_envelope(run_id, step_key, previous) to q (msg_id as for tu_send_run). */
void tu_send_step(const struct tu_queue *q, const char *run_id, const char *step_key, int previous,
                  char *msg_id, size_t n);
/* A claim row for run_id as another (possibly dead) worker would have left it: state,
 * heartbeat age (an interval, e.g. '1 hour' or '0'), message id (may be NULL). Returns the
 * token. */
long long tu_claim_insert(const char *run_id, const char *state, const char *age,
                          const char *message_id);

/* tu_cli with stdin from the file stdin_path. */
int tu_cli_in(const struct tu_env *env, const char *const *args, const char *stdin_path, char **out,
              uint64_t timeout_ms);

/* Poll cond every 20 ms until it holds or timeout_ms passes; dumps the daemons' logs on a
 * timeout. */
bool tu_wait(bool (*cond)(void *arg), void *arg, uint64_t timeout_ms);
/* Poll until the run's status is status. */
bool tu_wait_status(const char *run_id, const char *status, uint64_t timeout_ms);
/* Poll until the first value of sql (with one parameter p) equals expect. */
bool tu_wait_sql(const char *sql, const char *p, const char *expect, uint64_t timeout_ms);
/* Poll until the queue is empty. */
bool tu_wait_queue_empty(const struct tu_queue *q, uint64_t timeout_ms);
/* Whether a process exists and is not a zombie. */
bool tu_pid_alive(pid_t pid);
/* Whether pid is a descendant of ancestor (its parent, or its parent's, ...). */
bool tu_pid_descends(pid_t pid, pid_t ancestor);

/* A TCP forwarder on 127.0.0.1 (a thread) to cut a dependency off and bring it back:
 * tu_proxy_start returns its port; tu_proxy_set(false) closes every connection and refuses
 * new ones, tu_proxy_set(true) accepts again. */
int tu_proxy_start(int target_port);
void tu_proxy_set(bool up);
void tu_proxy_stop(void);

#endif
