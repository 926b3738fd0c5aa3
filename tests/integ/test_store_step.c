/* store's step claims (docs/steps.md §3, §7) against a real PostgreSQL, each test in a database of
 * its own (tu_pg_fresh_db: the sweep and the summary count every row): db-init's upgrade of a
 * version-1 schema in place, the claim race, fenced launch/exit/release, close of a stale claim
 * or of a key nobody claimed, stop requests, the sweep, heartbeats mixing run and step leases,
 * the load by the database clock and the summary. No callback fires from inside its call; every
 * test ends with uv_loop_close() == 0. */
#include "testutil.h"

#include "dsw/store.h"
#include "dsw/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NDB 6

struct fx {
    uv_loop_t loop;
    char *conninfo; /* the test's own database */
    struct dsw_db *db[NDB];
    struct dsw_store *st[NDB];
    int ups[NDB];
    int ndb;
    int closed;
    char run[37]; /* a STARTED run */
};

struct wait {
    int done;
    int status;
    struct dsw_store_schema schema;
    struct dsw_store_claim claim; /* strings copied below, the pointers cleared */
    char worker[64], kind[16], message[32], outcome[32];
    enum dsw_store_status run_status;
    char job[64];
    int64_t max_runtime_ms;
    char text[512]; /* leases, stops, summary rows as text */
    struct dsw_db_txn *txn;
    int64_t count;
};

static void on_state(struct dsw_db *db, bool up, void *arg)
{
    if (up)
        (*(int *)arg)++;
}

static int all_up(void *arg)
{
    struct fx *f = arg;
    for (int i = 0; i < f->ndb; i++)
        if (!f->ups[i])
            return 0;
    return 1;
}

static int w_done(void *arg)
{
    return ((struct wait *)arg)->done;
}

/* A call that returned 0 has not called back yet; then wait for its callback. */
#define RUN(f, w, call)                                                                            \
    do {                                                                                           \
        memset(&(w), 0, sizeof(w));                                                                \
        assert_int_equal((call), 0);                                                               \
        assert_int_equal((w).done, 0);                                                             \
        assert_true(tu_run_until(&(f)->loop, w_done, &(w), 20000));                                \
    } while (0)

static void on_schema(int status, const struct dsw_store_schema *res, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    w->schema = *res;
}

static void open_stores(struct fx *f, int ndb)
{
    f->ndb = ndb;
    for (int i = 0; i < ndb; i++) {
        char wid[64];
        struct dsw_db_opts o = {.conninfo = f->conninfo,
                                .backoff_min_ms = 50,
                                .backoff_max_ms = 400,
                                .on_state = on_state,
                                .arg = &f->ups[i]};
        assert_int_equal(dsw_db_init(&f->loop, &o, &f->db[i]), 0);
        snprintf(wid, sizeof(wid), "testhost:%d:%d", (int)getpid(), i);
        struct dsw_store_opts so = {.worker_id = wid, .hostname = "testhost", .ttl_ms = 60000};
        assert_int_equal(dsw_store_new(f->db[i], &so, &f->st[i]), 0);
    }
    assert_true(tu_run_until(&f->loop, all_up, f, 10000));
}

/* A fresh database; with init, db-init ran (creating version 2 from nothing) and f->run is a
 * STARTED run. */
static void setup_fx(struct fx *f, int ndb, bool init)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->conninfo = tu_pg_fresh_db();
    open_stores(f, ndb);
    if (!init)
        return;
    struct wait w;
    RUN(f, w, dsw_store_db_init(f->st[0], on_schema, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, 0);
    assert_int_equal(w.schema.wanted, 2);
    tu_run_new(f->run, "STARTED", NULL);
}

static void on_closed(void *arg)
{
    ((struct fx *)arg)->closed++;
}

static void teardown_fx(struct fx *f)
{
    for (int i = 0; i < f->ndb; i++)
        dsw_db_close(f->db[i], on_closed, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, f->ndb);
    for (int i = 0; i < f->ndb; i++)
        dsw_store_free(f->st[i]);
    tu_loop_close(&f->loop);
    tu_pg_fresh_db_drop();
    free(f->conninfo);
}

/* ---- callbacks ------------------------------------------------------------------------------ */

static void copy_claim(struct wait *w, const struct dsw_store_claim *c)
{
    w->claim = *c;
    dsw_strlcpy(w->worker, c->worker_id ? c->worker_id : "", sizeof(w->worker));
    dsw_strlcpy(w->kind, c->kind ? c->kind : "", sizeof(w->kind));
    dsw_strlcpy(w->message, c->message_id ? c->message_id : "", sizeof(w->message));
    dsw_strlcpy(w->outcome, c->outcome ? c->outcome : "", sizeof(w->outcome));
    w->claim.worker_id = w->claim.kind = w->claim.message_id = w->claim.outcome = NULL;
}

