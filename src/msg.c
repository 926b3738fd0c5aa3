/* msg: SQS message body -> validated run or step request, or a reject reason (SPEC §1,
 * docs/steps.md §1). Pure: jansson
 * parses with JSON_REJECT_DUPLICATES after the size check, every member is type-checked, class
 * names and run ids are matched exactly. Reject details are built from fixed text and numbers
 * only, so no byte of a (secret) body can reach a log line through them. */
#include "dsw/msg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zlib.h>

#define EXECUTE_CLASS "ExecuteRunArgs"
#define RESUME_CLASS  "ResumeRunArgs"
#define STEP_CLASS    "ExecuteStepArgs"
#define ORIGIN_CLASS  "PipelinePythonOrigin"
#define IREF_CLASS    "InstanceRef"
#define STATE_CLASS   "KnownExecutionState"
#define S3_ATTR       "s3_extended_message"

/* What the task name promised: a kind, or any (bare serdes picks by class). */
enum expect { EXPECT_EXECUTE, EXPECT_RESUME, EXPECT_STEP, EXPECT_ANY };

struct ctx {
    const struct dsw_msg_opts *opts;
    struct dsw_msg_request *req;
    struct dsw_msg_reject *rej;
};

static const char *const reason_names[DSW_MSG_REASON_COUNT] = {
    [DSW_MSG_OK] = "ok",
    [DSW_MSG_TOO_LARGE] = "too_large",
    [DSW_MSG_BAD_JSON] = "bad_json",
    [DSW_MSG_BAD_ENVELOPE] = "bad_envelope",
    [DSW_MSG_UNSUPPORTED_TASK] = "unsupported_task",
    [DSW_MSG_BAD_CLASS] = "bad_class",
    [DSW_MSG_BAD_RUN_ID] = "bad_run_id",
    [DSW_MSG_S3_POINTER_UNSUPPORTED] = "s3_pointer_unsupported",
    [DSW_MSG_UNKNOWN_RUN] = "unknown_run",
    [DSW_MSG_BAD_SIGNATURE] = "bad_signature",
    [DSW_MSG_UNSUPPORTED_COMPRESSION] = "unsupported_compression",
};

const char *dsw_msg_reason_name(enum dsw_msg_reason reason)
{
    if ((unsigned)reason >= DSW_MSG_REASON_COUNT)
        return "unknown";
    return reason_names[reason];
}

