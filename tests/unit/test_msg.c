/* Unit tests of msg: every vector body (and every form derived from it) decodes to the right
 * run id and kind; a table of hostile and broken bodies each gets its exact reject reason; no
 * reject detail ever carries bytes of the body. */
#include "testutil.h"

#include "dsw/msg.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#define RUN1 "00000000-0000-4000-8000-000000000001"
#define RUN2 "00000000-0000-4000-8000-000000000002"
/* Planted in hostile bodies: a detail must never contain it. */
#define MARK "hunter2secret"

/* --- helpers --------------------------------------------------------------------------- */

static char *b64(const char *src, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = (const unsigned char *)src;
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    assert_non_null(out);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static char *b64s(const char *s)
{
    return b64(s, strlen(s));
}

/* Replace the first "@B64@" in tmpl by base64(inner). */
static char *subst_b64(const char *tmpl, const char *inner)
{
    const char *at = strstr(tmpl, "@B64@");
    char *enc = b64s(inner), *out = NULL;

    assert_non_null(at);
    assert_true(asprintf(&out, "%.*s%s%s", (int)(at - tmpl), tmpl, enc, at + 5) > 0);
    free(enc);
    return out;
}

static json_t *load_json(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j)
        fail_msg("test JSON does not parse: %s", err.text);
    return j;
}

static json_t *load_vector(const char *name)
{
    char *path = tu_vector_path(name);
    char *text = tu_read_file(path, NULL);
    json_t *j = load_json(text);
    free(path);
    free(text);
    return j;
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

static int decode_str(const char *body, int strict, struct dsw_msg_request *req,
                      struct dsw_msg_reject *rej)
{
    struct dsw_msg_opts o = {.strict_run_id = strict};
    return dsw_msg_decode(body, strlen(body), &o, req, rej);
}

/* Decode body (strict run ids) and check it is accepted as run_id/kind/form; returns the
 * request so the caller can check more (caller clears). */
static void expect_ok(const char *body, size_t len, const char *run_id, enum dsw_msg_kind kind,
                      enum dsw_msg_form form, struct dsw_msg_request *req)
{
    struct dsw_msg_opts o = {.strict_run_id = 1};
    struct dsw_msg_reject rej;
    int rc = dsw_msg_decode(body, len, &o, req, &rej);

    if (rc != 0)
        fail_msg("rejected as %s: %s", dsw_msg_reason_name(rej.reason), rej.detail);
    assert_int_equal(rej.reason, DSW_MSG_OK);
    assert_string_equal(req->run_id, run_id);
    assert_int_equal(req->kind, kind);
    assert_int_equal(req->form, form);
}

/* The packed ExecuteRunArgs of a vector file, as an object (caller decrefs). */
static json_t *vector_args(const char *name)
{
    json_t *v = load_vector(name), *args;

    if (json_object_get(v, "__class__"))
        return v;
    args = json_object_get(json_object_get(v, "kwargs"), "execute_job_args_packed");
    if (!args)
        args = json_array_get(json_object_get(v, "args"), 0);
    assert_non_null(args);
    json_incref(args);
    json_decref(v);
    return args;
}

/* --- the vectors ----------------------------------------------------------------------- */

struct vector_case {
    const char *file;
    const char *run_id;
    enum dsw_msg_form form;
};

static const struct vector_case vectors[] = {
    {"taskiq_envelope.json", RUN1, DSW_MSG_FORM_TASKIQ_LEGACY},
    {"taskiq_envelope_dagster_taskiq.json", RUN1, DSW_MSG_FORM_TASKIQ},
    {"execute_run_args.json", RUN1, DSW_MSG_FORM_SERDES},
    {"execute_run_args_failure.json", RUN2, DSW_MSG_FORM_SERDES},
    {"execute_run_args_packed.json", RUN1, DSW_MSG_FORM_SERDES},
};

static const struct vector_case *find_vector(const char *file)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(vectors); i++)
        if (strcmp(vectors[i].file, file) == 0)
            return &vectors[i];
    return NULL;
}

/* Every taskiq_envelope*.json and execute_run_args*.json in the vectors directory is in the
 * table above, so a new vector cannot be silently left untested. */
static void test_vectors_all_listed(void **state)
{
    char *path = tu_vector_path(".");
    DIR *d = opendir(path);
    struct dirent *e;
    int seen = 0;

    assert_non_null(d);
    while ((e = readdir(d))) {
        if (fnmatch("taskiq_envelope*.json", e->d_name, 0) != 0 &&
            fnmatch("execute_run_args*.json", e->d_name, 0) != 0)
            continue;
        if (!find_vector(e->d_name))
            fail_msg("vector %s is not in test_msg.c's table", e->d_name);
        seen++;
    }
    closedir(d);
    free(path);
    assert_int_equal(seen, (int)DSW_ARRAY_LEN(vectors));
}

static void test_vectors_decode(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(vectors); i++) {
        const struct vector_case *vc = &vectors[i];
        char *path = tu_vector_path(vc->file);
        size_t len;
        char *body = tu_read_file(path, &len);
        struct dsw_msg_request req;
        json_t *args = vector_args(vc->file), *ref;

        print_message("vector %s\n", vc->file);
        expect_ok(body, len, vc->run_id, DSW_MSG_EXECUTE, vc->form, &req);
        assert_int_equal(req.set_exit_code_on_failure, 1);
        assert_non_null(req.instance_ref);
        ref = load_json(req.instance_ref);
        assert_true(json_equal(ref, json_object_get(args, "instance_ref")));
        if (vc->form == DSW_MSG_FORM_TASKIQ || vc->form == DSW_MSG_FORM_TASKIQ_LEGACY)
            assert_string_equal(req.task_id, "00000000000000000000000000000000");
        else
            assert_string_equal(req.task_id, "");
        json_decref(ref);
        json_decref(args);
        dsw_msg_request_clear(&req);
        assert_null(req.instance_ref);
        free(body);
        free(path);
    }
}

/* --- step vectors (tests/vectors/make_step_vectors.py, real Dagster 1.3 and 1.7) ---------- */

struct step_case {
    const char *file;
    enum dsw_msg_form form;
    const char *key;
    int attempt;
    int print_events;
};

static const struct step_case step_vectors[] = {
    {"execute_step_args_1_3.json", DSW_MSG_FORM_SERDES, "flaky", 3, -1},
    {"execute_step_args_1_7.json", DSW_MSG_FORM_SERDES, "flaky", 3, 0},
    {"execute_step_args_first_1_3.json", DSW_MSG_FORM_SERDES, "fan_out", 1, -1},
    {"execute_step_args_first_1_7.json", DSW_MSG_FORM_SERDES, "fan_out", 1, 0},
    {"execute_step_args_mapped_1_3.json", DSW_MSG_FORM_SERDES, "process[b]", 2, -1},
    {"execute_step_args_mapped_1_7.json", DSW_MSG_FORM_SERDES, "process[b]", 2, 0},
    {"taskiq_execute_step_1_3.json", DSW_MSG_FORM_TASKIQ, "collect", 1, -1},
    {"taskiq_execute_step_1_7.json", DSW_MSG_FORM_TASKIQ, "collect", 1, 0},
    {"celery_execute_plan_1_3_b64.txt", DSW_MSG_FORM_CELERY, "process[a]", 2, -1},
    {"celery_execute_plan_1_7_b64.txt", DSW_MSG_FORM_CELERY, "process[a]", 2, 0},
};

/* Every step vector decodes as a step with its key, attempt, retry mode and known state. */
static void test_step_vectors(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(step_vectors); i++) {
        const struct step_case *sc = &step_vectors[i];
        char *path = tu_vector_path(sc->file);
        size_t len;
        char *body = tu_read_file(path, &len);
        struct dsw_msg_request req;

        print_message("step vector %s\n", sc->file);
        expect_ok(body, len, "00000000-0000-4000-8000-000000000003", DSW_MSG_STEP, sc->form, &req);
        assert_string_equal(req.step_key, sc->key);
        assert_int_equal(req.step_attempt, sc->attempt);
        assert_int_equal(req.step_print_events, sc->print_events);
        assert_int_equal(req.set_exit_code_on_failure, 0);
        assert_string_equal(req.step_retry_mode, "{\"__enum__\":\"RetryMode.DEFERRED\"}");
        assert_non_null(req.step_known_state);
        assert_non_null(strstr(req.step_known_state, "\"KnownExecutionState\""));
        assert_non_null(req.instance_ref);
        assert_true(strlen(req.task_id) > 0 || sc->form == DSW_MSG_FORM_SERDES);
        assert_string_equal(dsw_msg_kind_name(req.kind), "step");
        dsw_msg_request_clear(&req);
        assert_null(req.step_known_state);
        free(body);
        free(path);
    }
}

