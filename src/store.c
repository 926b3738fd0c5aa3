/* store: every SQL statement of the daemon, over dsw_db. Single statements for reads and claim
 * CAS (claim, takeover, heartbeat, sweep); small step machines over one dsw_db transaction for
 * writes (launch, exit, outcome, enqueue's STARTING, db-init), each fenced by the claim token
 * and never overwriting a terminal run status. Event JSON comes from the dagster module. The
 * step claims' statements are in store_step.c, over the call machinery shared in store_int.h. */
#include "dsw/store.h"

#include "store_int.h"

#include "dsw/dagster.h"
#include "dsw/failpoint.h"
#include "dsw/log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_MAX 1000
/* pg_advisory_xact_lock key serializing concurrent db-init runs ("dsw-init"). */
#define INIT_LOCK_KEY "7238079893510318452"

/* ---- statuses ------------------------------------------------------------------------------ */

static const char *const status_names[] = {
    [DSW_STATUS_UNKNOWN] = "UNKNOWN",         [DSW_STATUS_QUEUED] = "QUEUED",
    [DSW_STATUS_NOT_STARTED] = "NOT_STARTED", [DSW_STATUS_MANAGED] = "MANAGED",
    [DSW_STATUS_STARTING] = "STARTING",       [DSW_STATUS_STARTED] = "STARTED",
    [DSW_STATUS_SUCCESS] = "SUCCESS",         [DSW_STATUS_FAILURE] = "FAILURE",
    [DSW_STATUS_CANCELING] = "CANCELING",     [DSW_STATUS_CANCELED] = "CANCELED",
};

const char *dsw_store_status_name(enum dsw_store_status s)
{
    return (size_t)s < DSW_ARRAY_LEN(status_names) ? status_names[s] : "UNKNOWN";
}

enum dsw_store_status dsw_store_status_parse(const char *text)
{
    for (size_t i = 1; text && i < DSW_ARRAY_LEN(status_names); i++)
        if (strcmp(text, status_names[i]) == 0)
            return (enum dsw_store_status)i;
    return DSW_STATUS_UNKNOWN;
}

bool dsw_store_status_terminal(enum dsw_store_status s)
{
    return s == DSW_STATUS_SUCCESS || s == DSW_STATUS_FAILURE || s == DSW_STATUS_CANCELED;
}

static enum dsw_store_claim_state claim_state_parse(const char *t)
{
    if (!t)
        return DSW_CLAIM_NONE;
    if (strcmp(t, "running") == 0)
        return DSW_CLAIM_RUNNING;
    if (strcmp(t, "done") == 0)
        return DSW_CLAIM_DONE;
    return DSW_CLAIM_CLAIMED;
}

/* ---- SQL ----------------------------------------------------------------------------------- */

/* The columns both claims tables end with, after fencing_token (as version 1 created them). */
#define CLAIM_TABLE_COLS                                                                           \
    " message_id text, receive_count int,"                                                         \
    " state text NOT NULL CHECK (state IN ('claimed', 'running', 'done')), child_pid int,"         \
    " claimed_at timestamptz NOT NULL DEFAULT now(), heartbeat_at timestamptz NOT NULL DEFAULT"    \
    " now(), finished_at timestamptz, exit_code int, term_signal int, outcome text"

/* Every migration's statements in order, each tagged with the version it belongs to: db-init
 * runs those above the version it finds. */
static const struct migration {
    int version;
    const char *sql;
} migrations[] = {
    {1, "CREATE SCHEMA IF NOT EXISTS " SCHEMA},
    {1, "CREATE SEQUENCE IF NOT EXISTS " SCHEMA ".fence"},
    {1, "CREATE TABLE IF NOT EXISTS " CLAIMS " ("
        " run_id text PRIMARY KEY,"
        " kind text NOT NULL DEFAULT 'execute',"
        " attempt int NOT NULL DEFAULT 1,"
        " worker_id text NOT NULL,"
        " fencing_token bigint NOT NULL," CLAIM_TABLE_COLS ")"},
    {1, "CREATE INDEX IF NOT EXISTS run_claims_stale ON " CLAIMS " (heartbeat_at)"
        " WHERE state <> 'done'"},
    {1, "CREATE TABLE IF NOT EXISTS " SCHEMA ".schema_version ("
        " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"},
    /* 2: step claims (docs/steps.md §3), tokens from the same fence sequence. */
    {2, "CREATE TABLE IF NOT EXISTS " STEPS " ("
        " run_id text NOT NULL,"
        " step_key text NOT NULL,"
        " attempt int NOT NULL,"
        " worker_id text NOT NULL,"
        " fencing_token bigint NOT NULL UNIQUE," CLAIM_TABLE_COLS ","
        " stop_requested_at timestamptz,"
        " PRIMARY KEY (run_id, step_key, attempt))"},
    {2, "CREATE INDEX IF NOT EXISTS step_claims_stale ON " STEPS " (heartbeat_at)"
        " WHERE state <> 'done'"},
};

static const char SQL_HAS_SCHEMA[] =
    "SELECT pg_catalog.to_regclass('" SCHEMA ".schema_version') IS NOT NULL";
static const char SQL_SCHEMA_VERSION[] =
    "SELECT coalesce(max(version), 0) FROM " SCHEMA ".schema_version";
static const char SQL_INIT_LOCK[] = "SELECT pg_advisory_xact_lock($1::bigint)";
static const char SQL_SET_VERSION[] = "INSERT INTO " SCHEMA ".schema_version (version) "
                                      "VALUES ($1::int) ON CONFLICT (version) DO NOTHING";

/* A run with its claim (claims aliased c): SQL_LOAD, and the first part of SQL_LOAD_CLAIM. */
#define C_CLAIM_COLS      CLAIM_COLS("c.")
#define SQL_RUN_AND_CLAIM SQL_RUN_WITH_CLAIM(C_CLAIM_COLS, CLAIMS " c ON c.run_id = r.run_id")
static const char SQL_LOAD[] = SQL_RUN_AND_CLAIM;
/* SQL_LOAD with SQL_CLAIM's insert when nothing but execute can be decided; the inserted row's
 * columns follow the load's (NULL when nothing was inserted). */
static const char SQL_LOAD_CLAIM[] =
    "WITH l AS (" SQL_RUN_AND_CLAIM "), i AS (INSERT INTO " CLAIMS " AS c (run_id, kind,"
    " worker_id, fencing_token, message_id, receive_count, state) SELECT $1::text, 'execute',"
    " $3::text, " FENCE ", $4::text, $5::int, 'claimed' FROM l WHERE l.state IS NULL AND"
    " l.status IN ('NOT_STARTED', 'STARTING') AND $5::int <= $6::int"
    " ON CONFLICT (run_id) DO NOTHING RETURNING " C_CLAIM_COLS ")"
    " SELECT l.*, i.* FROM l LEFT JOIN i ON true";
/* by_run_worker: for a terminal run, whether its last PIPELINE_SUCCESS/FAILURE event came from a
 * run worker (Dagster's run worker writes its pid in the event; instance.report_run_failed from
 * run monitoring, the UI or a script writes none). NULL when there is no such event. */
static const char SQL_POLL[] =
    "SELECT r.run_id, r.status, CASE WHEN r.status IN ('SUCCESS', 'FAILURE') THEN"
    " (SELECT (e.event::json -> 'dagster_event' ->> 'pid') IS NOT NULL FROM event_logs e"
    " WHERE e.run_id = r.run_id AND e.dagster_event_type IN ('PIPELINE_SUCCESS',"
    " 'PIPELINE_FAILURE') ORDER BY e.id DESC LIMIT 1) END"
    " FROM runs r WHERE r.run_id = ANY($1::text[])";

static const char SQL_CLAIM[] =
    "INSERT INTO " CLAIMS " AS c (run_id, kind, worker_id, fencing_token, message_id,"
    " receive_count, state) VALUES ($1, $2, $3, " FENCE ", $4, $5::int, 'claimed')"
    " ON CONFLICT (run_id) DO NOTHING RETURNING " CLAIM_COLS("c.");
static const char SQL_CLAIM_VIEW[] =
    "SELECT " CLAIM_COLS("c.") " FROM " CLAIMS " c WHERE c.run_id = $1";
static const char SQL_TAKEOVER[] =
    "UPDATE " CLAIMS " AS c SET fencing_token = " FENCE ", kind = $3, worker_id = $4,"
    " message_id = $5, receive_count = $6::int, state = 'claimed', attempt = c.attempt + 1,"
    " child_pid = NULL, claimed_at = now(), heartbeat_at = now(), finished_at = NULL,"
    " exit_code = NULL, term_signal = NULL, outcome = NULL"
    " WHERE c.run_id = $1 AND c.fencing_token = $2::bigint AND (c.state = 'done'"
    " OR c.heartbeat_at < now() - $7::bigint * interval '1 millisecond')"
    " RETURNING " CLAIM_COLS("c.");
