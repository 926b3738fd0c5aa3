/* store against a real PostgreSQL (DSW_TEST_PG_*) holding schema.sql and the rows of
 * runs_rows_all.json / run_tags.json (under fresh run ids per test): schema, load, claim races,
 * takeover and fencing, two sweepers, fenced records (terminal runs kept, all-or-nothing when
 * the session is killed mid-way, pg_notify), enqueue's STARTING, and a server restart with a
 * record queued. Every test ends with uv_loop_close() == 0. */
#include "testutil.h"

#include "dsw/store.h"
#include "dsw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NDB 8

struct fx {
    uv_loop_t loop;
    struct dsw_db *db[NDB];
    struct dsw_store *st[NDB];
    int ups[NDB];
    int closed;
    char prefix[9];
    char notes[16][128];
    int nnotes;
};

static void on_state(struct dsw_db *db, bool up, void *arg)
{
    if (up)
        (*(int *)arg)++;
}

/* Notifications are collected through this global: the callback arg is the up counter. */
static struct fx *g_fx;

static void on_notify_collect(struct dsw_db *db, const char *chan, const char *payload, void *arg)
{
    if (g_fx && g_fx->nnotes < 16)
        snprintf(g_fx->notes[g_fx->nnotes++], sizeof(g_fx->notes[0]), "%s", payload);
}

static int all_up(void *arg)
{
    struct fx *f = arg;
    for (int i = 0; i < NDB; i++)
        if (f->db[i] && !f->ups[i])
            return 0;
    return 1;
}

static void open_db(struct fx *f, int i)
{
    char wid[64];
    struct dsw_db_opts o = {
        .conninfo = tu_need_env("DSW_TEST_PG_CONNINFO"),
        .backoff_min_ms = 50,
        .backoff_max_ms = 400,
        .on_state = on_state,
        .on_notify = on_notify_collect,
        .arg = &f->ups[i],
    };
    assert_int_equal(dsw_db_init(&f->loop, &o, &f->db[i]), 0);
    snprintf(wid, sizeof(wid), "testhost:%d:%d", (int)getpid(), i);
    struct dsw_store_opts so = {.worker_id = wid, .hostname = "testhost", .ttl_ms = 60000};
    assert_int_equal(dsw_store_new(f->db[i], &so, &f->st[i]), 0);
}

struct wait {
    int done;
    int status;
    struct dsw_store_schema schema;
    struct dsw_store_claim claim;
    char claim_worker[128];
    struct dsw_store_record_result rr;
    char v0[4096];
    long long tuples;
    int nrows;
    /* load */
    enum dsw_store_status run_status;
    char job[64];
    int64_t max_runtime_ms;
    bool claimed; /* load_claim */
    int64_t won_token;
    /* sweep / poll */
    char ids[32][64];
    int nids;
};

static int w_done(void *arg)
{
    return ((struct wait *)arg)->done;
}

static void w_until(struct fx *f, struct wait *w)
{
    assert_true(tu_run_until(&f->loop, w_done, w, 20000));
}

static void on_schema(int status, const struct dsw_store_schema *res, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    w->schema = *res;
}

static void on_sql(int status, const struct dsw_db_result *r, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    w->nrows = dsw_db_result_nrows(r);
    w->tuples = dsw_db_result_cmd_tuples(r);
    const char *v = dsw_db_result_value(r, 0, 0);
    dsw_strlcpy(w->v0, v ? v : "(null)", sizeof(w->v0));
}

/* Run one statement on db 0 and wait for it; returns the first value (static storage). */
static const char *sql(struct fx *f, const char *q, int n, const char *const *p)
{
    static struct wait w;
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_db_query(f->db[0], q, n, p, on_sql, &w), 0);
    w_until(f, &w);
    if (w.status != 0)
        fail_msg("sql failed (%d): %s", w.status, q);
    return w.v0;
}

/* The vector run id ...0000000000NN under this fixture's prefix. */
static char *rid(struct fx *f, const char *nn, char out[40])
{
    snprintf(out, 40, "%s-0000-4000-8000-0000000000%s", f->prefix, nn);
    return out;
}

static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t n = 0, lf = strlen(from), lt = strlen(to);
    for (const char *p = s; (p = strstr(p, from)); p += lf)
        n++;
    char *out = dsw_xmalloc(strlen(s) + n * lt + 1), *o = out;
    for (const char *p = s, *q; *p;) {
        q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            o += strlen(p);
            break;
        }
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        memcpy(o, to, lt);
        o += lt;
        p = q + lf;
    }
    *o = '\0';
    return out;
}

/* Insert every row of runs_rows_all.json and run_tags.json under fresh run ids. */
static void load_vectors(struct fx *f)
{
    char *path = tu_vector_path("runs_rows_all.json");
    json_error_t err;
    json_t *rows = json_load_file(path, 0, &err);
    assert_non_null(rows);
    free(path);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *old = json_string_value(json_object_get(row, "run_id"));
        char id[40];
        rid(f, old + strlen(old) - 2, id);
        char *body = replace_all(json_string_value(json_object_get(row, "run_body")), old, id);
        char start[64] = "", end[64] = "";
        json_t *st = json_object_get(row, "start_time"), *en = json_object_get(row, "end_time");
        if (json_is_number(st))
            snprintf(start, sizeof(start), "%.6f", json_number_value(st));
        if (json_is_number(en))
            snprintf(end, sizeof(end), "%.6f", json_number_value(en));
        const char *p[] = {id,
                           json_string_value(json_object_get(row, "pipeline_name")),
                           json_string_value(json_object_get(row, "status")),
                           body,
                           json_string_value(json_object_get(row, "create_timestamp")),
                           json_string_value(json_object_get(row, "update_timestamp")),
                           *start ? start : NULL,
                           *end ? end : NULL};
        sql(f,
            "INSERT INTO runs (run_id, pipeline_name, status, run_body, create_timestamp, "
            "update_timestamp, start_time, end_time) VALUES ($1, $2, $3, $4, $5::timestamp, "
            "$6::timestamp, $7::float8, $8::float8)",
            8, p);
        free(body);
    }
    json_decref(rows);
    path = tu_vector_path("run_tags.json");
    rows = json_load_file(path, 0, &err);
    assert_non_null(rows);
    free(path);
    json_array_foreach(rows, i, row)
    {
        const char *old = json_string_value(json_object_get(row, "run_id"));
        char id[40];
        const char *p[] = {rid(f, old + strlen(old) - 2, id),
                           json_string_value(json_object_get(row, "key")),
                           json_string_value(json_object_get(row, "value"))};
        sql(f, "INSERT INTO run_tags (run_id, key, value) VALUES ($1, $2, $3)", 3, p);
    }
    json_decref(rows);
}