/* Minimal step args: known_state and retry_mode null give attempt 1 and NULLs. */
static void test_step_minimal(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    const char *a = "{\"__class__\": \"ExecuteStepArgs\", \"pipeline_origin\": {\"__class__\": "
                    "\"PipelinePythonOrigin\"}, \"pipeline_run_id\": \"r1\", "
                    "\"step_keys_to_execute\": [\"g.op[a,b]\"], \"known_state\": null, "
                    "\"retry_mode\": null, \"should_verify_step\": null}";

    assert_int_equal(decode_str(a, 0, &req, &rej), 0);
    assert_int_equal(req.kind, DSW_MSG_STEP);
    assert_string_equal(req.step_key, "g.op[a,b]");
    assert_int_equal(req.step_attempt, 1);
    assert_null(req.step_known_state);
    assert_null(req.step_retry_mode);
    assert_int_equal(req.step_print_events, -1);
    dsw_msg_request_clear(&req);
    assert_true(dsw_msg_step_key_valid("a-b_c.d[e,f]"));
    assert_false(dsw_msg_step_key_valid("a b"));
    assert_false(dsw_msg_step_key_valid(""));
    assert_false(dsw_msg_step_key_valid(NULL));
}

/* TaskIQ envelope around packed args; packed_as_string writes the serialize_value form. */
static char *taskiq_env(json_t *args, const char *task, const char *kwarg, int packed_as_string)
{
    json_t *env = load_json("{\"task_id\": \"0123456789abcdef0123456789abcdef\", \"labels\": "
                            "{\"delay\": \"0\"}, \"labels_types\": null, \"args\": []}");
    json_t *kw = json_object();
    char *out;

    json_object_set_new(env, "task_name", json_string(task));
    if (packed_as_string) {
        char *s = dump(args);
        json_object_set_new(kw, kwarg, json_string(s));
        free(s);
    } else {
        json_object_set(kw, kwarg, args);
    }
    json_object_set_new(env, "kwargs", kw);
    out = dump(env);
    json_decref(env);
    return out;
}

/* A kombu SQS body: base64 of the Celery envelope whose body is base64 of [args, kwargs,
 * embed], as kombu 5.2 writes it. */
static char *celery_env(json_t *args, const char *task, const char *kwarg)
{
    json_t *inner = json_pack("[[], {s: O}, {s: n, s: n, s: n, s: n}]", kwarg, args, "callbacks",
                              "errbacks", "chain", "chord");
    char *inner_s = dump(inner), *inner_b64 = b64s(inner_s), *env_s, *out;
    json_t *env =
        json_pack("{s: s, s: s, s: s, s: {s: s, s: s, s: s}, s: {s: s, s: i}}", "body", inner_b64,
                  "content-encoding", "utf-8", "content-type", "application/json", "headers",
                  "lang", "py", "task", task, "id", "5d3f6a0e-1c2b-4f7e-9a8b-0c1d2e3f4a5b",
                  "properties", "body_encoding", "base64", "priority", 0);

    assert_non_null(inner);
    assert_non_null(env);
    env_s = dump(env);
    out = b64s(env_s);
    free(env_s);
    free(inner_b64);
    free(inner_s);
    json_decref(inner);
    json_decref(env);
    return out;
}

static void check_form(const char *body, const char *run_id, enum dsw_msg_kind kind,
                       enum dsw_msg_form form)
{
    struct dsw_msg_request req;
    expect_ok(body, strlen(body), run_id, kind, form, &req);
    assert_non_null(req.instance_ref);
    dsw_msg_request_clear(&req);
}

/* Every args vector in every form: TaskIQ (object and string), legacy, Celery, and the
 * resume variants (class ResumeRunArgs). */
static void test_vectors_every_form(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(vectors); i++) {
        const struct vector_case *vc = &vectors[i];
        json_t *args = vector_args(vc->file), *resume = json_deep_copy(args);
        char *b;

        print_message("forms of %s\n", vc->file);
        json_object_set_new(resume, "__class__", json_string("ResumeRunArgs"));
        for (int str = 0; str < 2; str++) {
            b = taskiq_env(args, "execute_job", "execute_job_args_packed", str);
            check_form(b, vc->run_id, DSW_MSG_EXECUTE, DSW_MSG_FORM_TASKIQ);
            free(b);
            b = taskiq_env(resume, "resume_job", "resume_job_args_packed", str);
            check_form(b, vc->run_id, DSW_MSG_RESUME, DSW_MSG_FORM_TASKIQ);
            free(b);
        }
        b = celery_env(args, "execute_job", "execute_job_args_packed");
        check_form(b, vc->run_id, DSW_MSG_EXECUTE, DSW_MSG_FORM_CELERY);
        free(b);
        b = celery_env(resume, "resume_job", "resume_job_args_packed");
        check_form(b, vc->run_id, DSW_MSG_RESUME, DSW_MSG_FORM_CELERY);
        free(b);
        b = dump(resume);
        check_form(b, vc->run_id, DSW_MSG_RESUME, DSW_MSG_FORM_SERDES);
        free(b);
        json_decref(resume);
        json_decref(args);
    }
}

static void test_legacy_task_names(void **state)
{
    static const char *const names[] = {"dagster_execute_job",
                                        "dagster_taskiq.simple_tasks:execute_job"};
    json_t *args = vector_args("execute_run_args.json");

    for (size_t i = 0; i < DSW_ARRAY_LEN(names); i++) {
        json_t *env =
            json_pack("{s: s, s: s, s: {}, s: {}, s: [O], s: {}}", "task_id", "t1", "task_name",
                      names[i], "labels", "labels_types", "args", args, "kwargs");
        char *b = dump(env);
        check_form(b, RUN1, DSW_MSG_EXECUTE, DSW_MSG_FORM_TASKIQ_LEGACY);
        free(b);
        json_decref(env);
    }
    json_decref(args);
}

/* Minimal args: instance_ref absent / null gives NULL; set_exit_code_on_failure null gives 0;
 * unknown members are ignored (newer Dagster may add some). */
#define ORIGIN "\"pipeline_origin\": {\"__class__\": \"PipelinePythonOrigin\"}"
static void test_minimal_args(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    const char *a = "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": "
                    "\"" RUN1 "\", \"set_exit_code_on_failure\": null, \"instance_ref\": null, "
                    "\"future_field\": [1, 2.5, {\"x\": false}]}";
    const char *b =
        "{\"__class__\": \"ResumeRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"" RUN2 "\"}";

    assert_int_equal(decode_str(a, 1, &req, &rej), 0);
    assert_null(req.instance_ref);
    assert_int_equal(req.set_exit_code_on_failure, 0);
    assert_string_equal(req.run_id, RUN1);
    dsw_msg_request_clear(&req);
    assert_int_equal(decode_str(b, 1, &req, &rej), 0);
    assert_int_equal(req.kind, DSW_MSG_RESUME);
    assert_string_equal(req.run_id, RUN2);
    dsw_msg_request_clear(&req);
}