int dsw_msg_reason_parse(const char *name, enum dsw_msg_reason *out)
{
    for (unsigned i = 0; name && i < DSW_MSG_REASON_COUNT; i++) {
        if (strcmp(name, reason_names[i]) == 0) {
            *out = (enum dsw_msg_reason)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *dsw_msg_kind_name(enum dsw_msg_kind kind)
{
    return kind == DSW_MSG_RESUME ? "resume" : kind == DSW_MSG_STEP ? "step" : "execute";
}

const char *dsw_msg_form_name(enum dsw_msg_form form)
{
    switch (form) {
    case DSW_MSG_FORM_TASKIQ:
        return "taskiq";
    case DSW_MSG_FORM_TASKIQ_LEGACY:
        return "taskiq_legacy";
    case DSW_MSG_FORM_SERDES:
        return "serdes";
    case DSW_MSG_FORM_CELERY:
        return "celery";
    }
    return "unknown";
}

void dsw_msg_request_clear(struct dsw_msg_request *req)
{
    if (!req)
        return;
    free(req->instance_ref);
    free(req->step_known_state);
    free(req->step_retry_mode);
    memset(req, 0, sizeof(*req));
}

/* Record a reject; fmt is always a literal of this file and arguments are numbers or literals. */
DSW_PRINTF(3, 4)
static int reject(struct ctx *c, enum dsw_msg_reason reason, const char *fmt, ...)
{
    va_list ap;
    c->rej->reason = reason;
    va_start(ap, fmt);
    vsnprintf(c->rej->detail, sizeof(c->rej->detail), fmt, ap);
    va_end(ap);
    return -EBADMSG;
}

static int span_ok(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int alnum =
            (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        if (!alnum && (ch == '\0' || !strchr(extra, ch)))
            return 0;
    }
    return 1;
}

static int name_in(const char *s, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return 1;
    return 0;
}

static int run_id_valid_n(const char *s, size_t n, int strict)
{
    if (strict) {
        for (size_t i = 0; i < n; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') || s[i] == '-'))
                return 0;
        return n == 36;
    }
    return n >= 1 && n <= DSW_MSG_RUN_ID_MAX && span_ok(s, n, "_-");
}

int dsw_msg_run_id_valid(const char *run_id, int strict)
{
    return run_id && run_id_valid_n(run_id, strlen(run_id), strict);
}

static int step_key_valid_n(const char *s, size_t n)
{
    return n >= 1 && n <= DSW_MSG_STEP_KEY_MAX && span_ok(s, n, "_.,[]-");
}

int dsw_msg_step_key_valid(const char *step_key)
{
    return step_key && step_key_valid_n(step_key, strlen(step_key));
}

/* --- JSON parsing ---------------------------------------------------------------------- */

static const char *json_error_name(enum json_error_code code)
{
    switch (code) {
    case json_error_invalid_utf8:
        return "invalid UTF-8";
    case json_error_null_character:
    case json_error_null_byte_in_key:
        return "NUL character";
    case json_error_duplicate_key:
        return "duplicate key";
    case json_error_numeric_overflow:
        return "number out of range";
    case json_error_stack_overflow:
        return "nesting too deep";
    case json_error_premature_end_of_input:
        return "truncated";
    case json_error_end_of_input_expected:
        return "trailing data";
    case json_error_invalid_syntax:
        return "invalid syntax";
    default:
        return "cannot parse";
    }
}

/* 1 when j nests deeper than DSW_MSG_MAX_DEPTH (j itself is at depth). */
static int too_deep(json_t *j, int depth)
{
    const char *key;
    json_t *v;
    size_t i;

    if (depth > DSW_MSG_MAX_DEPTH)
        return 1;
    if (json_is_object(j)) {
        json_object_foreach(j, key, v) if (too_deep(v, depth + 1)) return 1;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) if (too_deep(v, depth + 1)) return 1;
    }
    return 0;
}

/* Strict parse of text into *out (an object or an array). what names the layer in details;
 * jansson's own error text is not used because it quotes the input near the error. */
static int parse(struct ctx *c, const char *text, size_t n, const char *what, json_t **out)
{
    json_error_t err;
    json_t *j = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);

    if (!j)
        return reject(c, DSW_MSG_BAD_JSON, "%s: %s at byte %d", what,
                      json_error_name(json_error_code(&err)), err.position);
    if (too_deep(j, 1)) {
        json_decref(j);
        return reject(c, DSW_MSG_BAD_JSON, "%s: nesting deeper than %d", what, DSW_MSG_MAX_DEPTH);
    }
    *out = j;
    return 0;
}

/* --- base64 (RFC 4648 standard alphabet, padded, no whitespace) ------------------------- */

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Decode src[0..n) into a new heap buffer (*out, NUL-terminated, *outlen); -EINVAL if it is
 * not exactly canonical-length padded base64. */
static int b64_decode(const char *src, size_t n, char **out, size_t *outlen)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t pad = 0, o = 0;
    char *dst;

    if (n == 0 || n % 4 != 0)
        return -EINVAL;
    while (pad < 2 && s[n - 1 - pad] == '=')
        pad++;
    dst = dsw_xmalloc(n / 4 * 3 + 1);
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        size_t real = (i + 4 == n) ? 4 - pad : 4;
        for (size_t k = 0; k < 4; k++) {
            int d = k < real ? b64_value(s[i + k]) : 0;
            if (d < 0) {
                free(dst);
                return -EINVAL;
            }
            v = v << 6 | (unsigned)d;
        }
        dst[o++] = (char)(v >> 16);
        if (real > 2)
            dst[o++] = (char)(v >> 8 & 0xff);
        if (real > 3)
            dst[o++] = (char)(v & 0xff);
    }
    dst[o] = '\0';
    *out = dst;
    *outlen = o;
    return 0;
}

/* --- the serdes ExecuteRunArgs / ResumeRunArgs object ----------------------------------- */

/* The __class__ of v, or NULL when v is not an object with a string __class__. */
static const char *class_of(json_t *v)
{
    return json_string_value(json_object_get(v, "__class__"));
}

