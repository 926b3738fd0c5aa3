/* store_step: the SQL of step claims (docs/steps.md §3), one row per (run id, step key, attempt) in
 * dagster_sqs_worker.step_claims, fenced by a token from the run claims' sequence and aged by
 * the database clock. Every function is one statement over store.c's call machinery
 * (store_int.h); leases are refreshed by dsw_store_heartbeat(_batch) with the run claims'. */
#include "dsw/store.h"

#include "store_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEP_KEY_MAX 255
#define STOPS_MAX    1000
/* A step claim's key: $1 run_id, $2 step_key, $3 attempt; of the row aliased c, and unaliased. */
#define KEY_C    "c.run_id = $1 AND c.step_key = $2 AND c.attempt = $3::int"
#define KEY      "run_id = $1 AND step_key = $2 AND attempt = $3::int"
#define STEP_COL STEP_CLAIM_COLS("c.")

static const char SQL_STEP_LOAD[] =
    SQL_RUN_WITH_CLAIM(STEP_COL, STEPS " c ON c.run_id = r.run_id AND c.step_key = $3"
                                       " AND c.attempt = $4::int");
/* The claim and, when it lost, the row that won, in one statement (the last column: won). An
 * insert that committed after this statement's snapshot is not seen by its SELECT: no row back,
 * then the row is read again (SQL_STEP_VIEW). */
static const char SQL_STEP_CLAIM[] =
    "WITH ins AS (INSERT INTO " STEPS " AS c (run_id, step_key, attempt, worker_id, fencing_token,"
    " message_id, receive_count, state) VALUES ($1, $2, $3::int, $4, " FENCE ", $5, $6::int,"
    " 'claimed') ON CONFLICT (run_id, step_key, attempt) DO NOTHING RETURNING " STEP_COL ", true)"
    " SELECT * FROM ins UNION ALL SELECT " STEP_COL ", false FROM " STEPS " c WHERE " KEY_C
    " AND NOT EXISTS (SELECT 1 FROM ins)";
static const char SQL_STEP_VIEW[] = "SELECT " STEP_COL " FROM " STEPS " c WHERE " KEY_C;
/* $4 token, $5 outcome, $6 message_id, $7 receive_count, $8 ttl (ms). */
static const char SQL_STEP_CLOSE_SEEN[] =
    "UPDATE " STEPS " SET state = 'done', outcome = $5, finished_at = now(), message_id = $6,"
    " receive_count = $7::int WHERE " KEY " AND fencing_token = $4::bigint AND state <> 'done'"
    " AND heartbeat_at < now() - $8::bigint * interval '1 millisecond'";
/* $4 worker_id, $5 outcome, $6 message_id, $7 receive_count. */
static const char SQL_STEP_CLOSE_NEW[] =
    "INSERT INTO " STEPS " (run_id, step_key, attempt, worker_id, fencing_token, message_id,"
    " receive_count, state, outcome, finished_at) VALUES ($1, $2, $3::int, $4, " FENCE ", $6,"
    " $7::int, 'done', $5, now()) ON CONFLICT (run_id, step_key, attempt) DO NOTHING";
/* The fence of the token-only writes: the claim holding token $1, not done. */
#define HELD_BY_TOKEN " WHERE fencing_token = $1::bigint AND state <> 'done'"
static const char SQL_STEP_LAUNCH[] = "UPDATE " STEPS " SET state = 'running',"
                                      " child_pid = $2::int, heartbeat_at = now()" HELD_BY_TOKEN;
/* The exit, or the same exit already written by this token (a statement tried again after its
 * reply was lost, having committed): one row either way, its finish time kept. Any other done
 * row (another exit, closed, lost) is no row: -ESTALE. $2 exit_code, $3 term_signal, $4 outcome. */
