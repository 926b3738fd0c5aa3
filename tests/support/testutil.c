/* Helpers shared by the cmocka tests; see testutil.h. */
#include "testutil.h"

#include <errno.h>
#include <libgen.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: run the suite through scripts/test.sh, which starts the "
                 "services",
                 name);
    return v;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return p;
}

char *tu_vector_path(const char *name)
{
    const char *dir = getenv("DSW_VECTORS");
    const char *src = getenv("DSW_SOURCE_DIR");
    char *p = NULL;
    if (dir)
        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
    else /* the copies in the repository, written by real Dagster (tests/vectors/README.md) */
        assert_true(asprintf(&p, "%s/tests/vectors/%s", src ? src : ".", name) > 0);
    return p;
}

char *tu_tmpdir(void)
{
    char tmpl[] = "/tmp/dsw-test-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return strdup(tmpl);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

void tu_rm_rf(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tu_write_file(const char *path, const char *text, int mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, (mode_t)mode), 0);
    close(fd);
}

static void on_timer(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

int tu_run_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, uint64_t timeout_ms)
{
    int ticks = 0, ok;
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    tick.data = &ticks;
    /* A 10 ms tick, not one timer at the deadline: when a callback satisfies cond early in a
     * UV_RUN_ONCE pass, the pass would otherwise block in poll until the deadline. */
    uv_timer_start(&tick, on_timer, 10, 10);
    uint64_t end = uv_now(loop) + timeout_ms;
    while (!(ok = cond(arg)) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        fprintf(stderr, "tu_loop_close: handle of type %s left open\n",
                uv_handle_type_name(uv_handle_get_type(h)));
        (*(int *)arg)++;
        uv_close(h, NULL);
    }
}

void tu_loop_close(uv_loop_t *loop)
{
    int open_handles = 0;
    uv_run(loop, UV_RUN_NOWAIT);
    uv_walk(loop, close_walk, &open_handles);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(open_handles, 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

int tu_run(char *const argv[], const char *in, char **out)
{
    int inpipe[2], outpipe[2];
    assert_int_equal(pipe(inpipe), 0);
    assert_int_equal(pipe(outpipe), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(inpipe[0], 0);
        dup2(outpipe[1], 1);
        dup2(outpipe[1], 2);
        /* Only 0-2 may reach the program: a daemon it starts must not hold our pipe open. */
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        execv(argv[0], argv);
        _exit(127);
    }
    close(inpipe[0]);
    close(outpipe[1]);
    if (in) {
        size_t n = strlen(in);
        assert_int_equal(write(inpipe[1], in, n), (ssize_t)n);
    }
    close(inpipe[1]);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(outpipe[0], buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(outpipe[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- the worker's integration tests ------------------------------------------------------ */

#include "dsw/dagster.h"
#include "dsw/util.h"

#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

extern char **environ;

static PGconn *pg_conn;
static char *pg_fresh; /* conninfo of a fresh database in use, or NULL */
static char pg_fresh_name[64];

PGconn *tu_pg(void)
{
    if (pg_conn && PQstatus(pg_conn) == CONNECTION_OK)
        return pg_conn;
    if (pg_conn)
        PQfinish(pg_conn);
    const char *k[] = {"dbname", "options", NULL};
    const char *v[] = {pg_fresh ? pg_fresh : tu_need_env("DSW_TEST_PG_CONNINFO"),
                       "-c TimeZone=UTC -c client_min_messages=warning", NULL};
    pg_conn = PQconnectdbParams(k, v, 1);
    if (PQstatus(pg_conn) != CONNECTION_OK)
        fail_msg("postgres: %s", PQerrorMessage(pg_conn));
    return pg_conn;
}

char *tu_pg_fresh_db(void)
{
    char u[37];
    tu_uuid(u);
    tu_pg_fresh_db_drop();
    snprintf(pg_fresh_name, sizeof(pg_fresh_name), "dsw_t_%d_%.8s", (int)getpid(), u);
    char *sql = dsw_xasprintf("CREATE DATABASE %s", pg_fresh_name);
    PQclear(tu_pg_exec(sql, 0, NULL));
    free(sql);
    pg_fresh = dsw_xasprintf("%s dbname=%s", tu_need_env("DSW_TEST_PG_CONNINFO"), pg_fresh_name);
    PQfinish(pg_conn);
    pg_conn = NULL;
    char *path = tu_vector_path("schema.sql"), *schema = tu_read_file(path, NULL);
    PGresult *r = PQexec(tu_pg(), schema);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("schema.sql: %s", PQerrorMessage(tu_pg()));
    PQclear(r);
    free(schema);
    free(path);
    /* schema.sql empties search_path for its session. */
    PQfinish(pg_conn);
    pg_conn = NULL;
    return strdup(pg_fresh);
}

void tu_pg_fresh_db_drop(void)
{
    if (!pg_fresh)
        return;
    free(pg_fresh);
    pg_fresh = NULL;
    PQfinish(pg_conn);
    pg_conn = NULL;
    char *sql = dsw_xasprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pg_fresh_name);
    PQclear(tu_pg_exec(sql, 0, NULL));
    free(sql);
}

PGresult *tu_pg_exec(const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(tu_pg(), sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(tu_pg()));
    return r;
}

char *tu_pg_str(const char *sql, int n, const char *const *params)
{
    PGresult *r = tu_pg_exec(sql, n, params);
    char *s = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return s;
}

long long tu_pg_ll(const char *sql, int n, const char *const *params)
{
    char *s = tu_pg_str(sql, n, params);
    long long v = s ? atoll(s) : 0;
    free(s);
    return v;
}

void tu_uuid(char out[37])
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    assert_non_null(f);
    assert_int_equal(fread(b, 1, sizeof(b), f), sizeof(b));
    fclose(f);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        o += sprintf(o, "%02x", b[i]);
        if (i == 3 || i == 5 || i == 7 || i == 9)
            *o++ = '-';
    }
    *o = '\0';
}

/* Run ids made here, so cleanup can find their children. */
static char (*made_runs)[37];
static size_t nmade, capmade;

static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t nf = strlen(from), nt = strlen(to), count = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + nf, from))
        count++;
    char *out = dsw_xmalloc(strlen(s) + count * nt + 1), *o = out;
    for (const char *p; (p = strstr(s, from)); s = p + nf) {
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, to, nt);
        o += nt;
    }
    strcpy(o, s);
    return out;
}