static void on_claim(int status, const struct dsw_store_claim *c, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    if (c)
        copy_claim(w, c);
}

static void on_done(int status, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
}

static void on_sql_done(int status, const struct dsw_db_result *r, void *arg)
{
    on_done(status, arg);
}

static void on_load(int status, const struct dsw_store_run *run, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    if (!run)
        return;
    w->run_status = run->status;
    dsw_strlcpy(w->job, run->job_name ? run->job_name : "", sizeof(w->job));
    w->max_runtime_ms = run->max_runtime_ms;
    copy_claim(w, &run->claim);
}

/* Each lease's result, "0,-ESTALE,...". */
static void on_leases(int status, const int *kept, size_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    for (size_t i = 0; kept && i < n; i++) {
        size_t len = strlen(w->text);
        const char *name = kept[i] == -ESTALE ? "-ESTALE" : kept[i] ? "other" : "0";
        snprintf(w->text + len, sizeof(w->text) - len, "%s%s", i ? "," : "", name);
    }
}

/* The tokens, in ascending order, as "1,5". */
static void on_stops(int status, const int64_t *tokens, size_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    w->count = (int64_t)n;
    int64_t last = INT64_MIN;
    size_t len = 0;
    for (size_t k = 0; k < n; k++) {
        int64_t next = INT64_MAX;
        for (size_t i = 0; i < n; i++)
            if (tokens[i] > last && tokens[i] < next)
                next = tokens[i];
        len += (size_t)snprintf(w->text + len, sizeof(w->text) - len, "%s%lld", k ? "," : "",
                                (long long)next);
        last = next;
    }
}

static void on_count(int status, int64_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    w->count = n;
}

/* "worker-index kind state live stale;" per row, the worker as its index (testhost:pid:i). */
static void on_summary(int status, const struct dsw_store_summary_row *rows, size_t n, void *arg)
{
    struct wait *w = arg;
    static const char *const states[] = {"none", "claimed", "running", "done"};
    w->done = 1;
    w->status = status;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *idx = rows[i].worker_id ? strrchr(rows[i].worker_id, ':') : NULL;
        len += (size_t)snprintf(w->text + len, sizeof(w->text) - len, "%s %s %s %lld %lld;",
                                idx ? idx + 1 : "?", rows[i].step ? "step" : "run",
                                states[rows[i].state & 3], (long long)rows[i].live,
                                (long long)rows[i].stale);
    }
}

/* ---- helpers -------------------------------------------------------------------------------- */

static struct dsw_store_step_claim_req req_of(struct fx *f, const char *step, int attempt,
                                              const char *msg, int receive_count)
{
    return (struct dsw_store_step_claim_req){
        .key = {.run_id = f->run, .step_key = step, .attempt = attempt},
        .message_id = msg,
        .receive_count = receive_count};
}

