/* db: libpq's asynchronous API on a libuv loop. PQconnectStartParams/PQconnectPoll and the
 * query traffic share one uv_poll_t (stopped before any libpq call that may swap the socket);
 * one uv_timer_t bounds the connect and spaces the reconnects; one uv_idle_t delivers every
 * completion so that no callback ever fires from inside a public call. */
#include "dsw/db.h"

#include "dsw/log.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PARAMS  64
#define CHANNEL_MAX 63

enum qkind { Q_USER, Q_BEGIN, Q_COMMIT, Q_ROLLBACK, Q_SETUP };
enum state { S_DOWN, S_CONNECTING, S_SETUP, S_UP };

struct dsw_db_result {
    PGresult *pg;
};

struct query {
    struct query *next;
    enum qkind kind;
    char *sql;
    int nparams;
    char **params;
    dsw_db_query_cb cb;
    dsw_db_begin_cb begin_cb;
    void *arg;
    struct dsw_db_txn *txn; /* BEGIN: the txn being begun; otherwise the owning txn or NULL */
    int status;
    struct dsw_db_result res;
};

struct qlist {
    struct query *head, *tail;
    size_t n;
};

struct dsw_db_txn {
    struct dsw_db *db;
    struct qlist q; /* statements waiting to be sent inside the transaction */
    int dead;       /* 0, or why nothing more can be sent (-ECONNRESET, -ECANCELED) */
    bool ending;    /* commit or rollback was called */
    bool failed;    /* a statement failed: the server has aborted the transaction */
};

struct chan {
    struct chan *next;
    char name[CHANNEL_MAX + 1];
};

struct dsw_db {
    uv_loop_t *loop;
    char *conninfo;
    char *appname;
    uint64_t connect_timeout_ms, statement_timeout_ms, backoff_min_ms, backoff_max_ms;
    size_t max_queue;
    dsw_db_state_cb on_state;
    dsw_db_notify_cb on_notify;
    void *arg;

    PGconn *conn;
    enum state state;
    uv_poll_t *poll; /* heap: replaced when libpq changes sockets, freed in its close cb */
    int poll_fd;
    uv_timer_t timer; /* connect timeout, then reconnect delay; never both */
    uv_idle_t idle;   /* runs while completions wait in done */

    struct qlist queue; /* user statements and BEGINs, FIFO */
    struct qlist setup; /* session setup statements, sent before anything else */
    struct qlist done;  /* completions waiting for delivery */
    struct query *inflight;
    struct dsw_db_txn *txn; /* the transaction holding the session */
    struct chan *chans;
    size_t ntxn; /* transactions not yet freed */

    uint64_t backoff_ms, down_since_ms, errors, reconnects;
    bool ever_up, fail_logged;
    uint64_t rng;

    bool closing, final_close;
    int closes_pending;
    dsw_db_close_cb close_cb;
    void *close_arg;
};

static void dispatch(struct dsw_db *db);
static void on_poll(uv_poll_t *h, int status, int events);

/* --- small helpers ------------------------------------------------------------------------- */