void tu_run_new(char id[37], const char *status, const char *behavior)
{
    static json_t *row;
    if (!row) {
        char *path = tu_vector_path("runs_row.json");
        row = json_load_file(path, 0, NULL);
        free(path);
        assert_non_null(row);
    }
    tu_uuid(id);
    const char *old_id = json_string_value(json_object_get(row, "run_id"));
    const char *job = json_string_value(json_object_get(row, "pipeline_name"));
    char *st = dsw_xasprintf("PipelineRunStatus.%s", status);
    char *body = replace_all(json_string_value(json_object_get(row, "run_body")), old_id, id);
    char *fresh = replace_all(body, "PipelineRunStatus.SUCCESS", st);
    const char *p[] = {id, job, status, fresh};
    PQclear(tu_pg_exec("INSERT INTO runs (run_id, pipeline_name, status, run_body) "
                       "VALUES ($1, $2, $3, $4)",
                       4, p));
    if (behavior) {
        const char *t[] = {id, behavior};
        PQclear(tu_pg_exec(
            "INSERT INTO run_tags (run_id, key, value) VALUES ($1, 'dsw/test_behavior', $2)", 2,
            t));
    }
    free(fresh);
    free(body);
    free(st);
    if (nmade == capmade) {
        capmade = capmade ? capmade * 2 : 64;
        made_runs = realloc(made_runs, capmade * sizeof(*made_runs));
        assert_non_null(made_runs);
    }
    memcpy(made_runs[nmade++], id, 37);
}

char *tu_run_status(const char *run_id)
{
    const char *p[] = {run_id};
    return tu_pg_str("SELECT status FROM runs WHERE run_id = $1", 1, p);
}

long long tu_run_starts(const char *run_id)
{
    const char *p[] = {run_id};
    if (tu_pg_ll("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = "
                 "'dagster_sqs_worker_test' AND tablename = 'child_starts'",
                 0, NULL) == 0)
        return 0;
    return tu_pg_ll("SELECT count(*) FROM dagster_sqs_worker_test.child_starts WHERE run_id = $1",
                    1, p);
}

long long tu_run_events(const char *run_id, const char *type)
{
    const char *p[] = {run_id, type};
    return tu_pg_ll("SELECT count(*) FROM event_logs WHERE run_id = $1 AND "
                    "($2::text IS NULL OR dagster_event_type = $2)",
                    2, p);
}

bool tu_run_event_has(const char *run_id, const char *needle)
{
    const char *p[] = {run_id, needle};
    return tu_pg_ll("SELECT count(*) FROM event_logs WHERE run_id = $1 AND "
                    "strpos(event, $2) > 0",
                    2, p) > 0;
}

char *tu_claim_col(const char *run_id, const char *column)
{
    const char *p[] = {run_id, column};
    return tu_pg_str("SELECT (to_jsonb(c) ->> $2) FROM dagster_sqs_worker.run_claims c "
                     "WHERE run_id = $1",
                     2, p);
}

/* A TaskIQ envelope (a fresh task id) of task_name whose one kwarg holds packed (heap). */
static char *taskiq_envelope(const char *task_name, const char *kwarg, const char *packed)
{
    char task[37];
    tu_uuid(task);
    return dsw_xasprintf("{\"task_id\": \"%.8s%.4s%.4s%.4s%.12s\", \"task_name\": \"%s\", "
                         "\"labels\": {}, \"labels_types\": null, \"args\": [], \"kwargs\": "
                         "{\"%s\": %s}}",
                         task, task + 9, task + 14, task + 19, task + 24, task_name, kwarg, packed);
}