static int take_run_id(struct ctx *c, json_t *args)
{
    json_t *v = json_object_get(args, "pipeline_run_id");
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    int strict = c->opts->strict_run_id;

    if (!v || json_is_null(v))
        return reject(c, DSW_MSG_BAD_RUN_ID, "pipeline_run_id missing or null");
    if (!s)
        return reject(c, DSW_MSG_BAD_RUN_ID, "pipeline_run_id is not a string");
    if (!run_id_valid_n(s, n, strict))
        return reject(c, DSW_MSG_BAD_RUN_ID, "pipeline_run_id (%zu bytes) does not match %s", n,
                      strict ? "[0-9a-f-]{36}" : "[A-Za-z0-9_-]{1,64}");
    memcpy(c->req->run_id, s, n);
    c->req->run_id[n] = '\0';
    return 0;
}

/* v as compact JSON in a dsw_xmalloc'd string (what names it in the abort message). */
static char *compact(json_t *v, const char *what)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY), *out;

    if (!s) {
        fprintf(stderr, "dsw_msg: out of memory serializing %s\n", what);
        abort();
    }
    out = dsw_xstrdup(s);
    free(s);
    return out;
}

/* A member that is absent/null (*out NULL) or an object of class cls (*out compact JSON). */
static int take_classed(struct ctx *c, json_t *args, const char *member, const char *cls,
                        char **out)
{
    json_t *v = json_object_get(args, member);
    const char *got;

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "%s is not an object", member);
    got = class_of(v);
    if (!got || strcmp(got, cls) != 0)
        return reject(c, DSW_MSG_BAD_CLASS, "%s is not a %s", member, cls);
    *out = compact(v, member);
    return 0;
}

static int take_instance_ref(struct ctx *c, json_t *args)
{
    return take_classed(c, args, "instance_ref", IREF_CLASS, &c->req->instance_ref);
}

/* pipeline_origin: the CLI ignores it (the daemon uses the stored run's), but it must be what
 * a launcher writes. */
static int check_origin(struct ctx *c, json_t *args)
{
    json_t *origin = json_object_get(args, "pipeline_origin");
    const char *cls;

    if (!json_is_object(origin))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "pipeline_origin is not an object");
    cls = class_of(origin);
    if (!cls || strcmp(cls, ORIGIN_CLASS) != 0)
        return reject(c, DSW_MSG_BAD_CLASS, "pipeline_origin is not a " ORIGIN_CLASS);
    return 0;
}

/* A member that is absent, null or a boolean (null_ok 0: absent or a boolean). -1 absent or
 * null, else 0/1; a reject otherwise. */
static int opt_bool(struct ctx *c, json_t *args, const char *member, int null_ok, int *out)
{
    json_t *v = json_object_get(args, member);

    *out = json_is_boolean(v) ? json_is_true(v) : -1;
    if (!v || json_is_boolean(v) || (null_ok && json_is_null(v)))
        return 0;
    return reject(c, DSW_MSG_BAD_ENVELOPE, "%s is not a boolean%s", member,
                  null_ok ? " or null" : "");
}

/* The run members besides the run id: pipeline_origin and set_exit_code_on_failure (true,
 * false or null). */
static int check_members(struct ctx *c, json_t *args)
{
    int rc, flag;

    if ((rc = check_origin(c, args)) < 0 ||
        (rc = opt_bool(c, args, "set_exit_code_on_failure", 1, &flag)) < 0)
        return rc;
    c->req->set_exit_code_on_failure = flag == 1;
    return 0;
}

/* --- the serdes ExecuteStepArgs object (docs/steps.md §1) ------------------------------------ */