static void setup_fx(struct fx *f, int ndb)
{
    memset(f, 0, sizeof(*f));
    g_fx = f;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    for (int i = 0; i < ndb; i++)
        open_db(f, i);
    assert_true(tu_run_until(&f->loop, all_up, f, 10000));
    FILE *r = fopen("/dev/urandom", "rb");
    unsigned v = 0;
    assert_int_equal(fread(&v, sizeof(v), 1, r), 1);
    fclose(r);
    snprintf(f->prefix, sizeof(f->prefix), "%08x", v);
    struct wait w = {0};
    assert_int_equal(dsw_store_db_init(f->st[0], on_schema, &w), 0);
    w_until(f, &w);
    assert_int_equal(w.status, 0);
    load_vectors(f);
}

static void on_closed(void *arg)
{
    ((struct fx *)arg)->closed++;
}

static void teardown_fx(struct fx *f)
{
    int n = 0;
    for (int i = 0; i < NDB; i++)
        if (f->db[i]) {
            dsw_db_close(f->db[i], on_closed, f);
            n++;
        }
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, n);
    for (int i = 0; i < NDB; i++)
        dsw_store_free(f->st[i]);
    tu_loop_close(&f->loop);
    g_fx = NULL;
}

/* Put a run in a status (column and body), as Dagster would have. */
static void set_status(struct fx *f, const char *id, const char *status)
{
    char *e = dsw_xasprintf("{\"__enum__\": \"PipelineRunStatus.%s\"}", status);
    const char *p[] = {id, status, e};
    sql(f,
        "UPDATE runs SET status = $2, run_body = regexp_replace(run_body, "
        "'\\{\"__enum__\": \"PipelineRunStatus\\.[A-Z_]+\"\\}', $3) WHERE run_id = $1",
        3, p);
    free(e);
}

static const char *count_events(struct fx *f, const char *id, const char *type)
{
    const char *p[] = {id, type};
    return sql(f,
               "SELECT count(*) FROM event_logs WHERE run_id = $1 AND "
               "($2::text IS NULL OR dagster_event_type = $2)",
               2, p);
}

/* --- callbacks ----------------------------------------------------------------------------- */

static void on_claim(int status, const struct dsw_store_claim *c, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    if (c) {
        w->claim = *c;
        dsw_strlcpy(w->claim_worker, c->worker_id ? c->worker_id : "", sizeof(w->claim_worker));
    }
}

static void on_done(int status, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
}

static void on_record(int status, const struct dsw_store_record_result *rr, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    if (rr)
        w->rr = *rr;
}

/* The per-lease results as "0,-ESTALE,..." in w->job. */
static void on_leases(int status, const int *kept, size_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    size_t len = 0;
    for (size_t i = 0; kept && i < n; i++)
        len += (size_t)snprintf(w->job + len, sizeof(w->job) - len, "%s%s", i ? "," : "",
                                kept[i] == 0         ? "0"
                                : kept[i] == -ESTALE ? "-ESTALE"
                                                     : "other");
}

static void on_load(int status, const struct dsw_store_run *run, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    if (run) {
        w->run_status = run->status;
        dsw_strlcpy(w->job, run->job_name ? run->job_name : "", sizeof(w->job));
        w->max_runtime_ms = run->max_runtime_ms;
        w->claim = run->claim;
        w->claim.worker_id = w->claim.kind = w->claim.message_id = w->claim.outcome = NULL;
        w->claimed = run->claimed;
        w->won_token = run->won.token;
        assert_int_equal(run->claimed, run->won.state == DSW_CLAIM_CLAIMED);
    }
}

static void on_sweep(int status, const struct dsw_store_swept *items, size_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    /* Only this fixture's runs: stale claims other tests left in the database must not crowd
     * them out of the 32 kept. */
    for (size_t i = 0; i < n && w->nids < 32; i++)
        if (!g_fx || strncmp(items[i].run_id, g_fx->prefix, strlen(g_fx->prefix)) == 0)
            dsw_strlcpy(w->ids[w->nids++], items[i].run_id, sizeof(w->ids[0]));
}

static void on_poll(int status, const struct dsw_store_status_row *rows, size_t n, void *arg)
{
    struct wait *w = arg;
    w->done = 1;
    w->status = status;
    for (size_t i = 0; i < n && w->nids < 32; i++)
        snprintf(w->ids[w->nids++], sizeof(w->ids[0]), "%s=%s", rows[i].run_id,
                 dsw_store_status_name(rows[i].status));
}

static struct wait claim(struct fx *f, int who, const char *id, const char *msg)
{
    struct wait w = {0};
    struct dsw_store_claim_req req = {
        .run_id = id, .kind = "execute", .message_id = msg, .receive_count = 1};
    assert_int_equal(dsw_store_claim(f->st[who], &req, on_claim, &w), 0);
    w_until(f, &w);
    return w;
}

static void age_claim(struct fx *f, const char *id)
{
    const char *p[] = {id};
    sql(f,
        "UPDATE dagster_sqs_worker.run_claims SET heartbeat_at = now() - interval '5 minutes' "
        "WHERE run_id = $1",
        1, p);
}

static struct wait record_exit(struct fx *f, int who, const char *id, int64_t token, int code)
{
    struct wait w = {0};
    struct dsw_store_exit e = {
        .run_id = id, .token = token, .exit_code = code, .pid = 4242, .duration_s = 12.34};
    assert_int_equal(dsw_store_record_exit(f->st[who], &e, on_record, &w), 0);
    w_until(f, &w);
    return w;
}

/* The value of tag key in the run's stored body (static storage; "(null)" when absent). */
static const char *tag_in_body(struct fx *f, const char *id, const char *key)
{
    const char *p[] = {id, key};
    return sql(f, "SELECT run_body::json -> 'tags' ->> $2 FROM runs WHERE run_id = $1", 2, p);
}

/* --- tests --------------------------------------------------------------------------------- */