/* The stored run's pipeline_code_origin (heap). */
static char *run_origin(const char *run_id)
{
    const char *p[] = {run_id};
    char *body = tu_pg_str("SELECT run_body FROM runs WHERE run_id = $1", 1, p), *origin = NULL;
    assert_non_null(body);
    assert_int_equal(dsw_dagster_body_origin(body, &origin, NULL, NULL), 0);
    free(body);
    return origin;
}

char *tu_run_envelope(const char *run_id)
{
    char *origin = run_origin(run_id), *args = NULL;
    assert_int_equal(dsw_dagster_run_args(run_id, origin, NULL, 0, &args), 0);
    char *env = taskiq_envelope("execute_job", "execute_job_args_packed", args);
    free(args);
    free(origin);
    return env;
}

char *tu_step_envelope(const char *run_id, const char *step_key, int previous)
{
    char *origin = run_origin(run_id), *args = NULL, *known = NULL;
    if (previous > 0)
        known = dsw_xasprintf("{\"__class__\": \"KnownExecutionState\", \"dynamic_mappings\": "
                              "{}, \"parent_state\": null, \"previous_retry_attempts\": "
                              "{\"%s\": %d}, \"ready_outputs\": {\"__set__\": []}, "
                              "\"step_output_versions\": []}",
                              step_key, previous);
    struct dsw_dagster_step step = {.step_key = step_key, .known_state = known, .print_events = -1};
    assert_int_equal(dsw_dagster_step_args(run_id, origin, NULL, &step, &args), 0);
    char *env = taskiq_envelope("execute_step", "execute_step_args_packed", args);
    free(args);
    free(known);
    free(origin);
    return env;
}

bool tu_eq_free(char *str, const char *expect)
{
    bool eq = (!str && !expect) || (str && expect && strcmp(str, expect) == 0);
    free(str);
    return eq;
}

/* ---- SQS ---- */

struct reply {
    char *p;
    size_t n;
};

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    r->p = realloc(r->p, r->n + size * n + 1);
    memcpy(r->p + r->n, p, size * n);
    r->n += size * n;
    r->p[r->n] = '\0';
    return size * n;
}

long tu_sqs_call(const char *endpoint, const char *action, const char *body, char **reply)
{
    static CURL *h;
    if (!h)
        h = curl_easy_init();
    else
        curl_easy_reset(h);
    struct curl_slist *hd = NULL;
    struct reply r = {0};
    char target[128];
    snprintf(target, sizeof(target), "X-Amz-Target: AmazonSQS.%s", action);
    hd = curl_slist_append(hd, target);
    hd = curl_slist_append(hd, "Content-Type: application/x-amz-json-1.0");
    curl_easy_setopt(h, CURLOPT_URL, endpoint);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, "aws:amz:us-east-1:sqs");
    curl_easy_setopt(h, CURLOPT_USERPWD, "test:test");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hd);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", endpoint, action, curl_easy_strerror(rc));
    if (reply)
        *reply = r.p ? r.p : strdup("");
    else
        free(r.p);
    return status;
}

/* A call that must succeed; its reply parsed. */
static json_t *sqs_json(const char *endpoint, const char *action, json_t *req)
{
    char *body = json_dumps(req, JSON_COMPACT), *reply = NULL;
    json_decref(req);
    long st = tu_sqs_call(endpoint, action, body, &reply);
    if (st != 200)
        fail_msg("%s: HTTP %ld: %s", action, st, reply);
    json_t *j = json_loads(reply, 0, NULL);
    if (!j)
        fail_msg("%s: unparsable reply: %s", action, reply);
    free(body);
    free(reply);
    return j;
}

void tu_queue_create(struct tu_queue *q, const char *endpoint, int visibility_s)
{
    static int seq;
    char name[80], vis[16], u[37];
    tu_uuid(u);
    snprintf(name, sizeof(name), "dsw-t-%d-%d-%.8s", (int)getpid(), ++seq, u);
    snprintf(vis, sizeof(vis), "%d", visibility_s);
    json_t *j = sqs_json(
        endpoint, "CreateQueue",
        json_pack("{s:s, s:{s:s}}", "QueueName", name, "Attributes", "VisibilityTimeout", vis));
    const char *url = json_string_value(json_object_get(j, "QueueUrl"));
    assert_non_null(url);
    snprintf(q->endpoint, sizeof(q->endpoint), "%s", endpoint);
    snprintf(q->url, sizeof(q->url), "%s", url);
    json_decref(j);
}

void tu_queue_send(const struct tu_queue *q, const char *body, char *id, size_t idlen)
{
    json_t *j = sqs_json(q->endpoint, "SendMessage",
                         json_pack("{s:s, s:s}", "QueueUrl", q->url, "MessageBody", body));
    const char *mid = json_string_value(json_object_get(j, "MessageId"));
    assert_non_null(mid);
    if (id)
        snprintf(id, idlen, "%s", mid);
    json_decref(j);
}

