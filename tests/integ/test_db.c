/* db against a real PostgreSQL (DSW_TEST_PG_*): queries, errors, session settings, statement
 * timeout, transactions, LISTEN/NOTIFY, close with work queued, a killed session, and a full
 * server stop/start while work is queued. Every test ends with uv_loop_close() == 0. */
#include "testutil.h"

#include "dsw/db.h"
#include "dsw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct qres {
    int done;
    int status;
    int nrows;
    long long tuples;
    char v0[256];
    char sqlstate[8];
};

static void on_q(int status, const struct dsw_db_result *r, void *arg)
{
    struct qres *q = arg;
    q->done++;
    q->status = status;
    q->nrows = dsw_db_result_nrows(r);
    q->tuples = dsw_db_result_cmd_tuples(r);
    const char *v = dsw_db_result_value(r, 0, 0);
    dsw_strlcpy(q->v0, v ? v : "(null)", sizeof(q->v0));
    const char *s = dsw_db_result_sqlstate(r);
    dsw_strlcpy(q->sqlstate, s ? s : "", sizeof(q->sqlstate));
}

static int q_done(void *arg)
{
    return ((struct qres *)arg)->done;
}

struct fixture {
    uv_loop_t loop;
    struct dsw_db *db;
    int ups, downs, closed;
    char notified[256];
    int nnotify;
};

static void on_state(struct dsw_db *db, bool up, void *arg)
{
    struct fixture *f = arg;
    if (up)
        f->ups++;
    else
        f->downs++;
}

static void on_notify(struct dsw_db *db, const char *chan, const char *payload, void *arg)
{
    struct fixture *f = arg;
    f->nnotify++;
    snprintf(f->notified, sizeof(f->notified), "%s:%s", chan, payload);
}

static int is_up(void *arg)
{
    return ((struct fixture *)arg)->ups > 0;
}

static void open_db(struct fixture *f, uint64_t statement_timeout_ms)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct dsw_db_opts o = {
        .conninfo = tu_need_env("DSW_TEST_PG_CONNINFO"),
        .statement_timeout_ms = statement_timeout_ms,
        .connect_timeout_ms = 5000,
        .backoff_min_ms = 50,
        .backoff_max_ms = 400,
        .on_state = on_state,
        .on_notify = on_notify,
        .arg = f,
    };
    assert_int_equal(dsw_db_init(&f->loop, &o, &f->db), 0);
    assert_true(tu_run_until(&f->loop, is_up, f, 10000));
}

static void on_closed(void *arg)
{
    ((struct fixture *)arg)->closed = 1;
}

static void close_db(struct fixture *f)
{
    dsw_db_close(f->db, on_closed, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, 1);
    tu_loop_close(&f->loop);
}

static void run_q(struct fixture *f, struct qres *q, const char *sql, int n,
                  const char *const *params)
{
    memset(q, 0, sizeof(*q));
    assert_int_equal(dsw_db_query(f->db, sql, n, params, on_q, q), 0);
    assert_true(tu_run_until(&f->loop, q_done, q, 20000));
    assert_int_equal(q->done, 1);
}

static void test_query_params_and_errors(void **state)
{
    struct fixture f;
    struct qres q;
    open_db(&f, 0);
    const char *p[] = {"41", NULL};
    run_q(&f, &q, "SELECT $1::int + 1, $2::text IS NULL", 2, p);
    assert_int_equal(q.status, 0);
    assert_string_equal(q.v0, "42");
    run_q(&f, &q, "SELECT 1 FROM no_such_table", 0, NULL);
    assert_int_equal(q.status, -EIO);
    assert_string_equal(q.sqlstate, "42P01");
    /* The session survives a failed statement. */
    run_q(&f, &q, "SHOW TimeZone", 0, NULL);
    assert_int_equal(q.status, 0);
    assert_string_equal(q.v0, "UTC");
    run_q(&f, &q, "SHOW statement_timeout", 0, NULL);
    assert_string_equal(q.v0, "15s");
    /* The test server runs with synchronous_commit=off; our sessions must not. */
    run_q(&f, &q, "SHOW synchronous_commit", 0, NULL);
    assert_string_equal(q.v0, "on");
    /* A callback never fires from inside the call. */
    memset(&q, 0, sizeof(q));
    assert_int_equal(dsw_db_query(f.db, "SELECT 1", 0, NULL, on_q, &q), 0);
    assert_int_equal(q.done, 0);
    assert_true(tu_run_until(&f.loop, q_done, &q, 5000));
    assert_int_equal(dsw_db_query(f.db, NULL, 0, NULL, on_q, &q), -EINVAL);
    close_db(&f);
}