/* step_keys_to_execute: exactly one string, 1..255 chars of [A-Za-z0-9_.,[]-]. */
static int take_step_key(struct ctx *c, json_t *args)
{
    json_t *keys = json_object_get(args, "step_keys_to_execute"), *k = json_array_get(keys, 0);
    size_t n = json_string_length(k);

    if (!json_is_array(keys))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "step_keys_to_execute is not an array");
    if (json_array_size(keys) != 1)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "step_keys_to_execute has %zu keys, not exactly 1",
                      json_array_size(keys));
    if (!json_is_string(k))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "the step key is not a string");
    if (!step_key_valid_n(json_string_value(k), n))
        return reject(c, DSW_MSG_BAD_ENVELOPE,
                      "the step key (%zu bytes) is not [A-Za-z0-9_.,[]-]{1,%d}", n,
                      DSW_MSG_STEP_KEY_MAX);
    memcpy(c->req->step_key, json_string_value(k), n);
    c->req->step_key[n] = '\0';
    return 0;
}

/* retry_mode: null/absent, or {"__enum__": "RetryMode.ENABLED|DISABLED|DEFERRED"}. */
static int take_retry_mode(struct ctx *c, json_t *args)
{
    static const char *const modes[] = {"RetryMode.ENABLED", "RetryMode.DISABLED",
                                        "RetryMode.DEFERRED"};
    json_t *v = json_object_get(args, "retry_mode"), *e = json_object_get(v, "__enum__");
    const char *s = json_string_value(e);

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v) || json_object_size(v) != 1 || !s ||
        strlen(s) != json_string_length(e) || !name_in(s, modes, DSW_ARRAY_LEN(modes)))
        return reject(c, DSW_MSG_BAD_ENVELOPE,
                      "retry_mode is not null or a RetryMode ENABLED, DISABLED or DEFERRED");
    c->req->step_retry_mode = compact(v, "retry_mode");
    return 0;
}

/* The attempt: 1 + known_state.previous_retry_attempts[step key] (absent: 1). */
static int take_attempt(struct ctx *c, json_t *args)
{
    json_t *prev = json_object_get(json_object_get(args, "known_state"), "previous_retry_attempts");
    json_t *n = json_object_get(prev, c->req->step_key);

    c->req->step_attempt = 1;
    if (!prev || json_is_null(prev))
        return 0;
    if (!json_is_object(prev))
        return reject(c, DSW_MSG_BAD_ENVELOPE,
                      "known_state.previous_retry_attempts is not an object");
    if (!n)
        return 0;
    if (!json_is_integer(n) || json_integer_value(n) < 0 ||
        json_integer_value(n) > DSW_MSG_STEP_PREVIOUS_MAX)
        return reject(c, DSW_MSG_BAD_ENVELOPE,
                      "previous_retry_attempts of the step is not an integer 0..%d",
                      DSW_MSG_STEP_PREVIOUS_MAX);
    c->req->step_attempt = 1 + (int)json_integer_value(n);
    return 0;
}

static int check_step_members(struct ctx *c, json_t *args)
{
    int rc, verify;

    if ((rc = check_origin(c, args)) < 0 || (rc = take_step_key(c, args)) < 0 ||
        (rc = take_classed(c, args, "known_state", STATE_CLASS, &c->req->step_known_state)) < 0 ||
        (rc = take_attempt(c, args)) < 0 || (rc = take_retry_mode(c, args)) < 0 ||
        (rc = opt_bool(c, args, "should_verify_step", 1, &verify)) < 0)
        return rc;
    return opt_bool(c, args, "print_serialized_events", 0, &c->req->step_print_events);
}

/* The kind the args' class names, when the task name allows it; else a reject. */
static int args_kind(struct ctx *c, const char *cls, enum expect expect)
{
    static const struct {
        const char *cls;
        enum expect expect;
        enum dsw_msg_kind kind;
    } classes[] = {
        {EXECUTE_CLASS, EXPECT_EXECUTE, DSW_MSG_EXECUTE},
        {RESUME_CLASS, EXPECT_RESUME, DSW_MSG_RESUME},
        {STEP_CLASS, EXPECT_STEP, DSW_MSG_STEP},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(classes); i++) {
        if (strcmp(cls, classes[i].cls) == 0 &&
            (expect == EXPECT_ANY || expect == classes[i].expect)) {
            c->req->kind = classes[i].kind;
            return 0;
        }
    }
    return reject(c, DSW_MSG_BAD_CLASS, "packed args are not %s",
                  expect == EXPECT_RESUME    ? RESUME_CLASS
                  : expect == EXPECT_EXECUTE ? EXECUTE_CLASS
                  : expect == EXPECT_STEP    ? STEP_CLASS
                                             : EXECUTE_CLASS ", " RESUME_CLASS " or " STEP_CLASS);
}