void tu_queue_send_batch(const struct tu_queue *q, const char *const *bodies, size_t n)
{
    json_t *entries = json_array();
    for (size_t i = 0; i < n; i++) {
        char id[24];
        snprintf(id, sizeof(id), "m%zu", i);
        json_array_append_new(entries, json_pack("{s:s, s:s}", "Id", id, "MessageBody", bodies[i]));
    }
    json_t *j = sqs_json(q->endpoint, "SendMessageBatch",
                         json_pack("{s:s, s:o}", "QueueUrl", q->url, "Entries", entries));
    json_t *failed = json_object_get(j, "Failed");
    if (json_array_size(failed))
        fail_msg("SendMessageBatch: %zu failed", json_array_size(failed));
    assert_int_equal(json_array_size(json_object_get(j, "Successful")), n);
    json_decref(j);
}

void tu_queue_counts(const struct tu_queue *q, long *visible, long *inflight)
{
    json_t *j =
        sqs_json(q->endpoint, "GetQueueAttributes",
                 json_pack("{s:s, s:[s,s]}", "QueueUrl", q->url, "AttributeNames",
                           "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"));
    json_t *a = json_object_get(j, "Attributes");
    const char *v = json_string_value(json_object_get(a, "ApproximateNumberOfMessages"));
    const char *f = json_string_value(json_object_get(a, "ApproximateNumberOfMessagesNotVisible"));
    assert_non_null(v);
    assert_non_null(f);
    if (visible)
        *visible = atol(v);
    if (inflight)
        *inflight = atol(f);
    json_decref(j);
}

int tu_queue_receive(const struct tu_queue *q, int max, int visibility_s, int wait_s, void **msgs)
{
    json_t *j = sqs_json(q->endpoint, "ReceiveMessage",
                         json_pack("{s:s, s:i, s:i, s:i, s:[s], s:[s]}", "QueueUrl", q->url,
                                   "MaxNumberOfMessages", max, "VisibilityTimeout", visibility_s,
                                   "WaitTimeSeconds", wait_s, "AttributeNames", "All",
                                   "MessageSystemAttributeNames", "ApproximateReceiveCount"));
    json_t *m = json_object_get(j, "Messages");
    int n = m ? (int)json_array_size(m) : 0;
    if (msgs)
        *msgs = m ? json_incref(m) : json_array();
    json_decref(j);
    return n;
}

bool tu_queue_empty(const struct tu_queue *q)
{
    long v, f;
    tu_queue_counts(q, &v, &f);
    return v == 0 && f == 0;
}

/* ---- the daemon ---- */

void tu_env_set(struct tu_env *e, const char *name, const char *fmt, ...)
{
    va_list ap;
    char *val = NULL, *kv;
    va_start(ap, fmt);
    assert_true(vasprintf(&val, fmt, ap) >= 0);
    va_end(ap);
    kv = dsw_xasprintf("%s=%s", name, val);
    free(val);
    size_t nl = strlen(name);
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], name, nl) == 0 && e->v[i][nl] == '=') {
            free(e->v[i]);
            e->v[i] = kv;
            return;
        }
    }
    e->v = realloc(e->v, (e->n + 2) * sizeof(char *));
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
}