static void test_statement_timeout(void **state)
{
    struct fixture f;
    struct qres q;
    open_db(&f, 200);
    run_q(&f, &q, "SELECT pg_sleep(3)", 0, NULL);
    assert_int_equal(q.status, -EIO);
    assert_string_equal(q.sqlstate, "57014");
    close_db(&f);
}

/* --- transactions -------------------------------------------------------------------------- */

struct txctx {
    struct dsw_db_txn *txn;
    int begun, status;
    struct qres ins, end;
};

static void on_begin(int status, struct dsw_db_txn *txn, void *arg)
{
    struct txctx *t = arg;
    t->begun = 1;
    t->status = status;
    t->txn = txn;
}

static int tx_begun(void *arg)
{
    return ((struct txctx *)arg)->begun;
}

static void begin(struct fixture *f, struct txctx *t)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(dsw_db_begin(f->db, on_begin, t), 0);
    assert_true(tu_run_until(&f->loop, tx_begun, t, 10000));
    assert_int_equal(t->status, 0);
    assert_non_null(t->txn);
}

static void test_transactions(void **state)
{
    struct fixture f;
    struct qres q, other;
    struct txctx t;
    char name[64];
    open_db(&f, 0);
    snprintf(name, sizeof(name), "dsw_test_tx_%d", (int)getpid());
    const char *p[] = {name};
    run_q(&f, &q, "CREATE TEMP TABLE t (k text)", 0, NULL);

    begin(&f, &t);
    /* A plain query queued now waits until the transaction ends. */
    memset(&other, 0, sizeof(other));
    assert_int_equal(dsw_db_query(f.db, "SELECT count(*) FROM t", 0, NULL, on_q, &other), 0);
    assert_int_equal(dsw_db_txn_query(t.txn, "INSERT INTO t VALUES ($1)", 1, p, on_q, &t.ins), 0);
    assert_int_equal(dsw_db_txn_rollback(t.txn, on_q, &t.end), 0);
    assert_int_equal(dsw_db_txn_query(t.txn, "SELECT 1", 0, NULL, on_q, &q), -EALREADY);
    assert_true(tu_run_until(&f.loop, q_done, &other, 5000));
    assert_int_equal(t.ins.status, 0);
    assert_int_equal(t.ins.tuples, 1);
    assert_int_equal(t.end.done, 1);
    assert_int_equal(t.end.status, 0);
    assert_string_equal(other.v0, "0");

    begin(&f, &t);
    assert_int_equal(dsw_db_txn_query(t.txn, "INSERT INTO t VALUES ($1)", 1, p, on_q, &t.ins), 0);
    assert_int_equal(dsw_db_txn_commit(t.txn, on_q, &t.end), 0);
    assert_true(tu_run_until(&f.loop, q_done, &t.end, 5000));
    assert_int_equal(t.end.status, 0);
    run_q(&f, &q, "SELECT count(*) FROM t", 0, NULL);
    assert_string_equal(q.v0, "1");

    /* A failed statement aborts the transaction: commit reports -EIO, nothing is kept. */
    begin(&f, &t);
    assert_int_equal(dsw_db_txn_query(t.txn, "INSERT INTO t VALUES ($1)", 1, p, on_q, &t.ins), 0);
    assert_int_equal(dsw_db_txn_query(t.txn, "SELECT 1/0", 0, NULL, on_q, &q), 0);
    assert_int_equal(dsw_db_txn_commit(t.txn, on_q, &t.end), 0);
    assert_true(tu_run_until(&f.loop, q_done, &t.end, 5000));
    assert_int_equal(q.status, -EIO);
    assert_int_equal(t.end.status, -EIO);
    run_q(&f, &q, "SELECT count(*) FROM t", 0, NULL);
    assert_string_equal(q.v0, "1");
    close_db(&f);
}

/* A session killed inside a transaction: the statement fails with -ECONNRESET, the commit
 * too, the server kept nothing, and the db reconnects for the next query. */