/* A lease is a run claim's or a step claim's (one sequence: a token is in one table only); both
 * tables are refreshed in one statement, one row back per refreshed lease. */
static const char SQL_HEARTBEAT[] =
    "WITH r AS (UPDATE " CLAIMS " SET heartbeat_at = now() WHERE run_id = $1"
    " AND fencing_token = $2::bigint AND state <> 'done' RETURNING 1),"
    " s AS (UPDATE " STEPS " SET heartbeat_at = now() WHERE run_id = $1"
    " AND fencing_token = $2::bigint AND state <> 'done' RETURNING 1)"
    " SELECT 1 FROM r UNION ALL SELECT 1 FROM s";
static const char SQL_HEARTBEAT_BATCH[] =
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS u(run_id, token)),"
    " r AS (UPDATE " CLAIMS " AS c SET heartbeat_at = now() FROM u WHERE c.run_id = u.run_id"
    " AND c.fencing_token = u.token AND c.state <> 'done' RETURNING c.run_id, c.fencing_token),"
    " s AS (UPDATE " STEPS " AS c SET heartbeat_at = now() FROM u WHERE c.run_id = u.run_id"
    " AND c.fencing_token = u.token AND c.state <> 'done' RETURNING c.run_id, c.fencing_token)"
    " SELECT run_id, fencing_token FROM r UNION ALL SELECT run_id, fencing_token FROM s";
/* Run claims first, then step claims, per worker. */
static const char SQL_SUMMARY[] =
    "SELECT worker_id, state, count(*) FILTER (WHERE NOT " STALE_TTL1 "),"
    " count(*) FILTER (WHERE " STALE_TTL1 "), step FROM (SELECT worker_id, state, heartbeat_at,"
    " false AS step FROM " CLAIMS " WHERE state <> 'done' UNION ALL SELECT worker_id, state,"
    " heartbeat_at, true FROM " STEPS " WHERE state <> 'done') AS c"
    " GROUP BY 1, 2, 5 ORDER BY 1, 5, 2 LIMIT 1000";
static const char SQL_RELEASE[] =
    "DELETE FROM " CLAIMS " WHERE run_id = $1 AND fencing_token = $2::bigint AND state <> 'done'";
static const char SQL_LEAVE[] =
    "UPDATE " CLAIMS " SET state = 'done', outcome = 'lost', finished_at = now()"
    " WHERE run_id = $1 AND fencing_token = $2::bigint AND state <> 'done'";
static const char SQL_SWEEP[] =
    "UPDATE " CLAIMS " AS c SET fencing_token = " FENCE ", worker_id = $1, state = 'claimed',"
    " attempt = c.attempt + 1, child_pid = NULL, claimed_at = now(), heartbeat_at = now()"
    " FROM (SELECT s.run_id, s.state AS prev_state, s.worker_id AS prev_worker FROM " CLAIMS
    " s WHERE s.state <> 'done' AND s.heartbeat_at < now() - $2::bigint * interval"
    " '1 millisecond' ORDER BY s.heartbeat_at LIMIT $3::int FOR UPDATE SKIP LOCKED) AS old"
    " LEFT JOIN runs r ON r.run_id = old.run_id WHERE c.run_id = old.run_id"
    " RETURNING c.run_id, r.status, r.pipeline_name, old.prev_state, old.prev_worker, " CLAIM_COLS(
        "c.");

static const char SQL_CLAIM_DONE[] =
    "UPDATE " CLAIMS " SET state = 'done', exit_code = $3::int, term_signal = $4::int,"
    " outcome = $5, finished_at = now(), heartbeat_at = now()"
    " WHERE run_id = $1 AND fencing_token = $2::bigint AND state <> 'done' RETURNING 1";
static const char SQL_CLAIM_SEEN[] = "SELECT c.state, c.fencing_token, r.status FROM " CLAIMS
                                     " c LEFT JOIN runs r ON r.run_id = c.run_id"
                                     " WHERE c.run_id = $1";
static const char SQL_CLAIM_RUNNING[] =
    "UPDATE " CLAIMS " SET state = 'running', child_pid = $3::int, heartbeat_at = now()"
    " WHERE run_id = $1 AND fencing_token = $2::bigint AND state <> 'done'";
static const char SQL_LOCK_RUN[] =
    "SELECT status, pipeline_name, run_body FROM runs WHERE run_id = $1 FOR UPDATE";
/* SPEC §2.1's insert and pg_notify, in one statement; fenced: nothing is written unless the
 * claim still carries the token. */
static const char SQL_EVENT_FENCED[] =
    "WITH ins AS (INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp,"
    " step_key, asset_key, partition) SELECT $1::text, $2::text, $3::text, $4::timestamp,"
    " NULL, NULL, NULL WHERE EXISTS (SELECT 1 FROM " CLAIMS
    " WHERE run_id = $1::text AND fencing_token = $5::bigint) RETURNING id)"
    " SELECT id, pg_notify('run_events', $1::text || '_' || id) FROM ins";
static const char SQL_EVENT[] =
    "WITH ins AS (INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp,"
    " step_key, asset_key, partition) VALUES ($1::text, $2::text, $3::text, $4::timestamp,"
    " NULL, NULL, NULL) RETURNING id)"
    " SELECT id, pg_notify('run_events', $1::text || '_' || id) FROM ins";
static const char SQL_RUN_END[] =
    "UPDATE runs SET status = $2, run_body = $3, update_timestamp = $4::timestamp,"
    " end_time = $5::float8 WHERE run_id = $1"
    " AND status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED') AND EXISTS (SELECT 1 FROM " CLAIMS
    " c WHERE c.run_id = $1 AND c.fencing_token = $6::bigint)";
/* Dagster's add_run_tags for one tag (update the key's rows, else insert one), fenced; the
 * count of rows written (0: the fence failed). */
static const char SQL_TAG_UPSERT[] =
    "WITH f AS (SELECT 1 FROM " CLAIMS " WHERE run_id = $1::text AND fencing_token = $4::bigint),"
    " upd AS (UPDATE run_tags SET value = $3::text WHERE run_id = $1::text AND key = $2::text"
    " AND EXISTS (SELECT 1 FROM f) RETURNING 1),"
    " ins AS (INSERT INTO run_tags (run_id, key, value) SELECT $1::text, $2::text, $3::text"
    " WHERE EXISTS (SELECT 1 FROM f) AND NOT EXISTS (SELECT 1 FROM upd) RETURNING 1)"
    " SELECT (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins)";
/* The launch's tags as run_tags holds them: a writer that read the body before the launch
 * committed (a launcher's own add_run_tags) may have written it back without them; the
 * record's body write puts them back. */
static const char SQL_OUR_TAGS[] = "SELECT key, value FROM run_tags WHERE run_id = $1"
                                   " AND key IN ($2, $3) ORDER BY id";
/* add_run_tags' body write (the tags merged, status from the column), fenced. */
static const char SQL_RUN_TAGS[] =
    "UPDATE runs SET run_body = $2, update_timestamp = $3::timestamp WHERE run_id = $1"
    " AND EXISTS (SELECT 1 FROM " CLAIMS " c WHERE c.run_id = $1 AND c.fencing_token = $4::bigint)";
/* The launch in one statement (dsw_store_launch's hints): the claim row locked (first, as the
 * transactions lock: claim, then run), the run row locked and still as the caller loaded it, then
 * -- only if the fenced claim update wrote its row -- the event with its pg_notify, the tags
 * (add_run_tags: update the key's rows, else insert) and the body. Every write depends on cl, cl on
 * lk: all of it or nothing. No row back: a guard failed. */
static const char SQL_LAUNCH_ONE[] =
    "WITH fc AS (SELECT 1 FROM " CLAIMS " c WHERE c.run_id = $1::text"
    " AND c.fencing_token = $2::bigint AND c.state <> 'done' FOR UPDATE),"
    " lk AS (SELECT r.run_id FROM runs r WHERE r.run_id = $1::text AND r.status = $4::text"
    " AND r.run_body = $5::text AND r.pipeline_name IS NOT DISTINCT FROM $6::text"
    " AND EXISTS (SELECT 1 FROM fc) FOR UPDATE),"
    " cl AS (UPDATE " CLAIMS " c SET state = 'running', child_pid = $3::int, heartbeat_at = now()"
    " WHERE c.run_id = $1::text AND c.fencing_token = $2::bigint AND c.state <> 'done'"
    " AND EXISTS (SELECT 1 FROM lk) RETURNING 1),"
    " ev AS (INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key,"
    " asset_key, partition) SELECT $1::text, $8::text, 'ENGINE_EVENT', $9::timestamp, NULL, NULL,"
    " NULL WHERE EXISTS (SELECT 1 FROM cl) RETURNING id),"
    " tg AS (SELECT t.k, t.v FROM unnest($10::text[], $11::text[]) AS t(k, v)"
    " WHERE EXISTS (SELECT 1 FROM cl)),"
    " upd AS (UPDATE run_tags t SET value = tg.v FROM tg WHERE t.run_id = $1::text AND t.key = tg.k"
    " RETURNING t.key),"
    " ins AS (INSERT INTO run_tags (run_id, key, value) SELECT $1::text, tg.k, tg.v FROM tg"
    " WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.key = tg.k) RETURNING 1),"
    " bd AS (UPDATE runs r SET run_body = $7::text, update_timestamp = $9::timestamp"
    " WHERE r.run_id = $1::text AND EXISTS (SELECT 1 FROM cl) RETURNING 1)"
    " SELECT ev.id, pg_notify('run_events', $1::text || '_' || ev.id),"
    " (SELECT count(*) FROM bd), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd) FROM ev";