static int decode_args_object(struct ctx *c, json_t *args, enum expect expect)
{
    const char *cls;
    int rc;

    if (!json_is_object(args))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "packed args are not an object");
    cls = class_of(args);
    if (!cls)
        return reject(c, DSW_MSG_BAD_CLASS, "packed args have no string __class__");
    if ((rc = args_kind(c, cls, expect)) < 0 || (rc = take_run_id(c, args)) < 0)
        return rc;
    if (c->req->kind == DSW_MSG_STEP)
        rc = check_step_members(c, args);
    else
        rc = check_members(c, args);
    return rc < 0 ? rc : take_instance_ref(c, args);
}

/* Packed args: the object, or a JSON string holding it (the serialize_value form). */
static int decode_packed(struct ctx *c, json_t *packed, enum expect expect)
{
    json_t *inner = NULL;
    int rc;

    if (!json_is_string(packed))
        return decode_args_object(c, packed, expect);
    rc = parse(c, json_string_value(packed), json_string_length(packed), "packed args string",
               &inner);
    if (rc < 0)
        return rc;
    rc = decode_args_object(c, inner, expect);
    json_decref(inner);
    return rc;
}

/* --- envelopes ------------------------------------------------------------------------- */

static int take_task_id(struct ctx *c, json_t *v, const char *what)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    if (!s)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "%s is not a string", what);
    if (n < 1 || n > DSW_MSG_TASK_ID_MAX || !span_ok(s, n, "_.:-"))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "%s (%zu bytes) is not [A-Za-z0-9_.:-]{1,%d}", what,
                      n, DSW_MSG_TASK_ID_MAX);
    memcpy(c->req->task_id, s, n);
    c->req->task_id[n] = '\0';
    return 0;
}

/* Which packed-args kwarg a task name uses, and the kind it promises. A step is execute_step
 * in a TaskIQ envelope and dagster-celery's execute_plan in a Celery message. */
static int task_kwarg(const char *name, int celery, const char **kwarg, enum expect *expect)
{
    static const struct {
        const char *task;
        int celery; /* -1 either form, else only TaskIQ (0) or only Celery (1) */
        const char *kwarg;
        enum expect expect;
    } tasks[] = {
        {"execute_job", -1, "execute_job_args_packed", EXPECT_EXECUTE},
        {"resume_job", -1, "resume_job_args_packed", EXPECT_RESUME},
        {"execute_step", 0, "execute_step_args_packed", EXPECT_STEP},
        {"execute_plan", 1, "execute_step_args_packed", EXPECT_STEP},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(tasks); i++) {
        if (strcmp(name, tasks[i].task) == 0 &&
            (tasks[i].celery < 0 || tasks[i].celery == celery)) {
            *kwarg = tasks[i].kwarg;
            *expect = tasks[i].expect;
            return 1;
        }
    }
    return 0;
}

static int is_legacy_task(const char *name)
{
    return strcmp(name, "dagster_execute_job") == 0 ||
           strcmp(name, "dagster_taskiq.simple_tasks:execute_job") == 0;
}

static int check_labels(struct ctx *c, json_t *env)
{
    json_t *labels = json_object_get(env, "labels");
    json_t *types = json_object_get(env, "labels_types");
    const char *key;
    json_t *v;

    if (!json_is_object(labels))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "taskiq: labels is not an object");
    json_object_foreach(labels, key, v) if (!json_is_string(v)) return reject(
        c, DSW_MSG_BAD_ENVELOPE, "taskiq: a label value is not a string");
    if (types && !json_is_null(types) && !json_is_object(types))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "taskiq: labels_types is not an object or null");
    return 0;
}

/* Run the packed args found under kwargs[kwarg] (TaskIQ and Celery share this). */
static int decode_kwarg(struct ctx *c, json_t *kwargs, const char *kwarg, enum expect expect,
                        const char *form)
{
    json_t *packed = json_object_get(kwargs, kwarg);

    if (!packed)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "%s: kwargs has no %s", form, kwarg);
    return decode_packed(c, packed, expect);
}