static void test_schema_and_load(void **state)
{
    struct fx f;
    struct wait w = {0};
    char id[40];
    setup_fx(&f, 1);
    assert_int_equal(dsw_store_check_schema(f.st[0], on_schema, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, DSW_STORE_SCHEMA_VERSION);
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_db_init(f.st[0], on_schema, &w), 0); /* idempotent */
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_int_equal(w.schema.found, DSW_STORE_SCHEMA_VERSION);

    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_load(f.st[0], rid(&f, "0d", id), on_load, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_int_equal(w.run_status, DSW_STATUS_NOT_STARTED);
    assert_string_equal(w.job, "success_inproc_job");
    assert_int_equal(w.max_runtime_ms, 0);
    assert_int_equal(w.claim.state, DSW_CLAIM_NONE);

    const char *p[] = {id};
    sql(&f, "INSERT INTO run_tags (run_id, key, value) VALUES ($1, 'dagster/max_runtime', '90')", 1,
        p);
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_load(f.st[0], id, on_load, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.max_runtime_ms, 90000);

    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_load(f.st[0], rid(&f, "ff", id), on_load, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, -ENOENT);
    teardown_fx(&f);
}

static struct wait load_claim(struct fx *f, int who, const char *id, int receive_count)
{
    struct wait w = {0};
    struct dsw_store_claim_req req = {
        .run_id = id, .kind = "execute", .message_id = "m-1", .receive_count = receive_count};
    assert_int_equal(dsw_store_load_claim(f->st[who], &req, 3, on_load, &w), 0);
    w_until(f, &w);
    return w;
}

static const char *claim_rows(struct fx *f, const char *id)
{
    const char *p[] = {id};
    return sql(f, "SELECT count(*)::text FROM dagster_sqs_worker.run_claims WHERE run_id = $1", 1,
               p);
}

/* The load that claims too: only when execute is the only decision; else a plain load. */
static void test_load_claim(void **state)
{
    struct fx f;
    char id[40], started[40];
    setup_fx(&f, 2);
    struct wait w = load_claim(&f, 0, rid(&f, "0d", id), 1); /* NOT_STARTED, no claim */
    assert_int_equal(w.status, 0);
    assert_true(w.claimed);
    assert_true(w.won_token > 0);
    assert_int_equal(w.claim.state, DSW_CLAIM_NONE);
    assert_int_equal(w.run_status, DSW_STATUS_NOT_STARTED);
    assert_string_equal(claim_rows(&f, id), "1");
    w = load_claim(&f, 1, id, 1); /* the other worker sees the claim, takes nothing */
    assert_int_equal(w.status, 0);
    assert_false(w.claimed);
    assert_int_equal(w.claim.state, DSW_CLAIM_CLAIMED);
    assert_true(w.claim.live);
    const char *p[] = {rid(&f, "0c", started)};
    sql(&f, "UPDATE runs SET status = 'STARTING' WHERE run_id = $1", 1, p);
    w = load_claim(&f, 1, started, 4); /* more deliveries than max_receives: give-up row */
    assert_false(w.claimed);
    assert_string_equal(claim_rows(&f, started), "0");
    sql(&f, "UPDATE runs SET status = 'STARTED' WHERE run_id = $1", 1, p);
    w = load_claim(&f, 1, started, 1); /* STARTED with no claim: not ours */
    assert_false(w.claimed);
    assert_int_equal(w.run_status, DSW_STATUS_STARTED);
    assert_string_equal(claim_rows(&f, started), "0");
    sql(&f, "UPDATE runs SET status = 'STARTING' WHERE run_id = $1", 1, p);
    w = load_claim(&f, 1, started, 3);
    assert_true(w.claimed);
    assert_string_equal(claim_rows(&f, started), "1");
    w = load_claim(&f, 0, rid(&f, "ff", id), 1);
    assert_int_equal(w.status, -ENOENT);
    teardown_fx(&f);
}

static int all_claimed(void *arg)
{
    struct wait *w = arg;
    for (int i = 0; i < NDB; i++)
        if (!w[i].done)
            return 0;
    return 1;
}

static void test_claim_race(void **state)
{
    struct fx f;
    struct wait w[NDB];
    char id[40];
    setup_fx(&f, NDB);
    rid(&f, "0d", id);
    memset(w, 0, sizeof(w));
    struct dsw_store_claim_req req = {
        .run_id = id, .kind = "execute", .message_id = "m-1", .receive_count = 1};
    for (int i = 0; i < NDB; i++)
        assert_int_equal(dsw_store_claim(f.st[i], &req, on_claim, &w[i]), 0);
    assert_true(tu_run_until(&f.loop, all_claimed, w, 20000));
    int winners = 0;
    int64_t token = 0;
    for (int i = 0; i < NDB; i++)
        if (w[i].status == 0) {
            winners++;
            token = w[i].claim.token;
            assert_int_equal(w[i].claim.state, DSW_CLAIM_CLAIMED);
            assert_int_equal(w[i].claim.attempt, 1);
        }
    assert_int_equal(winners, 1);
    for (int i = 0; i < NDB; i++)
        if (w[i].status != 0) {
            assert_int_equal(w[i].status, -EEXIST);
            assert_int_equal(w[i].claim.token, token);
            assert_true(w[i].claim.live);
        }
    teardown_fx(&f);
}

static void test_takeover_and_fencing(void **state)
{
    struct fx f;
    char id[40];
    setup_fx(&f, 2);
    rid(&f, "0d", id);
    set_status(&f, id, "STARTED");
    struct wait a = claim(&f, 0, id, "m-a");
    assert_int_equal(a.status, 0);
    int64_t old = a.claim.token;

    /* A fresh lease is never taken over. */
    struct wait b = {0};
    struct dsw_store_claim_req req = {
        .run_id = id, .kind = "execute", .message_id = "m-b", .receive_count = 2};
    assert_int_equal(dsw_store_takeover(f.st[1], &req, old, on_claim, &b), 0);
    w_until(&f, &b);
    assert_int_equal(b.status, -EBUSY);
    assert_int_equal(b.claim.token, old);
    assert_true(b.claim.live);

    /* A stale one is, with a new token. */
    age_claim(&f, id);
    memset(&b, 0, sizeof(b));
    assert_int_equal(dsw_store_takeover(f.st[1], &req, old, on_claim, &b), 0);
    w_until(&f, &b);
    assert_int_equal(b.status, 0);
    assert_true(b.claim.token > old);
    assert_int_equal(b.claim.attempt, 2);
    assert_true(strstr(b.claim_worker, ":1") != NULL);

    /* The old owner's heartbeat and writes change nothing. */
    struct wait hb = {0};
    assert_int_equal(dsw_store_heartbeat(f.st[0], id, old, on_done, &hb), 0);
    w_until(&f, &hb);
    assert_int_equal(hb.status, -ESTALE);
    struct wait rec = record_exit(&f, 0, id, old, 3);
    assert_int_equal(rec.status, -ESTALE);
    struct wait la = {0};
    struct dsw_store_launch l = {.run_id = id, .token = old, .child_pid = 99};
    assert_int_equal(dsw_store_record_launch(f.st[0], &l, on_done, &la), 0);
    w_until(&f, &la);
    assert_int_equal(la.status, -ESTALE);
    assert_string_equal(count_events(&f, id, NULL), "0");
    const char *p[] = {id};
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p), "STARTED");
    assert_string_equal(
        sql(&f, "SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = $1", 1, p),
        "claimed");

    /* A takeover with a token already replaced loses. */
    age_claim(&f, id);
    struct wait c = {0};
    assert_int_equal(dsw_store_takeover(f.st[0], &req, old, on_claim, &c), 0);
    w_until(&f, &c);
    assert_int_equal(c.status, -EBUSY);

    /* The new owner's heartbeat works. */
    memset(&hb, 0, sizeof(hb));
    assert_int_equal(dsw_store_heartbeat(f.st[1], id, b.claim.token, on_done, &hb), 0);
    w_until(&f, &hb);
    assert_int_equal(hb.status, 0);

    /* Batched: one statement, each lease fenced alone (the old token and an unknown run lose,
     * the owner's keeps, and its heartbeat moves). */
    char ghost[40];
    rid(&f, "fe", ghost);
    sql(&f,
        "UPDATE dagster_sqs_worker.run_claims SET heartbeat_at = now() - interval '30 seconds' "
        "WHERE run_id = $1",
        1, p);
    struct dsw_store_lease ls[] = {
        {.run_id = id, .token = old}, {.run_id = id, .token = b.claim.token}, {.run_id = ghost}};
    struct wait bb = {0};
    assert_int_equal(dsw_store_heartbeat_batch(f.st[1], ls, 3, on_leases, &bb), 0);
    assert_int_equal(dsw_store_heartbeat_batch(f.st[1], ls, 0, on_leases, &bb), -EINVAL);
    w_until(&f, &bb);
    assert_int_equal(bb.status, 0);
    assert_string_equal(bb.job, "-ESTALE,0,-ESTALE");
    assert_string_equal(sql(&f,
                            "SELECT heartbeat_at > now() - interval '5 seconds' FROM "
                            "dagster_sqs_worker.run_claims WHERE run_id = $1",
                            1, p),
                        "t");
    teardown_fx(&f);
}