static void test_killed_in_transaction(void **state)
{
    struct fixture f, killer;
    struct qres q, k;
    struct txctx t;
    char table[64], pid[16];
    open_db(&f, 0);
    open_db(&killer, 0);
    snprintf(table, sizeof(table), "dsw_test_kill_%d", (int)getpid());
    char *sql = dsw_xasprintf("CREATE TABLE %s (k text)", table);
    run_q(&f, &q, sql, 0, NULL);
    free(sql);

    begin(&f, &t);
    sql = dsw_xasprintf("INSERT INTO %s VALUES ('x')", table);
    assert_int_equal(dsw_db_txn_query(t.txn, sql, 0, NULL, on_q, &t.ins), 0);
    free(sql);
    assert_true(tu_run_until(&f.loop, q_done, &t.ins, 5000));
    snprintf(pid, sizeof(pid), "%d", dsw_db_backend_pid(f.db));
    const char *kp[] = {pid};
    memset(&k, 0, sizeof(k));
    assert_int_equal(
        dsw_db_query(killer.db, "SELECT pg_terminate_backend($1::int)", 1, kp, on_q, &k), 0);
    assert_true(tu_run_until(&killer.loop, q_done, &k, 5000));
    assert_string_equal(k.v0, "t");
    assert_int_equal(dsw_db_txn_query(t.txn, "SELECT 1", 0, NULL, on_q, &q), 0);
    memset(&q, 0, sizeof(q));
    assert_true(tu_run_until(&f.loop, q_done, &q, 5000));
    assert_int_equal(q.status, -ECONNRESET);
    assert_int_equal(dsw_db_txn_commit(t.txn, on_q, &t.end), 0);
    assert_true(tu_run_until(&f.loop, q_done, &t.end, 5000));
    assert_int_equal(t.end.status, -ECONNRESET);
    assert_true(f.downs >= 1);

    sql = dsw_xasprintf("SELECT count(*) FROM %s", table);
    run_q(&f, &q, sql, 0, NULL);
    free(sql);
    assert_int_equal(q.status, 0);
    assert_string_equal(q.v0, "0");
    sql = dsw_xasprintf("DROP TABLE %s", table);
    run_q(&f, &q, sql, 0, NULL);
    free(sql);
    assert_int_equal(f.ups, 2);
    close_db(&killer);
    close_db(&f);
}

static int notified(void *arg)
{
    return ((struct fixture *)arg)->nnotify > 0;
}

static void test_listen_notify(void **state)
{
    struct fixture f;
    struct qres q, l;
    open_db(&f, 0);
    memset(&l, 0, sizeof(l));
    assert_int_equal(dsw_db_listen(f.db, "dsw_test_chan", on_q, &l), 0);
    assert_int_equal(dsw_db_listen(f.db, "dsw_test_chan", NULL, NULL), -EEXIST);
    assert_int_equal(dsw_db_listen(f.db, "Bad;name", NULL, NULL), -EINVAL);
    assert_true(tu_run_until(&f.loop, q_done, &l, 5000));
    assert_int_equal(l.status, 0);
    const char *p[] = {"hello"};
    run_q(&f, &q, "SELECT pg_notify('dsw_test_chan', $1)", 1, p);
    assert_true(tu_run_until(&f.loop, notified, &f, 5000));
    assert_string_equal(f.notified, "dsw_test_chan:hello");
    close_db(&f);
}

struct many {
    struct qres q[8];
    struct txctx t;
};

static void test_close_cancels_everything(void **state)
{
    struct fixture f;
    struct many m;
    open_db(&f, 0);
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 8; i++)
        assert_int_equal(dsw_db_query(f.db, "SELECT pg_sleep(0.2)", 0, NULL, on_q, &m.q[i]), 0);
    assert_int_equal(dsw_db_begin(f.db, on_begin, &m.t), 0);
    dsw_db_close(f.db, on_closed, &f);
    assert_int_equal(dsw_db_query(f.db, "SELECT 1", 0, NULL, on_q, &m.q[0]), -ESHUTDOWN);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(m.q[i].done, 1);
        assert_int_equal(m.q[i].status, -ECANCELED);
    }
    assert_int_equal(m.t.begun, 1);
    assert_int_equal(m.t.status, -ECANCELED);
    assert_null(m.t.txn);
    assert_int_equal(f.closed, 1);
    tu_loop_close(&f.loop);
}