static int decode_taskiq(struct ctx *c, json_t *env)
{
    json_t *args = json_object_get(env, "args"), *kwargs = json_object_get(env, "kwargs");
    const char *name = json_string_value(json_object_get(env, "task_name"));
    const char *kwarg;
    enum expect expect;
    int rc;

    if ((rc = take_task_id(c, json_object_get(env, "task_id"), "taskiq: task_id")) < 0)
        return rc;
    if (!name)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "taskiq: task_name is not a string");
    if ((rc = check_labels(c, env)) < 0)
        return rc;
    if (!json_is_array(args) || !json_is_object(kwargs))
        return reject(c, DSW_MSG_BAD_ENVELOPE,
                      "taskiq: args is not an array or kwargs not an "
                      "object");
    if (task_kwarg(name, 0, &kwarg, &expect)) {
        c->req->form = DSW_MSG_FORM_TASKIQ;
        return decode_kwarg(c, kwargs, kwarg, expect, "taskiq");
    }
    if (!is_legacy_task(name))
        return reject(c, DSW_MSG_UNSUPPORTED_TASK,
                      "taskiq: task_name is not execute_job, resume_job, execute_step or "
                      "dagster_execute_job");
    if (json_array_size(args) < 1)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "taskiq: legacy task without args[0]");
    c->req->form = DSW_MSG_FORM_TASKIQ_LEGACY;
    return decode_packed(c, json_array_get(args, 0), EXPECT_EXECUTE);
}

/* Celery protocol 2 body: [args, kwargs, embed]. */
static int decode_celery_body(struct ctx *c, json_t *body, const char *task)
{
    json_t *kwargs = json_array_get(body, 1), *embed = json_array_get(body, 2);
    const char *kwarg;
    enum expect expect;

    if (!json_is_array(body) || json_array_size(body) != 3)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: body is not [args, kwargs, embed]");
    if (!json_is_array(json_array_get(body, 0)) || !json_is_object(kwargs) ||
        !(json_is_object(embed) || json_is_null(embed)))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: body members have the wrong types");
    if (!task_kwarg(task, 1, &kwarg, &expect))
        return reject(c, DSW_MSG_UNSUPPORTED_TASK,
                      "celery: headers.task is not execute_job, resume_job or execute_plan");
    return decode_kwarg(c, kwargs, kwarg, expect, "celery");
}

/* --- compressed Celery bodies ---------------------------------------------------------- */

/* kombu.compression (5.2) registers zlib.compress as "application/x-gzip" with the aliases
 * "gzip" and "zlib" (a zlib stream, not gzip framing), and bz2, brotli, lzma, zstd under their
 * own types; its decoder accepts the content type or an alias. */
static const char *const zlib_names[] = {"application/x-gzip", "gzip", "zlib"};
static const char *const other_names[] = {
    "application/x-bz2",  "bzip2", "bzip", "application/x-brotli", "brotli",
    "application/x-lzma", "lzma",  "xz",   "application/zstd",     "zstd",
    "zstandard"};

/* headers.compression: 0 (absent or null), 1 (zlib), or a reject. */
static int celery_compression(struct ctx *c, json_t *headers)
{
    json_t *v = json_object_get(headers, "compression");
    const char *s = json_string_value(v);

    if (!v || json_is_null(v))
        return 0;
    if (!s)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: headers.compression is not a string");
    if (strlen(s) == json_string_length(v) &&
        name_in(s, zlib_names, sizeof(zlib_names) / sizeof(zlib_names[0])))
        return 1;
    if (strlen(s) == json_string_length(v) &&
        name_in(s, other_names, sizeof(other_names) / sizeof(other_names[0])))
        return reject(c, DSW_MSG_UNSUPPORTED_COMPRESSION,
                      "celery: kombu compression other than zlib (bz2, brotli, lzma, zstd) is "
                      "not supported");
    return reject(c, DSW_MSG_UNSUPPORTED_COMPRESSION,
                  "celery: headers.compression is not a kombu compression type");
}

/* Inflate the zlib stream in[0..n) as Python's zlib.decompress does (bytes after the end of the
 * stream are ignored), into at most DSW_MSG_MAX_INFLATED bytes: the output grows in bounded
 * chunks and inflating stops as soon as it would pass the cap. *out is NUL-terminated. */
