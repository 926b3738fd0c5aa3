/* db: one PostgreSQL session driven by libpq in non-blocking mode on a libuv loop. It connects
 * (and reconnects with capped, jittered backoff), sets TimeZone=UTC and statement_timeout on
 * every session, runs a FIFO of parameterized queries one at a time, runs transactions that
 * hold the session until they end, and delivers LISTEN/NOTIFY payloads. libpq stays inside
 * db.c: results are read through the small accessor API below.
 *
 * Callback rule for every function taking a callback: it returns 0 and the callback then fires
 * exactly once, never from inside the call (also on close, with -ECANCELED); or it returns a
 * negative errno and the callback never fires. */
#ifndef DSW_DB_H
#define DSW_DB_H

#include "dsw/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct dsw_db;
struct dsw_db_txn;
struct dsw_db_result;

/* The session went up (up = true) or down; fires from the loop, never from inside a call. After
 * every "up" the session has TimeZone=UTC, the statement_timeout and every LISTEN again;
 * notifications sent while it was down are lost, so a listener should re-poll on "up". */
typedef void (*dsw_db_state_cb)(struct dsw_db *db, bool up, void *arg);
/* A NOTIFY arrived on a channel passed to dsw_db_listen. Both strings are borrowed for the
 * duration of the call. */
typedef void (*dsw_db_notify_cb)(struct dsw_db *db, const char *channel, const char *payload,
                                 void *arg);

/* Options of dsw_db_init. Zero values take the documented defaults. Strings are copied. */
struct dsw_db_opts {
    const char *conninfo;          /* libpq keyword string or URI (required; never logged) */
    uint64_t connect_timeout_ms;   /* connect + session setup, 10000 */
    uint64_t statement_timeout_ms; /* SET statement_timeout on every session, 15000 */
    uint64_t backoff_min_ms;       /* first reconnect delay, 100 */
    uint64_t backoff_max_ms;       /* reconnect delay cap, 30000 */
    size_t max_queue;              /* queued (unsent) queries before -ENOBUFS, 10000 */
    const char *application_name;  /* fallback_application_name, "dagster-sqs-worker" */
    dsw_db_state_cb on_state;      /* optional */
    dsw_db_notify_cb on_notify;    /* optional */
    void *arg;                     /* passed to on_state and on_notify */
};

/* A snapshot of the session state, for health checks, STATUS= and metrics. */
struct dsw_db_state {
    bool up;                /* the session is connected and set up */
    uint64_t down_since_ms; /* dsw_now_ms() when it last went down (or init); 0 while up */
    uint64_t errors;        /* failed connects, lost sessions and failed statements so far */
    uint64_t reconnects;    /* sessions established after the first */
    size_t queued;          /* queries waiting to be sent (including unended transactions) */
};

/* A query finished. status: 0 (res holds the rows or command tag), -EIO (the server reported an
 * error: res carries SQLSTATE and message; the adapter has logged it), -ECONNRESET (the session
 * was lost with the query sent: it may or may not have run), -ETIMEDOUT never (statement
 * timeouts are -EIO with SQLSTATE 57014), -ECANCELED (dsw_db_close). res is borrowed for the
 * duration of the callback and may be NULL when status is neither 0 nor -EIO. */
typedef void (*dsw_db_query_cb)(int status, const struct dsw_db_result *res, void *arg);
/* A transaction began (status 0, txn is the caller's until it calls dsw_db_txn_commit or
 * dsw_db_txn_rollback), or could not begin (txn NULL; -EIO, -ECONNRESET, -ECANCELED). */
typedef void (*dsw_db_begin_cb)(int status, struct dsw_db_txn *txn, void *arg);
/* dsw_db_close finished: every handle is closed and the db's memory is freed. */
typedef void (*dsw_db_close_cb)(void *arg);

/* Create the session object on loop and start connecting at once (errors while connecting are
 * retried forever with backoff; queries wait in the FIFO meanwhile). *out is heap memory owned
 * by the db itself, released by dsw_db_close. Returns 0 or -EINVAL (missing conninfo). */
int dsw_db_init(uv_loop_t *loop, const struct dsw_db_opts *opts, struct dsw_db **out) DSW_WUR;

/* Stop: every queued or in-flight query and pending begin fails with -ECANCELED, open
 * transactions become dead (their next calls fail with -ECANCELED), the connection is closed.
 * The owner must still end each transaction it holds (commit or rollback) from its callbacks;
 * once all are ended and every handle is closed, the memory is freed and cb(arg) fires (cb may
 * be NULL). Calls other than ending a transaction return -ESHUTDOWN from then on. */