static void qpush(struct qlist *l, struct query *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

static void qpush_front(struct qlist *l, struct query *q)
{
    q->next = l->head;
    l->head = q;
    if (!l->tail)
        l->tail = q;
    l->n++;
}

static struct query *qpop(struct qlist *l)
{
    struct query *q = l->head;
    if (q) {
        l->head = q->next;
        if (!l->head)
            l->tail = NULL;
        l->n--;
        q->next = NULL;
    }
    return q;
}

static struct query *query_new(enum qkind kind, const char *sql, int nparams,
                               const char *const *params)
{
    struct query *q = dsw_xcalloc(1, sizeof(*q));
    q->kind = kind;
    q->sql = sql ? dsw_xstrdup(sql) : NULL;
    q->nparams = nparams;
    if (nparams > 0) {
        q->params = dsw_xcalloc((size_t)nparams, sizeof(char *));
        for (int i = 0; i < nparams; i++)
            q->params[i] = params[i] ? dsw_xstrdup(params[i]) : NULL;
    }
    return q;
}

static void query_free(struct query *q)
{
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    free(q->sql);
    if (q->res.pg)
        PQclear(q->res.pg);
    free(q);
}

/* libpq messages end with a newline; the log wants one line. */
static const char *oneline(char *buf, size_t n, const char *msg)
{
    dsw_strlcpy(buf, msg ? msg : "", n);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = (p[1] ? ' ' : '\0');
    return buf;
}

static uint64_t next_rand(struct dsw_db *db)
{
    db->rng ^= db->rng << 13;
    db->rng ^= db->rng >> 7;
    db->rng ^= db->rng << 17;
    return db->rng;
}

/* --- completions --------------------------------------------------------------------------- */

static void txn_free(struct dsw_db *db, struct dsw_db_txn *txn)
{
    db->ntxn--;
    free(txn);
}

static void on_idle(uv_idle_t *h);

/* Record q's outcome and queue its callback for the idle handle. */
static void complete(struct dsw_db *db, struct query *q, int status, PGresult *res)
{
    q->status = status;
    if (q->res.pg && q->res.pg != res)
        PQclear(q->res.pg);
    q->res.pg = res;
    if (q->kind == Q_BEGIN && status != 0 && db->txn == q->txn)
        db->txn = NULL;
    if ((q->kind == Q_COMMIT || q->kind == Q_ROLLBACK) && db->txn == q->txn)
        db->txn = NULL;
    if (q->kind == Q_USER && q->txn && status == -EIO)
        q->txn->failed = true;
    qpush(&db->done, q);
    uv_idle_start(&db->idle, on_idle);
}

static void deliver(struct dsw_db *db, struct query *q)
{
    switch (q->kind) {
    case Q_BEGIN:
        if (q->status == 0) {
            q->begin_cb(0, q->txn, q->arg);
        } else {
            q->begin_cb(q->status, NULL, q->arg);
            txn_free(db, q->txn);
        }
        break;
    case Q_COMMIT:
    case Q_ROLLBACK:
        if (q->cb)
            q->cb(q->status, &q->res, q->arg);
        txn_free(db, q->txn);
        break;
    default:
        if (q->cb)
            q->cb(q->status, q->res.pg ? &q->res : NULL, q->arg);
        break;
    }
    query_free(q);
}

static void maybe_finish_close(struct dsw_db *db);

static void on_idle(uv_idle_t *h)
{
    struct dsw_db *db = h->data;
    struct qlist l = db->done;
    memset(&db->done, 0, sizeof(db->done));
    uv_idle_stop(&db->idle);
    for (struct query *q; (q = qpop(&l));)
        deliver(db, q);
    maybe_finish_close(db);
}

/* Fail every statement of a transaction that can no longer reach the server. A rollback is
 * reported as done: the server discards an unfinished transaction with its session. */
static void txn_fail_all(struct dsw_db *db, struct dsw_db_txn *txn, int status)
{
    txn->dead = status;
    for (struct query *q; (q = qpop(&txn->q));)
        complete(db, q, q->kind == Q_ROLLBACK ? 0 : status, NULL);
}

/* --- the poll handle ----------------------------------------------------------------------- */

static void on_poll_closed(uv_handle_t *h)
{
    struct dsw_db *db = h->data;
    free(h);
    db->closes_pending--;
    maybe_finish_close(db);
}

static void poll_close(struct dsw_db *db)
{
    if (!db->poll)
        return;
    db->closes_pending++;
    uv_close((uv_handle_t *)db->poll, on_poll_closed);
    db->poll = NULL;
    db->poll_fd = -1;
}

static void poll_stop(struct dsw_db *db)
{
    if (db->poll)
        uv_poll_stop(db->poll);
}

/* Watch libpq's current socket; a new socket number gets a new handle. */
static int watch(struct dsw_db *db, int events)
{
    int fd = PQsocket(db->conn);
    if (fd < 0)
        return -EBADF;
    if (db->poll && db->poll_fd != fd)
        poll_close(db);
    if (!db->poll) {
        db->poll = dsw_xmalloc(sizeof(*db->poll));
        int r = uv_poll_init(db->loop, db->poll, fd);
        if (r < 0) {
            free(db->poll);
            db->poll = NULL;
            return r;
        }
        db->poll->data = db;
        db->poll_fd = fd;
    }
    return uv_poll_start(db->poll, events, on_poll);
}

/* --- connection lifecycle ------------------------------------------------------------------ */

static void schedule_retry(struct dsw_db *db);

static void drop_conn(struct dsw_db *db)
{
    poll_stop(db);
    poll_close(db);
    if (db->conn)
        PQfinish(db->conn);
    db->conn = NULL;
    uv_timer_stop(&db->timer);
    for (struct query *q; (q = qpop(&db->setup));)
        query_free(q);
}

/* The in-flight statement when the session goes away: a BEGIN had no effect and simply waits
 * for the next session; anything else may or may not have run. */
static void fail_inflight(struct dsw_db *db, int status)
{
    struct query *q = db->inflight;
    db->inflight = NULL;
    if (!q)
        return;
    if (q->res.pg)
        PQclear(q->res.pg);
    q->res.pg = NULL;
    if (q->kind == Q_SETUP)
        query_free(q);
    else if (q->kind == Q_BEGIN && status == -ECONNRESET && db->txn == q->txn)
        qpush_front(&db->queue, q);
    else
        complete(db, q, q->kind == Q_ROLLBACK ? 0 : status, NULL);
    if (q->kind == Q_BEGIN && db->txn == q->txn)
        db->txn = NULL;
}

static void conn_failed(struct dsw_db *db, const char *why)
{
    char line[512];
    db->errors++;
    if (!db->fail_logged)
        dsw_warn("db: cannot connect: %s", oneline(line, sizeof(line), why));
    else
        dsw_debug("db: cannot connect: %s", oneline(line, sizeof(line), why));
    db->fail_logged = true;
    fail_inflight(db, -ECONNRESET);
    drop_conn(db);
    db->state = S_DOWN;
    schedule_retry(db);
}

static void lost(struct dsw_db *db, const char *why)
{
    char line[512];
    bool was_up = db->state == S_UP;
    if (db->state != S_UP) {
        conn_failed(db, why);
        return;
    }
    db->errors++;
    dsw_warn("db: session lost: %s", oneline(line, sizeof(line), why));
    db->fail_logged = true;
    fail_inflight(db, -ECONNRESET);
    if (db->txn) {
        struct dsw_db_txn *txn = db->txn;
        db->txn = NULL;
        txn_fail_all(db, txn, -ECONNRESET);
    }
    drop_conn(db);
    db->state = S_DOWN;
    db->down_since_ms = dsw_now_ms();
    schedule_retry(db);
    if (was_up && db->on_state)
        db->on_state(db, false, db->arg);
}

static void go_up(struct dsw_db *db)
{
    uv_timer_stop(&db->timer);
    db->state = S_UP;
    db->backoff_ms = db->backoff_min_ms;
    if (db->ever_up)
        db->reconnects++;
    if (db->fail_logged)
        dsw_info("db: connected");
    db->ever_up = true;
    db->fail_logged = false;
    db->down_since_ms = 0;
    if (db->on_state) {
        db->on_state(db, true, db->arg);
        if (db->closing || db->state != S_UP)
            return;
    }
    dispatch(db);
}

static void on_connect_timeout(uv_timer_t *t)
{
    conn_failed(t->data, "timeout while connecting");
}

static void connected(struct dsw_db *db)
{
    char ms[32];
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)db->statement_timeout_ms);
    const char *p[] = {ms};
    if (PQsetnonblocking(db->conn, 1) != 0) {
        conn_failed(db, PQerrorMessage(db->conn));
        return;
    }
    db->state = S_SETUP;
    /* synchronous_commit = on whatever the server's default: a message is deleted once its
     * outcome's COMMIT returns, so that COMMIT must mean the outcome survives a server crash
     * (found by the fault run: a server with synchronous_commit=off lost three committed
     * outcomes whose messages were already gone). */
    qpush(&db->setup, query_new(Q_SETUP,
                                "SELECT pg_catalog.set_config('TimeZone', 'UTC', false), "
                                "pg_catalog.set_config('statement_timeout', $1, false), "
                                "pg_catalog.set_config('synchronous_commit', 'on', false)",
                                1, p));
    for (struct chan *c = db->chans; c; c = c->next) {
        char sql[CHANNEL_MAX + 16];
        snprintf(sql, sizeof(sql), "LISTEN \"%s\"", c->name);
        qpush(&db->setup, query_new(Q_SETUP, sql, 0, NULL));
    }
    dispatch(db);
}