static int inflate_body(struct ctx *c, const char *in, size_t n, char **out, size_t *outlen)
{
    const size_t cap = DSW_MSG_MAX_INFLATED, chunk = 64 * 1024;
    size_t size = 0, len = 0;
    char *dst = NULL;
    z_stream z;
    int zrc = Z_OK;

    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK) {
        fprintf(stderr, "dsw_msg: inflateInit failed (out of memory)\n");
        abort();
    }
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n; /* n <= DSW_MSG_MAX_BODY */
    while (zrc != Z_STREAM_END && len <= cap) {
        if (len == size) {
            /* One byte over the cap is room enough to know the stream is too large. */
            size = DSW_MIN(size ? size * 2 : chunk, cap + 1);
            dst = dsw_xrealloc(dst, size + 1);
        }
        z.next_out = (Bytef *)dst + len;
        z.avail_out = (uInt)DSW_MIN(size - len, chunk);
        zrc = inflate(&z, Z_NO_FLUSH);
        len = (size_t)((char *)z.next_out - dst);
        if (zrc != Z_OK) /* the end, or an error: Z_BUF_ERROR is input that ran out */
            break;
    }
    inflateEnd(&z);
    if (len > cap) {
        free(dst);
        return reject(c, DSW_MSG_TOO_LARGE, "celery: compressed body inflates past %u bytes",
                      DSW_MSG_MAX_INFLATED);
    }
    if (zrc != Z_STREAM_END) {
        free(dst);
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: compressed body is not a %s zlib stream",
                      zrc == Z_BUF_ERROR ? "complete" : "valid");
    }
    dst[len] = '\0';
    *out = dst;
    *outlen = len;
    return 0;
}

/* The body member: base64 text (properties.body_encoding = "base64") or plain JSON text, then
 * inflated when headers.compression names zlib. */
static int celery_inner(struct ctx *c, json_t *env, json_t *headers, json_t **out)
{
    json_t *props = json_object_get(env, "properties"), *body = json_object_get(env, "body");
    json_t *enc = json_object_get(props, "body_encoding");
    char *raw = NULL, *plain = NULL;
    size_t n = 0, plen = 0;
    int rc, zipped;

    if (!json_is_object(props) || !json_is_string(body))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: properties or body has the wrong type");
    if ((zipped = celery_compression(c, headers)) < 0)
        return zipped;
    if (enc && !json_is_null(enc)) {
        if (!json_is_string(enc) || strcmp(json_string_value(enc), "base64") != 0)
            return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: body_encoding is not base64");
        if (b64_decode(json_string_value(body), json_string_length(body), &raw, &n) < 0)
            return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: body is not valid base64");
    } else {
        n = json_string_length(body);
        raw = dsw_xmalloc(n + 1);
        memcpy(raw, json_string_value(body), n + 1);
    }
    if (zipped) {
        rc = inflate_body(c, raw, n, &plain, &plen);
        free(raw);
        if (rc < 0)
            return rc;
        raw = plain;
        n = plen;
    }
    rc = parse(c, raw, n, zipped ? "inflated celery body" : "celery body", out);
    free(raw);
    return rc;
}

static int check_celery_content(struct ctx *c, json_t *env)
{
    const char *type = json_string_value(json_object_get(env, "content-type"));
    json_t *enc = json_object_get(env, "content-encoding");

    /* Never anything but JSON: a pickle body must not even be looked at. */
    if (!type || strcmp(type, "application/json") != 0)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: content-type is not application/json");
    if (enc && !(json_is_string(enc) && strcmp(json_string_value(enc), "utf-8") == 0))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: content-encoding is not utf-8");
    return 0;
}

static int decode_celery(struct ctx *c, json_t *env)
{
    json_t *headers = json_object_get(env, "headers"), *body = NULL;
    const char *task = json_string_value(json_object_get(headers, "task"));
    int rc;

    c->req->form = DSW_MSG_FORM_CELERY;
    if (!json_is_object(headers) || !task)
        return reject(c, DSW_MSG_BAD_ENVELOPE, "celery: no headers.task (protocol 1?)");
    if ((rc = take_task_id(c, json_object_get(headers, "id"), "celery: headers.id")) < 0)
        return rc;
    if ((rc = check_celery_content(c, env)) < 0)
        return rc;
    if ((rc = celery_inner(c, env, headers, &body)) < 0)
        return rc;
    rc = decode_celery_body(c, body, task);
    json_decref(body);
    return rc;
}