/* The run as it is now (for a second try of the one-statement launch). */
static const char SQL_RUN_NOW[] =
    "SELECT status, pipeline_name, run_body FROM runs WHERE run_id = $1";
/* The exit record in one statement, for the common case only: the run locked and terminal
 * already, its name as loaded, and every run_tags row of the launch's tags also in its body
 * (so the transaction would write no terminal event, status or body): the claim -> done and
 * the exit event (+ pg_notify), both depending on the fenced claim update. No row back: a
 * guard failed and nothing was written. */
static const char SQL_EXIT_ONE[] =
    "WITH fc AS (SELECT 1 FROM " CLAIMS " c WHERE c.run_id = $1::text"
    " AND c.fencing_token = $2::bigint AND c.state <> 'done' FOR UPDATE),"
    " lk AS (SELECT r.status FROM runs r WHERE r.run_id = $1::text AND EXISTS (SELECT 1 FROM fc)"
    " AND r.status IN ('SUCCESS', 'FAILURE', 'CANCELED')"
    " AND r.pipeline_name IS NOT DISTINCT FROM $6::text AND NOT EXISTS (SELECT 1 FROM run_tags t"
    " WHERE t.run_id = r.run_id AND t.key IN ($9::text, $10::text)"
    " AND t.value IS DISTINCT FROM (r.run_body::json -> 'tags' ->> t.key)) FOR UPDATE),"
    " cl AS (UPDATE " CLAIMS " c SET state = 'done', exit_code = $3::int, term_signal = $4::int,"
    " outcome = $5::text, finished_at = now(), heartbeat_at = now() WHERE c.run_id = $1::text"
    " AND c.fencing_token = $2::bigint AND c.state <> 'done' AND EXISTS (SELECT 1 FROM lk)"
    " RETURNING 1),"
    " ev AS (INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key,"
    " asset_key, partition) SELECT $1::text, $7::text, 'ENGINE_EVENT', $8::timestamp, NULL, NULL,"
    " NULL WHERE EXISTS (SELECT 1 FROM cl) RETURNING id)"
    " SELECT ev.id, pg_notify('run_events', $1::text || '_' || ev.id), (SELECT status FROM lk)"
    " FROM ev";
static const char SQL_RUN_STARTING[] =
    "UPDATE runs SET status = 'STARTING', run_body = $2, update_timestamp = $3::timestamp"
    " WHERE run_id = $1 AND status IN ('NOT_STARTED', 'QUEUED')";

/* ---- result helpers ------------------------------------------------------------------------ */

int64_t store_col_i64(const struct dsw_db_result *r, int row, int col)
{
    int64_t v = 0;
    if (dsw_db_result_int64(r, row, col, &v) < 0)
        return 0;
    return v;
}

static double col_f64(const struct dsw_db_result *r, int row, int col)
{
    const char *v = dsw_db_result_value(r, row, col);
    return v ? strtod(v, NULL) : 0.0;
}

void store_read_claim(const struct dsw_store *s, const struct dsw_db_result *r, int row, int c,
                      struct dsw_store_claim *out)
{
    memset(out, 0, sizeof(*out));
    out->state = claim_state_parse(dsw_db_result_value(r, row, c));
    if (out->state == DSW_CLAIM_NONE)
        return;
    out->token = store_col_i64(r, row, c + 1);
    out->attempt = (int)store_col_i64(r, row, c + 2);
    out->kind = dsw_db_result_value(r, row, c + 3);
    out->worker_id = dsw_db_result_value(r, row, c + 4);
    out->message_id = dsw_db_result_value(r, row, c + 5);
    out->receive_count = (int)store_col_i64(r, row, c + 6);
    out->child_pid = (int)store_col_i64(r, row, c + 7);
    out->age_s = col_f64(r, row, c + 8);
    out->outcome = dsw_db_result_value(r, row, c + 9);
    out->live = out->state != DSW_CLAIM_DONE && out->age_s * 1000.0 < (double)s->ttl_ms;
}

/* ---- the store ----------------------------------------------------------------------------- */

int dsw_store_new(struct dsw_db *db, const struct dsw_store_opts *o, struct dsw_store **out)
{
    if (!db || !o || !o->worker_id || !o->hostname || o->ttl_ms < 0)
        return -EINVAL;
    struct dsw_store *s = dsw_xcalloc(1, sizeof(*s));
    s->db = db;
    s->worker_id = dsw_xstrdup(o->worker_id);
    s->hostname = dsw_xstrdup(o->hostname);
    s->ttl_ms = o->ttl_ms ? o->ttl_ms : 60000;
    snprintf(s->ttl, sizeof(s->ttl), "%lld", (long long)s->ttl_ms);
    *out = s;
    return 0;
}

void dsw_store_free(struct dsw_store *s)
{
    if (!s)
        return;
    free(s->worker_id);
    free(s->hostname);
    free(s);
}

/* ---- single statements --------------------------------------------------------------------- */

struct call *store_call_new(struct dsw_store *s, const char *run_id, void *arg)
{
    struct call *c = dsw_xcalloc(1, sizeof(*c));
    c->s = s;
    c->arg = arg;
    c->run_id = run_id ? dsw_xstrdup(run_id) : NULL;
    return c;
}

void store_call_free(struct call *c)
{
    free(c->run_id);
    free(c->step_key);
    free(c);
}

int store_call_query(struct call *c, const char *sql, int n, const char *const *p,
                     dsw_db_query_cb cb)
{
    int r = dsw_db_query(c->s->db, sql, n, p, cb, c);
    if (r < 0)
        store_call_free(c);
    return r;
}

int store_array_query(struct call *c, const char *sql, char *array, dsw_db_query_cb cb)
{
    const char *p[] = {array};
    int r = store_call_query(c, sql, 1, p, cb);
    free(array);
    return r;
}

int store_ttl_query(struct call *c, const char *sql, dsw_db_query_cb cb)
{
    const char *p[] = {c->s->ttl};
    return store_call_query(c, sql, 1, p, cb);
}

static int64_t max_runtime_ms(const char *tag_value, const char *body)
{
    char *from_body = NULL;
    if (!tag_value && body && dsw_dagster_body_tag(body, TAG_MAX_RUNTIME, &from_body) == 0)
        tag_value = from_body;
    double v = tag_value ? strtod(tag_value, NULL) : 0.0;
    free(from_body);
    if (!isfinite(v) || v <= 0 || v > 1e9)
        return 0;
    return (int64_t)llround(v * 1000.0);
}

void store_on_load(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    struct dsw_store_run run = {.run_id = c->run_id};
    if (status == 0 && dsw_db_result_nrows(r) == 0)
        status = -ENOENT;
    if (status == 0) {
        run.status_text = dsw_db_result_value(r, 0, 0);
        run.status = dsw_store_status_parse(run.status_text);
        run.job_name = dsw_db_result_value(r, 0, 1);
        run.body = dsw_db_result_value(r, 0, 2);
        run.max_runtime_ms = max_runtime_ms(dsw_db_result_value(r, 0, 3), run.body);
        store_read_claim(c->s, r, 0, 4, &run.claim);
        if (c->claiming)
            store_read_claim(c->s, r, 0, 4 + NCLAIM_COLS, &run.won);
        run.claimed = run.won.state != DSW_CLAIM_NONE;
    }
    /* Failpoint: the claim committed with the load; the caller has not heard of it yet. */
    if (run.claimed) {
        int fp = DSW_FAILPOINT("after_claim");
        run.claim_status = fp < 0 ? fp : 0;
    }
    c->cb.load(status, status == 0 ? &run : NULL, c->arg);
    store_call_free(c);
}

int dsw_store_load(struct dsw_store *s, const char *run_id, dsw_store_load_cb cb, void *arg)
{
    if (!run_id || !cb)
        return -EINVAL;
    struct call *c = store_call_new(s, run_id, arg);
    c->cb.load = cb;
    const char *p[] = {run_id, TAG_MAX_RUNTIME};
    return store_call_query(c, SQL_LOAD, 2, p, store_on_load);
}