static const char SQL_STEP_EXIT[] =
    "UPDATE " STEPS " SET state = 'done', exit_code = $2::int, term_signal = $3::int,"
    " outcome = $4, finished_at = CASE WHEN state = 'done' THEN finished_at ELSE now() END,"
    " heartbeat_at = CASE WHEN state = 'done' THEN heartbeat_at ELSE now() END"
    " WHERE fencing_token = $1::bigint AND (state <> 'done' OR (outcome = $4"
    " AND exit_code IS NOT DISTINCT FROM $2::int AND term_signal IS NOT DISTINCT FROM $3::int))";
static const char SQL_STEP_RELEASE[] = "DELETE FROM " STEPS HELD_BY_TOKEN;
static const char SQL_STEP_STOPS[] =
    "SELECT fencing_token FROM " STEPS " WHERE fencing_token = ANY($1::bigint[])"
    " AND state <> 'done' AND stop_requested_at IS NOT NULL";
static const char SQL_STEP_SWEEP[] =
    "UPDATE " STEPS " SET state = 'done', outcome = 'lost', finished_at = now()"
    " WHERE state <> 'done' AND " STALE_TTL1;

static bool key_ok(const struct dsw_store_step_key *k)
{
    return k && k->run_id && k->step_key && k->step_key[0] &&
           strnlen(k->step_key, STEP_KEY_MAX + 1) <= STEP_KEY_MAX && k->attempt >= 1;
}

/* A call remembering the key (for a re-read), its attempt as text in att. */
static struct call *key_call(struct dsw_store *s, const struct dsw_store_step_key *k, void *arg,
                             char att[16])
{
    struct call *c = store_call_new(s, k->run_id, arg);
    c->step_key = dsw_xstrdup(k->step_key);
    c->attempt = k->attempt;
    snprintf(att, 16, "%d", k->attempt);
    return c;
}

int dsw_store_step_load(struct dsw_store *s, const struct dsw_store_step_key *k,
                        dsw_store_load_cb cb, void *arg)
{
    char att[16];
    if (!key_ok(k) || !cb)
        return -EINVAL;
    struct call *c = key_call(s, k, arg, att);
    c->cb.load = cb;
    const char *p[] = {k->run_id, TAG_MAX_RUNTIME, k->step_key, att};
    return store_call_query(c, SQL_STEP_LOAD, 4, p, store_on_load);
}

static void on_step_claim(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    struct dsw_store_claim claim;
    if (status == 0 && dsw_db_result_nrows(r) == 0) {
        char att[16];
        snprintf(att, sizeof(att), "%d", c->attempt);
        const char *p[] = {c->run_id, c->step_key, att};
        if (dsw_db_query(c->s->db, SQL_STEP_VIEW, 3, p, store_on_claim_view, c) == 0)
            return;
        status = -ECANCELED;
    }
    if (status == 0 && !dsw_db_result_bool(r, 0, NCLAIM_COLS))
        status = -EEXIST;
    store_read_claim(c->s, r, 0, 0, &claim);
    c->cb.claim(status, status == 0 || status == -EEXIST ? &claim : NULL, c->arg);
    store_call_free(c);
}

int dsw_store_step_claim(struct dsw_store *s, const struct dsw_store_step_claim_req *req,
                         dsw_store_claim_cb cb, void *arg)
{
    char att[16], rc[16];
    if (!req || !key_ok(&req->key) || !cb)
        return -EINVAL;
    snprintf(rc, sizeof(rc), "%d", req->receive_count);
    struct call *c = key_call(s, &req->key, arg, att);
    c->cb.claim = cb;
    const char *p[] = {req->key.run_id, req->key.step_key, att, s->worker_id, req->message_id, rc};
    return store_call_query(c, SQL_STEP_CLAIM, 6, p, on_step_claim);
}

int dsw_store_step_close(struct dsw_store *s, const struct dsw_store_step_claim_req *req,
                         int64_t seen_token, const char *outcome, dsw_store_cb cb, void *arg)
{
    char att[16], rc[16], tok[24];
    if (!req || !key_ok(&req->key) || !outcome || !cb)
        return -EINVAL;
    snprintf(rc, sizeof(rc), "%d", req->receive_count);
    snprintf(tok, sizeof(tok), "%lld", (long long)seen_token);
    struct call *c = key_call(s, &req->key, arg, att);
    c->cb.done = cb;
    const char *p[] = {req->key.run_id, req->key.step_key, att, seen_token ? tok : s->worker_id,
                       outcome,         req->message_id,   rc,  s->ttl};
    if (seen_token)
        return store_call_query(c, SQL_STEP_CLOSE_SEEN, 8, p, store_on_one_row);
    return store_call_query(c, SQL_STEP_CLOSE_NEW, 7, p, store_on_one_row);
}