/* taskiq-aio-sqs marks a pointer body with the attribute (its reader checks presence only). */
static int has_s3_attr(const struct dsw_msg_opts *o)
{
    for (size_t i = 0; o->attrs && i < o->nattrs; i++)
        if (o->attrs[i].name && strcmp(o->attrs[i].name, S3_ATTR) == 0)
            return 1;
    return 0;
}

static int is_s3_pointer(json_t *root)
{
    return json_object_size(root) == 2 && json_is_string(json_object_get(root, "s3_bucket")) &&
           json_is_string(json_object_get(root, "s3_key"));
}

static int decode_root(struct ctx *c, json_t *root)
{
    if (!json_is_object(root))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "top level is not an object");
    if (has_s3_attr(c->opts)) {
        if (is_s3_pointer(root))
            return reject(c, DSW_MSG_S3_POINTER_UNSUPPORTED,
                          "S3 pointer bodies (" S3_ATTR ") are not supported yet");
        return reject(c, DSW_MSG_BAD_ENVELOPE, S3_ATTR " set but the body is not a pointer");
    }
    if (json_object_get(root, "task_name"))
        return decode_taskiq(c, root);
    if (json_object_get(root, "__class__")) {
        c->req->form = DSW_MSG_FORM_SERDES;
        return decode_packed(c, root, EXPECT_ANY);
    }
    if (json_object_get(root, "headers"))
        return decode_celery(c, root);
    if (json_object_get(root, "s3_bucket") || json_object_get(root, "s3_key"))
        return reject(c, DSW_MSG_BAD_ENVELOPE, "S3 pointer body without the " S3_ATTR " attribute");
    return reject(c, DSW_MSG_BAD_ENVELOPE, "not a TaskIQ, serdes or Celery message");
}

/* A body that does not start like JSON is a kombu SQS message: base64 of the envelope. */
static int parse_body(struct ctx *c, const char *p, size_t n, json_t **root)
{
    size_t i = 0;
    char *raw = NULL;
    size_t rawlen = 0;
    int rc;

    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    if (i == n)
        return reject(c, DSW_MSG_BAD_JSON, "empty body");
    if (p[i] == '{' || p[i] == '[')
        return parse(c, p, n, "body", root);
    if (b64_decode(p, n, &raw, &rawlen) < 0)
        return reject(c, DSW_MSG_BAD_JSON, "body is neither JSON nor base64");
    rc = parse(c, raw, rawlen, "base64 body", root);
    free(raw);
    if (rc == 0 && !json_object_get(*root, "headers")) {
        json_decref(*root);
        *root = NULL;
        return reject(c, DSW_MSG_BAD_ENVELOPE, "base64 body is not a Celery message");
    }
    return rc;
}

int dsw_msg_decode(const void *body, size_t len, const struct dsw_msg_opts *opts,
                   struct dsw_msg_request *req, struct dsw_msg_reject *rej)
{
    static const struct dsw_msg_opts defaults = {0};
    struct dsw_msg_opts o = opts ? *opts : defaults;
    struct ctx c = {&o, req, rej};
    json_t *root = NULL;
    int rc;

    memset(req, 0, sizeof(*req));
    memset(rej, 0, sizeof(*rej));
    if (o.max_body == 0)
        o.max_body = DSW_MSG_DEFAULT_BODY;
    o.max_body = DSW_MIN(o.max_body, (size_t)DSW_MSG_MAX_BODY);
    if (len > o.max_body)
        return reject(&c, DSW_MSG_TOO_LARGE, "body of %zu bytes is over the limit of %zu", len,
                      o.max_body);
    if (!body && len > 0)
        return reject(&c, DSW_MSG_BAD_JSON, "no body");
    if ((rc = parse_body(&c, body ? body : "", len, &root)) == 0)
        rc = decode_root(&c, root);
    json_decref(root);
    if (rc < 0)
        dsw_msg_request_clear(req);
    return rc;
}