static int both_done(void *arg)
{
    struct wait *w = arg;
    return w[0].done && w[1].done;
}

static int count_prefix(struct wait *w, const char *prefix, const char *id)
{
    int n = 0;
    for (int i = 0; i < w->nids; i++)
        if (strncmp(w->ids[i], prefix, 8) == 0 && (!id || strcmp(w->ids[i], id) == 0))
            n++;
    return n;
}

static void test_two_sweepers(void **state)
{
    struct fx f;
    char ids[4][40];
    const char *nn[] = {"0d", "04", "05", "06"};
    setup_fx(&f, 3);
    for (int i = 0; i < 4; i++) {
        rid(&f, nn[i], ids[i]);
        set_status(&f, ids[i], "STARTED");
        assert_int_equal(claim(&f, 2, ids[i], "m").status, 0);
        if (i < 3)
            age_claim(&f, ids[i]); /* the fourth stays fresh */
    }
    struct wait w[2];
    memset(w, 0, sizeof(w));
    assert_int_equal(dsw_store_sweep(f.st[0], 1000, on_sweep, &w[0]), 0);
    assert_int_equal(dsw_store_sweep(f.st[1], 1000, on_sweep, &w[1]), 0);
    assert_true(tu_run_until(&f.loop, both_done, w, 20000));
    assert_int_equal(w[0].status, 0);
    assert_int_equal(w[1].status, 0);
    for (int i = 0; i < 4; i++) {
        int n = count_prefix(&w[0], f.prefix, ids[i]) + count_prefix(&w[1], f.prefix, ids[i]);
        assert_int_equal(n, i < 3 ? 1 : 0);
    }
    /* Swept claims are fresh now: a second pass returns none of them. */
    memset(w, 0, sizeof(w));
    assert_int_equal(dsw_store_sweep(f.st[0], 1000, on_sweep, &w[0]), 0);
    w_until(&f, &w[0]);
    assert_int_equal(count_prefix(&w[0], f.prefix, NULL), 0);
    teardown_fx(&f);
}

static void test_launch_and_record_exit(void **state)
{
    struct fx f;
    char id[40];
    setup_fx(&f, 2);
    rid(&f, "0d", id);
    const char *p[] = {id};
    assert_int_equal(dsw_db_listen(f.db[1], "run_events", NULL, NULL), 0);
    set_status(&f, id, "STARTED");
    char *stale = dsw_xstrdup(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p));
    struct wait a = claim(&f, 0, id, "m-a");
    struct wait la = {0};
    struct dsw_store_launch l = {.run_id = id,
                                 .token = a.claim.token,
                                 .child_pid = 4242,
                                 .message_id = "m-a",
                                 .receive_count = 1};
    assert_int_equal(dsw_store_record_launch(f.st[0], &l, on_done, &la), 0);
    w_until(&f, &la);
    assert_int_equal(la.status, 0);
    assert_string_equal(sql(&f,
                            "SELECT state || ':' || child_pid FROM dagster_sqs_worker.run_claims "
                            "WHERE run_id = $1",
                            1, p),
                        "running:4242");
    assert_non_null(strstr(sql(&f, "SELECT event FROM event_logs WHERE run_id = $1", 1, p),
                           "Launching run worker on testhost (pid 4242)."));
    /* The launch tagged the run with this worker and the message, as add_run_tags does. */
    char wid[64], tags_want[160];
    snprintf(wid, sizeof(wid), "testhost:%d:0", (int)getpid());
    snprintf(tags_want, sizeof(tags_want),
             "dagster-sqs-worker/message_id=m-a,dagster-sqs-worker/worker_id=%s", wid);
    assert_string_equal(sql(&f,
                            "SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM "
                            "run_tags WHERE run_id = $1 AND key LIKE 'dagster-sqs-worker/%'",
                            1, p),
                        tags_want);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/message_id"), "m-a");
    assert_string_equal(sql(&f,
                            "SELECT run_body LIKE "
                            "'%\"status\": {\"__enum__\": \"PipelineRunStatus.STARTED\"}%' "
                            "FROM runs WHERE run_id = $1",
                            1, p),
                        "t");

    /* A writer that read the body before the launch committed (a launcher's add_run_tags)
     * writes it back without our tags; the record puts them back from run_tags. */
    const char *ps[] = {id, stale};
    sql(&f, "UPDATE runs SET run_body = $2 WHERE run_id = $1", 2, ps);
    free(stale);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), "(null)");

    struct wait r = record_exit(&f, 0, id, a.claim.token, 1);
    assert_int_equal(r.status, 0);
    assert_true(r.rr.changed);
    assert_int_equal(r.rr.before, DSW_STATUS_STARTED);
    assert_int_equal(r.rr.after, DSW_STATUS_FAILURE);
    assert_string_equal(count_events(&f, id, "ENGINE_EVENT"), "2");
    assert_string_equal(count_events(&f, id, "PIPELINE_FAILURE"), "1");
    assert_non_null(strstr(sql(&f,
                               "SELECT event FROM event_logs WHERE run_id = $1 AND "
                               "dagster_event_type = 'ENGINE_EVENT' ORDER BY id DESC LIMIT 1",
                               1, p),
                           "[dagster-sqs-worker] Run worker exited with code 1 after 12.3 s "
                           "(pid 4242)."));
    assert_string_equal(sql(&f,
                            "SELECT status || ' ' || (run_body LIKE "
                            "'%\"status\": {\"__enum__\": \"PipelineRunStatus.FAILURE\"}%') || "
                            "' ' || (end_time > 0) || ' ' || "
                            "(abs(extract(epoch FROM update_timestamp) - end_time) < 1) "
                            "FROM runs WHERE run_id = $1",
                            1, p),
                        "FAILURE true true true");
    assert_string_equal(sql(&f,
                            "SELECT state || ' ' || exit_code || ' ' || outcome || ' ' || "
                            "(finished_at IS NOT NULL) FROM dagster_sqs_worker.run_claims "
                            "WHERE run_id = $1",
                            1, p),
                        "done 1 exited true");
    /* A crash is an UNEXPECTED_TERMINATION, in the event as current Dagster writes it and in
     * the run tag (one row, and in the body). */
    assert_non_null(strstr(sql(&f,
                               "SELECT event FROM event_logs WHERE run_id = $1 AND "
                               "dagster_event_type = 'PIPELINE_FAILURE'",
                               1, p),
                           "\"event_specific_data\": {\"__class__\": \"PipelineFailureData\", "
                           "\"error\": null, \"failure_reason\": {\"__enum__\": "
                           "\"RunFailureReason.UNEXPECTED_TERMINATION\"}, "
                           "\"first_step_failure_event\": null}"));
    assert_string_equal(sql(&f,
                            "SELECT string_agg(value, ',') FROM run_tags WHERE run_id = $1 AND "
                            "key = 'dagster/failure_reason'",
                            1, p),
                        "UNEXPECTED_TERMINATION");
    assert_string_equal(tag_in_body(&f, id, "dagster/failure_reason"), "UNEXPECTED_TERMINATION");
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/message_id"), "m-a");
    assert_string_equal(sql(&f,
                            "SELECT count(*) FROM run_tags WHERE run_id = $1 AND key LIKE "
                            "'dagster-sqs-worker/%'",
                            1, p),
                        "2");

    /* The notifications (launch, exit, failure) reach a listener as run_id_id. */
    for (int i = 0; i < 100 && f.nnotes < 3; i++)
        uv_run(&f.loop, UV_RUN_ONCE);
    assert_int_equal(f.nnotes, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(strncmp(f.notes[i], id, strlen(id)), 0);

    /* A retry after a lost commit finds its own work done. */
    struct wait again = record_exit(&f, 0, id, a.claim.token, 1);
    assert_int_equal(again.status, 0);
    assert_true(again.rr.already);
    assert_false(again.rr.changed);
    assert_string_equal(count_events(&f, id, NULL), "3");
    teardown_fx(&f);
}