/* One statement on the step claim holding token ($1), more parameters after it; its effect
 * must be exactly one row (else -ESTALE). */
static int token_statement(struct dsw_store *s, const char *sql, int n, const char *const *p,
                           dsw_store_cb cb, void *arg)
{
    if (!cb)
        return -EINVAL;
    struct call *c = store_call_new(s, NULL, arg);
    c->cb.done = cb;
    return store_call_query(c, sql, n, p, store_on_one_row);
}

int dsw_store_step_launch(struct dsw_store *s, int64_t token, int child_pid, dsw_store_cb cb,
                          void *arg)
{
    char tok[24], pid[16];
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    snprintf(pid, sizeof(pid), "%d", child_pid);
    const char *p[] = {tok, pid};
    return token_statement(s, SQL_STEP_LAUNCH, 2, p, cb, arg);
}

int dsw_store_step_exit(struct dsw_store *s, const struct dsw_store_step_exit *x, dsw_store_cb cb,
                        void *arg)
{
    char tok[24], code[16], sig[16];
    if (!x)
        return -EINVAL;
    snprintf(tok, sizeof(tok), "%lld", (long long)x->token);
    snprintf(code, sizeof(code), "%d", x->exit_code);
    snprintf(sig, sizeof(sig), "%d", x->term_signal);
    const char *outcome = x->outcome ? x->outcome : x->term_signal ? "signaled" : "exited";
    /* As docs/steps.md §3 reads: exit_code set when it exited, term_signal when it was killed;
     * neither without a child (exit_code < 0). */
    bool exited = !x->term_signal && x->exit_code >= 0;
    const char *p[] = {tok, exited ? code : NULL, x->term_signal ? sig : NULL, outcome};
    return token_statement(s, SQL_STEP_EXIT, 4, p, cb, arg);
}

int dsw_store_step_release(struct dsw_store *s, int64_t token, dsw_store_cb cb, void *arg)
{
    char tok[24];
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    const char *p[] = {tok};
    return token_statement(s, SQL_STEP_RELEASE, 1, p, cb, arg);
}

static void on_stops(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    size_t n = status == 0 ? (size_t)dsw_db_result_nrows(r) : 0;
    int64_t *tokens = dsw_xcalloc(n ? n : 1, sizeof(*tokens));
    for (size_t i = 0; i < n; i++)
        tokens[i] = store_col_i64(r, (int)i, 0);
    c->cb.stops(status, status == 0 ? tokens : NULL, n, c->arg);
    free(tokens);
    store_call_free(c);
}

int dsw_store_step_stops(struct dsw_store *s, const int64_t *tokens, size_t n,
                         dsw_store_stops_cb cb, void *arg)
{
    if (!tokens || n == 0 || n > STOPS_MAX || !cb)
        return -EINVAL;
    struct call *c = store_call_new(s, NULL, arg);
    c->cb.stops = cb;
    return store_array_query(c, SQL_STEP_STOPS, store_int64_array(tokens, n), on_stops);
}

static void on_count(int status, const struct dsw_db_result *r, void *arg)
{
    struct call *c = arg;
    c->cb.count(status, status == 0 ? (int64_t)dsw_db_result_cmd_tuples(r) : 0, c->arg);
    store_call_free(c);
}

int dsw_store_step_sweep(struct dsw_store *s, dsw_store_count_cb cb, void *arg)
{
    struct call *c = cb ? store_call_new(s, NULL, arg) : NULL;
    if (!c)
        return -EINVAL;
    c->cb.count = cb;
    return store_ttl_query(c, SQL_STEP_SWEEP, on_count);
}