int dsw_store_load_claim(struct dsw_store *s, const struct dsw_store_claim_req *req,
                         int max_receives, dsw_store_load_cb cb, void *arg)
{
    char rc[16], max[16];
    if (!cb || !req || !req->run_id)
        return -EINVAL;
    snprintf(rc, sizeof(rc), "%d", req->receive_count);
    snprintf(max, sizeof(max), "%d", max_receives);
    struct call *c = store_call_new(s, req->run_id, arg);
    c->cb.load = cb;
    c->claiming = true;
    const char *p[] = {req->run_id, TAG_MAX_RUNTIME, s->worker_id, req->message_id, rc, max};
    return store_call_query(c, SQL_LOAD_CLAIM, 6, p, store_on_load);
}

static void on_poll(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    size_t n = status == 0 ? (size_t)dsw_db_result_nrows(r) : 0;
    struct dsw_store_status_row *rows = dsw_xcalloc(n ? n : 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        rows[i].run_id = dsw_db_result_value(r, (int)i, 0);
        rows[i].status = dsw_store_status_parse(dsw_db_result_value(r, (int)i, 1));
        const char *w = dsw_db_result_value(r, (int)i, 2);
        rows[i].by_run_worker = w && w[0] == 't';
    }
    c->cb.poll(status, rows, n, c->arg);
    free(rows);
    store_call_free(c);
}

char *store_text_array(const char *const *items, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += 2 * strlen(items[i]) + 3;
    char *out = dsw_xmalloc(len), *p = out;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *q = items[i]; *q; q++) {
            if (*q == '"' || *q == '\\')
                *p++ = '\\';
            *p++ = *q;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

char *store_int64_array(const int64_t *v, size_t n)
{
    char *out = dsw_xmalloc(3 + 21 * n), *t = out;
    *t++ = '{';
    for (size_t i = 0; i < n; i++)
        t += sprintf(t, "%s%lld", i ? "," : "", (long long)v[i]);
    *t++ = '}';
    *t = '\0';
    return out;
}

int dsw_store_poll_status(struct dsw_store *s, const char *const *run_ids, size_t n,
                          dsw_store_poll_cb cb, void *arg)
{
    if (!run_ids || n == 0 || n > POLL_MAX || !cb)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!run_ids[i])
            return -EINVAL;
    struct call *c = store_call_new(s, NULL, arg);
    c->cb.poll = cb;
    return store_array_query(c, SQL_POLL, store_text_array(run_ids, n), on_poll);
}

/* After a lost claim or takeover: report the row as it is now. */
void store_on_claim_view(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    struct dsw_store_claim claim;
    store_read_claim(c->s, r, 0, 0, &claim);
    if (status == 0)
        status = c->takeover ? -EBUSY : -EEXIST;
    c->cb.claim(status, status == -EBUSY || status == -EEXIST ? &claim : NULL, c->arg);
    store_call_free(c);
}

static void on_claim(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    struct dsw_store_claim claim;
    if (status == 0 && dsw_db_result_nrows(r) == 0) {
        const char *p[] = {c->run_id};
        if (dsw_db_query(c->s->db, SQL_CLAIM_VIEW, 1, p, store_on_claim_view, c) == 0)
            return;
        status = -ECANCELED;
    }
    /* Failpoint: the claim or takeover committed; the caller has not heard of it yet. */
    if (status == 0) {
        int fp = DSW_FAILPOINT("after_claim");
        if (fp < 0)
            status = fp;
    }
    store_read_claim(c->s, r, 0, 0, &claim);
    c->cb.claim(status, status == 0 ? &claim : NULL, c->arg);
    store_call_free(c);
}

static int check_req(const struct dsw_store_claim_req *req, dsw_store_claim_cb cb)
{
    if (!req || !req->run_id || !cb || !req->kind ||
        (strcmp(req->kind, "execute") != 0 && strcmp(req->kind, "resume") != 0))
        return -EINVAL;
    return 0;
}

int dsw_store_claim(struct dsw_store *s, const struct dsw_store_claim_req *req,
                    dsw_store_claim_cb cb, void *arg)
{
    char rc[16];
    if (check_req(req, cb) < 0)
        return -EINVAL;
    snprintf(rc, sizeof(rc), "%d", req->receive_count);
    struct call *c = store_call_new(s, req->run_id, arg);
    c->cb.claim = cb;
    const char *p[] = {req->run_id, req->kind, s->worker_id, req->message_id, rc};
    return store_call_query(c, SQL_CLAIM, 5, p, on_claim);
}

int dsw_store_takeover(struct dsw_store *s, const struct dsw_store_claim_req *req,
                       int64_t seen_token, dsw_store_claim_cb cb, void *arg)
{
    char rc[16], tok[24];
    if (check_req(req, cb) < 0)
        return -EINVAL;
    snprintf(rc, sizeof(rc), "%d", req->receive_count);
    snprintf(tok, sizeof(tok), "%lld", (long long)seen_token);
    struct call *c = store_call_new(s, req->run_id, arg);
    c->cb.claim = cb;
    c->takeover = true;
    const char *p[] = {req->run_id, tok, req->kind, s->worker_id, req->message_id, rc, s->ttl};
    return store_call_query(c, SQL_TAKEOVER, 7, p, on_claim);
}

void store_on_one_row(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    if (status == 0 && dsw_db_result_cmd_tuples(r) != 1)
        status = -ESTALE;
    if (status == 0 && c->injected)
        status = c->injected;
    c->cb.done(status, c->arg);
    store_call_free(c);
}

/* One fenced statement on a claim ($1 run_id, $2 token) whose effect is "exactly one row". */
static int claim_statement(struct dsw_store *s, const char *sql, const char *run_id, int64_t token,
                           int injected, dsw_store_cb cb, void *arg)
{
    char tok[24];
    if (!run_id || !cb)
        return -EINVAL;
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    struct call *c = store_call_new(s, run_id, arg);
    c->cb.done = cb;
    c->injected = injected;
    const char *p[] = {run_id, tok};
    return store_call_query(c, sql, 2, p, store_on_one_row);
}

int dsw_store_heartbeat(struct dsw_store *s, const char *run_id, int64_t token, dsw_store_cb cb,
                        void *arg)
{
    return claim_statement(s, SQL_HEARTBEAT, run_id, token, DSW_FAILPOINT("heartbeat_lease"), cb,
                           arg);
}

/* A batched lease refresh: the leases as sent, for matching the returned rows. */
struct leases {
    dsw_store_leases_cb cb;
    void *arg;
    size_t n;
    char **ids;
    int64_t *tokens;
    int *kept;
};

static void leases_free(struct leases *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->ids[i]);
    free(l->ids);
    free(l->tokens);
    free(l->kept);
    free(l);
}

static void on_leases(int status, const struct dsw_db_result *r, void *arg)
{
    struct leases *l = arg;
    if (status == 0) {
        int rows = dsw_db_result_nrows(r);
        for (size_t i = 0; i < l->n; i++) {
            l->kept[i] = -ESTALE;
            for (int row = 0; row < rows && l->kept[i]; row++) {
                const char *id = dsw_db_result_value(r, row, 0);
                if (id && strcmp(id, l->ids[i]) == 0 && store_col_i64(r, row, 1) == l->tokens[i])
                    l->kept[i] = 0;
            }
            if (l->kept[i] == 0) /* as dsw_store_heartbeat: the failpoint per lease */
                l->kept[i] = DSW_FAILPOINT("heartbeat_lease");
        }
    }
    l->cb(status, status == 0 ? l->kept : NULL, l->n, l->arg);
    leases_free(l);
}

int dsw_store_heartbeat_batch(struct dsw_store *s, const struct dsw_store_lease *leases, size_t n,
                              dsw_store_leases_cb cb, void *arg)
{
    if (!leases || n == 0 || n > POLL_MAX || !cb)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!leases[i].run_id)
            return -EINVAL;
    struct leases *l = dsw_xcalloc(1, sizeof(*l));
    l->cb = cb;
    l->arg = arg;
    l->n = n;
    l->ids = dsw_xcalloc(n, sizeof(*l->ids));
    l->tokens = dsw_xcalloc(n, sizeof(*l->tokens));
    l->kept = dsw_xcalloc(n, sizeof(*l->kept));
    for (size_t i = 0; i < n; i++) {
        l->ids[i] = dsw_xstrdup(leases[i].run_id);
        l->tokens[i] = leases[i].token;
    }
    char *toks = store_int64_array(l->tokens, n);
    char *ids = store_text_array((const char *const *)l->ids, n);
    const char *p[] = {ids, toks};
    int r = dsw_db_query(s->db, SQL_HEARTBEAT_BATCH, 2, p, on_leases, l);
    free(ids);
    free(toks);
    if (r < 0)
        leases_free(l);
    return r;
}

int dsw_store_release(struct dsw_store *s, const char *run_id, int64_t token, dsw_store_cb cb,
                      void *arg)
{
    return claim_statement(s, SQL_RELEASE, run_id, token, 0, cb, arg);
}

int dsw_store_leave_for_resume(struct dsw_store *s, const char *run_id, int64_t token,
                               dsw_store_cb cb, void *arg)
{
    return claim_statement(s, SQL_LEAVE, run_id, token, 0, cb, arg);
}