/* The one-statement paths (the caller's hints) write what the transactions write, and fall
 * back to them when a guard fails. */
static struct wait launch_hinted(struct fx *f, const char *id, int64_t token, const char *job,
                                 const char *status, const char *body)
{
    struct wait w = {0};
    struct dsw_store_launch l = {.run_id = id,
                                 .token = token,
                                 .child_pid = 4343,
                                 .message_id = "m-h",
                                 .receive_count = 1,
                                 .job_name = job,
                                 .seen_status = status,
                                 .seen_body = body};
    assert_int_equal(dsw_store_record_launch(f->st[0], &l, on_done, &w), 0);
    w_until(f, &w);
    return w;
}

static struct wait exit_hinted(struct fx *f, const char *id, int64_t token, const char *job)
{
    struct wait w = {0};
    struct dsw_store_exit e = {.run_id = id,
                               .token = token,
                               .exit_code = 0,
                               .pid = 4343,
                               .duration_s = 1.5,
                               .job_name = job};
    assert_int_equal(dsw_store_record_exit(f->st[0], &e, on_record, &w), 0);
    w_until(f, &w);
    return w;
}

static void test_one_statement_paths(void **state)
{
    struct fx f;
    char id[40], id2[40], wid[64];
    setup_fx(&f, 1);
    rid(&f, "0d", id);
    rid(&f, "04", id2);
    snprintf(wid, sizeof(wid), "testhost:%d:0", (int)getpid());
    const char *p[] = {id}, *p2[] = {id2};
    set_status(&f, id, "STARTING");
    set_status(&f, id2, "STARTING");
    struct wait ld = {0};
    assert_int_equal(dsw_store_load(f.st[0], id, on_load, &ld), 0);
    w_until(&f, &ld);
    assert_int_equal(ld.status, 0);
    char *body = dsw_xstrdup(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p));

    /* Launch, guards holding: claim running, the event, both tags in run_tags and the body. */
    struct wait a = claim(&f, 0, id, "m-h");
    struct wait la = launch_hinted(&f, id, a.claim.token, ld.job, "STARTING", body);
    assert_int_equal(la.status, 0);
    assert_string_equal(sql(&f,
                            "SELECT state || ':' || child_pid FROM dagster_sqs_worker.run_claims "
                            "WHERE run_id = $1",
                            1, p),
                        "running:4343");
    assert_non_null(strstr(sql(&f, "SELECT event FROM event_logs WHERE run_id = $1", 1, p),
                           "Launching run worker on testhost (pid 4343)."));
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/message_id"), "m-h");
    assert_string_equal(sql(&f,
                            "SELECT count(*) FROM run_tags WHERE run_id = $1 AND key LIKE "
                            "'dagster-sqs-worker/%'",
                            1, p),
                        "2");
    assert_string_equal(sql(&f,
                            "SELECT status || ' ' || (run_body LIKE "
                            "'%\"status\": {\"__enum__\": \"PipelineRunStatus.STARTING\"}%') "
                            "FROM runs WHERE run_id = $1",
                            1, p),
                        "STARTING true");

    /* A stale token: nothing written, by either path. */
    struct wait lz = launch_hinted(&f, id, a.claim.token + 1000, ld.job, "STARTING", body);
    assert_int_equal(lz.status, -ESTALE);
    assert_string_equal(count_events(&f, id, NULL), "1");

    /* Launch, the body changed since the load (the run worker wrote STARTED): the transaction
     * runs and merges the tags into the current body. */
    struct wait b = claim(&f, 0, id2, "m-h");
    char *body2 = dsw_xstrdup(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p2));
    set_status(&f, id2, "STARTED");
    struct wait lb = launch_hinted(&f, id2, b.claim.token, ld.job, "STARTING", body2);
    assert_int_equal(lb.status, 0);
    assert_string_equal(sql(&f,
                            "SELECT status || ' ' || (run_body LIKE "
                            "'%\"status\": {\"__enum__\": \"PipelineRunStatus.STARTED\"}%') "
                            "FROM runs WHERE run_id = $1",
                            1, p2),
                        "STARTED true");
    assert_string_equal(tag_in_body(&f, id2, "dagster-sqs-worker/worker_id"), wid);
    assert_string_equal(count_events(&f, id2, NULL), "1");

    /* Exit of a run that ended by itself, tags in its body: claim done + the exit event, the
     * run untouched. */
    set_status(&f, id, "SUCCESS");
    const char *tags_back[] = {id, wid};
    sql(&f,
        "UPDATE runs SET run_body = jsonb_set(run_body::jsonb, '{tags}', (run_body::jsonb -> "
        "'tags') || jsonb_build_object('dagster-sqs-worker/worker_id', $2::text, "
        "'dagster-sqs-worker/message_id', 'm-h'))::text WHERE run_id = $1",
        2, tags_back);
    char *ended = dsw_xstrdup(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p));
    struct wait ea = exit_hinted(&f, id, a.claim.token, ld.job);
    assert_int_equal(ea.status, 0);
    assert_false(ea.rr.changed);
    assert_false(ea.rr.already);
    assert_int_equal(ea.rr.before, DSW_STATUS_SUCCESS);
    assert_int_equal(ea.rr.after, DSW_STATUS_SUCCESS);
    assert_string_equal(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p), ended);
    assert_string_equal(sql(&f,
                            "SELECT state || ' ' || exit_code || ' ' || outcome || ' ' || "
                            "(finished_at IS NOT NULL) FROM dagster_sqs_worker.run_claims "
                            "WHERE run_id = $1",
                            1, p),
                        "done 0 exited true");
    assert_non_null(strstr(sql(&f,
                               "SELECT event FROM event_logs WHERE run_id = $1 AND "
                               "dagster_event_type = 'ENGINE_EVENT' ORDER BY id DESC LIMIT 1",
                               1, p),
                           "Run worker exited with code 0 after 1.5 s (pid 4343)."));
    assert_string_equal(count_events(&f, id, NULL), "2");
    /* Its retry (a lost answer) falls back and finds its own work done. */
    struct wait again = exit_hinted(&f, id, a.claim.token, ld.job);
    assert_int_equal(again.status, 0);
    assert_true(again.rr.already);
    assert_string_equal(count_events(&f, id, NULL), "2");

    /* Exit of a run still STARTED (a crash): the guard fails, the transaction records FAILURE. */
    struct wait eb = exit_hinted(&f, id2, b.claim.token, ld.job);
    assert_int_equal(eb.status, 0);
    assert_true(eb.rr.changed);
    assert_int_equal(eb.rr.after, DSW_STATUS_FAILURE);
    assert_string_equal(count_events(&f, id2, "PIPELINE_FAILURE"), "1");
    assert_string_equal(count_events(&f, id2, "ENGINE_EVENT"), "2");
    free(body);
    free(body2);
    free(ended);
    teardown_fx(&f);
}