void tu_env_free(struct tu_env *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

void tu_worker_env(struct tu_env *e, const struct tu_queue *q)
{
    const char *pg = pg_fresh ? pg_fresh : tu_need_env("DSW_TEST_PG_CONNINFO");
    static const char *const pass[] = {"PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); i++)
        if (getenv(pass[i]))
            tu_env_set(e, pass[i], "%s", getenv(pass[i]));
    tu_env_set(e, "HOME", "/tmp");
    tu_env_set(e, "AWS_ACCESS_KEY_ID", "test");
    tu_env_set(e, "AWS_SECRET_ACCESS_KEY", "test");
    tu_env_set(e, "AWS_EC2_METADATA_DISABLED", "true");
    if (q) {
        tu_env_set(e, "DSW_QUEUE_URL", "%s", q->url);
        tu_env_set(e, "DSW_QUEUE_ENDPOINT", "%s", q->endpoint);
    }
    tu_env_set(e, "DSW_QUEUE_REGION", "us-east-1");
    tu_env_set(e, "DSW_QUEUE_WAIT_TIME", "1s");
    tu_env_set(e, "DSW_QUEUE_VISIBILITY_TIMEOUT", "10s");
    tu_env_set(e, "DSW_QUEUE_HEARTBEAT", "1s");
    tu_env_set(e, "DSW_POSTGRES_CONNINFO", "%s", pg);
    tu_env_set(e, "DSW_POSTGRES_CONNECT_TIMEOUT", "2s");
    tu_env_set(e, "DSW_CLAIMS_TTL", "2s");
    tu_env_set(e, "DSW_CLAIMS_HEARTBEAT", "500ms");
    tu_env_set(e, "DSW_CLAIMS_SWEEP", "1h");
    tu_env_set(e, "DSW_RUNS_MAX_CONCURRENT", "4");
    tu_env_set(e, "DSW_RUNS_COMMAND", "%s", tu_need_env("DSW_SUPPORT_fake_dagster"));
    tu_env_set(e, "DSW_RUNS_DAGSTER_HOME", "/tmp");
    tu_env_set(e, "DSW_RUNS_CANCEL_POLL", "200ms");
    tu_env_set(e, "DSW_RUNS_KILL_GRACE", "1s");
    tu_env_set(e, "DSW_RUNS_REQUEUE_DELAY", "1s");
    tu_env_set(e, "DSW_RUNS_DRAIN_TIMEOUT", "30s");
    tu_env_set(e, "DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO", "%s", pg);
    /* The child is not under test: its own leak report would change its exit code. */
    tu_env_set(e, "DSW_RUNS_ENV_ASAN_OPTIONS", "detect_leaks=0");
    tu_env_set(e, "DSW_HTTP_LISTEN", "off");
    tu_env_set(e, "DSW_LOG_LEVEL", "info");
}

static struct tu_daemon *daemons[64];
static size_t ndaemons;
static const char *spawn_stdin = "/dev/null";

struct tu_daemon *tu_spawn(const struct tu_env *env, char *const *argv)
{
    assert_true(ndaemons < sizeof(daemons) / sizeof(daemons[0]));
    struct tu_daemon *d = calloc(1, sizeof(*d));
    static int seq;
    snprintf(d->log, sizeof(d->log), "/tmp/dsw-daemon-%d-%d.log", (int)getpid(), ++seq);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
        int in = open(spawn_stdin, O_RDONLY);
        if (fd < 0 || in < 0)
            _exit(126);
        dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execve(argv[0], argv, env->v);
        _exit(127);
    }
    d->pid = pid;
    daemons[ndaemons++] = d;
    return d;
}

struct tu_daemon *tu_daemon_start(const struct tu_env *env, const char *const *args)
{
    char *argv[16];
    size_t n = 0;
    argv[n++] = (char *)tu_need_env("DSW_BIN");
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tu_spawn(env, argv);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void reaped(struct tu_daemon *d, int st)
{
    d->reaped = true;
    d->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int tu_daemon_wait(struct tu_daemon *d, uint64_t timeout_ms)
{
    uint64_t end = dsw_now_ms() + timeout_ms;
    while (!d->reaped) {
        int st;
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid)
            reaped(d, st);
        else if (dsw_now_ms() >= end)
            return -1;
        else
            sleep_ms(10);
    }
    return d->status;
}

static bool is_ready(void *arg)
{
    return tu_daemon_log_has(arg, " ready: ");
}

bool tu_daemon_wait_ready(struct tu_daemon *d, uint64_t timeout_ms)
{
    return tu_wait(is_ready, d, timeout_ms);
}

void tu_daemon_signal(struct tu_daemon *d, int sig)
{
    if (!d->reaped)
        kill(d->pid, sig);
}

char *tu_daemon_log(const struct tu_daemon *d)
{
    FILE *f = fopen(d->log, "rb");
    if (!f)
        return strdup("");
    size_t cap = 65536, len = 0, r;
    char *p = malloc(cap);
    while ((r = fread(p + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len < 2)
            p = realloc(p, cap *= 2);
    }
    p[len] = '\0';
    fclose(f);
    return p;
}

bool tu_daemon_log_has(const struct tu_daemon *d, const char *needle)
{
    char *log = tu_daemon_log(d);
    bool has = strstr(log, needle) != NULL;
    free(log);
    return has;
}

struct log_cond {
    const struct tu_daemon *d;
    const char *needle;
};

static bool log_cond_has(void *arg)
{
    const struct log_cond *c = arg;
    return tu_daemon_log_has(c->d, c->needle);
}

bool tu_daemon_wait_log(const struct tu_daemon *d, const char *needle, uint64_t timeout_ms)
{
    struct log_cond c = {d, needle};
    return tu_wait(log_cond_has, &c, timeout_ms);
}

long tu_daemon_rss_kb(const struct tu_daemon *d)
{
    char path[64], line[256];
    long kb = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)d->pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

void tu_daemons_dump(void)
{
    for (size_t i = 0; i < ndaemons; i++) {
        char *log = tu_daemon_log(daemons[i]);
        size_t n = strlen(log);
        const char *tail = n > 6000 ? log + n - 6000 : log;
        fprintf(stderr, "---- daemon %d (%s)%s ----\n%s\n", (int)daemons[i]->pid, daemons[i]->log,
                daemons[i]->reaped ? " exited" : "", tail);
        free(log);
    }
}

/* State, parent and process group of pid from /proc/<pid>/stat (false when it is gone). */
static bool stat_of(pid_t pid, char *state, int *ppid, int *pgrp)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t r = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[r] = '\0';
    const char *close_paren = strrchr(buf, ')');
    return close_paren && sscanf(close_paren + 1, " %c %d %d", state, ppid, pgrp) == 3;
}

bool tu_pid_descends(pid_t pid, pid_t ancestor)
{
    char state;
    int ppid, pgrp;
    for (int depth = 0; depth < 16 && pid > 1 && stat_of(pid, &state, &ppid, &pgrp); depth++)
        if ((pid = ppid) == ancestor)
            return true;
    return false;
}

/* Process group and command line of pid (0 when it is gone). */
static pid_t pgrp_of(pid_t pid, char *cmd, size_t n)
{
    char path[64], state;
    int ppid, pgrp;
    if (!stat_of(pid, &state, &ppid, &pgrp) || state == 'Z')
        return 0;
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "r");
    cmd[0] = '\0';
    if (f) {
        size_t r = fread(cmd, 1, n - 1, f);
        cmd[r] = '\0';
        fclose(f);
    }
    return pgrp;
}

bool tu_pid_alive(pid_t pid)
{
    char cmd[256];
    return pgrp_of(pid, cmd, sizeof(cmd)) != 0;
}

/* SIGKILL fake dagster processes (children and grandchildren) whose group is a child pid
 * recorded for one of the runs made here; nothing else is touched. */
static void kill_children(void)
{
    if (!nmade || !pg_conn ||
        tu_pg_ll("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = "
                 "'dagster_sqs_worker_test'",
                 0, NULL) == 0)
        return;
    size_t cap = nmade * 40 + 3;
    char *arr = malloc(cap), *o = arr;
    *o++ = '{';
    for (size_t i = 0; i < nmade; i++)
        o += sprintf(o, "%s%s", i ? "," : "", made_runs[i]);
    *o++ = '}';
    *o = '\0';
    const char *p[] = {arr};
    PGresult *r = tu_pg_exec(
        "SELECT pid FROM dagster_sqs_worker_test.child_starts WHERE run_id = ANY($1::text[])", 1,
        p);
    int nr = PQntuples(r);
    pid_t *groups = calloc((size_t)nr + 1, sizeof(pid_t));
    for (int i = 0; i < nr; i++)
        groups[i] = atoi(PQgetvalue(r, i, 0));
    PQclear(r);
    free(arr);
    DIR *dir = opendir("/proc");
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        pid_t pid = atoi(de->d_name);
        char cmd[512];
        pid_t g = pid > 0 ? pgrp_of(pid, cmd, sizeof(cmd)) : 0;
        if (!g || !strstr(cmd, "fake_dagster"))
            continue;
        for (int i = 0; i < nr; i++)
            if (groups[i] == g || groups[i] == pid)
                kill(pid, SIGKILL);
    }
    if (dir)
        closedir(dir);
    free(groups);
}