static void on_summary(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    size_t n = status == 0 ? (size_t)dsw_db_result_nrows(r) : 0;
    struct dsw_store_summary_row *rows = dsw_xcalloc(n ? n : 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        int64_t v = 0;
        rows[i].worker_id = dsw_db_result_value(r, (int)i, 0);
        rows[i].state = claim_state_parse(dsw_db_result_value(r, (int)i, 1));
        rows[i].live = dsw_db_result_int64(r, (int)i, 2, &v) == 0 ? v : 0;
        rows[i].stale = dsw_db_result_int64(r, (int)i, 3, &v) == 0 ? v : 0;
        rows[i].step = dsw_db_result_bool(r, (int)i, 4);
    }
    c->cb.summary(status, rows, n, c->arg);
    free(rows);
    store_call_free(c);
}

int dsw_store_claims_summary(struct dsw_store *s, dsw_store_summary_cb cb, void *arg)
{
    if (!cb)
        return -EINVAL;
    struct call *c = store_call_new(s, NULL, arg);
    c->cb.summary = cb;
    return store_ttl_query(c, SQL_SUMMARY, on_summary);
}

static void on_sweep(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    size_t n = status == 0 ? (size_t)dsw_db_result_nrows(r) : 0;
    struct dsw_store_swept *items = dsw_xcalloc(n ? n : 1, sizeof(*items));
    for (size_t i = 0; i < n; i++) {
        int row = (int)i;
        items[i].run_id = dsw_db_result_value(r, row, 0);
        items[i].run_status = dsw_store_status_parse(dsw_db_result_value(r, row, 1));
        items[i].job_name = dsw_db_result_value(r, row, 2);
        items[i].prev_state = claim_state_parse(dsw_db_result_value(r, row, 3));
        items[i].prev_worker_id = dsw_db_result_value(r, row, 4);
        store_read_claim(c->s, r, row, 5, &items[i].claim);
    }
    c->cb.sweep(status, items, n, c->arg);
    free(items);
    store_call_free(c);
}

int dsw_store_sweep(struct dsw_store *s, int limit, dsw_store_sweep_cb cb, void *arg)
{
    char lim[16];
    if (limit < 1 || limit > SWEEP_MAX || !cb)
        return -EINVAL;
    snprintf(lim, sizeof(lim), "%d", limit);
    struct call *c = store_call_new(s, NULL, arg);
    c->cb.sweep = cb;
    const char *p[] = {s->worker_id, s->ttl, lim};
    return store_call_query(c, SQL_SWEEP, 3, p, on_sweep);
}

/* ---- transactions: a step machine per write ------------------------------------------------ */

enum op_kind { K_EXIT, K_OUTCOME, K_LAUNCH, K_STARTING, K_INIT, K_CHECK };

struct op {
    struct dsw_store *s;
    enum op_kind kind;
    struct dsw_db_txn *txn;
    int step;
    int status;   /* reported once the rollback is done */
    int injected; /* failpoint "fail": roll back at once and report this */
    bool reread;  /* the one-statement launch was tried again on the run as it is now */
    void (*fn)(struct op *o, const struct dsw_db_result *r);
    union {
        dsw_store_record_cb record;
        dsw_store_cb done;
        dsw_store_schema_cb schema;
    } cb;
    void *arg;

    char *run_id;
    char token[24];
    int exit_code, term_signal, pid, receive_count;
    double duration_s;
    char *outcome, *cause, *message_id, *failure_reason;
    struct dsw_kv tags[4]; /* run tags for the body (borrowed strings); tags[tag_i..] are also
                              upserted into run_tags */
    size_t ntags, tag_i;
    char *kept[2][2]; /* the launch's tags read back by a record (key, value) */

    char *job_name, *body; /* read inside the transaction */
    double now;
    char now_naive[32];
    struct dsw_store_record_result rr;
    struct dsw_store_schema schema;
    size_t mig;
};

static struct op *op_new(struct dsw_store *s, enum op_kind kind, const char *run_id, void *arg)
{
    struct op *o = dsw_xcalloc(1, sizeof(*o));
    o->s = s;
    o->kind = kind;
    o->arg = arg;
    o->run_id = run_id ? dsw_xstrdup(run_id) : NULL;
    o->now = dsw_wall_time();
    if (dsw_dagster_naive_utc(o->now, o->now_naive) < 0)
        o->now_naive[0] = '\0';
    o->schema.wanted = DSW_STORE_SCHEMA_VERSION;
    return o;
}

static void op_free(struct op *o)
{
    free(o->run_id);
    free(o->outcome);
    free(o->cause);
    free(o->message_id);
    free(o->failure_reason);
    for (size_t i = 0; i < DSW_ARRAY_LEN(o->kept); i++) {
        free(o->kept[i][0]);
        free(o->kept[i][1]);
    }
    free(o->job_name);
    free(o->body);
    free(o);
}

static void op_finish(struct op *o, int status)
{
    switch (o->kind) {
    case K_EXIT:
    case K_OUTCOME:
    case K_STARTING:
        o->cb.record(status, status == 0 ? &o->rr : NULL, o->arg);
        break;
    case K_LAUNCH:
        o->cb.done(status, o->arg);
        break;
    case K_INIT:
    case K_CHECK:
        o->cb.schema(status, &o->schema, o->arg);
        break;
    }
    op_free(o);
}

static void on_rolled_back(int status, const struct dsw_db_result *r, void *arg)
{
    struct op *o = arg;
    op_finish(o, o->status);
}

/* End the transaction without writing and report status (0 for "nothing to do"). */
static void op_fail(struct op *o, int status)
{
    o->status = status;
    if (dsw_db_txn_rollback(o->txn, on_rolled_back, o) < 0)
        op_finish(o, status);
}

static void on_committed(int status, const struct dsw_db_result *r, void *arg)
{
    struct op *o = arg;
    /* Failpoint: an outcome committed; the caller has not heard of it yet (a retry finds the
     * claim done with its token: "already"). */
    if (status == 0 && (o->kind == K_EXIT || o->kind == K_OUTCOME)) {
        int fp = DSW_FAILPOINT("after_record");
        if (fp < 0)
            status = fp;
    }
    op_finish(o, status);
}

static void op_commit(struct op *o)
{
    if (dsw_db_txn_commit(o->txn, on_committed, o) < 0)
        op_finish(o, -EIO);
}

static void on_step(int status, const struct dsw_db_result *r, void *arg)
{
    struct op *o = arg;
    if (status < 0)
        op_fail(o, status);
    else
        o->fn(o, r);
}

/* Send the next statement; its result arrives at o->fn with o->step == next. */
static void op_q(struct op *o, int next, const char *sql, int n, const char *const *p)
{
    o->step = next;
    int r = dsw_db_txn_query(o->txn, sql, n, p, on_step, o);
    if (r < 0)
        op_fail(o, r);
}

static void on_begun(int status, struct dsw_db_txn *txn, void *arg)
{
    struct op *o = arg;
    if (status < 0) {
        op_finish(o, status);
        return;
    }
    o->txn = txn;
    if (o->injected) {
        op_fail(o, o->injected);
        return;
    }
    o->fn(o, NULL);
}

static int op_start(struct op *o, void (*fn)(struct op *, const struct dsw_db_result *))
{
    o->fn = fn;
    int r = dsw_db_begin(o->s->db, on_begun, o);
    if (r < 0)
        op_free(o);
    return r;
}

/* Insert one event (fenced unless this is the unfenced enqueue path) and pg_notify its id. */
static void op_event(struct op *o, int next, const char *type, char *json)
{
    if (!json) {
        op_fail(o, -EINVAL);
        return;
    }
    const char *p[] = {o->run_id, json, type, o->now_naive, o->token};
    if (o->kind == K_STARTING)
        op_q(o, next, SQL_EVENT, 4, p);
    else
        op_q(o, next, SQL_EVENT_FENCED, 5, p);
    free(json);
}

/* Keep the locked run's name, body and status. */
static int op_take_run(struct op *o, const struct dsw_db_result *r, int c_status, int c_name,
                       int c_body)
{
    if (dsw_db_result_nrows(r) == 0)
        return -ENOENT;
    const char *name = dsw_db_result_value(r, 0, c_name);
    o->job_name = dsw_xstrdup(name ? name : "");
    if (c_body >= 0 && dsw_db_result_value(r, 0, c_body))
        o->body = dsw_xstrdup(dsw_db_result_value(r, 0, c_body));
    if (c_status >= 0)
        o->rr.before = o->rr.after = dsw_store_status_parse(dsw_db_result_value(r, 0, c_status));
    return 0;
}

/* The stored body with the new status (NULL: kept) and o->tags merged; the original when it
 * cannot be rewritten (the status column, which Dagster reads first, and run_tags are updated
 * anyway). */