/* --- a server restart ---------------------------------------------------------------------- */

static int is_down(void *arg)
{
    return ((struct fixture *)arg)->downs > 0;
}

static int all_done(void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < 8; i++)
        if (!m->q[i].done)
            return 0;
    return m->t.end.done;
}

static void on_begin_then_insert(int status, struct dsw_db_txn *txn, void *arg)
{
    struct txctx *t = arg;
    on_begin(status, txn, arg);
    if (status < 0)
        return;
    const char *p[] = {"after-restart"};
    assert_int_equal(dsw_db_txn_query(txn, "SELECT $1::text", 1, p, on_q, &t->ins), 0);
    assert_int_equal(dsw_db_txn_commit(txn, on_q, &t->end), 0);
}

static void test_server_restart(void **state)
{
    struct fixture f;
    struct many m;
    struct qres q;
    char num[8][16];
    open_db(&f, 0);
    run_q(&f, &q, "SELECT 1", 0, NULL);
    assert_int_equal(tu_pg_ctl("stop"), 0);
    assert_true(tu_run_until(&f.loop, is_down, &f, 10000));
    struct dsw_db_state st;
    dsw_db_get_state(f.db, &st);
    assert_false(st.up);
    assert_true(st.down_since_ms > 0);

    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 8; i++) {
        snprintf(num[i], sizeof(num[i]), "%d", i);
        const char *p[] = {num[i]};
        assert_int_equal(dsw_db_query(f.db, "SELECT $1::int * 10", 1, p, on_q, &m.q[i]), 0);
    }
    assert_int_equal(dsw_db_begin(f.db, on_begin_then_insert, &m.t), 0);
    /* Let the loop run through a few failed reconnects with the work queued. */
    assert_false(tu_run_until(&f.loop, all_done, &m, 600));
    dsw_db_get_state(f.db, &st);
    assert_int_equal(st.queued, 9);

    assert_int_equal(tu_pg_ctl("start"), 0);
    assert_true(tu_run_until(&f.loop, all_done, &m, 30000));
    for (int i = 0; i < 8; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i * 10);
        assert_int_equal(m.q[i].status, 0);
        assert_string_equal(m.q[i].v0, want);
    }
    assert_int_equal(m.t.ins.status, 0);
    assert_string_equal(m.t.ins.v0, "after-restart");
    assert_int_equal(m.t.end.status, 0);
    dsw_db_get_state(f.db, &st);
    assert_true(st.up);
    assert_true(st.reconnects >= 1);
    assert_true(st.errors >= 1);
    close_db(&f);
}

/* Whatever happened in a test, leave the server running for the next one. */
static int ensure_server(void **state)
{
    if (tu_pg_ctl("status") != 0)
        return tu_pg_ctl("start");
    return 0;
}

static void on_closed_int(void *arg)
{
    *(int *)arg = 1;
}

static void test_connect_refused_then_close(void **state)
{
    uv_loop_t loop;
    struct dsw_db *db;
    struct qres q;
    int closed = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct dsw_db_opts o = {.conninfo = "host=127.0.0.1 port=1 user=nobody dbname=none",
                            .backoff_min_ms = 20,
                            .backoff_max_ms = 50};
    assert_int_equal(dsw_db_init(&loop, &o, &db), 0);
    memset(&q, 0, sizeof(q));
    assert_int_equal(dsw_db_query(db, "SELECT 1", 0, NULL, on_q, &q), 0);
    assert_false(tu_run_until(&loop, q_done, &q, 300));
    struct dsw_db_state st;
    dsw_db_get_state(db, &st);
    assert_false(st.up);
    assert_true(st.errors >= 2);
    dsw_db_close(db, on_closed_int, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(q.status, -ECANCELED);
    assert_int_equal(closed, 1);
    tu_loop_close(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_params_and_errors),
        cmocka_unit_test(test_statement_timeout),
        cmocka_unit_test(test_transactions),
        cmocka_unit_test(test_killed_in_transaction),
        cmocka_unit_test(test_listen_notify),
        cmocka_unit_test(test_close_cancels_everything),
        cmocka_unit_test(test_connect_refused_then_close),
        cmocka_unit_test_teardown(test_server_restart, ensure_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