void tu_daemons_cleanup(void)
{
    for (size_t i = 0; i < ndaemons; i++) {
        struct tu_daemon *d = daemons[i];
        if (!d->reaped) {
            int st;
            kill(d->pid, SIGKILL);
            if (waitpid(d->pid, &st, 0) == d->pid)
                reaped(d, st);
        }
        if (!getenv("DSW_TEST_KEEP_LOGS"))
            unlink(d->log);
        free(d);
    }
    ndaemons = 0;
    spawn_stdin = "/dev/null";
    kill_children();
    nmade = 0;
}

int tu_cli(const struct tu_env *env, const char *const *args, char **out, uint64_t timeout_ms)
{
    struct tu_daemon *d = tu_daemon_start(env, args);
    int rc = tu_daemon_wait(d, timeout_ms);
    if (rc < 0) {
        tu_daemons_dump();
        fail_msg("%s %s: no exit within %llu ms", tu_need_env("DSW_BIN"), args[0],
                 (unsigned long long)timeout_ms);
    }
    if (out)
        *out = tu_daemon_log(d);
    return rc;
}

int tu_cli_in(const struct tu_env *env, const char *const *args, const char *stdin_path, char **out,
              uint64_t timeout_ms)
{
    spawn_stdin = stdin_path;
    int rc = tu_cli(env, args, out, timeout_ms);
    spawn_stdin = "/dev/null";
    return rc;
}

bool tu_wait(bool (*cond)(void *arg), void *arg, uint64_t timeout_ms)
{
    uint64_t end = dsw_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (dsw_now_ms() >= end) {
            tu_daemons_dump();
            return false;
        }
        sleep_ms(20);
    }
}

struct sql_cond {
    const char *sql, *p, *expect;
};

static bool sql_holds(void *arg)
{
    struct sql_cond *c = arg;
    const char *p[] = {c->p};
    return tu_eq_free(tu_pg_str(c->sql, c->p ? 1 : 0, p), c->expect);
}