static char *body_with(struct op *o, const char *status)
{
    char *out = NULL;
    if (o->body && dsw_dagster_body_update(o->body, status, o->tags, o->ntags, &out) == 0)
        return out;
    dsw_warn("store: run %s: run_body is not a PipelineRun; status and tags updated alone",
             o->run_id);
    return o->body ? dsw_xstrdup(o->body) : NULL;
}

/* Send the upsert of the next tag in o->tags (result at step); 0 when none is left. */
static int op_next_tag(struct op *o, int step)
{
    if (o->tag_i >= o->ntags)
        return 0;
    const struct dsw_kv *t = &o->tags[o->tag_i++];
    const char *p[] = {o->run_id, t->key, t->value, o->token};
    op_q(o, step, SQL_TAG_UPSERT, 4, p);
    return 1;
}

/* An upsert wrote at least one row; else only the fence can have failed. */
static bool op_tag_written(const struct dsw_db_result *r)
{
    const char *v = dsw_db_result_value(r, 0, 0);
    return v && strcmp(v, "0") != 0;
}

/* The RunFailureReason of a failure recorded without one (dsw_store_record_outcome says why). */
static const char *reason_by_outcome(const char *outcome)
{
    static const char *const interrupted[] = {"exited", "signaled", "drained", "lost"};
    for (size_t i = 0; outcome && i < DSW_ARRAY_LEN(interrupted); i++)
        if (strcmp(outcome, interrupted[i]) == 0)
            return DSW_FAILURE_UNEXPECTED_TERMINATION;
    return DSW_FAILURE_UNKNOWN;
}

/* ---- record_exit / record_outcome ---------------------------------------------------------- */

enum {
    R_BEGIN,
    R_CLAIM_DONE,
    R_CLAIM_SEEN,
    R_RUN_LOCKED,
    R_OUR_TAGS,
    R_EXIT_EVENT,
    R_END_EVENT,
    R_TAG,
    R_RUN_SET,
    R_TAGS_BODY
};

static char *exit_event_json(struct op *o)
{
    char code[16], sig[16], pid[16], dur[32], msg[256];
    snprintf(pid, sizeof(pid), "%d", o->pid);
    snprintf(dur, sizeof(dur), "%.1f", o->duration_s);
    if (o->term_signal) {
        snprintf(code, sizeof(code), "none");
        snprintf(sig, sizeof(sig), "%d", o->term_signal);
        snprintf(msg, sizeof(msg),
                 "[dagster-sqs-worker] Run worker was killed by signal %d after %s s (pid %d).",
                 o->term_signal, dur, o->pid);
    } else {
        snprintf(code, sizeof(code), "%d", o->exit_code);
        snprintf(sig, sizeof(sig), "none");
        snprintf(msg, sizeof(msg),
                 "[dagster-sqs-worker] Run worker exited with code %d after %s s (pid %d).",
                 o->exit_code, dur, o->pid);
    }
    const struct dsw_kv meta[] = {{"exit_code", code},
                                  {"signal", sig},
                                  {"pid", pid},
                                  {"worker", o->s->worker_id},
                                  {"duration_s", dur}};
    return dsw_dagster_engine_event(o->run_id, o->job_name, msg, meta, DSW_ARRAY_LEN(meta), -1,
                                    o->now);
}

static void record_exit_event(struct op *o)
{
    op_event(o, R_EXIT_EVENT, "ENGINE_EVENT", exit_event_json(o));
}

/* A run that is not terminal gets its terminal event: CANCELED when a cancel was asked (like
 * report_run_canceled, no data), else FAILURE with its reason, tagged unless UNKNOWN. */
/* Whether the body lacks one of o->tags (or holds another value). */
static bool body_lacks_tags(const struct op *o)
{
    for (size_t i = 0; i < o->ntags; i++) {
        char *v = NULL;
        bool same = o->body && dsw_dagster_body_tag(o->body, o->tags[i].key, &v) == 0 && v &&
                    strcmp(v, o->tags[i].value) == 0;
        free(v);
        if (!same)
            return true;
    }
    return false;
}

/* A run that ended by itself keeps its outcome; only the launch's tags go back into its body
 * when a stale writer dropped them (add_run_tags' write: status from the column). */
static void record_terminal_tags(struct op *o)
{
    if (!o->ntags || !o->body || !body_lacks_tags(o)) {
        op_commit(o);
        return;
    }
    char *body = body_with(o, dsw_store_status_name(o->rr.before));
    const char *p[] = {o->run_id, body, o->now_naive, o->token};
    op_q(o, R_TAGS_BODY, SQL_RUN_TAGS, 4, p);
    free(body);
}

static void record_end_event(struct op *o)
{
    if (dsw_store_status_terminal(o->rr.before)) {
        record_terminal_tags(o);
        return;
    }
    bool cancel = o->rr.before == DSW_STATUS_CANCELING;
    o->rr.after = cancel ? DSW_STATUS_CANCELED : DSW_STATUS_FAILURE;
    char *msg = dsw_dagster_marked_message(cancel, o->cause);
    if (cancel) {
        op_event(
            o, R_END_EVENT, "PIPELINE_CANCELED",
            dsw_dagster_run_event(o->run_id, o->job_name, "PIPELINE_CANCELED", msg, -1, o->now));
    } else {
        if (strcmp(o->failure_reason, DSW_FAILURE_UNKNOWN) != 0)
            o->tags[o->ntags++] =
                (struct dsw_kv){DSW_DAGSTER_TAG_FAILURE_REASON, o->failure_reason};
        op_event(o, R_END_EVENT, "PIPELINE_FAILURE",
                 dsw_dagster_failure_event(o->run_id, o->job_name, msg, o->failure_reason, o->now));
    }
    free(msg);
}

static void record_set_run(struct op *o)
{
    char end[32];
    const char *status = dsw_store_status_name(o->rr.after);
    char *body = body_with(o, status);
    snprintf(end, sizeof(end), "%.6f", o->now);
    const char *p[] = {o->run_id, status, body, o->now_naive, end, o->token};
    op_q(o, R_RUN_SET, SQL_RUN_END, 6, p);
    free(body);
}

/* Keep the launch's tags (last row per key wins) for the body; they are not upserted again. */
static void record_keep_tags(struct op *o, const struct dsw_db_result *r)
{
    size_t n = 0;
    for (int row = 0; row < dsw_db_result_nrows(r); row++) {
        const char *k = dsw_db_result_value(r, row, 0), *v = dsw_db_result_value(r, row, 1);
        size_t i = 0;
        if (!k || !v)
            continue;
        while (i < n && strcmp(o->kept[i][0], k) != 0)
            i++;
        if (i == DSW_ARRAY_LEN(o->kept))
            continue;
        if (i == n) {
            o->kept[n][0] = dsw_xstrdup(k);
            n++;
        }
        free(o->kept[i][1]);
        o->kept[i][1] = dsw_xstrdup(v);
    }
    for (size_t i = 0; i < n; i++)
        o->tags[o->ntags++] = (struct dsw_kv){o->kept[i][0], o->kept[i][1]};
    o->tag_i = o->ntags;
}

/* The claim was not ours to close: a lost lease, or a retry of a record that committed. */
static void record_check_already(struct op *o, const struct dsw_db_result *r)
{
    const char *state = dsw_db_result_value(r, 0, 0);
    const char *tok = dsw_db_result_value(r, 0, 1);
    if (state && tok && strcmp(state, "done") == 0 && strcmp(tok, o->token) == 0) {
        o->rr.already = true;
        o->rr.before = o->rr.after = dsw_store_status_parse(dsw_db_result_value(r, 0, 2));
        op_fail(o, 0);
        return;
    }
    op_fail(o, -ESTALE);
}

/* The record's first statement: the claim -> done with what the child (or the caller) said. */
static void record_claim_done(struct op *o)
{
    char code[16], sig[16];
    snprintf(code, sizeof(code), "%d", o->exit_code);
    snprintf(sig, sizeof(sig), "%d", o->term_signal);
    bool child = o->kind == K_EXIT;
    const char *p[] = {o->run_id, o->token, child && !o->term_signal ? code : NULL,
                       child ? sig : NULL, o->outcome};
    op_q(o, R_CLAIM_DONE, SQL_CLAIM_DONE, 5, p);
}

/* The run row is locked: read the tags we wrote at launch, or give up when it is gone. */
static void record_run_locked(struct op *o, const struct dsw_db_result *r)
{
    const char *p[] = {o->run_id, DSW_STORE_TAG_WORKER_ID, DSW_STORE_TAG_MESSAGE_ID};
    if (op_take_run(o, r, 0, 1, 2) < 0)
        op_fail(o, -ENOENT);
    else
        op_q(o, R_OUR_TAGS, SQL_OUR_TAGS, 3, p);
}

/* After a write that must have touched exactly one row (or, for R_TAG, written the tag): the
 * next tag, then the run's status; anything else means the fence failed. */
static void record_after_write(struct op *o, const struct dsw_db_result *r, bool ok)
{
    if (!ok)
        op_fail(o, -ESTALE);
    else if (!op_next_tag(o, R_TAG))
        record_set_run(o);
}