static void test_terminal_not_overwritten(void **state)
{
    struct fx f;
    char id[40];
    setup_fx(&f, 1);
    rid(&f, "01", id); /* SUCCESS in the vectors */
    const char *p[] = {id};
    char *before = dsw_xstrdup(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p));
    struct wait a = claim(&f, 0, id, "m");
    struct wait r = record_exit(&f, 0, id, a.claim.token, 1);
    assert_int_equal(r.status, 0);
    assert_false(r.rr.changed);
    assert_int_equal(r.rr.after, DSW_STATUS_SUCCESS);
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p), "SUCCESS");
    assert_string_equal(sql(&f, "SELECT run_body FROM runs WHERE run_id = $1", 1, p), before);
    assert_string_equal(count_events(&f, id, NULL), "1");
    free(before);
    teardown_fx(&f);
}

static void test_record_outcome(void **state)
{
    struct fx f;
    char lost[40], canc[40];
    setup_fx(&f, 1);
    rid(&f, "05", lost);
    rid(&f, "06", canc);
    set_status(&f, lost, "STARTED");
    set_status(&f, canc, "CANCELING");
    struct wait a = claim(&f, 0, lost, "m"), b = claim(&f, 0, canc, "m");
    struct wait w1 = {0}, w2 = {0};
    struct dsw_store_outcome o1 = {
        .run_id = lost, .token = a.claim.token, .outcome = "lost", .cause = "run worker lost"};
    struct dsw_store_outcome o2 = {
        .run_id = canc, .token = b.claim.token, .outcome = "canceled", .cause = "no run worker"};
    assert_int_equal(dsw_store_record_outcome(f.st[0], &o1, on_record, &w1), 0);
    assert_int_equal(dsw_store_record_outcome(f.st[0], &o2, on_record, &w2), 0);
    w_until(&f, &w1);
    w_until(&f, &w2);
    assert_int_equal(w1.status, 0);
    assert_int_equal(w1.rr.after, DSW_STATUS_FAILURE);
    assert_int_equal(w2.status, 0);
    assert_int_equal(w2.rr.after, DSW_STATUS_CANCELED);
    const char *p1[] = {lost}, *p2[] = {canc};
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p1), "FAILURE");
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p2), "CANCELED");
    assert_non_null(strstr(sql(&f,
                               "SELECT event FROM event_logs WHERE run_id = $1 AND "
                               "dagster_event_type = 'PIPELINE_FAILURE'",
                               1, p1),
                           "marked as failed: run worker lost."));
    assert_string_equal(count_events(&f, canc, "PIPELINE_CANCELED"), "1");
    assert_string_equal(count_events(&f, canc, NULL), "1");
    teardown_fx(&f);
}

/* A tag that is already there is updated in place, never duplicated (add_run_tags); a
 * relaunch after a takeover retags; a timeout (UNKNOWN) and a cancel write no failure tag; no
 * message ends in "..". */