bool tu_wait_sql(const char *sql, const char *p, const char *expect, uint64_t timeout_ms)
{
    struct sql_cond c = {sql, p, expect};
    return tu_wait(sql_holds, &c, timeout_ms);
}

bool tu_wait_status(const char *run_id, const char *status, uint64_t timeout_ms)
{
    return tu_wait_sql("SELECT status FROM runs WHERE run_id = $1", run_id, status, timeout_ms);
}

static bool queue_empty(void *arg)
{
    return tu_queue_empty(arg);
}

bool tu_wait_queue_empty(const struct tu_queue *q, uint64_t timeout_ms)
{
    return tu_wait(queue_empty, (void *)q, timeout_ms);
}

/* ---- the TCP forwarder ---- */

#define PROXY_MAX 64

static struct {
    pthread_t thread;
    int port, target;
    int lfd;
    int pairs[PROXY_MAX][2];
    int npairs;
    atomic_bool up, stop;
} px;

static int proxy_listen(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 64)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void proxy_drop(int i)
{
    close(px.pairs[i][0]);
    close(px.pairs[i][1]);
    px.pairs[i][0] = px.pairs[px.npairs - 1][0];
    px.pairs[i][1] = px.pairs[px.npairs - 1][1];
    px.npairs--;
}

static void proxy_accept(void)
{
    int c = accept4(px.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)px.target)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (px.npairs == PROXY_MAX || connect(t, (struct sockaddr *)&a, sizeof(a))) {
        close(c);
        close(t);
        return;
    }
    px.pairs[px.npairs][0] = c;
    px.pairs[px.npairs][1] = t;
    px.npairs++;
}

static void *proxy_main(void *arg)
{
    char buf[65536];
    while (!atomic_load(&px.stop)) {
        bool up = atomic_load(&px.up);
        if (!up && px.lfd >= 0) {
            close(px.lfd);
            px.lfd = -1;
            while (px.npairs)
                proxy_drop(0);
        } else if (up && px.lfd < 0) {
            px.lfd = proxy_listen(px.port);
        }
        struct pollfd fds[1 + 2 * PROXY_MAX];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = px.lfd, .events = POLLIN};
        for (int i = 0; i < px.npairs; i++) {
            fds[n++] = (struct pollfd){.fd = px.pairs[i][0], .events = POLLIN};
            fds[n++] = (struct pollfd){.fd = px.pairs[i][1], .events = POLLIN};
        }
        if (poll(fds, (nfds_t)n, 20) <= 0)
            continue;
        for (int i = px.npairs - 1; i >= 0; i--) {
            for (int side = 0; side < 2; side++) {
                if (!(fds[1 + 2 * i + side].revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                ssize_t r = read(px.pairs[i][side], buf, sizeof(buf));
                if (r <= 0 || write(px.pairs[i][!side], buf, (size_t)r) != r) {
                    proxy_drop(i);
                    break;
                }
            }
        }
        if (px.lfd >= 0 && (fds[0].revents & POLLIN))
            proxy_accept();
    }
    if (px.lfd >= 0)
        close(px.lfd);
    while (px.npairs)
        proxy_drop(0);
    return arg;
}

int tu_proxy_start(int target_port)
{
    px.target = target_port;
    px.npairs = 0;
    atomic_store(&px.stop, false);
    atomic_store(&px.up, true);
    px.lfd = proxy_listen(0);
    assert_true(px.lfd >= 0);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(px.lfd, (struct sockaddr *)&a, &len), 0);
    px.port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&px.thread, NULL, proxy_main, NULL), 0);
    return px.port;
}

void tu_proxy_set(bool up)
{
    atomic_store(&px.up, up);
}

void tu_proxy_stop(void)
{
    atomic_store(&px.stop, true);
    pthread_join(px.thread, NULL);
}

void tu_worker_db_init(void)
{
    static bool done;
    if (done && !pg_fresh)
        return;
    struct tu_env e = {0};
    char *out = NULL;
    tu_worker_env(&e, NULL);
    int rc = tu_cli(&e, (const char *const[]){"db-init", NULL}, &out, 30000);
    if (rc != 0)
        fail_msg("db-init exited %d: %s", rc, out);
    free(out);
    tu_env_free(&e);
    done = done || !pg_fresh;
}

long long tu_claim_insert(const char *run_id, const char *state, const char *age,
                          const char *message_id)
{
    const char *p[] = {run_id, state, age, message_id};
    return tu_pg_ll("INSERT INTO dagster_sqs_worker.run_claims (run_id, kind, worker_id, "
                    "fencing_token, message_id, receive_count, state, claimed_at, heartbeat_at) "
                    "VALUES ($1, 'execute', 'testhost:1:1', nextval('dagster_sqs_worker.fence'), "
                    "$4, 1, $2, now() - $3::interval, now() - $3::interval) "
                    "RETURNING fencing_token",
                    4, p);
}