void dsw_db_close(struct dsw_db *db, dsw_db_close_cb cb, void *arg);

/* Queue one statement (exactly one, parameterized with $1..$n; params are text, NULL is SQL
 * NULL; sql and params are copied). It is sent when the session is up and no transaction holds
 * it; while the session is down it waits. Returns 0, -EINVAL (nparams < 0 or > 64, no sql),
 * -ENOBUFS (queue full), -ESHUTDOWN (closing). */
int dsw_db_query(struct dsw_db *db, const char *sql, int nparams, const char *const *params,
                 dsw_db_query_cb cb, void *arg) DSW_WUR;

/* Queue a BEGIN. When it reaches the head of the FIFO the transaction holds the session: only
 * its own queries are sent until it ends. cb fires with the txn handle. If the session is lost
 * inside the transaction the server rolls it back: the txn's in-flight query fails with
 * -ECONNRESET and its later queries and commit fail with -ECONNRESET too (rollback reports 0).
 * Returns 0, -ENOBUFS or -ESHUTDOWN. */
int dsw_db_begin(struct dsw_db *db, dsw_db_begin_cb cb, void *arg) DSW_WUR;

/* Queue a statement inside txn (same rules as dsw_db_query). Queries of one transaction run in
 * call order. A statement error (-EIO) aborts the transaction on the server: later queries fail
 * with -EIO (SQLSTATE 25P02) until the owner rolls back. Returns 0, -EINVAL or -EALREADY (the
 * txn is being ended). */
int dsw_db_txn_query(struct dsw_db_txn *txn, const char *sql, int nparams,
                     const char *const *params, dsw_db_query_cb cb, void *arg) DSW_WUR;

/* End txn with COMMIT after its queued queries. cb status: 0 committed; -EIO when the server
 * refused or the transaction had failed (it was rolled back); -ECONNRESET when the session was
 * lost before or during COMMIT (outcome unknown if during); -ECANCELED on close. The txn memory
 * is freed after cb returns. Returns 0 or -EALREADY (already ending: no callback). */
int dsw_db_txn_commit(struct dsw_db_txn *txn, dsw_db_query_cb cb, void *arg) DSW_WUR;
/* End txn with ROLLBACK (cb status 0 also when the session was already lost, which rolled it
 * back). cb may be NULL. Same return values as dsw_db_txn_commit. */
int dsw_db_txn_rollback(struct dsw_db_txn *txn, dsw_db_query_cb cb, void *arg) DSW_WUR;

/* LISTEN on channel ([a-z_][a-z0-9_]*, at most 63 bytes) now and after every reconnect;
 * notifications go to opts.on_notify. cb (may be NULL) fires when the first LISTEN completed.
 * Returns 0, -EINVAL (bad name), -EEXIST (already listening), -ESHUTDOWN. */
int dsw_db_listen(struct dsw_db *db, const char *channel, dsw_db_query_cb cb, void *arg) DSW_WUR;

/* The current state (see struct dsw_db_state). */
void dsw_db_get_state(const struct dsw_db *db, struct dsw_db_state *out);
/* The server process id of the current session, 0 when down (tests use it to kill sessions). */
int dsw_db_backend_pid(const struct dsw_db *db);

/* Result accessors. They accept NULL (as an empty result). Values are borrowed from the result
 * and valid during the query callback only; copy what you keep. */
int dsw_db_result_nrows(const struct dsw_db_result *res);
int dsw_db_result_ncols(const struct dsw_db_result *res);
/* Text of a field, NULL when SQL NULL or out of range. */
const char *dsw_db_result_value(const struct dsw_db_result *res, int row, int col);
bool dsw_db_result_isnull(const struct dsw_db_result *res, int row, int col);
/* Rows affected by INSERT/UPDATE/DELETE (also with RETURNING), 0 otherwise. */
long long dsw_db_result_cmd_tuples(const struct dsw_db_result *res);
/* A field as a signed integer: 0, -ENOENT (NULL or out of range), -EINVAL (not an integer). */
int dsw_db_result_int64(const struct dsw_db_result *res, int row, int col, int64_t *out) DSW_WUR;
/* A boolean field ("t"/"f") as 1/0; NULL and anything else read as 0. */
bool dsw_db_result_bool(const struct dsw_db_result *res, int row, int col);
/* SQLSTATE of a failed statement ("23505"...), NULL when it did not fail. */
const char *dsw_db_result_sqlstate(const struct dsw_db_result *res);
/* The server's primary error message, NULL when it did not fail. */
const char *dsw_db_result_error(const struct dsw_db_result *res);

#endif