static void test_tags_and_reasons(void **state)
{
    struct fx f;
    char id[40], tmo[40], canc[40];
    setup_fx(&f, 2);
    rid(&f, "0d", id);
    rid(&f, "05", tmo);
    rid(&f, "06", canc);
    const char *p[] = {id}, *pt[] = {tmo}, *pc[] = {canc};
    set_status(&f, id, "STARTING");
    sql(&f,
        "INSERT INTO run_tags (run_id, key, value) VALUES ($1, "
        "'dagster-sqs-worker/worker_id', 'somebody-else')",
        1, p);
    struct wait a = claim(&f, 0, id, "m-1"), la = {0};
    struct dsw_store_launch l = {.run_id = id, .token = a.claim.token, .child_pid = 7};
    assert_int_equal(dsw_store_record_launch(f.st[0], &l, on_done, &la), 0);
    w_until(&f, &la);
    assert_int_equal(la.status, 0);
    char wid0[64], wid1[64];
    snprintf(wid0, sizeof(wid0), "testhost:%d:0", (int)getpid());
    snprintf(wid1, sizeof(wid1), "testhost:%d:1", (int)getpid());
    const char *q_tags = "SELECT count(*) || ' ' || string_agg(value, ',') FROM run_tags WHERE "
                         "run_id = $1 AND key LIKE 'dagster-sqs-worker/%'";
    char want[160];
    snprintf(want, sizeof(want), "1 %s", wid0); /* no message id: no message tag */
    assert_string_equal(sql(&f, q_tags, 1, p), want);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid0);
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p), "STARTING");

    /* Worker 1 takes the stale claim over and launches again: the tag follows it. */
    age_claim(&f, id);
    struct wait t = {0};
    struct dsw_store_claim_req req = {
        .run_id = id, .kind = "execute", .message_id = "m-2", .receive_count = 2};
    assert_int_equal(dsw_store_takeover(f.st[1], &req, a.claim.token, on_claim, &t), 0);
    w_until(&f, &t);
    assert_int_equal(t.status, 0);
    struct wait lb = {0};
    struct dsw_store_launch l2 = {
        .run_id = id, .token = t.claim.token, .child_pid = 8, .message_id = "m-2"};
    assert_int_equal(dsw_store_record_launch(f.st[1], &l2, on_done, &lb), 0);
    w_until(&f, &lb);
    assert_int_equal(lb.status, 0);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid1);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/message_id"), "m-2");
    assert_string_equal(sql(&f,
                            "SELECT count(*) FROM run_tags WHERE run_id = $1 AND key = "
                            "'dagster-sqs-worker/worker_id' AND value = "
                            "(SELECT worker_id FROM dagster_sqs_worker.run_claims WHERE "
                            "run_id = $1)",
                            1, p),
                        "1");
    /* The old owner's late launch record is fenced out: nothing changes. */
    struct wait lc = {0};
    assert_int_equal(dsw_store_record_launch(f.st[0], &l, on_done, &lc), 0);
    w_until(&f, &lc);
    assert_int_equal(lc.status, -ESTALE);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid1);

    /* The run ends by itself (SUCCESS) with a body a stale writer wrote without our tags:
     * the record keeps the outcome and the body's other members, and puts the tags back. */
    set_status(&f, id, "SUCCESS");
    const char *q_body = "SELECT run_body FROM runs WHERE run_id = $1";
    json_t *stale = json_loads(sql(&f, q_body, 1, p), 0, NULL);
    assert_non_null(stale);
    json_t *st = json_object_get(stale, "tags");
    json_object_del(st, "dagster-sqs-worker/worker_id");
    json_object_del(st, "dagster-sqs-worker/message_id");
    char *stale_s = json_dumps(stale, JSON_SORT_KEYS);
    const char *ps[] = {id, stale_s};
    sql(&f, "UPDATE runs SET run_body = $2 WHERE run_id = $1", 2, ps);
    struct wait rs = {0};
    struct dsw_store_exit ok = {
        .run_id = id, .token = t.claim.token, .exit_code = 0, .pid = 8, .duration_s = 1.0};
    assert_int_equal(dsw_store_record_exit(f.st[1], &ok, on_record, &rs), 0);
    w_until(&f, &rs);
    assert_int_equal(rs.status, 0);
    assert_false(rs.rr.changed);
    assert_int_equal(rs.rr.after, DSW_STATUS_SUCCESS);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/worker_id"), wid1);
    assert_string_equal(tag_in_body(&f, id, "dagster-sqs-worker/message_id"), "m-2");
    assert_string_equal(sql(&f,
                            "SELECT status || ' ' || (run_body::json -> 'status' ->> '__enum__') "
                            "FROM runs WHERE run_id = $1",
                            1, p),
                        "SUCCESS PipelineRunStatus.SUCCESS");
    json_t *now = json_loads(sql(&f, q_body, 1, p), 0, NULL);
    json_object_del(json_object_get(now, "tags"), "dagster-sqs-worker/worker_id");
    json_object_del(json_object_get(now, "tags"), "dagster-sqs-worker/message_id");
    assert_true(json_equal(now, stale));
    json_decref(now);
    json_decref(stale);
    free(stale_s);
    assert_string_equal(count_events(&f, id, "PIPELINE_FAILURE"), "0");

    /* A timeout: FAILURE with reason UNKNOWN in the data, no failure tag. */
    set_status(&f, tmo, "STARTED");
    struct wait b = claim(&f, 0, tmo, "m"), rb = {0};
    struct dsw_store_exit e = {.run_id = tmo,
                               .token = b.claim.token,
                               .term_signal = 9,
                               .pid = 5,
                               .duration_s = 1.0,
                               .outcome = "timeout",
                               .cause = "Run exceeded its maximum runtime."};
    assert_int_equal(dsw_store_record_exit(f.st[0], &e, on_record, &rb), 0);
    w_until(&f, &rb);
    assert_int_equal(rb.status, 0);
    assert_int_equal(rb.rr.after, DSW_STATUS_FAILURE);
    const char *fail_ev = sql(&f,
                              "SELECT event FROM event_logs WHERE run_id = $1 AND "
                              "dagster_event_type = 'PIPELINE_FAILURE'",
                              1, pt);
    assert_non_null(strstr(fail_ev, "\"RunFailureReason.UNKNOWN\""));
    assert_non_null(strstr(fail_ev, "marked as failed: Run exceeded its maximum runtime.\""));
    assert_null(strstr(fail_ev, "..\""));
    assert_string_equal(sql(&f,
                            "SELECT count(*) FROM run_tags WHERE run_id = $1 AND key = "
                            "'dagster/failure_reason'",
                            1, pt),
                        "0");
    assert_string_equal(tag_in_body(&f, tmo, "dagster/failure_reason"), "(null)");

    /* A cancel: no failure data, no tag; the sweeper's lost run: UNEXPECTED_TERMINATION. */
    set_status(&f, canc, "CANCELING");
    struct wait c = claim(&f, 0, canc, "m"), rc = {0};
    struct dsw_store_outcome oc = {.run_id = canc,
                                   .token = c.claim.token,
                                   .outcome = "canceled",
                                   .cause = "Run canceled; its worker was lost."};
    assert_int_equal(dsw_store_record_outcome(f.st[0], &oc, on_record, &rc), 0);
    w_until(&f, &rc);
    assert_int_equal(rc.status, 0);
    const char *canc_ev = sql(&f,
                              "SELECT event FROM event_logs WHERE run_id = $1 AND "
                              "dagster_event_type = 'PIPELINE_CANCELED'",
                              1, pc);
    assert_non_null(strstr(canc_ev, "\"event_specific_data\": null"));
    assert_non_null(strstr(canc_ev, "marked as canceled: Run canceled; its worker was lost.\""));
    assert_string_equal(sql(&f,
                            "SELECT count(*) FROM run_tags WHERE run_id = $1 AND key = "
                            "'dagster/failure_reason'",
                            1, pc),
                        "0");
    teardown_fx(&f);
}