static void record_step(struct op *o, const struct dsw_db_result *r)
{
    const char *p1[] = {o->run_id};
    switch (o->step) {
    case R_BEGIN:
        record_claim_done(o);
        return;
    case R_CLAIM_DONE:
        if (dsw_db_result_nrows(r) == 0)
            op_q(o, R_CLAIM_SEEN, SQL_CLAIM_SEEN, 1, p1);
        else
            op_q(o, R_RUN_LOCKED, SQL_LOCK_RUN, 1, p1);
        return;
    case R_CLAIM_SEEN:
        record_check_already(o, r);
        return;
    case R_RUN_LOCKED:
        record_run_locked(o, r);
        return;
    case R_OUR_TAGS:
        record_keep_tags(o, r);
        (o->kind == K_EXIT ? record_exit_event : record_end_event)(o);
        return;
    case R_EXIT_EVENT:
        if (dsw_db_result_nrows(r) != 1)
            op_fail(o, -ESTALE);
        else
            record_end_event(o);
        return;
    case R_END_EVENT:
        record_after_write(o, r, dsw_db_result_nrows(r) == 1);
        return;
    case R_TAG:
        record_after_write(o, r, op_tag_written(r));
        return;
    case R_RUN_SET:
        o->rr.changed = dsw_db_result_cmd_tuples(r) == 1;
        if (!o->rr.changed)
            op_fail(o, -ESTALE); /* the row is locked and not terminal: only the fence fails */
        else
            op_commit(o);
        return;
    case R_TAGS_BODY:
        if (dsw_db_result_cmd_tuples(r) != 1)
            op_fail(o, -ESTALE);
        else
            op_commit(o);
        return;
    }
}

/* ---- one-statement paths ------------------------------------------------------------------ */

/* The one statement wrote nothing (a guard failed): forget what it assumed and run the
 * transaction, which decides with the run locked. */
static void one_fallback(struct op *o)
{
    free(o->job_name);
    free(o->body);
    o->job_name = o->body = NULL;
    o->ntags = o->tag_i = 0;
    memset(&o->rr, 0, sizeof(o->rr));
    int r = dsw_db_begin(o->s->db, on_begun, o);
    if (r < 0)
        op_finish(o, r);
}

static void on_reread(int status, const struct dsw_db_result *r, void *arg);

static void on_one(int status, const struct dsw_db_result *r, void *arg)
{
    struct op *o = arg;
    if (status == 0 && dsw_db_result_nrows(r) == 0) {
        const char *p[] = {o->run_id};
        if (o->kind == K_LAUNCH && !o->reread &&
            dsw_db_query(o->s->db, SQL_RUN_NOW, 1, p, on_reread, o) == 0) {
            o->reread = true; /* once: then the transaction decides */
            return;
        }
        one_fallback(o);
        return;
    }
    if (status == 0 && o->kind == K_EXIT) {
        o->rr.before = o->rr.after = dsw_store_status_parse(dsw_db_result_value(r, 0, 2));
        int fp = DSW_FAILPOINT("after_record"); /* as in on_committed */
        if (fp < 0)
            status = fp;
    }
    op_finish(o, status);
}

/* Send the one statement; on refusal run the transaction instead. 0 or the db's error. */
static int one_start(struct op *o, void (*fn)(struct op *, const struct dsw_db_result *),
                     const char *sql, int n, const char *const *p)
{
    o->fn = fn;
    if (dsw_db_query(o->s->db, sql, n, p, on_one, o) == 0)
        return 0;
    return op_start(o, fn);
}

static int record_exit_one(struct op *o)
{
    char code[16], sig[16];
    snprintf(code, sizeof(code), "%d", o->exit_code);
    snprintf(sig, sizeof(sig), "%d", o->term_signal);
    char *ev = exit_event_json(o);
    if (!ev)
        return op_start(o, record_step);
    const char *p[] = {o->run_id,
                       o->token,
                       o->term_signal ? NULL : code,
                       sig,
                       o->outcome,
                       o->job_name,
                       ev,
                       o->now_naive,
                       DSW_STORE_TAG_WORKER_ID,
                       DSW_STORE_TAG_MESSAGE_ID};
    int r = one_start(o, record_step, SQL_EXIT_ONE, DSW_ARRAY_LEN(p), p);
    free(ev);
    return r;
}

int dsw_store_record_exit(struct dsw_store *s, const struct dsw_store_exit *e,
                          dsw_store_record_cb cb, void *arg)
{
    char cause[160];
    if (!e || !e->run_id || !cb)
        return -EINVAL;
    struct op *o = op_new(s, K_EXIT, e->run_id, arg);
    o->cb.record = cb;
    snprintf(o->token, sizeof(o->token), "%lld", (long long)e->token);
    o->exit_code = e->exit_code;
    o->term_signal = e->term_signal;
    o->pid = e->pid;
    o->duration_s = e->duration_s;
    o->outcome = dsw_xstrdup(e->outcome ? e->outcome : e->term_signal ? "signaled" : "exited");
    if (e->term_signal)
        snprintf(cause, sizeof(cause), "run worker (pid %d) was killed by signal %d", e->pid,
                 e->term_signal);
    else
        snprintf(cause, sizeof(cause), "run worker (pid %d) exited with code %d", e->pid,
                 e->exit_code);
    o->cause = dsw_xstrdup(e->cause ? e->cause : cause);
    o->failure_reason =
        dsw_xstrdup(e->failure_reason ? e->failure_reason : reason_by_outcome(o->outcome));
    if (e->job_name && o->now_naive[0]) {
        o->job_name = dsw_xstrdup(e->job_name);
        return record_exit_one(o);
    }
    return op_start(o, record_step);
}

int dsw_store_record_outcome(struct dsw_store *s, const struct dsw_store_outcome *oc,
                             dsw_store_record_cb cb, void *arg)
{
    if (!oc || !oc->run_id || !oc->cause || !oc->outcome || !cb)
        return -EINVAL;
    struct op *o = op_new(s, K_OUTCOME, oc->run_id, arg);
    o->cb.record = cb;
    snprintf(o->token, sizeof(o->token), "%lld", (long long)oc->token);
    o->outcome = dsw_xstrdup(oc->outcome);
    o->cause = dsw_xstrdup(oc->cause);
    o->failure_reason =
        dsw_xstrdup(oc->failure_reason ? oc->failure_reason : reason_by_outcome(o->outcome));
    return op_start(o, record_step);
}

/* ---- record_launch ------------------------------------------------------------------------- */

enum { L_BEGIN, L_CLAIMED, L_RUN, L_EVENT, L_TAG, L_BODY };

/* After the tags: the body with them merged, as add_run_tags writes it (status from the
 * column, update_timestamp now). */
static void launch_set_body(struct op *o)
{
    enum dsw_store_status st = o->rr.before;
    char *body =
        o->body ? body_with(o, st == DSW_STATUS_UNKNOWN ? NULL : dsw_store_status_name(st)) : NULL;
    if (!body) {
        op_commit(o);
        return;
    }
    const char *p[] = {o->run_id, body, o->now_naive, o->token};
    op_q(o, L_BODY, SQL_RUN_TAGS, 4, p);
    free(body);
}

static char *launch_event_json(struct op *o)
{
    char rc[16], msg[384];
    snprintf(rc, sizeof(rc), "%d", o->receive_count);
    snprintf(msg, sizeof(msg), "[dagster-sqs-worker] Launching run worker on %s (pid %d).",
             o->s->hostname, o->pid);
    const struct dsw_kv meta[] = {{"worker", o->s->worker_id},
                                  {"message_id", o->message_id ? o->message_id : ""},
                                  {"receive_count", rc}};
    return dsw_dagster_engine_event(o->run_id, o->job_name, msg, meta, DSW_ARRAY_LEN(meta), -1,
                                    o->now);
}

static void launch_tags(struct op *o)
{
    o->tags[o->ntags++] = (struct dsw_kv){DSW_STORE_TAG_WORKER_ID, o->s->worker_id};
    if (o->message_id && *o->message_id)
        o->tags[o->ntags++] = (struct dsw_kv){DSW_STORE_TAG_MESSAGE_ID, o->message_id};
}

