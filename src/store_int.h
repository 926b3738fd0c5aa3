/* store's private parts, shared by store.c (runs, claims, records, schema) and store_step.c (the
 * step claims): the store object, the SQL names, and the single-statement call machinery with
 * the callback rule of store.h (a call either returns 0 and its callback fires once from the
 * db's result, or returns negative, freed, and nothing fires). Not part of any API. */
#ifndef DSW_STORE_INT_H
#define DSW_STORE_INT_H

#include "dsw/db.h"
#include "dsw/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLL_MAX        1000
#define TAG_MAX_RUNTIME "dagster/max_runtime"

#define SCHEMA "dagster_sqs_worker"
#define CLAIMS SCHEMA ".run_claims"
#define STEPS  SCHEMA ".step_claims"
#define FENCE  "nextval('" SCHEMA ".fence')"
/* The ten columns store_read_claim parses, for a claims row aliased p whose kind is the SQL
 * expression kind. */
#define CLAIM_COLS_K(p, kind)                                                                      \
    p "state, " p "fencing_token, " p "attempt, " kind ", " p "worker_id, " p "message_id, " p     \
      "receive_count, " p "child_pid, extract(epoch FROM now() - " p "heartbeat_at)::float8, " p   \
      "outcome"
#define CLAIM_COLS(p)      CLAIM_COLS_K(p, p "kind")
#define STEP_CLAIM_COLS(p) CLAIM_COLS_K(p, "'step'::text")
#define NCLAIM_COLS        10
/* A claim's heartbeat is older than the ttl in ms that is parameter $1: it is stale. */
#define STALE_TTL1 "heartbeat_at < now() - $1::bigint * interval '1 millisecond'"
/* A run ($1) with its max-runtime tag ($2) and the columns cols of the claim joined by join (a
 * claims table aliased c, LEFT JOINed ON its condition): what store_on_load reads. */
#define SQL_RUN_WITH_CLAIM(cols, join)                                                             \
    "SELECT r.status, r.pipeline_name, r.run_body, (SELECT t.value FROM run_tags t"                \
    " WHERE t.run_id = r.run_id AND t.key = $2 ORDER BY t.id DESC LIMIT 1), " cols                 \
    " FROM runs r LEFT JOIN " join " WHERE r.run_id = $1"

struct dsw_store {
    struct dsw_db *db;
    char *worker_id;
    char *hostname;
    int64_t ttl_ms;
    char ttl[24];
};

/* The context of a single-statement call; the union member follows the callback type. */
struct call {
    struct dsw_store *s;
    union {
        dsw_store_load_cb load;
        dsw_store_poll_cb poll;
        dsw_store_claim_cb claim;
        dsw_store_cb done;
        dsw_store_sweep_cb sweep;
        dsw_store_summary_cb summary;
        dsw_store_stops_cb stops;
        dsw_store_count_cb count;
    } cb;
    void *arg;
    char *run_id;
    char *step_key; /* a step claim's key (with run_id and attempt), for its re-read */
    int attempt;
    bool takeover;
    bool claiming; /* dsw_store_load_claim: the inserted claim's columns follow the load's */
    int injected;  /* failpoint "fail": the status reported once the statement is done */
};

struct call *store_call_new(struct dsw_store *s, const char *run_id, void *arg);
void store_call_free(struct call *c);
/* dsw_db_query with c as the argument; on refusal c is freed and the error returned. */
int store_call_query(struct call *c, const char *sql, int n, const char *const *p,
                     dsw_db_query_cb cb);
/* store_call_query of a statement whose only parameter ($1) is array, an array literal
 * (store_text_array, store_int64_array), freed here. */
int store_array_query(struct call *c, const char *sql, char *array, dsw_db_query_cb cb);
/* store_call_query of a statement whose only parameter ($1) is the claims ttl in ms. */
int store_ttl_query(struct call *c, const char *sql, dsw_db_query_cb cb);

/* A number column, 0 when NULL or not a number. */
int64_t store_col_i64(const struct dsw_db_result *r, int row, int col);
/* The NCLAIM_COLS columns from c on (state NONE when state is NULL); live by s->ttl_ms. */
void store_read_claim(const struct dsw_store *s, const struct dsw_db_result *r, int row, int c,
                      struct dsw_store_claim *out);
/* A text[] literal {"a","b"} with " and \ escaped (heap). */
char *store_text_array(const char *const *items, size_t n);
/* A bigint[] literal {1,2} (heap). */
char *store_int64_array(const int64_t *v, size_t n);

/* Query callbacks for a struct call: the run row of SQL_LOAD's shape (status, name, body,
 * max runtime tag, then the claim columns); a claim re-read after a lost insert (-EEXIST, or
 * -EBUSY for a takeover); a statement whose effect must be exactly one row (else -ESTALE). */
void store_on_load(int status, const struct dsw_db_result *r, void *arg);
void store_on_claim_view(int status, const struct dsw_db_result *r, void *arg);
void store_on_one_row(int status, const struct dsw_db_result *r, void *arg);

#endif