static void test_non_strict_run_id(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    const char *body =
        "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"Run_42-abc\"}";

    assert_int_equal(decode_str(body, 1, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_RUN_ID);
    assert_string_equal(req.run_id, "");
    assert_int_equal(decode_str(body, 0, &req, &rej), 0);
    assert_string_equal(req.run_id, "Run_42-abc");
    dsw_msg_request_clear(&req);
}

/* JSON layout does not matter (SPEC: accept any valid layout). */
static void test_layout_whitespace(void **state)
{
    struct dsw_msg_request req;
    const char *body = "\r\n\t {\"__class__\":\"ExecuteRunArgs\",\n" ORIGIN
                       ",\"pipeline_run_id\"  :\t\"" RUN1 "\"}\n\n";
    expect_ok(body, strlen(body), RUN1, DSW_MSG_EXECUTE, DSW_MSG_FORM_SERDES, &req);
    dsw_msg_request_clear(&req);
}

/* --- size ------------------------------------------------------------------------------ */

/* A valid body of exactly n bytes: a serdes object padded with trailing spaces. */
static char *padded_body(size_t n)
{
    const char *core =
        "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"" RUN1 "\"}";
    char *b = malloc(n + 1);

    assert_non_null(b);
    assert_true(strlen(core) <= n);
    memset(b, ' ', n);
    memcpy(b, core, strlen(core));
    b[n] = '\0';
    return b;
}

static void test_size_limits(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    struct dsw_msg_opts o = {.strict_run_id = 1};
    char *b = padded_body(DSW_MSG_MAX_BODY + 1);

    /* default 256 KiB */
    assert_int_equal(dsw_msg_decode(b, DSW_MSG_DEFAULT_BODY, &o, &req, &rej), 0);
    dsw_msg_request_clear(&req);
    assert_int_equal(dsw_msg_decode(b, DSW_MSG_DEFAULT_BODY + 1, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_TOO_LARGE);
    /* 1 MiB exactly is fine, one more byte is not, and a bigger cap is clamped to 1 MiB */
    o.max_body = DSW_MSG_MAX_BODY;
    assert_int_equal(dsw_msg_decode(b, DSW_MSG_MAX_BODY, &o, &req, &rej), 0);
    dsw_msg_request_clear(&req);
    o.max_body = 64 * 1024 * 1024;
    assert_int_equal(dsw_msg_decode(b, DSW_MSG_MAX_BODY + 1, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_TOO_LARGE);
    o.max_body = 100;
    assert_int_equal(dsw_msg_decode(b, 101, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_TOO_LARGE);
    free(b);
}

/* The size check comes before parsing: a huge body of garbage is too_large, not bad_json. */
static void test_size_before_parse(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    size_t n = DSW_MSG_MAX_BODY + 1;
    char *b = malloc(n);

    assert_non_null(b);
    memset(b, '[', n);
    assert_int_equal(dsw_msg_decode(b, n, NULL, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_TOO_LARGE);
    free(b);
}

/* --- S3 pointer ------------------------------------------------------------------------ */

static void test_s3_pointer(void **state)
{
    static const struct dsw_msg_attr attr = {"s3_extended_message", "String", "True"};
    static const struct dsw_msg_attr other = {"trace", "String", "x"};
    const char *ptr = "{\"s3_bucket\": \"b\", \"s3_key\": \"0123.json\"}";
    const char *args =
        "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"" RUN1 "\"}";
    struct dsw_msg_attr attrs[2] = {other, attr};
    struct dsw_msg_opts o = {.strict_run_id = 1, .attrs = attrs, .nattrs = 2};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;

    assert_int_equal(dsw_msg_decode(ptr, strlen(ptr), &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_S3_POINTER_UNSUPPORTED);
    assert_int_equal(dsw_msg_decode(args, strlen(args), &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_ENVELOPE);
    o.nattrs = 1; /* only the unrelated attribute */
    assert_int_equal(dsw_msg_decode(ptr, strlen(ptr), &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_ENVELOPE);
    assert_int_equal(dsw_msg_decode(args, strlen(args), &o, &req, &rej), 0);
    dsw_msg_request_clear(&req);
}

/* --- the hostile table ----------------------------------------------------------------- */

/* A TaskIQ envelope whose task name and kwargs are given, and packed args with a given run id
 * member text and extra members. */
#define TQ(name, kwargs)                                                                           \
    "{\"task_id\": \"abc\", \"task_name\": " name ", \"labels\": {}, \"labels_types\": null, "     \
    "\"args\": [], \"kwargs\": " kwargs "}"
#define ARGS_C(cls, run, extra)                                                                    \
    "{\"__class__\": " cls ", " ORIGIN ", \"pipeline_run_id\": " run                               \
    ", \"set_exit_code_on_failure\": true" extra "}"
#define ARGS(run, extra) ARGS_C("\"ExecuteRunArgs\"", run, extra)
#define GOOD_ARGS        ARGS("\"" RUN1 "\"", "")
#define EXEC(args)       TQ("\"execute_job\"", "{\"execute_job_args_packed\": " args "}")
#define WITH_RUN(run)    EXEC(ARGS(run, ""))
#define CEL_ENV(task)                                                                              \
    "{\"body\": \"@B64@\", \"content-encoding\": \"utf-8\", \"content-type\": "                    \
    "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": " task ", \"id\": "           \
    "\"5d3f6a0e-1c2b-4f7e-9a8b-0c1d2e3f4a5b\"}, \"properties\": {\"body_encoding\": "              \
    "\"base64\"}}"
#define CEL_BODY(args) "[[], {\"execute_job_args_packed\": " args "}, {}]"
/* A kombu envelope with headers.compression = comp and the (already base64) body zb64. */
#define CEL_ZENV(comp, zb64)                                                                       \
    "{\"body\": \"" zb64 "\", \"content-encoding\": \"utf-8\", \"content-type\": "                 \
    "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"execute_job\", \"id\": "    \
    "\"5d3f6a0e-1c2b-4f7e-9a8b-0c1d2e3f4a5b\", \"compression\": " comp "}, \"properties\": "       \
    "{\"body_encoding\": \"base64\"}}"
/* base64 of CEL_BODY(GOOD_ARGS) as kombu 5.2 compresses it, made with
 *   python3 -c 'import base64, sys; from kombu.compression import compress;
 *               print(base64.b64encode(compress(sys.stdin.buffer.read(), "zlib")[0]).decode())'
 * (content type application/x-gzip), and the same stream damaged: one byte flipped in the
 * middle (zlib: "incorrect data check"), its last 6 bytes cut ("truncated stream"), and
 * gzip.compress of the body (gzip framing, which kombu's zlib.decompress refuses too). */
#define KOMBU_ZLIB                                                                                 \
    "eJxljc0KwjAQhF+l5FxBwUPx5sGzxWspS0zXulo2IT9QKXl3ExtBcA4Dy34z03V9XS0CZ1TBIzz0FaQdHRipnjiIQ/"   \
    "oBqEk6B5AucVrBS+BjwkRdCUMGJ2IEbWkk/o+0BWhf/"                                                  \
    "q75vFLxN2kDA+UxsS3afGyfrfmeRbs86tADzuRB6SEtM9wkTcFi6v"                                        \
    "A2YEz1S+zfaLJIXA=="
#define KOMBU_ZLIB_FLIPPED                                                                         \
    "eJxljc0KwjAQhF+l5FxBwUPx5sGzxWspS0zXulo2IT9QKXl3ExtBcA4Dy34z03V9XS0CZ1TBIzz0FaQdHRipnjiIQ/"   \
    "oBqEk6B5AujlrBS+BjwkRdCUMGJ2IEbWkk/o+0BWhf/"                                                  \
    "q75vFLxN2kDA+UxsS3afGyfrfmeRbs86tADzuRB6SEtM9wkTcFi6v"                                        \
    "A2YEz1S+zfaLJIXA=="
#define KOMBU_ZLIB_CUT                                                                             \
    "eJxljc0KwjAQhF+l5FxBwUPx5sGzxWspS0zXulo2IT9QKXl3ExtBcA4Dy34z03V9XS0CZ1TBIzz0FaQdHRipnjiIQ/"   \
    "oBqEk6B5AucVrBS+BjwkRdCUMGJ2IEbWkk/o+0BWhf/"                                                  \
    "q75vFLxN2kDA+UxsS3afGyfrfmeRbs86tADzuRB6SEtM9wkTcFi6v"                                        \
    "A2YEz1Sw=="
#define GZIP_FRAMED                                                                                \
    "H4sIAIkyEGsC/2WNzQrCMBCEX6XkXEHBQ/"                                                           \
    "HmwbPFaylLTNe6WjYhP1ApeXcTG0FwDgPLfjPTdX1dLQJnVMEjPPQVpB0dGKmeOI"                             \
    "hD+gGoSToHkC5xWsFL4GPCRF0JQwYnYgRtaST+j7QFaF/"                                                \
    "+rvm8UvE3aQMD5TGxLdp8bJ+t+Z5Fuzzq0APO5EHpIS0z3CRNwW"                                          \
    "Lq8DZgTPVL7N9QUIv53QAAAA=="
/* base64 of CEL_BODY(GOOD_ARGS) itself, uncompressed. */
#define PLAIN_BODY_B64                                                                             \
    "W1tdLCB7ImV4ZWN1dGVfam9iX2FyZ3NfcGFja2VkIjogeyJfX2NsYXNzX18iOiAiRXhlY3V0ZVJ1bkFyZ3MiLCAicGlw" \
    "ZW"                                                                                           \
    "xpbmVfb3JpZ2luIjogeyJfX2NsYXNzX18iOiAiUGlwZWxpbmVQeXRob25PcmlnaW4ifSwgInBpcGVsaW5lX3J1bl9pZC" \
    "I6IC"                                                                                         \
    "IwMDAwMDAwMC0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwMDEiLCAic2V0X2V4aXRfY29kZV9vbl9mYWlsdXJlIjogdH" \
    "J1ZX"                                                                                         \
    "19LCB7fV0="

/* A step: execute_step envelope around ExecuteStepArgs with the given keys and extra members. */
#define STEP(args) TQ("\"execute_step\"", "{\"execute_step_args_packed\": " args "}")
#define STEP_ARGS(keys, extra)                                                                     \
    "{\"__class__\": \"ExecuteStepArgs\", " ORIGIN ", \"pipeline_run_id\": \"" RUN1                \
    "\", \"step_keys_to_execute\": " keys extra "}"
#define PREV(n)                                                                                    \
    ", \"known_state\": {\"__class__\": \"KnownExecutionState\", \"previous_retry_attempts\": "    \
    "{\"s1\": " n ", \"other\": \"x\"}}"
#define MODE(e) ", \"retry_mode\": {\"__enum__\": " e "}"
#define K16     "aaaaaaaaaaaaaaaa"
#define K256    K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16 K16

enum wrap { RAW, CELERY /* base64(subst(body, inner)) */, B64 /* base64(body) */ };

struct bad_case {
    const char *name;
    const char *body;
    size_t len; /* 0: strlen(body) */
    enum dsw_msg_reason reason;
    int lax;           /* strict_run_id = 0 */
    enum wrap wrap;    /* how to build the bytes */
    const char *inner; /* CELERY: what @B64@ stands for */
};

/* Bytes literal with its exact length (embedded NULs and invalid UTF-8 survive). */
#define BYTES(s) s, sizeof(s) - 1

/* Rows leave trailing members out (0 = strict, RAW, no inner) to stay one line each. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const struct bad_case bad_cases[] = {
    {"empty", BYTES(""), DSW_MSG_BAD_JSON},
    {"whitespace", " \n\t\r  ", 0, DSW_MSG_BAD_JSON},
    {"single brace", "{", 0, DSW_MSG_BAD_JSON},
    {"truncated envelope", "{\"task_id\": \"abc\", \"task_name\": \"execute_j", 0,
     DSW_MSG_BAD_JSON},
    {"truncated args", EXEC("{\"__class__\": \"ExecuteRunArgs\", \"pipeline_run_id\": "), 0,
     DSW_MSG_BAD_JSON},
    {"trailing garbage", GOOD_ARGS " x", 0, DSW_MSG_BAD_JSON},
    {"two objects", GOOD_ARGS GOOD_ARGS, 0, DSW_MSG_BAD_JSON},
    {"utf8 lone continuation", BYTES("{\"task_id\": \"\x80" MARK "\"}"), DSW_MSG_BAD_JSON},
    {"utf8 overlong slash", BYTES("{\"a\": \"\xc0\xaf\"}"), DSW_MSG_BAD_JSON},
    {"utf8 surrogate", BYTES("{\"a\": \"\xed\xa0\x80\"}"), DSW_MSG_BAD_JSON},
    {"utf8 truncated sequence", BYTES("{\"a\": \"\xe2\x82\"}"), DSW_MSG_BAD_JSON},
    {"utf8 byte ff", BYTES("{\"a\": \"\xff\"}"), DSW_MSG_BAD_JSON},
    {"utf8 above U+10FFFF", BYTES("{\"a\": \"\xf4\x90\x80\x80\"}"), DSW_MSG_BAD_JSON},
    {"utf8 in a key", BYTES("{\"\xfe\": 1}"), DSW_MSG_BAD_JSON},
    {"utf8 bom", BYTES("\xef\xbb\xbf" GOOD_ARGS), DSW_MSG_BAD_JSON},
    {"escaped NUL in run id", WITH_RUN("\"" RUN1 "\\u0000\""), 0, DSW_MSG_BAD_JSON},
    {"escaped NUL in key", "{\"a\\u0000b\": 1}", 0, DSW_MSG_BAD_JSON},
    {"raw NUL byte", BYTES("{\"a\": \"\0\"}"), DSW_MSG_BAD_JSON},
    {"raw control char in string", "{\"a\": \"\x01\"}", 0, DSW_MSG_BAD_JSON},
    {"lone surrogate escape", "{\"a\": \"\\ud800\"}", 0, DSW_MSG_BAD_JSON},
    {"duplicate top-level key", "{\"task_name\": \"execute_job\", \"task_name\": \"x\"}", 0,
     DSW_MSG_BAD_JSON},
    {"duplicate run id", EXEC(ARGS("\"" RUN1 "\"", ", \"pipeline_run_id\": \"" RUN2 "\"")), 0,
     DSW_MSG_BAD_JSON},
    {"huge integer", EXEC(ARGS("\"" RUN1 "\"", ", \"x\": 123456789012345678901234567890")), 0,
     DSW_MSG_BAD_JSON},
    {"huge real", EXEC(ARGS("\"" RUN1 "\"", ", \"x\": 1e400")), 0, DSW_MSG_BAD_JSON},
    {"nan literal", "{\"a\": NaN}", 0, DSW_MSG_BAD_JSON},
    {"single quotes", "{'task_name': 'execute_job'}", 0, DSW_MSG_BAD_JSON},
    {"trailing comma", "{\"a\": 1,}", 0, DSW_MSG_BAD_JSON},
    {"top-level string", "\"" MARK "\"", 0, DSW_MSG_BAD_JSON},
    {"top-level number", "12", 0, DSW_MSG_BAD_JSON},
    {"top-level true", "true", 0, DSW_MSG_BAD_JSON},
    {"top-level array", "[]", 0, DSW_MSG_BAD_ENVELOPE},
    {"empty object", "{}", 0, DSW_MSG_BAD_ENVELOPE},
    {"unknown shape", "{\"job\": \"" MARK "\"}", 0, DSW_MSG_BAD_ENVELOPE},
    /* TaskIQ envelope members of the wrong type */
    {"task_id number",
     "{\"task_id\": 1, \"task_name\": \"execute_job\", \"labels\": {}, "
     "\"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"task_id missing",
     "{\"task_name\": \"execute_job\", \"labels\": {}, \"args\": [], "
     "\"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"task_id with space",
     "{\"task_id\": \"a b\", \"task_name\": \"execute_job\", \"labels\": "
     "{}, \"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"task_id empty",
     "{\"task_id\": \"\", \"task_name\": \"execute_job\", \"labels\": {}, "
     "\"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"task_name number", TQ("7", "{}"), 0, DSW_MSG_BAD_ENVELOPE},
    {"task_name null", TQ("null", "{}"), 0, DSW_MSG_BAD_ENVELOPE},
    {"labels array",
     "{\"task_id\": \"a\", \"task_name\": \"execute_job\", \"labels\": [], "
     "\"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"label value object",
     "{\"task_id\": \"a\", \"task_name\": \"execute_job\", \"labels\": "
     "{\"k\": {}}, \"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"labels_types string",
     "{\"task_id\": \"a\", \"task_name\": \"execute_job\", \"labels\": "
     "{}, \"labels_types\": \"x\", \"args\": [], \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"args object",
     "{\"task_id\": \"a\", \"task_name\": \"execute_job\", \"labels\": {}, "
     "\"args\": {}, \"kwargs\": {}}",
     0, DSW_MSG_BAD_ENVELOPE},
    {"kwargs array", TQ("\"execute_job\"", "[]"), 0, DSW_MSG_BAD_ENVELOPE},
    {"kwargs missing packed", TQ("\"execute_job\"", "{\"resume_job_args_packed\": {}}"), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"packed number", EXEC("42"), 0, DSW_MSG_BAD_ENVELOPE},
    {"packed array", EXEC("[" GOOD_ARGS "]"), 0, DSW_MSG_BAD_ENVELOPE},
    {"packed null", EXEC("null"), 0, DSW_MSG_BAD_ENVELOPE},
    {"packed string not json", EXEC("\"" MARK "\""), 0, DSW_MSG_BAD_JSON},
    {"packed string of a string", EXEC("\"\\\"x\\\"\""), 0, DSW_MSG_BAD_JSON},
    {"packed string dup key", EXEC("\"{\\\"a\\\": 1, \\\"a\\\": 2}\""), 0, DSW_MSG_BAD_JSON},
    {"legacy without args", TQ("\"dagster_execute_job\"", "{}"), 0, DSW_MSG_BAD_ENVELOPE},
    {"pipeline_origin missing",
     EXEC("{\"__class__\": \"ExecuteRunArgs\", \"pipeline_run_id\": "
          "\"" RUN1 "\"}"),
     0, DSW_MSG_BAD_ENVELOPE},
    {"pipeline_origin string",
     EXEC("{\"__class__\": \"ExecuteRunArgs\", \"pipeline_origin\": "
          "\"x\", \"pipeline_run_id\": \"" RUN1 "\"}"),
     0, DSW_MSG_BAD_ENVELOPE},
    {"exit flag yes",
     EXEC("{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": "
          "\"" RUN1 "\", \"set_exit_code_on_failure\": \"yes\"}"),
     0, DSW_MSG_BAD_ENVELOPE},
    {"exit flag 1",
     EXEC("{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": "
          "\"" RUN1 "\", \"set_exit_code_on_failure\": 1}"),
     0, DSW_MSG_BAD_ENVELOPE},
    {"instance_ref string", EXEC(ARGS("\"" RUN1 "\"", ", \"instance_ref\": \"" MARK "\"")), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"instance_ref array", EXEC(ARGS("\"" RUN1 "\"", ", \"instance_ref\": []")), 0,
     DSW_MSG_BAD_ENVELOPE},
    /* tasks */
    {"execute_plan", TQ("\"execute_plan\"", "{\"execute_step_args_packed\": {}}"), 0,
     DSW_MSG_UNSUPPORTED_TASK},
    /* steps (docs/steps.md section 1) */
    {"step ok", STEP(STEP_ARGS("[\"s1\"]", "")), 0, DSW_MSG_OK},
    {"step attempt 1000", STEP(STEP_ARGS("[\"s1\"]", PREV("1000"))), 0, DSW_MSG_OK},
    {"step two keys", STEP(STEP_ARGS("[\"s1\", \"s2\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step zero keys", STEP(STEP_ARGS("[]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step keys null", STEP(STEP_ARGS("null", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key number", STEP(STEP_ARGS("[7]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key empty", STEP(STEP_ARGS("[\"\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key space", STEP(STEP_ARGS("[\"a b\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key shell", STEP(STEP_ARGS("[\"$(" MARK ")\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key slash", STEP(STEP_ARGS("[\"../x\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step key too long", STEP(STEP_ARGS("[\"" K256 "\"]", "")), 0, DSW_MSG_BAD_ENVELOPE},
    {"step attempt negative", STEP(STEP_ARGS("[\"s1\"]", PREV("-1"))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step attempt huge", STEP(STEP_ARGS("[\"s1\"]", PREV("1001"))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step attempt 2^40", STEP(STEP_ARGS("[\"s1\"]", PREV("1099511627776"))), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step attempt real", STEP(STEP_ARGS("[\"s1\"]", PREV("1.0"))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step attempt string", STEP(STEP_ARGS("[\"s1\"]", PREV("\"1\""))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step attempt true", STEP(STEP_ARGS("[\"s1\"]", PREV("true"))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step previous not object",
     STEP(STEP_ARGS("[\"s1\"]", ", \"known_state\": {\"__class__\": \"KnownExecutionState\", "
                                "\"previous_retry_attempts\": []}")),
     0, DSW_MSG_BAD_ENVELOPE},
    {"step retry_mode unknown", STEP(STEP_ARGS("[\"s1\"]", MODE("\"RetryMode.ALWAYS\""))), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step retry_mode other enum", STEP(STEP_ARGS("[\"s1\"]", MODE("\"RunStatus.ENABLED\""))), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step retry_mode string",
     STEP(STEP_ARGS("[\"s1\"]", ", \"retry_mode\": \"RetryMode.ENABLED\"")), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step retry_mode number", STEP(STEP_ARGS("[\"s1\"]", MODE("1"))), 0, DSW_MSG_BAD_ENVELOPE},
    {"step known_state wrong class",
     STEP(STEP_ARGS("[\"s1\"]", ", \"known_state\": {\"__class__\": \"" MARK "\"}")), 0,
     DSW_MSG_BAD_CLASS},
    {"step known_state no class", STEP(STEP_ARGS("[\"s1\"]", ", \"known_state\": {}")), 0,
     DSW_MSG_BAD_CLASS},
    {"step known_state array", STEP(STEP_ARGS("[\"s1\"]", ", \"known_state\": []")), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step verify string", STEP(STEP_ARGS("[\"s1\"]", ", \"should_verify_step\": \"y\"")), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step print null", STEP(STEP_ARGS("[\"s1\"]", ", \"print_serialized_events\": null")), 0,
     DSW_MSG_BAD_ENVELOPE},
    {"step bad run id",
     STEP("{\"__class__\": \"ExecuteStepArgs\", " ORIGIN
          ", \"pipeline_run_id\": \"x;y\", \"step_keys_to_execute\": [\"s\"]}"),
     0, DSW_MSG_BAD_RUN_ID},
    {"execute_step with ExecuteRunArgs", STEP(GOOD_ARGS), 0, DSW_MSG_BAD_CLASS},
    {"celery execute_step", CEL_ENV("\"execute_step\""), 0, DSW_MSG_UNSUPPORTED_TASK, 0, CELERY,
     "[[], {\"execute_step_args_packed\": " STEP_ARGS("[\"s1\"]", "") "}, {}]"},
    {"celery execute_plan ok", CEL_ENV("\"execute_plan\""), 0, DSW_MSG_OK, 0, CELERY,
     "[[], {\"execute_step_args_packed\": " STEP_ARGS("[\"s1\"]", "") ", \"executable_dict\": "
                                                                      "{}}, {}]"},
    {"celery execute_plan two keys", CEL_ENV("\"execute_plan\""), 0, DSW_MSG_BAD_ENVELOPE, 0,
     CELERY, "[[], {\"execute_step_args_packed\": " STEP_ARGS("[\"a\", \"b\"]", "") "}, {}]"},
    {"shell task name", TQ("\"rm -rf /\"", "{}"), 0, DSW_MSG_UNSUPPORTED_TASK},
    {"task name case", TQ("\"Execute_Job\"", "{\"execute_job_args_packed\": " GOOD_ARGS "}"), 0,
     DSW_MSG_UNSUPPORTED_TASK},
    {"task name prefix", TQ("\"execute_job \"", "{\"execute_job_args_packed\": " GOOD_ARGS "}"), 0,
     DSW_MSG_UNSUPPORTED_TASK},
    /* classes */
    {"class unknown", EXEC(ARGS_C("\"ExecuteRunArgsX\"", "\"" RUN1 "\"", "")), 0,
     DSW_MSG_BAD_CLASS},
    {"class lower case", EXEC(ARGS_C("\"executerunargs\"", "\"" RUN1 "\"", "")), 0,
     DSW_MSG_BAD_CLASS},
    {"class number", EXEC(ARGS_C("1", "\"" RUN1 "\"", "")), 0, DSW_MSG_BAD_CLASS},
    {"class missing", EXEC("{" ORIGIN ", \"pipeline_run_id\": \"" RUN1 "\"}"), 0,
     DSW_MSG_BAD_CLASS},
    {"class execute_step", EXEC(ARGS_C("\"ExecuteStepArgs\"", "\"" RUN1 "\"", "")), 0,
     DSW_MSG_BAD_CLASS},
    {"execute_job with ResumeRunArgs", EXEC(ARGS_C("\"ResumeRunArgs\"", "\"" RUN1 "\"", "")), 0,
     DSW_MSG_BAD_CLASS},
    {"resume_job with ExecuteRunArgs",
     TQ("\"resume_job\"", "{\"resume_job_args_packed\": " GOOD_ARGS "}"), 0, DSW_MSG_BAD_CLASS},
    {"bare PipelineRun", "{\"__class__\": \"PipelineRun\", \"run_id\": \"" RUN1 "\"}", 0,
     DSW_MSG_BAD_CLASS},
    {"origin wrong class",
     EXEC("{\"__class__\": \"ExecuteRunArgs\", \"pipeline_origin\": {\"__class__\": "
          "\"ExternalPipelineOrigin\"}, \"pipeline_run_id\": \"" RUN1 "\"}"),
     0, DSW_MSG_BAD_CLASS},
    {"instance_ref wrong class",
     EXEC(ARGS("\"" RUN1 "\"", ", \"instance_ref\": {\"__class__\": \"" MARK "\"}")), 0,
     DSW_MSG_BAD_CLASS},
    {"instance_ref no class", EXEC(ARGS("\"" RUN1 "\"", ", \"instance_ref\": {}")), 0,
     DSW_MSG_BAD_CLASS},
    /* run ids */
    {"run id sql", WITH_RUN("\"'; DROP TABLE runs; --\""), 0, DSW_MSG_BAD_RUN_ID},
    {"run id sql lax", WITH_RUN("\"x' OR '1'='1\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id path", WITH_RUN("\"../../etc/passwd\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id slash in uuid", WITH_RUN("\"00000000-0000-4000-8000-00000000/001\""), 0,
     DSW_MSG_BAD_RUN_ID},
    {"run id newline", WITH_RUN("\"" RUN1 "\\n\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id escape char", WITH_RUN("\"\\u001b[31m" MARK "\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id tab", WITH_RUN("\"00000000-0000-4000-8000-00000000000\\t\""), 0, DSW_MSG_BAD_RUN_ID},
    {"run id upper case", WITH_RUN("\"00000000-0000-4000-8000-0000000000AB\""), 0,
     DSW_MSG_BAD_RUN_ID},
    {"run id 35", WITH_RUN("\"00000000-0000-4000-8000-00000000001\""), 0, DSW_MSG_BAD_RUN_ID},
    {"run id 37", WITH_RUN("\"00000000-0000-4000-8000-0000000000011\""), 0, DSW_MSG_BAD_RUN_ID},
    {"run id number", WITH_RUN("1"), 0, DSW_MSG_BAD_RUN_ID},
    {"run id null", WITH_RUN("null"), 0, DSW_MSG_BAD_RUN_ID},
    {"run id object", WITH_RUN("{}"), 0, DSW_MSG_BAD_RUN_ID},
    {"run id missing", EXEC("{\"__class__\": \"ExecuteRunArgs\", " ORIGIN "}"), 0,
     DSW_MSG_BAD_RUN_ID},
    {"run id empty lax", WITH_RUN("\"\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id 65 lax",
     WITH_RUN("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""), 0,
     DSW_MSG_BAD_RUN_ID, 1},
    {"run id non-ascii lax", WITH_RUN("\"caf\\u00e9\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    {"run id percent lax", WITH_RUN("\"%2e%2e\""), 0, DSW_MSG_BAD_RUN_ID, 1},
    /* S3 pointer without the attribute */
    {"s3 pointer no attribute", "{\"s3_bucket\": \"b\", \"s3_key\": \"k\"}", 0,
     DSW_MSG_BAD_ENVELOPE},
    /* base64 / Celery */
    {"base64 garbage", "!!!!" MARK, 0, DSW_MSG_BAD_JSON},
    {"base64 bad length", "QUJD=", 0, DSW_MSG_BAD_JSON},
    {"base64 bad padding", "QQ=A", 0, DSW_MSG_BAD_JSON},
    {"base64 triple pad", "Q===", 0, DSW_MSG_BAD_JSON},
    {"base64 with newline", "e30=\n", 0, DSW_MSG_BAD_JSON},
    {"base64 urlsafe", "e-_=", 0, DSW_MSG_BAD_JSON},
    {"base64 not json", "aGVsbG8gd29ybGQ=", 0, DSW_MSG_BAD_JSON},
    {"base64 of invalid utf8", "/w==", 0, DSW_MSG_BAD_JSON},
    {"base64 of {}", "e30=", 0, DSW_MSG_BAD_ENVELOPE},
    {"base64 of taskiq", GOOD_ARGS, 0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery ok", CEL_ENV("\"execute_job\""), 0, DSW_MSG_OK, 0, CELERY, CEL_BODY(GOOD_ARGS)},
    {"celery body garbage base64",
     "{\"body\": \"%%%%\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
     "\"execute_job\", \"id\": \"x\"}, \"properties\": {\"body_encoding\": \"base64\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery body not json", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_JSON, 0, CELERY, MARK},
    {"celery body dup key", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_JSON, 0, CELERY,
     "[[], {\"a\": 1, \"a\": 1}, {}]"},
    {"celery body object", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_ENVELOPE, 0, CELERY,
     "{\"args\": []}"},
    {"celery body 2 items", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_ENVELOPE, 0, CELERY,
     "[[], {}]"},
    {"celery kwargs array", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_ENVELOPE, 0, CELERY,
     "[[], [], {}]"},
    {"celery execute_plan run args", CEL_ENV("\"execute_plan\""), 0, DSW_MSG_BAD_ENVELOPE, 0,
     CELERY, CEL_BODY(GOOD_ARGS)},
    {"celery task number", CEL_ENV("3"), 0, DSW_MSG_BAD_ENVELOPE, 0, CELERY, CEL_BODY(GOOD_ARGS)},
    {"celery bad class", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_CLASS, 0, CELERY,
     CEL_BODY(ARGS_C("\"ResumeRunArgs\"", "\"" RUN1 "\"", ""))},
    {"celery bad run id", CEL_ENV("\"execute_job\""), 0, DSW_MSG_BAD_RUN_ID, 0, CELERY,
     CEL_BODY(ARGS("\"x;y\"", ""))},
    {"celery pickle",
     "{\"body\": \"gAR9lC4=\", \"content-type\": \"application/x-python-serialize\", "
     "\"headers\": {\"task\": \"execute_job\", \"id\": \"x\"}, \"properties\": "
     "{\"body_encoding\": \"base64\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery protocol 1",
     "{\"body\": \"e30=\", \"content-type\": \"application/json\", \"headers\": {}, "
     "\"properties\": {\"body_encoding\": \"base64\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery id with slash",
     "{\"body\": \"e30=\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
     "\"execute_job\", \"id\": \"../x\"}, \"properties\": {\"body_encoding\": \"base64\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery body_encoding hex",
     "{\"body\": \"7b7d\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
     "\"execute_job\", \"id\": \"x\"}, \"properties\": {\"body_encoding\": \"hex\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    /* kombu compression (headers.compression) */
    {"celery zlib (kombu)", CEL_ZENV("\"application/x-gzip\"", KOMBU_ZLIB), 0, DSW_MSG_OK, 0, B64},
    {"celery zlib alias zlib", CEL_ZENV("\"zlib\"", KOMBU_ZLIB), 0, DSW_MSG_OK, 0, B64},
    {"celery zlib alias gzip", CEL_ZENV("\"gzip\"", KOMBU_ZLIB), 0, DSW_MSG_OK, 0, B64},
    {"celery compression null", CEL_ZENV("null", PLAIN_BODY_B64), 0, DSW_MSG_OK, 0, B64},
    {"celery zlib flipped byte", CEL_ZENV("\"application/x-gzip\"", KOMBU_ZLIB_FLIPPED), 0,
     DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery zlib truncated", CEL_ZENV("\"application/x-gzip\"", KOMBU_ZLIB_CUT), 0,
     DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery gzip framing", CEL_ZENV("\"application/x-gzip\"", GZIP_FRAMED), 0,
     DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery zlib header, plain body", CEL_ZENV("\"application/x-gzip\"", PLAIN_BODY_B64), 0,
     DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery zlib header, empty body", CEL_ZENV("\"application/x-gzip\"", ""), 0,
     DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery bz2", CEL_ZENV("\"application/x-bz2\"", KOMBU_ZLIB), 0,
     DSW_MSG_UNSUPPORTED_COMPRESSION, 0, B64},
    {"celery zstd alias", CEL_ZENV("\"zstd\"", KOMBU_ZLIB), 0, DSW_MSG_UNSUPPORTED_COMPRESSION, 0,
     B64},
    {"celery unknown compression", CEL_ZENV("\"application/x-snappy\"", KOMBU_ZLIB), 0,
     DSW_MSG_UNSUPPORTED_COMPRESSION, 0, B64},
    {"celery compression is secret", CEL_ZENV("\"" MARK "\"", KOMBU_ZLIB), 0,
     DSW_MSG_UNSUPPORTED_COMPRESSION, 0, B64},
    /* jansson refuses \u0000 before anything compares the name */
    {"celery compression with NUL", CEL_ZENV("\"zlib\\u0000\"", KOMBU_ZLIB), 0, DSW_MSG_BAD_JSON, 0,
     B64},
    {"celery compression number", CEL_ZENV("1", KOMBU_ZLIB), 0, DSW_MSG_BAD_ENVELOPE, 0, B64},
    {"celery properties missing",
     "{\"body\": \"e30=\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
     "\"execute_job\", \"id\": \"x\"}}",
     0, DSW_MSG_BAD_ENVELOPE, 0, B64},
};
#pragma GCC diagnostic pop

static char *build_case(const struct bad_case *bc, size_t *len)
{
    char *s, *out;

    switch (bc->wrap) {
    case CELERY:
        s = subst_b64(bc->body, bc->inner);
        out = b64s(s);
        free(s);
        break;
    case B64:
        out = b64s(bc->body);
        break;
    default:
        *len = bc->len ? bc->len : strlen(bc->body);
        out = malloc(*len + 1);
        assert_non_null(out);
        memcpy(out, bc->body, *len);
        out[*len] = '\0';
        return out;
    }
    *len = strlen(out);
    return out;
}

/* The detail names a check; it never contains the planted marker, a quote or a brace of the
 * body, and it is printable ASCII. */
static void check_detail(const struct dsw_msg_reject *rej)
{
    assert_true(strlen(rej->detail) > 0);
    assert_null(strstr(rej->detail, MARK));
    for (const char *p = rej->detail; *p; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
}

static void test_bad_bodies(void **state)
{
    size_t rejects = 0;

    for (size_t i = 0; i < DSW_ARRAY_LEN(bad_cases); i++) {
        const struct bad_case *bc = &bad_cases[i];
        struct dsw_msg_opts o = {.strict_run_id = !bc->lax, .max_body = DSW_MSG_MAX_BODY};
        struct dsw_msg_request req;
        struct dsw_msg_reject rej;
        size_t len;
        char *body = build_case(bc, &len);
        int rc = dsw_msg_decode(body, len, &o, &req, &rej);

        if (getenv("DSW_MSG_VERBOSE"))
            print_message("%-32s %-16s %s\n", bc->name, dsw_msg_reason_name(rej.reason),
                          rej.detail);
        if (rej.reason != bc->reason)
            fail_msg("case \"%s\": got %s (%s), want %s", bc->name, dsw_msg_reason_name(rej.reason),
                     rej.detail, dsw_msg_reason_name(bc->reason));
        if (bc->reason == DSW_MSG_OK) {
            assert_int_equal(rc, 0);
            dsw_msg_request_clear(&req);
        } else {
            assert_int_equal(rc, -EBADMSG);
            assert_string_equal(req.run_id, "");
            assert_null(req.instance_ref);
            check_detail(&rej);
            rejects++;
        }
        free(body);
    }
    print_message("%zu hostile bodies rejected with their exact reason\n", rejects);
    assert_true(rejects >= 40);
}

/* Nesting: jansson's own 2048 limit and ours (DSW_MSG_MAX_DEPTH) inside valid envelopes. */
static char *nested(const char *prefix, size_t depth, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    char *b = malloc(pl + 2 * depth + sl + 1);

    assert_non_null(b);
    memcpy(b, prefix, pl);
    memset(b + pl, '[', depth);
    memset(b + pl + depth, ']', depth);
    memcpy(b + pl + 2 * depth, suffix, sl + 1);
    return b;
}

static void expect_reason(const char *body, enum dsw_msg_reason reason)
{
    struct dsw_msg_opts o = {.strict_run_id = 1, .max_body = DSW_MSG_MAX_BODY};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    int rc = dsw_msg_decode(body, strlen(body), &o, &req, &rej);

    if (rej.reason != reason)
        fail_msg("got %s (%s), want %s", dsw_msg_reason_name(rej.reason), rej.detail,
                 dsw_msg_reason_name(reason));
    if (rc == 0)
        dsw_msg_request_clear(&req);
}

static void test_deep_nesting(void **state)
{
    const char *pre = "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"" RUN1
                      "\", \"x\": ";
    char *b;

    b = nested("", 300000, ""); /* far beyond jansson's limit */
    expect_reason(b, DSW_MSG_BAD_JSON);
    free(b);
    b = nested(pre, 2100, "}");
    expect_reason(b, DSW_MSG_BAD_JSON);
    free(b);
    b = nested(pre, DSW_MSG_MAX_DEPTH, "}"); /* one level past ours */
    expect_reason(b, DSW_MSG_BAD_JSON);
    free(b);
    b = nested(pre, DSW_MSG_MAX_DEPTH - 1, "}"); /* exactly at the limit */
    expect_reason(b, DSW_MSG_OK);
    free(b);
    b = nested("{\"a\": ", 100000, "}");
    expect_reason(b, DSW_MSG_BAD_JSON);
    free(b);
}

/* Every fuzz seed still means what its name says, so the corpus keeps reaching deep paths:
 * <form>_*.json decode, bad_* and the others named below are rejected with that reason. */
static enum dsw_msg_reason seed_expectation(const char *name)
{
    static const struct {
        const char *glob;
        enum dsw_msg_reason reason;
    } rules[] = {
        {"bad_*", DSW_MSG_BAD_JSON},
        {"s3_pointer*", DSW_MSG_BAD_ENVELOPE},    /* no attribute here */
        {"celery_inner_*", DSW_MSG_BAD_ENVELOPE}, /* a bare [args, kwargs, embed] */
        {"taskiq_execute_plan*", DSW_MSG_UNSUPPORTED_TASK},
        {"serdes_lax_run_id*", DSW_MSG_BAD_RUN_ID},        /* strict run ids here */
        {"zlib_*", DSW_MSG_TOO_LARGE},                     /* inflate past DSW_MSG_MAX_INFLATED */
        {"compressed_*", DSW_MSG_UNSUPPORTED_COMPRESSION}, /* kombu's bz2, lzma */
        {"*", DSW_MSG_OK},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(rules); i++)
        if (fnmatch(rules[i].glob, name, 0) == 0)
            return rules[i].reason;
    return DSW_MSG_OK;
}

static void test_fuzz_seeds(void **state)
{
    const char *src = tu_need_env("DSW_SOURCE_DIR");
    char *dir = NULL;
    DIR *d;
    struct dirent *e;
    int seen = 0;

    assert_true(asprintf(&dir, "%s/tests/fuzz/corpus/msg", src) > 0);
    assert_non_null(d = opendir(dir));
    while ((e = readdir(d))) {
        struct dsw_msg_opts o = {.strict_run_id = 1};
        struct dsw_msg_request req;
        struct dsw_msg_reject rej;
        char *path = NULL, *body;
        size_t len;

        if (e->d_name[0] == '.')
            continue;
        assert_true(asprintf(&path, "%s/%s", dir, e->d_name) > 0);
        body = tu_read_file(path, &len);
        if (dsw_msg_decode(body, len, &o, &req, &rej) == 0)
            dsw_msg_request_clear(&req);
        if (rej.reason != seed_expectation(e->d_name))
            fail_msg("seed %s: %s (%s)", e->d_name, dsw_msg_reason_name(rej.reason), rej.detail);
        free(body);
        free(path);
        seen++;
    }
    closedir(d);
    free(dir);
    assert_true(seen >= 10);
}

/* Real kombu output (tests/fuzz/gen_compressed_seeds.py): a zlib-compressed message as moto
 * delivered it decodes; inflating to exactly DSW_MSG_MAX_INFLATED is accepted, one byte more
 * and a 16 MiB bomb are too_large; kombu's bz2 and lzma are unsupported_compression. */
static void test_kombu_compressed(void **state)
{
    static const struct {
        const char *seed;
        enum dsw_msg_reason reason;
    } cases[] = {
        {"celery_kombu_moto_zlib_b64.txt", DSW_MSG_OK},
        {"celery_zlib_alias_b64.txt", DSW_MSG_OK},
        {"celery_zlib_at_cap_b64.txt", DSW_MSG_OK},
        {"zlib_over_cap_b64.txt", DSW_MSG_TOO_LARGE},
        {"zlib_bomb_b64.txt", DSW_MSG_TOO_LARGE},
        {"compressed_bz2_b64.txt", DSW_MSG_UNSUPPORTED_COMPRESSION},
        {"compressed_lzma_b64.txt", DSW_MSG_UNSUPPORTED_COMPRESSION},
    };
    const char *src = tu_need_env("DSW_SOURCE_DIR");

    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
        struct dsw_msg_opts o = {.strict_run_id = 1};
        struct dsw_msg_request req;
        struct dsw_msg_reject rej;
        char *path = NULL, *body;
        size_t len;

        assert_true(asprintf(&path, "%s/tests/fuzz/corpus/msg/%s", src, cases[i].seed) > 0);
        body = tu_read_file(path, &len);
        int rc = dsw_msg_decode(body, len, &o, &req, &rej);
        if (rej.reason != cases[i].reason)
            fail_msg("%s: got %s (%s), want %s", cases[i].seed, dsw_msg_reason_name(rej.reason),
                     rej.detail, dsw_msg_reason_name(cases[i].reason));
        if (cases[i].reason == DSW_MSG_OK) {
            assert_int_equal(rc, 0);
            assert_string_equal(req.run_id, RUN1);
            assert_int_equal(req.kind, DSW_MSG_EXECUTE);
            assert_int_equal(req.form, DSW_MSG_FORM_CELERY);
            assert_non_null(req.instance_ref);
            dsw_msg_request_clear(&req);
        } else {
            assert_int_equal(rc, -EBADMSG);
            check_detail(&rej);
        }
        free(body);
        free(path);
    }
}

/* The 16 MiB bomb costs at most the 1 MiB cap in memory: decoded in a child whose peak RSS
 * grows by far less than the bomb's inflated size. */
static void test_bomb_is_not_an_allocation(void **state)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/tests/fuzz/corpus/msg/zlib_bomb_b64.txt",
                         tu_need_env("DSW_SOURCE_DIR")) > 0);
    size_t len;
    char *body = tu_read_file(path, &len);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rusage before, after;
        struct dsw_msg_request req;
        struct dsw_msg_reject rej;
        getrusage(RUSAGE_SELF, &before);
        int rc = dsw_msg_decode(body, len, NULL, &req, &rej);
        getrusage(RUSAGE_SELF, &after);
        long grew_kb = after.ru_maxrss - before.ru_maxrss;
        fprintf(stderr, "bomb: %s, peak RSS +%ld KiB\n", dsw_msg_reason_name(rej.reason), grew_kb);
        /* The bomb inflates to 16 MiB; the cap is 1 MiB. Half the bomb is a bound that fails if
         * the whole output was allocated, with room for ASan's shadow and redzones. */
        _exit(rc == -EBADMSG && rej.reason == DSW_MSG_TOO_LARGE && grew_kb < 8192 ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    free(body);
    free(path);
}

/* --- names and run ids ----------------------------------------------------------------- */

static void test_reason_names(void **state)
{
    static const char *const want[] = {"ok",
                                       "too_large",
                                       "bad_json",
                                       "bad_envelope",
                                       "unsupported_task",
                                       "bad_class",
                                       "bad_run_id",
                                       "s3_pointer_unsupported",
                                       "unknown_run",
                                       "bad_signature",
                                       "unsupported_compression"};
    enum dsw_msg_reason r;

    assert_int_equal(DSW_ARRAY_LEN(want), DSW_MSG_REASON_COUNT);
    for (unsigned i = 0; i < DSW_MSG_REASON_COUNT; i++) {
        assert_string_equal(dsw_msg_reason_name((enum dsw_msg_reason)i), want[i]);
        assert_int_equal(dsw_msg_reason_parse(want[i], &r), 0);
        assert_int_equal(r, i);
    }
    assert_string_equal(dsw_msg_reason_name((enum dsw_msg_reason)99), "unknown");
    assert_int_equal(dsw_msg_reason_parse("nope", &r), -EINVAL);
    assert_int_equal(dsw_msg_reason_parse(NULL, &r), -EINVAL);
    assert_string_equal(dsw_msg_kind_name(DSW_MSG_RESUME), "resume");
    assert_string_equal(dsw_msg_kind_name(DSW_MSG_EXECUTE), "execute");
    assert_string_equal(dsw_msg_form_name(DSW_MSG_FORM_CELERY), "celery");
    assert_string_equal(dsw_msg_form_name(DSW_MSG_FORM_TASKIQ_LEGACY), "taskiq_legacy");
}

static void test_run_id_rule(void **state)
{
    assert_true(dsw_msg_run_id_valid(RUN1, 1));
    assert_true(dsw_msg_run_id_valid(RUN1, 0));
    assert_false(dsw_msg_run_id_valid("00000000-0000-4000-8000-00000000000G", 1));
    assert_true(dsw_msg_run_id_valid("A_b-9", 0));
    assert_false(dsw_msg_run_id_valid("A_b-9", 1));
    assert_false(dsw_msg_run_id_valid("", 0));
    assert_false(dsw_msg_run_id_valid(NULL, 0));
    assert_false(dsw_msg_run_id_valid("a.b", 0));
    assert_false(dsw_msg_run_id_valid("a b", 0));
}

static void test_null_opts_and_clear(void **state)
{
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    const char *b = "{\"__class__\": \"ExecuteRunArgs\", " ORIGIN ", \"pipeline_run_id\": \"r1\"}";

    /* NULL opts: non-strict run ids, 256 KiB */
    assert_int_equal(dsw_msg_decode(b, strlen(b), NULL, &req, &rej), 0);
    assert_string_equal(req.run_id, "r1");
    dsw_msg_request_clear(&req);
    dsw_msg_request_clear(&req);
    dsw_msg_request_clear(NULL);
    assert_int_equal(dsw_msg_decode(NULL, 0, NULL, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_JSON);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_all_listed),
        cmocka_unit_test(test_vectors_decode),
        cmocka_unit_test(test_vectors_every_form),
        cmocka_unit_test(test_legacy_task_names),
        cmocka_unit_test(test_step_vectors),
        cmocka_unit_test(test_step_minimal),
        cmocka_unit_test(test_minimal_args),
        cmocka_unit_test(test_non_strict_run_id),
        cmocka_unit_test(test_layout_whitespace),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_size_before_parse),
        cmocka_unit_test(test_s3_pointer),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_fuzz_seeds),
        cmocka_unit_test(test_kombu_compressed),
        cmocka_unit_test(test_bomb_is_not_an_allocation),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_run_id_rule),
        cmocka_unit_test(test_null_opts_and_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