static void launch_step(struct op *o, const struct dsw_db_result *r)
{
    char pid[16];
    const char *p1[] = {o->run_id};
    switch (o->step) {
    case L_BEGIN: {
        snprintf(pid, sizeof(pid), "%d", o->pid);
        const char *p[] = {o->run_id, o->token, pid};
        op_q(o, L_CLAIMED, SQL_CLAIM_RUNNING, 3, p);
        return;
    }
    case L_CLAIMED:
        if (dsw_db_result_cmd_tuples(r) != 1)
            op_fail(o, -ESTALE);
        else
            op_q(o, L_RUN, SQL_LOCK_RUN, 1, p1);
        return;
    case L_RUN: {
        if (op_take_run(o, r, 0, 1, 2) < 0) {
            op_fail(o, -ENOENT);
            return;
        }
        op_event(o, L_EVENT, "ENGINE_EVENT", launch_event_json(o));
        return;
    }
    case L_EVENT:
        if (dsw_db_result_nrows(r) != 1) {
            op_fail(o, -ESTALE);
            return;
        }
        launch_tags(o);
        op_next_tag(o, L_TAG);
        return;
    case L_TAG:
        if (!op_tag_written(r))
            op_fail(o, -ESTALE);
        else if (!op_next_tag(o, L_TAG))
            launch_set_body(o);
        return;
    case L_BODY:
        if (dsw_db_result_cmd_tuples(r) != 1)
            op_fail(o, -ESTALE);
        else
            op_commit(o);
        return;
    }
}

/* Send the one-statement launch for the run as o->body / seen_status describe it: 0, or
 * negative (nothing sent: the body cannot be rewritten, or the db refused). */
static int launch_one_send(struct op *o, const char *seen_status)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", o->pid);
    o->ntags = o->tag_i = 0;
    launch_tags(o);
    const char *keys[DSW_ARRAY_LEN(o->tags)], *vals[DSW_ARRAY_LEN(o->tags)];
    for (size_t i = 0; i < o->ntags; i++) {
        keys[i] = o->tags[i].key;
        vals[i] = o->tags[i].value;
    }
    char *ev = launch_event_json(o);
    char *body = NULL;
    int r = -EINVAL;
    if (ev && dsw_dagster_body_update(o->body, seen_status, o->tags, o->ntags, &body) == 0) {
        char *k = store_text_array(keys, o->ntags), *v = store_text_array(vals, o->ntags);
        const char *p[] = {o->run_id, o->token, pid,          seen_status, o->body, o->job_name,
                           body,      ev,       o->now_naive, k,           v};
        o->fn = launch_step;
        r = dsw_db_query(o->s->db, SQL_LAUNCH_ONE, DSW_ARRAY_LEN(p), p, on_one, o);
        free(k);
        free(v);
    }
    free(body);
    free(ev);
    return r;
}

/* The run as it is now, for a second try of the one statement (a run worker that already wrote
 * STARTED changed the body the first one assumed). */
static void on_reread(int status, const struct dsw_db_result *r, void *arg)
{
    struct op *o = arg;
    if (status < 0) {
        op_finish(o, status);
        return;
    }
    const char *st = dsw_db_result_value(r, 0, 0), *body = dsw_db_result_value(r, 0, 2);
    if (dsw_db_result_nrows(r) != 1 || !st || !body) {
        one_fallback(o);
        return;
    }
    const char *name = dsw_db_result_value(r, 0, 1);
    free(o->job_name);
    free(o->body);
    o->job_name = name ? dsw_xstrdup(name) : NULL;
    o->body = dsw_xstrdup(body);
    char *status_text = dsw_xstrdup(st);
    if (!o->job_name || launch_one_send(o, status_text) < 0)
        one_fallback(o);
    free(status_text);
}

static int record_launch_one(struct op *o, const char *seen_status)
{
    int r = launch_one_send(o, seen_status);
    if (r == 0)
        return 0;
    free(o->job_name);
    free(o->body);
    o->job_name = o->body = NULL;
    o->ntags = 0;
    return op_start(o, launch_step);
}

int dsw_store_record_launch(struct dsw_store *s, const struct dsw_store_launch *l, dsw_store_cb cb,
                            void *arg)
{
    if (!l || !l->run_id || !cb)
        return -EINVAL;
    /* Failpoint: called right after the spawn, before the launch is recorded. */
    int fp = DSW_FAILPOINT("after_spawn");
    struct op *o = op_new(s, K_LAUNCH, l->run_id, arg);
    o->cb.done = cb;
    o->injected = fp;
    snprintf(o->token, sizeof(o->token), "%lld", (long long)l->token);
    o->pid = l->child_pid;
    o->receive_count = l->receive_count;
    o->message_id = l->message_id ? dsw_xstrdup(l->message_id) : NULL;
    if (!fp && l->job_name && l->seen_status && l->seen_body && o->now_naive[0]) {
        o->job_name = dsw_xstrdup(l->job_name);
        o->body = dsw_xstrdup(l->seen_body);
        return record_launch_one(o, l->seen_status);
    }
    return op_start(o, launch_step);
}

/* ---- mark_starting (enqueue) --------------------------------------------------------------- */

enum { M_BEGIN, M_LOCKED, M_EVENT, M_SET };

static void starting_step(struct op *o, const struct dsw_db_result *r)
{
    const char *p1[] = {o->run_id};
    switch (o->step) {
    case M_BEGIN:
        op_q(o, M_LOCKED, SQL_LOCK_RUN, 1, p1);
        return;
    case M_LOCKED:
        if (op_take_run(o, r, 0, 1, 2) < 0)
            op_fail(o, -ENOENT);
        else if (o->rr.before != DSW_STATUS_NOT_STARTED && o->rr.before != DSW_STATUS_QUEUED)
            op_fail(o, 0);
        else
            op_event(o, M_EVENT, "PIPELINE_STARTING",
                     dsw_dagster_run_event(o->run_id, o->job_name, "PIPELINE_STARTING", NULL, -1,
                                           o->now));
        return;
    case M_EVENT: {
        char *body = body_with(o, "STARTING");
        const char *p[] = {o->run_id, body, o->now_naive};
        op_q(o, M_SET, SQL_RUN_STARTING, 3, p);
        free(body);
        return;
    }
    case M_SET:
        o->rr.changed = dsw_db_result_cmd_tuples(r) == 1;
        if (o->rr.changed)
            o->rr.after = DSW_STATUS_STARTING;
        op_commit(o);
        return;
    }
}

int dsw_store_mark_starting(struct dsw_store *s, const char *run_id, dsw_store_record_cb cb,
                            void *arg)
{
    if (!run_id || !cb)
        return -EINVAL;
    struct op *o = op_new(s, K_STARTING, run_id, arg);
    o->cb.record = cb;
    return op_start(o, starting_step);
}

/* ---- schema -------------------------------------------------------------------------------- */

enum { V_BEGIN, V_LOCKED, V_HAS, V_VERSION, V_MIGRATE, V_RECORDED };

static void schema_decide(struct op *o)
{
    int found = o->schema.found, wanted = o->schema.wanted;
    if (o->kind == K_CHECK) {
        op_fail(o, found == wanted ? 0 : found == 0 ? -ENOENT : -EPROTO);
        return;
    }
    if (found > wanted) {
        op_fail(o, -EPROTO);
        return;
    }
    if (found == wanted) {
        op_fail(o, 0);
        return;
    }
    o->mig = 0;
    while (migrations[o->mig].version <= found)
        o->mig++;
    op_q(o, V_MIGRATE, migrations[o->mig].sql, 0, NULL);
}

static void schema_step(struct op *o, const struct dsw_db_result *r)
{
    char v[16];
    switch (o->step) {
    case V_BEGIN:
        if (o->kind == K_INIT) {
            const char *p[] = {INIT_LOCK_KEY};
            op_q(o, V_LOCKED, SQL_INIT_LOCK, 1, p);
            return;
        }
        /* The check takes no lock. */
        /* FALLTHROUGH */
    case V_LOCKED:
        op_q(o, V_HAS, SQL_HAS_SCHEMA, 0, NULL);
        return;
    case V_HAS:
        if (dsw_db_result_bool(r, 0, 0))
            op_q(o, V_VERSION, SQL_SCHEMA_VERSION, 0, NULL);
        else
            schema_decide(o);
        return;
    case V_VERSION:
        o->schema.found = (int)store_col_i64(r, 0, 0);
        schema_decide(o);
        return;
    case V_MIGRATE:
        if (++o->mig < DSW_ARRAY_LEN(migrations)) {
            op_q(o, V_MIGRATE, migrations[o->mig].sql, 0, NULL);
            return;
        }
        snprintf(v, sizeof(v), "%d", o->schema.wanted);
        const char *p[] = {v};
        op_q(o, V_RECORDED, SQL_SET_VERSION, 1, p);
        return;
    case V_RECORDED:
        dsw_info("store: schema " SCHEMA " upgraded from version %d to %d", o->schema.found,
                 o->schema.wanted);
        op_commit(o);
        return;
    }
}

int dsw_store_db_init(struct dsw_store *s, dsw_store_schema_cb cb, void *arg)
{
    if (!cb)
        return -EINVAL;
    struct op *o = op_new(s, K_INIT, NULL, arg);
    o->cb.schema = cb;
    return op_start(o, schema_step);
}

int dsw_store_check_schema(struct dsw_store *s, dsw_store_schema_cb cb, void *arg)
{
    if (!cb)
        return -EINVAL;
    struct op *o = op_new(s, K_CHECK, NULL, arg);
    o->cb.schema = cb;
    return op_start(o, schema_step);
}