static void test_mark_starting_and_poll(void **state)
{
    struct fx f;
    char id[40], other[40];
    setup_fx(&f, 1);
    rid(&f, "0d", id);
    rid(&f, "01", other);
    struct wait w = {0};
    assert_int_equal(dsw_store_mark_starting(f.st[0], id, on_record, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_true(w.rr.changed);
    assert_int_equal(w.rr.before, DSW_STATUS_NOT_STARTED);
    assert_int_equal(w.rr.after, DSW_STATUS_STARTING);
    const char *p[] = {id};
    assert_string_equal(sql(&f,
                            "SELECT status || ' ' || (run_body LIKE "
                            "'%PipelineRunStatus.STARTING%') FROM runs WHERE run_id = $1",
                            1, p),
                        "STARTING true");
    assert_string_equal(count_events(&f, id, "PIPELINE_STARTING"), "1");
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_mark_starting(f.st[0], id, on_record, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_false(w.rr.changed);
    assert_string_equal(count_events(&f, id, NULL), "1");

    char missing[40];
    const char *ids[] = {id, other, rid(&f, "ff", missing)};
    memset(&w, 0, sizeof(w));
    assert_int_equal(dsw_store_poll_status(f.st[0], ids, 3, on_poll, &w), 0);
    w_until(&f, &w);
    assert_int_equal(w.status, 0);
    assert_int_equal(w.nids, 2);
    char want[80];
    snprintf(want, sizeof(want), "%s=STARTING", id);
    assert_true(strcmp(w.ids[0], want) == 0 || strcmp(w.ids[1], want) == 0);
    teardown_fx(&f);
}

/* --- all or nothing when the session dies mid-way ------------------------------------------ */

struct blocker {
    struct dsw_db_txn *txn;
    int begun, locked;
};

static void on_lock(int status, const struct dsw_db_result *r, void *arg)
{
    struct blocker *b = arg;
    assert_int_equal(status, 0);
    b->locked = 1;
}

static void on_blocker(int status, struct dsw_db_txn *txn, void *arg)
{
    struct blocker *b = arg;
    assert_int_equal(status, 0);
    b->txn = txn;
    b->begun = 1;
}

static int b_locked(void *arg)
{
    return ((struct blocker *)arg)->locked;
}

struct waiting {
    struct fx *f;
    const char *pid;
    struct wait w;
    int sent;
};

/* Poll pg_stat_activity until the record's backend waits on a lock. */
static int backend_waits(void *arg)
{
    struct waiting *x = arg;
    if (x->sent && !x->w.done)
        return 0;
    if (x->sent && strcmp(x->w.v0, "Lock") == 0)
        return 1;
    memset(&x->w, 0, sizeof(x->w));
    const char *p[] = {x->pid};
    assert_int_equal(dsw_db_query(x->f->db[2],
                                  "SELECT wait_event_type FROM pg_stat_activity WHERE pid = "
                                  "$1::int",
                                  1, p, on_sql, &x->w),
                     0);
    x->sent = 1;
    return 0;
}

static void test_record_killed_midway(void **state)
{
    struct fx f;
    char id[40], pid[16];
    setup_fx(&f, 3);
    rid(&f, "05", id);
    const char *p[] = {id};
    set_status(&f, id, "STARTED");
    struct wait a = claim(&f, 0, id, "m");

    /* db 1 holds the run row, so the record stops after its claim update. */
    struct blocker b = {0};
    assert_int_equal(dsw_db_begin(f.db[1], on_blocker, &b), 0);
    while (!b.begun)
        uv_run(&f.loop, UV_RUN_ONCE);
    assert_int_equal(dsw_db_txn_query(b.txn, "SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", 1,
                                      p, on_lock, &b),
                     0);
    assert_true(tu_run_until(&f.loop, b_locked, &b, 5000));

    snprintf(pid, sizeof(pid), "%d", dsw_db_backend_pid(f.db[0]));
    struct wait r = {0};
    struct dsw_store_exit e = {.run_id = id, .token = a.claim.token, .exit_code = 3, .pid = 7};
    assert_int_equal(dsw_store_record_exit(f.st[0], &e, on_record, &r), 0);
    struct waiting x = {.f = &f, .pid = pid};
    assert_true(tu_run_until(&f.loop, backend_waits, &x, 10000));
    struct wait k = {0};
    const char *kp[] = {pid};
    assert_int_equal(
        dsw_db_query(f.db[2], "SELECT pg_terminate_backend($1::int)", 1, kp, on_sql, &k), 0);
    w_until(&f, &k);
    assert_string_equal(k.v0, "t");
    w_until(&f, &r);
    assert_int_equal(r.status, -ECONNRESET);
    struct wait rb = {0};
    assert_int_equal(dsw_db_txn_rollback(b.txn, on_sql, &rb), 0);
    w_until(&f, &rb);

    /* Nothing of the record is left: claim not done, no event, status unchanged. */
    assert_string_equal(
        sql(&f, "SELECT state FROM dagster_sqs_worker.run_claims WHERE run_id = $1", 1, p),
        "claimed");
    assert_string_equal(count_events(&f, id, NULL), "0");
    assert_string_equal(sql(&f, "SELECT status FROM runs WHERE run_id = $1", 1, p), "STARTED");

    /* The same record succeeds once the session is back. */
    struct wait again = record_exit(&f, 0, id, a.claim.token, 3);
    assert_int_equal(again.status, 0);
    assert_true(again.rr.changed);
    assert_string_equal(count_events(&f, id, NULL), "2");
    teardown_fx(&f);
}

/* --- a server restart with writes queued --------------------------------------------------- */

static int ensure_server(void **state)
{
    return tu_pg_ctl("status") == 0 ? 0 : tu_pg_ctl("start");
}

static int db0_down(void *arg)
{
    struct dsw_db_state st;
    dsw_db_get_state(((struct fx *)arg)->db[0], &st);
    return !st.up;
}

static int writes_done(void *arg)
{
    struct wait *w = arg;
    return w[0].done && w[1].done && w[2].done;
}

static void test_record_across_restart(void **state)
{
    struct fx f;
    char id[40], other[40];
    setup_fx(&f, 1);
    rid(&f, "05", id);
    rid(&f, "06", other);
    set_status(&f, id, "STARTED");
    struct wait a = claim(&f, 0, id, "m"), b = claim(&f, 0, other, "m");
    assert_int_equal(tu_pg_ctl("stop"), 0);
    assert_true(tu_run_until(&f.loop, db0_down, &f, 10000));

    struct wait w[3];
    memset(w, 0, sizeof(w));
    struct dsw_store_exit e = {.run_id = id, .token = a.claim.token, .exit_code = 3, .pid = 9};
    assert_int_equal(dsw_store_record_exit(f.st[0], &e, on_record, &w[0]), 0);
    assert_int_equal(dsw_store_heartbeat(f.st[0], other, b.claim.token, on_done, &w[1]), 0);
    assert_int_equal(dsw_store_load(f.st[0], id, on_load, &w[2]), 0);
    assert_false(tu_run_until(&f.loop, writes_done, w, 500));
    assert_int_equal(tu_pg_ctl("start"), 0);
    assert_true(tu_run_until(&f.loop, writes_done, w, 30000));
    assert_int_equal(w[0].status, 0);
    assert_true(w[0].rr.changed);
    assert_int_equal(w[1].status, 0);
    assert_int_equal(w[2].status, 0);
    assert_string_equal(count_events(&f, id, NULL), "2");
    teardown_fx(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_and_load),
        cmocka_unit_test(test_load_claim),
        cmocka_unit_test(test_claim_race),
        cmocka_unit_test(test_takeover_and_fencing),
        cmocka_unit_test(test_two_sweepers),
        cmocka_unit_test(test_launch_and_record_exit),
        cmocka_unit_test(test_one_statement_paths),
        cmocka_unit_test(test_terminal_not_overwritten),
        cmocka_unit_test(test_record_outcome),
        cmocka_unit_test(test_tags_and_reasons),
        cmocka_unit_test(test_mark_starting_and_poll),
        cmocka_unit_test(test_record_killed_midway),
        cmocka_unit_test_teardown(test_record_across_restart, ensure_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