/* Claim step (attempt 1) as store 0; returns the token of the won claim. */
static int64_t claim_step(struct fx *f, const char *step)
{
    struct wait w;
    struct dsw_store_step_claim_req req = req_of(f, step, 1, "m-1", 1);
    RUN(f, w, dsw_store_step_claim(f->st[0], &req, on_claim, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.claim.state, DSW_CLAIM_CLAIMED);
    assert_true(w.claim.token > 0);
    return w.claim.token;
}

static int close_step(struct fx *f, const struct dsw_store_step_claim_req *req, int64_t seen,
                      const char *outcome)
{
    struct wait w;
    RUN(f, w, dsw_store_step_close(f->st[0], req, seen, outcome, on_done, &w));
    return w.status;
}

static int launch(struct fx *f, int64_t token, int pid)
{
    struct wait w;
    RUN(f, w, dsw_store_step_launch(f->st[0], token, pid, on_done, &w));
    return w.status;
}

static int exit_step(struct fx *f, int64_t token, int code, int sig, const char *outcome)
{
    struct wait w;
    struct dsw_store_step_exit x = {
        .token = token, .exit_code = code, .term_signal = sig, .outcome = outcome};
    RUN(f, w, dsw_store_step_exit(f->st[0], &x, on_done, &w));
    return w.status;
}

static int release(struct fx *f, int64_t token)
{
    struct wait w;
    RUN(f, w, dsw_store_step_release(f->st[0], token, on_done, &w));
    return w.status;
}

static void load(struct fx *f, struct wait *w, const char *run_id, const char *step, int attempt)
{
    struct dsw_store_step_key k = {run_id, step, attempt};
    RUN(f, *w, dsw_store_step_load(f->st[0], &k, on_load, w));
}

/* A column of the step claim holding token, as text (heap; NULL: no row or NULL). */
static char *col(int64_t token, const char *column)
{
    char tok[24];
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    const char *p[] = {tok, column};
    return tu_pg_str("SELECT to_jsonb(c) ->> $2 FROM dagster_sqs_worker.step_claims c "
                     "WHERE fencing_token = $1::bigint",
                     2, p);
}

static bool has_col(int64_t token, const char *column)
{
    char *v = col(token, column);
    free(v);
    return v != NULL;
}

/* Age a step claim's heartbeat by the database clock. */
static void age(int64_t token, const char *interval)
{
    char tok[24];
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    const char *p[] = {tok, interval};
    PQclear(tu_pg_exec("UPDATE dagster_sqs_worker.step_claims SET heartbeat_at = now() - "
                       "$2::interval WHERE fencing_token = $1::bigint",
                       2, p));
}

static long long steps_where(const char *cond_sql_free)
{
    char *q = dsw_xasprintf("SELECT count(*) FROM dagster_sqs_worker.step_claims WHERE %s",
                            cond_sql_free);
    long long n = tu_pg_ll(q, 0, NULL);
    free(q);
    return n;
}

/* ---- schema --------------------------------------------------------------------------------- */

/* Version 1 as db-init created it before step claims existed. */
static const char *const schema_v1[] = {
    "CREATE SCHEMA dagster_sqs_worker",
    "CREATE SEQUENCE dagster_sqs_worker.fence",
    "CREATE TABLE dagster_sqs_worker.run_claims (run_id text PRIMARY KEY, kind text NOT NULL "
    "DEFAULT 'execute', attempt int NOT NULL DEFAULT 1, worker_id text NOT NULL, fencing_token "
    "bigint NOT NULL, message_id text, receive_count int, state text NOT NULL CHECK (state IN "
    "('claimed', 'running', 'done')), child_pid int, claimed_at timestamptz NOT NULL DEFAULT "
    "now(), heartbeat_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz, exit_code "
    "int, term_signal int, outcome text)",
    "CREATE INDEX run_claims_stale ON dagster_sqs_worker.run_claims (heartbeat_at) WHERE state "
    "<> 'done'",
    "CREATE TABLE dagster_sqs_worker.schema_version (version int PRIMARY KEY, applied_at "
    "timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO dagster_sqs_worker.schema_version (version) VALUES (1)",
};

static const char SQL_CLAIMS_JSON[] =
    "SELECT coalesce(json_agg(c ORDER BY run_id)::text, '') FROM dagster_sqs_worker.run_claims c";

static void test_upgrade_from_v1(void **state)
{
    struct fx f;
    struct wait w;
    char id[37];
    setup_fx(&f, 1, false);
    for (size_t i = 0; i < DSW_ARRAY_LEN(schema_v1); i++)
        PQclear(tu_pg_exec(schema_v1[i], 0, NULL));
    tu_run_new(id, "STARTED", NULL);
    long long old_token = tu_claim_insert(id, "running", "10 minutes", "m-1");
    char *before = tu_pg_str(SQL_CLAIMS_JSON, 0, NULL);
    /* run refuses the old version, naming both. */
    RUN(&f, w, dsw_store_check_schema(f.st[0], on_schema, &w));
    assert_int_equal(w.status, -EPROTO);
    assert_int_equal(w.schema.found, 1);
    assert_int_equal(w.schema.wanted, 2);
    RUN(&f, w, dsw_store_db_init(f.st[0], on_schema, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, 1);
    RUN(&f, w, dsw_store_check_schema(f.st[0], on_schema, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, 2);
    assert_true(tu_eq_free(tu_pg_str("SELECT string_agg(version::text, ',' ORDER BY version) "
                                     "FROM dagster_sqs_worker.schema_version",
                                     0, NULL),
                           "1,2"));
    assert_true(tu_eq_free(tu_pg_str(SQL_CLAIMS_JSON, 0, NULL), before)); /* untouched */
    free(before);
    /* The step table works and takes its tokens from the same sequence. */
    dsw_strlcpy(f.run, id, sizeof(f.run));
    assert_true(claim_step(&f, "s") > old_token);
    RUN(&f, w, dsw_store_db_init(f.st[0], on_schema, &w)); /* again: nothing to do */
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, 2);
    teardown_fx(&f);
}

/* ---- claims --------------------------------------------------------------------------------- */

/* The race's NDB callbacks have all fired. */
static int all_done(void *arg)
{
    const struct wait *w = arg;
    int n = 0;
    for (int i = 0; i < NDB; i++)
        n += w[i].done;
    return n == NDB;
}

static void assert_bad_keys(struct fx *f)
{
    struct wait w = {0};
    char long_key[300];
    memset(long_key, 'k', 256);
    long_key[256] = '\0';
    const char *keys[] = {NULL, "", long_key, "ok"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++) {
        struct dsw_store_step_claim_req req = req_of(f, keys[i], i == 3 ? 0 : 1, NULL, 0);
        assert_int_equal(dsw_store_step_claim(f->st[0], &req, on_claim, &w), -EINVAL);
        assert_int_equal(dsw_store_step_load(f->st[0], &req.key, on_load, &w), -EINVAL);
        assert_int_equal(dsw_store_step_close(f->st[0], &req, 0, "gave_up", on_done, &w), -EINVAL);
    }
    long_key[255] = '\0'; /* 255 is still a key */
    struct dsw_store_step_claim_req ok = req_of(f, long_key, 1, NULL, 0);
    RUN(f, w, dsw_store_step_claim(f->st[0], &ok, on_claim, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(dsw_store_step_close(f->st[0], &ok, 0, NULL, on_done, &w), -EINVAL);
}

static void test_claim_race(void **state)
{
    struct fx f;
    struct wait w[NDB];
    setup_fx(&f, NDB, true);
    memset(w, 0, sizeof(w));
    struct dsw_store_step_claim_req req = req_of(&f, "fan_out.compute[3]", 2, "m-1", 4);
    for (int i = 0; i < NDB; i++)
        assert_int_equal(dsw_store_step_claim(f.st[i], &req, on_claim, &w[i]), 0);
    assert_true(tu_run_until(&f.loop, all_done, w, 20000));
    int winner = -1;
    for (int i = 0; i < NDB; i++)
        if (w[i].status == 0) {
            assert_int_equal(winner, -1);
            winner = i;
        }
    assert_true(winner >= 0);
    for (int i = 0; i < NDB; i++) {
        assert_int_equal(w[i].status, i == winner ? 0 : -EEXIST);
        assert_int_equal(w[i].claim.state, DSW_CLAIM_CLAIMED);
        assert_int_equal(w[i].claim.token, w[winner].claim.token);
        assert_int_equal(w[i].claim.attempt, 2);
        assert_int_equal(w[i].claim.receive_count, 4);
        assert_true(w[i].claim.live);
        assert_string_equal(w[i].kind, "step");
        assert_string_equal(w[i].message, "m-1");
        assert_string_equal(w[i].worker, w[winner].worker);
    }
    assert_int_equal(steps_where("step_key = 'fan_out.compute[3]'"), 1);
    /* Another attempt is another key. */
    int64_t first = w[winner].claim.token;
    req.key.attempt = 3;
    RUN(&f, w[0], dsw_store_step_claim(f.st[0], &req, on_claim, &w[0]));
    assert_int_equal(w[0].status, 0);
    assert_true(w[0].claim.token > first);
    assert_bad_keys(&f);
    teardown_fx(&f);
}

static void on_begun(int status, struct dsw_db_txn *txn, void *arg)
{
    ((struct wait *)arg)->txn = txn;
    on_done(status, arg);
}

static int claim_waits(void *arg)
{
    return tu_pg_ll("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'",
                    0, NULL) > 0;
}

/* The claim's statement waits on an insert of the same key that commits after its snapshot:
 * its SELECT does not see the row, so the row is read again: -EEXIST with the winner. */
static void test_claim_lost_to_later_commit(void **state)
{
    struct fx f;
    struct wait t, w, c;
    setup_fx(&f, 2, true);
    RUN(&f, t, dsw_db_begin(f.db[1], on_begun, &t));
    struct dsw_db_txn *txn = t.txn;
    const char *p[] = {f.run};
    /* The insert has run (its row lock held, uncommitted) before the claim is sent: otherwise
     * the claim could commit first and the insert fail instead of the claim waiting. */
    RUN(&f, t,
        dsw_db_txn_query(txn,
                         "INSERT INTO dagster_sqs_worker.step_claims (run_id, step_key, attempt, "
                         "worker_id, fencing_token, state) VALUES ($1, 'k', 1, 'other:1:1', "
                         "424242, 'running')",
                         1, p, on_sql_done, &t));
    assert_int_equal(t.status, 0);
    struct dsw_store_step_claim_req req = req_of(&f, "k", 1, "m-1", 1);
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_step_claim(f.st[0], &req, on_claim, &w), 0);
    assert_true(tu_run_until(&f.loop, claim_waits, NULL, 10000));
    RUN(&f, c, dsw_db_txn_commit(txn, on_sql_done, &c));
    assert_int_equal(c.status, 0);
    assert_true(tu_run_until(&f.loop, w_done, &w, 10000));
    assert_int_equal(w.status, -EEXIST);
    assert_int_equal(w.claim.state, DSW_CLAIM_RUNNING);
    assert_int_equal(w.claim.token, 424242);
    assert_string_equal(w.worker, "other:1:1");
    teardown_fx(&f);
}

/* ---- fenced writes -------------------------------------------------------------------------- */

static void test_launch_exit_fenced(void **state)
{
    struct fx f;
    setup_fx(&f, 1, true);
    int64_t tok = claim_step(&f, "a"), stale = tok + 1000;
    assert_int_equal(launch(&f, stale, 4242), -ESTALE);
    assert_true(tu_eq_free(col(tok, "state"), "claimed"));
    assert_null(col(tok, "child_pid"));
    assert_int_equal(launch(&f, tok, 4242), 0);
    assert_true(tu_eq_free(col(tok, "state"), "running"));
    assert_true(tu_eq_free(col(tok, "child_pid"), "4242"));
    assert_int_equal(exit_step(&f, stale, 0, 0, NULL), -ESTALE);
    assert_true(tu_eq_free(col(tok, "state"), "running"));
    assert_null(col(tok, "exit_code"));
    assert_int_equal(exit_step(&f, tok, 3, 0, NULL), 0);
    assert_true(tu_eq_free(col(tok, "state"), "done"));
    assert_true(tu_eq_free(col(tok, "exit_code"), "3"));
    assert_null(col(tok, "term_signal"));
    assert_true(tu_eq_free(col(tok, "outcome"), "exited"));
    assert_true(has_col(tok, "finished_at"));
    /* The same exit again (a retried statement whose reply was lost): 0, the row unchanged. */
    char *finished = col(tok, "finished_at");
    assert_int_equal(exit_step(&f, tok, 3, 0, NULL), 0);
    assert_true(tu_eq_free(col(tok, "finished_at"), finished));
    free(finished);
    /* Done: neither another exit nor a launch changes it. */
    assert_int_equal(exit_step(&f, tok, 0, 9, NULL), -ESTALE);
    assert_int_equal(exit_step(&f, tok, 3, 0, "stopped"), -ESTALE);
    assert_int_equal(exit_step(&f, tok, 4, 0, NULL), -ESTALE);
    assert_int_equal(launch(&f, tok, 1), -ESTALE);
    assert_true(tu_eq_free(col(tok, "exit_code"), "3"));
    assert_true(tu_eq_free(col(tok, "child_pid"), "4242"));
    /* Killed, and stopped on request. */
    int64_t b = claim_step(&f, "b"), c = claim_step(&f, "c");
    assert_int_equal(launch(&f, b, 10), 0);
    assert_int_equal(exit_step(&f, b, 0, 9, NULL), 0);
    assert_true(tu_eq_free(col(b, "outcome"), "signaled"));
    assert_true(tu_eq_free(col(b, "term_signal"), "9"));
    assert_null(col(b, "exit_code"));
    assert_int_equal(exit_step(&f, c, 0, 15, "stopped"), 0);
    assert_true(tu_eq_free(col(c, "outcome"), "stopped"));
    /* No child (a failed start): neither an exit code nor a signal. */
    int64_t d = claim_step(&f, "d");
    assert_int_equal(exit_step(&f, d, -1, 0, "spawn_failed"), 0);
    assert_true(tu_eq_free(col(d, "outcome"), "spawn_failed"));
    assert_null(col(d, "exit_code"));
    assert_null(col(d, "term_signal"));
    assert_int_equal(exit_step(&f, d, -1, 0, "spawn_failed"), 0);
    assert_int_equal(dsw_store_step_exit(f.st[0], NULL, on_done, NULL), -EINVAL);
    assert_int_equal(dsw_store_step_launch(f.st[0], c, 1, NULL, NULL), -EINVAL);
    teardown_fx(&f);
}

static void test_close(void **state)
{
    struct fx f;
    setup_fx(&f, 1, true);
    int64_t tok = claim_step(&f, "a");
    struct dsw_store_step_claim_req a = req_of(&f, "a", 1, "m-2", 3);
    assert_int_equal(close_step(&f, &a, tok, "lost"), -ESTALE); /* live: not closed */
    assert_true(tu_eq_free(col(tok, "state"), "claimed"));
    age(tok, "61 seconds");
    assert_int_equal(close_step(&f, &a, tok + 1000, "lost"), -ESTALE); /* not the seen token */
    assert_true(tu_eq_free(col(tok, "state"), "claimed"));
    assert_int_equal(close_step(&f, &a, tok, "lost"), 0);
    assert_true(tu_eq_free(col(tok, "state"), "done"));
    assert_true(tu_eq_free(col(tok, "outcome"), "lost"));
    assert_true(tu_eq_free(col(tok, "message_id"), "m-2"));
    assert_true(tu_eq_free(col(tok, "receive_count"), "3"));
    assert_true(tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.step_claims WHERE "
                         "finished_at IS NOT NULL",
                         0, NULL) == 1);
    assert_int_equal(close_step(&f, &a, tok, "lost"), -ESTALE);  /* done already */
    assert_int_equal(close_step(&f, &a, 0, "gave_up"), -ESTALE); /* the key has a row */
    /* seen_token 0: a done row for a key nobody claimed, once. */
    struct dsw_store_step_claim_req g = req_of(&f, "g", 1, "m-9", 7);
    assert_int_equal(close_step(&f, &g, 0, "gave_up"), 0);
    assert_int_equal(close_step(&f, &g, 0, "gave_up"), -ESTALE);
    assert_int_equal(steps_where("step_key = 'g'"), 1);
    char *t = tu_pg_str("SELECT fencing_token FROM dagster_sqs_worker.step_claims WHERE "
                        "step_key = 'g'",
                        0, NULL);
    int64_t gt = strtoll(t, NULL, 10);
    free(t);
    assert_true(gt > tok);
    assert_true(tu_eq_free(col(gt, "state"), "done"));
    assert_true(tu_eq_free(col(gt, "outcome"), "gave_up"));
    assert_true(tu_eq_free(col(gt, "message_id"), "m-9"));
    assert_true(tu_eq_free(col(gt, "receive_count"), "7"));
    char wid[64];
    snprintf(wid, sizeof(wid), "testhost:%d:0", (int)getpid());
    assert_true(tu_eq_free(col(gt, "worker_id"), wid));
    teardown_fx(&f);
}

static void test_release(void **state)
{
    struct fx f;
    struct wait w;
    setup_fx(&f, 1, true);
    int64_t tok = claim_step(&f, "a");
    assert_int_equal(release(&f, tok + 1000), -ESTALE);
    assert_int_equal(steps_where("step_key = 'a'"), 1);
    assert_int_equal(release(&f, tok), 0);
    assert_int_equal(steps_where("step_key = 'a'"), 0);
    assert_int_equal(release(&f, tok), -ESTALE);
    /* The key can be claimed afresh; a done claim is not released. */
    int64_t again = claim_step(&f, "a");
    assert_true(again > tok);
    assert_int_equal(exit_step(&f, again, 0, 0, NULL), 0);
    assert_int_equal(release(&f, again), -ESTALE);
    assert_int_equal(steps_where("step_key = 'a'"), 1);
    load(&f, &w, f.run, "a", 1);
    assert_int_equal(w.claim.state, DSW_CLAIM_DONE);
    teardown_fx(&f);
}

/* ---- stops, sweep --------------------------------------------------------------------------- */

/* terminate_step's statement (docs/steps.md §4). */
static void request_stop(struct fx *f, const char *step)
{
    const char *p[] = {f->run, step};
    PQclear(tu_pg_exec("UPDATE dagster_sqs_worker.step_claims SET stop_requested_at = now() "
                       "WHERE run_id = $1 AND step_key = $2 AND attempt = 1 AND state <> 'done' "
                       "AND stop_requested_at IS NULL",
                       2, p));
}

static void test_stops(void **state)
{
    struct fx f;
    struct wait w;
    setup_fx(&f, 1, true);
    int64_t t[5] = {claim_step(&f, "a"), claim_step(&f, "b"), claim_step(&f, "c"),
                    claim_step(&f, "d"), 0};
    request_stop(&f, "a");
    request_stop(&f, "c");
    request_stop(&f, "d");
    assert_int_equal(exit_step(&f, t[3], 0, 15, "stopped"), 0); /* d is done */
    struct dsw_store_claim_req rq = {.run_id = f.run, .kind = "execute"};
    RUN(&f, w, dsw_store_claim(f.st[0], &rq, on_claim, &w));
    t[4] = w.claim.token; /* a run claim's token is never a step's */
    RUN(&f, w, dsw_store_step_stops(f.st[0], t, 5, on_stops, &w));
    assert_int_equal(w.status, 0);
    char want[64];
    snprintf(want, sizeof(want), "%lld,%lld", (long long)t[0], (long long)t[2]);
    assert_string_equal(w.text, want);
    RUN(&f, w, dsw_store_step_stops(f.st[0], &t[1], 1, on_stops, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.count, 0);
    static int64_t many[1001];
    assert_int_equal(dsw_store_step_stops(f.st[0], many, 1001, on_stops, &w), -EINVAL);
    assert_int_equal(dsw_store_step_stops(f.st[0], t, 0, on_stops, &w), -EINVAL);
    assert_int_equal(dsw_store_step_stops(f.st[0], NULL, 1, on_stops, &w), -EINVAL);
    RUN(&f, w, dsw_store_step_stops(f.st[0], many, 1000, on_stops, &w));
    assert_int_equal(w.status, 0);
    teardown_fx(&f);
}

static void test_sweep(void **state)
{
    struct fx f;
    struct wait w;
    setup_fx(&f, 1, true);
    int64_t live = claim_step(&f, "live"), stale = claim_step(&f, "stale"),
            running = claim_step(&f, "running"), done = claim_step(&f, "done");
    assert_int_equal(launch(&f, running, 77), 0);
    assert_int_equal(exit_step(&f, done, 1, 0, NULL), 0);
    age(live, "30 seconds");
    age(stale, "61 seconds");
    age(running, "10 minutes");
    age(done, "10 minutes");
    struct dsw_store_claim_req rq = {.run_id = f.run, .kind = "execute"};
    RUN(&f, w, dsw_store_claim(f.st[0], &rq, on_claim, &w));
    PQclear(tu_pg_exec("UPDATE dagster_sqs_worker.run_claims SET heartbeat_at = now() - "
                       "interval '10 minutes'",
                       0, NULL));
    RUN(&f, w, dsw_store_step_sweep(f.st[0], on_count, &w));
    assert_int_equal(w.status, 0);
    assert_int_equal(w.count, 2);
    for (int i = 0; i < 2; i++) {
        int64_t tok = i ? running : stale;
        assert_true(tu_eq_free(col(tok, "state"), "done"));
        assert_true(tu_eq_free(col(tok, "outcome"), "lost"));
        assert_true(has_col(tok, "finished_at"));
    }
    assert_true(tu_eq_free(col(live, "state"), "claimed"));
    assert_true(tu_eq_free(col(done, "outcome"), "exited"));
    assert_true(tu_eq_free(tu_claim_col(f.run, "state"), "claimed")); /* run claims: not here */
    RUN(&f, w, dsw_store_step_sweep(f.st[0], on_count, &w));
    assert_int_equal(w.count, 0);
    assert_int_equal(dsw_store_step_sweep(f.st[0], NULL, NULL), -EINVAL);
    teardown_fx(&f);
}

/* ---- heartbeats ----------------------------------------------------------------------------- */

static int heartbeat(struct fx *f, const char *run_id, int64_t token)
{
    struct wait w;
    RUN(f, w, dsw_store_heartbeat(f->st[0], run_id, token, on_done, &w));
    return w.status;
}

static void test_heartbeat_mixed(void **state)
{
    struct fx f;
    struct wait w;
    char other[37];
    setup_fx(&f, 1, true);
    tu_run_new(other, "STARTED", NULL);
    struct dsw_store_claim_req rq = {.run_id = other, .kind = "execute"};
    RUN(&f, w, dsw_store_claim(f.st[0], &rq, on_claim, &w));
    int64_t run_tok = w.claim.token, s1 = claim_step(&f, "s1"), s2 = claim_step(&f, "s2"),
            lost = claim_step(&f, "lost");
    PQclear(tu_pg_exec("UPDATE dagster_sqs_worker.run_claims SET heartbeat_at = now() - "
                       "interval '50 seconds'",
                       0, NULL));
    for (int i = 0; i < 3; i++)
        age(i == 0 ? s1 : i == 1 ? s2 : lost, "50 seconds");
    assert_int_equal(release(&f, lost), 0);
    const struct dsw_store_lease leases[] = {
        {other, run_tok}, {f.run, s1}, {f.run, lost}, {f.run, s2}, {other, s2}};
    RUN(&f, w, dsw_store_heartbeat_batch(f.st[0], leases, 5, on_leases, &w));
    assert_int_equal(w.status, 0);
    assert_string_equal(w.text, "0,0,-ESTALE,0,-ESTALE");
    assert_int_equal(steps_where("heartbeat_at > now() - interval '10 seconds'"), 2);
    assert_int_equal(tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE "
                              "heartbeat_at > now() - interval '10 seconds'",
                              0, NULL),
                     1);
    /* One lease at a time: a step token, a lost one, a run's. */
    age(s1, "50 seconds");
    assert_int_equal(heartbeat(&f, f.run, s1), 0);
    assert_int_equal(
        steps_where("step_key = 's1' AND heartbeat_at > now() - interval '10 seconds'"), 1);
    assert_int_equal(heartbeat(&f, other, s1), -ESTALE);
    assert_int_equal(heartbeat(&f, f.run, lost), -ESTALE);
    assert_int_equal(exit_step(&f, s2, 0, 0, NULL), 0);
    assert_int_equal(heartbeat(&f, f.run, s2), -ESTALE);
    assert_int_equal(heartbeat(&f, other, run_tok), 0);
    teardown_fx(&f);
}

/* ---- load, summary -------------------------------------------------------------------------- */

static void test_load(void **state)
{
    struct fx f;
    struct wait w;
    char missing[37];
    setup_fx(&f, 1, true);
    tu_uuid(missing);
    load(&f, &w, missing, "a", 1);
    assert_int_equal(w.status, -ENOENT);
    const char *p[] = {f.run};
    PQclear(tu_pg_exec("INSERT INTO run_tags (run_id, key, value) VALUES ($1, "
                       "'dagster/max_runtime', '30')",
                       1, p));
    load(&f, &w, f.run, "a", 1);
    assert_int_equal(w.status, 0);
    assert_int_equal(w.run_status, DSW_STATUS_STARTED);
    assert_true(strlen(w.job) > 0);
    assert_int_equal(w.max_runtime_ms, 30000);
    assert_int_equal(w.claim.state, DSW_CLAIM_NONE);
    int64_t tok = claim_step(&f, "a");
    load(&f, &w, f.run, "a", 1);
    assert_int_equal(w.claim.state, DSW_CLAIM_CLAIMED);
    assert_int_equal(w.claim.token, tok);
    assert_true(w.claim.live);
    assert_string_equal(w.kind, "step");
    assert_string_equal(w.message, "m-1");
    assert_true(w.claim.age_s < 10.0);
    load(&f, &w, f.run, "a", 2); /* another attempt: no row */
    assert_int_equal(w.claim.state, DSW_CLAIM_NONE);
    age(tok, "61 seconds"); /* stale by the database clock */
    load(&f, &w, f.run, "a", 1);
    assert_false(w.claim.live);
    assert_true(w.claim.age_s >= 61.0 && w.claim.age_s < 70.0);
    assert_int_equal(heartbeat(&f, f.run, tok), 0);
    load(&f, &w, f.run, "a", 1);
    assert_true(w.claim.live);
    assert_int_equal(exit_step(&f, tok, 0, 0, NULL), 0);
    load(&f, &w, f.run, "a", 1);
    assert_int_equal(w.claim.state, DSW_CLAIM_DONE);
    assert_false(w.claim.live);
    assert_string_equal(w.outcome, "exited");
    teardown_fx(&f);
}

static void test_summary(void **state)
{
    struct fx f;
    struct wait w;
    setup_fx(&f, 2, true);
    struct dsw_store_claim_req rq = {.run_id = f.run, .kind = "execute"};
    RUN(&f, w, dsw_store_claim(f.st[0], &rq, on_claim, &w));
    claim_step(&f, "a");
    int64_t b = claim_step(&f, "b"), done = claim_step(&f, "done");
    assert_int_equal(launch(&f, b, 5), 0);
    age(b, "2 minutes");
    assert_int_equal(exit_step(&f, done, 0, 0, NULL), 0);
    struct dsw_store_step_claim_req req = req_of(&f, "c", 1, NULL, 1);
    RUN(&f, w, dsw_store_step_claim(f.st[1], &req, on_claim, &w));
    RUN(&f, w, dsw_store_claims_summary(f.st[0], on_summary, &w));
    assert_int_equal(w.status, 0);
    assert_string_equal(w.text, "0 run claimed 1 0;0 step claimed 1 0;0 step running 0 1;"
                                "1 step claimed 1 0;");
    teardown_fx(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upgrade_from_v1),
        cmocka_unit_test(test_claim_race),
        cmocka_unit_test(test_claim_lost_to_later_commit),
        cmocka_unit_test(test_launch_exit_fenced),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_stops),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_heartbeat_mixed),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