static char *fixture_db;

void tu_worker_setup(struct tu_queue *q, struct tu_env *env, bool fresh_db)
{
    if (fresh_db)
        fixture_db = tu_pg_fresh_db();
    tu_worker_db_init();
    tu_queue_create(q, tu_need_env("DSW_TEST_FAUXQS_URL"), 10);
    tu_worker_env(env, q);
}

void tu_worker_teardown(struct tu_env *env)
{
    tu_daemons_cleanup();
    tu_env_free(env);
    if (fixture_db) {
        tu_pg_fresh_db_drop();
        free(fixture_db);
        fixture_db = NULL;
    }
}

void tu_send_run(const struct tu_queue *q, const char *run_id, char *msg_id, size_t n)
{
    char *body = tu_run_envelope(run_id);
    tu_queue_send(q, body, msg_id, n);
    free(body);
}

void tu_send_step(const struct tu_queue *q, const char *run_id, const char *step_key, int previous,
                  char *msg_id, size_t n)
{
    char *body = tu_step_envelope(run_id, step_key, previous);
    tu_queue_send(q, body, msg_id, n);
    free(body);
}

/* Run argv with no inherited descriptors but 0-2 (/dev/null): the postmaster pg_ctl leaves
 * behind must not hold a pipe of ours open. Returns the exit status. */
int tu_run_quiet(char *const argv[], const char *log)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int fd = log ? open(log, O_WRONLY | O_CREAT | O_APPEND, 0600) : open("/dev/null", O_WRONLY);
        dup2(in, 0);
        if (log || !getenv("DSW_TEST_VERBOSE")) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        for (int i = 3; i < 1024; i++)
            close(i);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

uint64_t tu_baseline_us(void)
{
    static uint64_t worst;
    if (worst)
        return worst;
    const char *bin = getenv("DSW_BIN");
    char *argv[] = {(char *)(bin && *bin ? bin : "/bin/true"), "--version", NULL};
    for (int i = 0; i < 5; i++) {
        uint64_t t0 = uv_hrtime();
        assert_int_equal(tu_run_quiet(argv, NULL), 0);
        uint64_t us = (uv_hrtime() - t0) / 1000 + 1;
        if (us > worst)
            worst = us;
    }
    fprintf(stderr, "timing baseline: %s --version in %llu us at worst; slack %llu ms\n", argv[0],
            (unsigned long long)worst, (unsigned long long)tu_slack_ms());
    return worst;
}

uint64_t tu_slack_ms(void)
{
    return (TU_SLACK_BASELINES * tu_baseline_us() + 999) / 1000;
}

int tu_pg_ctl(const char *action)
{
    const char *bin = tu_need_env("DSW_TEST_PG_BIN");
    const char *data = tu_need_env("DSW_TEST_PG_DATA");
    const char *port = tu_need_env("DSW_TEST_PG_PORT");
    char *tmp = dsw_xstrdup(data);
    char *dir = dsw_xstrdup(dirname(tmp));
    char *ctl = dsw_xasprintf("%s/pg_ctl", bin);
    char *log = dsw_xasprintf("%s/server.log", dir);
    /* The same options scripts/services.sh starts the server with. */
    char *opts = dsw_xasprintf("-p %s -k %s -c listen_addresses=127.0.0.1 -c fsync=off "
                               "-c synchronous_commit=off -c full_page_writes=off "
                               "-c max_connections=200",
                               port, dir);
    char *argv[20];
    int n = 0;
    if (getuid() == 0) {
        argv[n++] = "/usr/sbin/runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    argv[n++] = ctl;
    argv[n++] = "-D";
    argv[n++] = (char *)data;
    argv[n++] = "-w";
    argv[n++] = "-t";
    argv[n++] = "30";
    if (strcmp(action, "start") == 0) {
        argv[n++] = "-l";
        argv[n++] = log;
        argv[n++] = "-o";
        argv[n++] = opts;
    } else if (strcmp(action, "stop") == 0) {
        argv[n++] = "-m";
        argv[n++] = "fast";
    }
    argv[n++] = (char *)action;
    argv[n] = NULL;
    int rc = tu_run_quiet(argv, NULL);
    free(opts);
    free(log);
    free(ctl);
    free(dir);
    free(tmp);
    return rc;
}

void tu_full_pipe(int fds[2])
{
    assert_int_equal(pipe(fds), 0);
    int fl = fcntl(fds[1], F_GETFL);
    assert_int_equal(fcntl(fds[1], F_SETFL, fl | O_NONBLOCK), 0);
    char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    while (write(fds[1], chunk, sizeof(chunk)) > 0)
        ;
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(fcntl(fds[1], F_SETFL, fl), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK), 0);
    assert_int_equal(fcntl(fds[0], F_SETFD, FD_CLOEXEC), 0);
    assert_int_equal(fcntl(fds[1], F_SETFD, FD_CLOEXEC), 0);
}