static void connect_poll(struct dsw_db *db)
{
    int r;
    poll_stop(db); /* PQconnectPoll may close the socket and open another */
    switch (PQconnectPoll(db->conn)) {
    case PGRES_POLLING_READING:
        r = watch(db, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        r = watch(db, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        connected(db);
        return;
    default:
        conn_failed(db, PQerrorMessage(db->conn));
        return;
    }
    if (r < 0)
        conn_failed(db, uv_strerror(r));
}

/* Server notices (and the FATAL text of a terminated session) go to our log, not stderr. */
static void on_notice(void *arg, const char *message)
{
    char line[512];
    dsw_info("db: server says: %s", oneline(line, sizeof(line), message));
}

static void start_connect(struct dsw_db *db)
{
    const char *kw[] = {"dbname", "fallback_application_name", NULL};
    const char *val[] = {db->conninfo, db->appname, NULL};
    db->conn = PQconnectStartParams(kw, val, 1);
    if (!db->conn || PQstatus(db->conn) == CONNECTION_BAD) {
        conn_failed(db, db->conn ? PQerrorMessage(db->conn) : "out of memory");
        return;
    }
    PQsetNoticeProcessor(db->conn, on_notice, db);
    db->state = S_CONNECTING;
    uv_timer_start(&db->timer, on_connect_timeout, db->connect_timeout_ms, 0);
    int r = watch(db, UV_WRITABLE);
    if (r < 0)
        conn_failed(db, uv_strerror(r));
}

static void on_retry(uv_timer_t *t)
{
    start_connect(t->data);
}

/* Equal jitter: half the delay fixed, half random; the delay doubles up to the cap. */
static void schedule_retry(struct dsw_db *db)
{
    if (db->closing)
        return;
    uint64_t d = db->backoff_ms;
    uint64_t delay = d / 2 + next_rand(db) % (d / 2 + 1);
    db->backoff_ms = DSW_MIN(d * 2, db->backoff_max_ms);
    uv_timer_start(&db->timer, on_retry, delay, 0);
}

/* --- query traffic ------------------------------------------------------------------------- */

static int flush(struct dsw_db *db)
{
    int r = PQflush(db->conn);
    if (r < 0)
        return -EIO;
    return watch(db, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void send_query(struct dsw_db *db, struct query *q)
{
    db->inflight = q;
    if (q->kind == Q_BEGIN)
        db->txn = q->txn;
    if (!PQsendQueryParams(db->conn, q->sql, q->nparams, NULL, (const char *const *)q->params, NULL,
                           NULL, 0) ||
        flush(db) < 0)
        lost(db, PQerrorMessage(db->conn));
}

static void dispatch(struct dsw_db *db)
{
    struct query *q = NULL;
    if (db->inflight || !db->conn || db->closing)
        return;
    if (db->state == S_SETUP)
        q = qpop(&db->setup);
    else if (db->state == S_UP && db->txn)
        q = qpop(&db->txn->q);
    else if (db->state == S_UP)
        q = qpop(&db->queue);
    if (q)
        send_query(db, q);
}

static int result_status(struct dsw_db *db, struct query *q, PGresult *res)
{
    char line[1024];
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        if (q->kind == Q_COMMIT && strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
            return -EIO;
        return 0;
    }
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    db->errors++;
    dsw_warn(
        "db: statement failed: %s: %s", state ? state : "-",
        oneline(line, sizeof(line),
                res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : PQerrorMessage(db->conn)));
    return -EIO;
}

static void finish_inflight(struct dsw_db *db, PGresult *res)
{
    struct query *q = db->inflight;
    int status = result_status(db, q, res);
    db->inflight = NULL;
    if (q->kind != Q_SETUP) {
        complete(db, q, status, res);
        dispatch(db);
        return;
    }
    if (res)
        PQclear(res);
    query_free(q);
    if (status < 0)
        lost(db, "session setup failed");
    else if (!db->setup.head)
        go_up(db);
    else
        dispatch(db);
}

/* Read the results of the in-flight statement as they arrive (kept on the query between
 * poll events); keep the error when there is one. */
static void collect(struct dsw_db *db)
{
    struct query *q = db->inflight;
    while (!PQisBusy(db->conn)) {
        PGresult *r = PQgetResult(db->conn);
        if (!r) {
            PGresult *keep = q->res.pg;
            q->res.pg = NULL;
            if (PQstatus(db->conn) == CONNECTION_BAD) {
                if (keep)
                    PQclear(keep);
                lost(db, PQerrorMessage(db->conn));
                return;
            }
            finish_inflight(db, keep);
            return;
        }
        if (!q->res.pg || PQresultStatus(r) == PGRES_FATAL_ERROR) {
            if (q->res.pg)
                PQclear(q->res.pg);
            q->res.pg = r;
        } else {
            PQclear(r);
        }
    }
}

static void notifies(struct dsw_db *db)
{
    PGnotify *n;
    while (db->conn && (n = PQnotifies(db->conn))) {
        if (db->on_notify)
            db->on_notify(db, n->relname, n->extra ? n->extra : "", db->arg);
        PQfreemem(n);
        if (db->closing)
            return;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct dsw_db *db = h->data;
    if (db->state == S_CONNECTING) {
        connect_poll(db);
        return;
    }
    if (status < 0) {
        lost(db, uv_strerror(status));
        return;
    }
    if ((events & UV_WRITABLE) && flush(db) < 0) {
        lost(db, PQerrorMessage(db->conn));
        return;
    }
    if (!(events & UV_READABLE))
        return;
    if (!PQconsumeInput(db->conn)) {
        lost(db, PQerrorMessage(db->conn));
        return;
    }
    notifies(db);
    if (db->closing || !db->conn)
        return;
    if (db->inflight)
        collect(db);
    else if (PQstatus(db->conn) == CONNECTION_BAD)
        lost(db, PQerrorMessage(db->conn));
}

/* --- public API ---------------------------------------------------------------------------- */

int dsw_db_init(uv_loop_t *loop, const struct dsw_db_opts *o, struct dsw_db **out)
{
    if (!o || !o->conninfo || !*o->conninfo)
        return -EINVAL;
    struct dsw_db *db = dsw_xcalloc(1, sizeof(*db));
    db->loop = loop;
    db->conninfo = dsw_xstrdup(o->conninfo);
    db->appname = dsw_xstrdup(o->application_name ? o->application_name : "dagster-sqs-worker");
    db->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 10000;
    db->statement_timeout_ms = o->statement_timeout_ms ? o->statement_timeout_ms : 15000;
    db->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : 100;
    db->backoff_max_ms = DSW_MAX(o->backoff_max_ms ? o->backoff_max_ms : 30000, db->backoff_min_ms);
    db->max_queue = o->max_queue ? o->max_queue : 10000;
    db->on_state = o->on_state;
    db->on_notify = o->on_notify;
    db->arg = o->arg;
    db->backoff_ms = db->backoff_min_ms;
    db->down_since_ms = dsw_now_ms();
    db->rng = dsw_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)db;
    db->rng |= 1;
    db->poll_fd = -1;
    uv_timer_init(loop, &db->timer);
    uv_idle_init(loop, &db->idle);
    db->timer.data = db;
    db->idle.data = db;
    start_connect(db);
    *out = db;
    return 0;
}

static void on_final_close(uv_handle_t *h)
{
    struct dsw_db *db = h->data;
    db->closes_pending--;
    maybe_finish_close(db);
}

/* Free the db once it is closing, every transaction has ended, every completion has been
 * delivered and every handle has closed. */
static void maybe_finish_close(struct dsw_db *db)
{
    if (!db->closing || db->ntxn || db->done.head)
        return;
    if (!db->final_close) {
        db->final_close = true;
        poll_close(db);
        db->closes_pending += 2;
        uv_close((uv_handle_t *)&db->timer, on_final_close);
        uv_close((uv_handle_t *)&db->idle, on_final_close);
        return;
    }
    if (db->closes_pending)
        return;
    dsw_db_close_cb cb = db->close_cb;
    void *arg = db->close_arg;
    for (struct chan *c = db->chans, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(db->conninfo);
    free(db->appname);
    free(db);
    if (cb)
        cb(arg);
}

void dsw_db_close(struct dsw_db *db, dsw_db_close_cb cb, void *arg)
{
    if (db->closing)
        return;
    db->closing = true;
    db->close_cb = cb;
    db->close_arg = arg;
    fail_inflight(db, -ECANCELED);
    drop_conn(db);
    db->state = S_DOWN;
    for (struct query *q; (q = qpop(&db->queue));)
        complete(db, q, -ECANCELED, NULL);
    if (db->txn) {
        struct dsw_db_txn *txn = db->txn;
        db->txn = NULL;
        txn_fail_all(db, txn, -ECANCELED);
    }
    maybe_finish_close(db);
}

static int check_query(const char *sql, int nparams, const char *const *params)
{
    if (!sql || nparams < 0 || nparams > MAX_PARAMS || (nparams > 0 && !params))
        return -EINVAL;
    return 0;
}

int dsw_db_query(struct dsw_db *db, const char *sql, int nparams, const char *const *params,
                 dsw_db_query_cb cb, void *arg)
{
    int r = check_query(sql, nparams, params);
    if (r < 0)
        return r;
    if (db->closing)
        return -ESHUTDOWN;
    if (db->queue.n >= db->max_queue)
        return -ENOBUFS;
    struct query *q = query_new(Q_USER, sql, nparams, params);
    q->cb = cb;
    q->arg = arg;
    qpush(&db->queue, q);
    dispatch(db);
    return 0;
}

int dsw_db_begin(struct dsw_db *db, dsw_db_begin_cb cb, void *arg)
{
    if (!cb)
        return -EINVAL;
    if (db->closing)
        return -ESHUTDOWN;
    if (db->queue.n >= db->max_queue)
        return -ENOBUFS;
    struct query *q = query_new(Q_BEGIN, "BEGIN", 0, NULL);
    q->begin_cb = cb;
    q->arg = arg;
    q->txn = dsw_xcalloc(1, sizeof(*q->txn));
    q->txn->db = db;
    db->ntxn++;
    qpush(&db->queue, q);
    dispatch(db);
    return 0;
}

/* Queue q inside txn, or complete it at once when the session it lived on is gone. */
static void txn_push(struct dsw_db_txn *txn, struct query *q)
{
    struct dsw_db *db = txn->db;
    q->txn = txn;
    if (txn->dead) {
        complete(db, q, q->kind == Q_ROLLBACK ? 0 : txn->dead, NULL);
        return;
    }
    qpush(&txn->q, q);
    dispatch(db);
}

int dsw_db_txn_query(struct dsw_db_txn *txn, const char *sql, int nparams,
                     const char *const *params, dsw_db_query_cb cb, void *arg)
{
    int r = check_query(sql, nparams, params);
    if (r < 0)
        return r;
    if (txn->ending)
        return -EALREADY;
    struct query *q = query_new(Q_USER, sql, nparams, params);
    q->cb = cb;
    q->arg = arg;
    txn_push(txn, q);
    return 0;
}

static int txn_end(struct dsw_db_txn *txn, enum qkind kind, dsw_db_query_cb cb, void *arg)
{
    if (txn->ending)
        return -EALREADY;
    txn->ending = true;
    struct query *q = query_new(kind, kind == Q_COMMIT ? "COMMIT" : "ROLLBACK", 0, NULL);
    q->cb = cb;
    q->arg = arg;
    txn_push(txn, q);
    return 0;
}

int dsw_db_txn_commit(struct dsw_db_txn *txn, dsw_db_query_cb cb, void *arg)
{
    return txn_end(txn, Q_COMMIT, cb, arg);
}

int dsw_db_txn_rollback(struct dsw_db_txn *txn, dsw_db_query_cb cb, void *arg)
{
    return txn_end(txn, Q_ROLLBACK, cb, arg);
}

static bool channel_ok(const char *c)
{
    size_t n = c ? strlen(c) : 0;
    if (n == 0 || n > CHANNEL_MAX || (c[0] >= '0' && c[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((c[i] >= 'a' && c[i] <= 'z') || (c[i] >= '0' && c[i] <= '9') || c[i] == '_'))
            return false;
    return true;
}

int dsw_db_listen(struct dsw_db *db, const char *channel, dsw_db_query_cb cb, void *arg)
{
    char sql[CHANNEL_MAX + 16];
    if (!channel_ok(channel))
        return -EINVAL;
    if (db->closing)
        return -ESHUTDOWN;
    for (struct chan *c = db->chans; c; c = c->next)
        if (strcmp(c->name, channel) == 0)
            return -EEXIST;
    struct chan *c = dsw_xcalloc(1, sizeof(*c));
    dsw_strlcpy(c->name, channel, sizeof(c->name));
    c->next = db->chans;
    db->chans = c;
    /* The name was checked to be a plain identifier; LISTEN takes no parameters. */
    snprintf(sql, sizeof(sql), "LISTEN \"%s\"", channel);
    struct query *q = query_new(Q_USER, sql, 0, NULL);
    q->cb = cb;
    q->arg = arg;
    qpush(&db->queue, q);
    dispatch(db);
    return 0;
}

void dsw_db_get_state(const struct dsw_db *db, struct dsw_db_state *out)
{
    out->up = db->state == S_UP;
    out->down_since_ms = out->up ? 0 : db->down_since_ms;
    out->errors = db->errors;
    out->reconnects = db->reconnects;
    out->queued = db->queue.n;
}

int dsw_db_backend_pid(const struct dsw_db *db)
{
    return db->conn && db->state == S_UP ? PQbackendPID(db->conn) : 0;
}

/* --- results ------------------------------------------------------------------------------- */

static PGresult *pg(const struct dsw_db_result *r)
{
    return r ? r->pg : NULL;
}

int dsw_db_result_nrows(const struct dsw_db_result *res)
{
    return pg(res) ? PQntuples(pg(res)) : 0;
}

int dsw_db_result_ncols(const struct dsw_db_result *res)
{
    return pg(res) ? PQnfields(pg(res)) : 0;
}

static bool in_range(const struct dsw_db_result *res, int row, int col)
{
    return pg(res) && row >= 0 && col >= 0 && row < PQntuples(pg(res)) && col < PQnfields(pg(res));
}

bool dsw_db_result_isnull(const struct dsw_db_result *res, int row, int col)
{
    return !in_range(res, row, col) || PQgetisnull(pg(res), row, col);
}

const char *dsw_db_result_value(const struct dsw_db_result *res, int row, int col)
{
    return dsw_db_result_isnull(res, row, col) ? NULL : PQgetvalue(pg(res), row, col);
}

long long dsw_db_result_cmd_tuples(const struct dsw_db_result *res)
{
    const char *n = pg(res) ? PQcmdTuples(pg(res)) : "";
    return *n ? strtoll(n, NULL, 10) : 0;
}

int dsw_db_result_int64(const struct dsw_db_result *res, int row, int col, int64_t *out)
{
    const char *v = dsw_db_result_value(res, row, col);
    char *end;
    if (!v)
        return -ENOENT;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return -EINVAL;
    *out = n;
    return 0;
}

bool dsw_db_result_bool(const struct dsw_db_result *res, int row, int col)
{
    const char *v = dsw_db_result_value(res, row, col);
    return v && strcmp(v, "t") == 0;
}

static bool failed(const struct dsw_db_result *res)
{
    if (!pg(res))
        return false;
    ExecStatusType st = PQresultStatus(pg(res));
    return st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY;
}

const char *dsw_db_result_sqlstate(const struct dsw_db_result *res)
{
    return failed(res) ? PQresultErrorField(pg(res), PG_DIAG_SQLSTATE) : NULL;
}

const char *dsw_db_result_error(const struct dsw_db_result *res)
{
    return failed(res) ? PQresultErrorField(pg(res), PG_DIAG_MESSAGE_PRIMARY) : NULL;
}
