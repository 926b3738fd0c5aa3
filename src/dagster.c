/* dagster: Dagster's serdes byte form, written by hand over jansson values. jansson parses and
 * holds the values; the writer here is ours because Python's json.dumps differs from
 * json_dumps in float repr, \u escapes (lowercase hex, DEL escaped) and key order control.
 * Events are written with sorted keys; stored bodies keep their members' stored order. */
#include "dsw/dagster.h"

#include "dsw/buf.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Hard cap on one written document: a run body with a large run_config stays far below. */
#define OUT_MAX    ((size_t)64 << 20)
#define LOAD_FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)

/* ---- numbers and time ---- */

int dsw_dagster_float_repr(double v, char out[32])
{
    char e[40], digits[24];
    size_t nd = 0;
    if (!isfinite(v))
        return -EINVAL;
    /* The shortest %e precision that reads back as v: what repr's dtoa mode 0 returns. */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    const char *p = e + (e[0] == '-');
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = atoi(p + 1) + 1; /* value = 0.DIGITS * 10^decpt */
    const char *sign = e[0] == '-' ? "-" : "";
    char tmp[96];
    if (decpt <= -4 || decpt > 16) /* float_repr_style 'short': exponent form */
        snprintf(tmp, sizeof(tmp), "%s%c%s%se%c%02d", sign, digits[0], nd > 1 ? "." : "",
                 digits + 1, decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
    else if (decpt <= 0)
        snprintf(tmp, sizeof(tmp), "%s0.%.*s%s", sign, -decpt, "0000", digits);
    else if ((size_t)decpt >= nd)
        snprintf(tmp, sizeof(tmp), "%s%s%.*s.0", sign, digits, decpt - (int)nd, "0000000000000000");
    else
        snprintf(tmp, sizeof(tmp), "%s%.*s.%s", sign, decpt, digits, digits + decpt);
    dsw_strlcpy(out, tmp, 32);
    return 0;
}

int dsw_dagster_naive_utc(double ts, char out[32])
{
    double ip, us;
    struct tm tm;
    if (!isfinite(ts) || fabs(ts) > 253402300799.0) /* year 9999, as far as datetime goes */
        return -EINVAL;
    /* datetime.utcfromtimestamp: split, then round the microseconds half-even. */
    us = nearbyint(modf(ts, &ip) * 1e6);
    if (us >= 1e6) {
        ip += 1;
        us -= 1e6;
    } else if (us < 0) {
        ip -= 1;
        us += 1e6;
    }
    time_t t = (time_t)ip;
    if (!gmtime_r(&t, &tm))
        return -EINVAL;
    char tmp[96];
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%06d", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
    dsw_strlcpy(out, tmp, 32);
    return 0;
}

/* ---- the writer ---- */

/* Decode one UTF-8 sequence at s[*i]; -EINVAL on a malformed, overlong or surrogate one. */
static int utf8_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp)
{
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    unsigned char c = s[*i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || *i + len > n)
        return -EINVAL;
    uint32_t v = len == 1 ? c : (uint32_t)(c & (0x7f >> len));
    for (size_t k = 1; k < len; k++) {
        if ((s[*i + k] & 0xc0) != 0x80)
            return -EINVAL;
        v = (v << 6) | (s[*i + k] & 0x3f);
    }
    if (v < min[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return -EINVAL;
    *i += len;
    *cp = v;
    return 0;
}

/* One code point as Python's ensure_ascii writes it. */
static int put_escape(struct dsw_buf *b, uint32_t cp)
{
    switch (cp) {
    case '"':
        return dsw_buf_puts(b, "\\\"");
    case '\\':
        return dsw_buf_puts(b, "\\\\");
    case '\n':
        return dsw_buf_puts(b, "\\n");
    case '\r':
        return dsw_buf_puts(b, "\\r");
    case '\t':
        return dsw_buf_puts(b, "\\t");
    case '\b':
        return dsw_buf_puts(b, "\\b");
    case '\f':
        return dsw_buf_puts(b, "\\f");
    }
    if (cp < 0x10000)
        return dsw_buf_printf(b, "\\u%04x", (unsigned)cp);
    cp -= 0x10000;
    return dsw_buf_printf(b, "\\u%04x\\u%04x", (unsigned)(0xd800 | (cp >> 10)),
                          (unsigned)(0xdc00 | (cp & 0x3ff)));
}

static int put_string(struct dsw_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    int rc = dsw_buf_puts(b, "\"");
    while (rc == 0 && i < n) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] <= 0x7e && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            rc = dsw_buf_append(b, s + i, run - i);
            i = run;
            continue;
        }
        uint32_t cp;
        rc = utf8_next(s, n, &i, &cp);
        if (rc == 0)
            rc = put_escape(b, cp);
    }
    return rc ? rc : dsw_buf_puts(b, "\"");
}

static int put_value(struct dsw_buf *b, const json_t *v, int sort);

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int put_object(struct dsw_buf *b, const json_t *v, int sort)
{
    size_t n = json_object_size(v), i = 0;
    const char **keys = dsw_xcalloc(n ? n : 1, sizeof(*keys));
    const char *k;
    json_t *m;
    json_object_foreach((json_t *)v, k, m) keys[i++] = k;
    if (sort)
        qsort(keys, n, sizeof(*keys), cmp_keys);
    int rc = dsw_buf_puts(b, "{");
    for (i = 0; rc == 0 && i < n; i++) {
        if (i)
            rc = dsw_buf_puts(b, ", ");
        if (rc == 0)
            rc = put_string(b, keys[i], strlen(keys[i]));
        if (rc == 0)
            rc = dsw_buf_puts(b, ": ");
        if (rc == 0)
            rc = put_value(b, json_object_get(v, keys[i]), sort);
    }
    free(keys);
    return rc ? rc : dsw_buf_puts(b, "}");
}

static int put_array(struct dsw_buf *b, const json_t *v, int sort)
{
    int rc = dsw_buf_puts(b, "[");
    for (size_t i = 0; rc == 0 && i < json_array_size(v); i++) {
        if (i)
            rc = dsw_buf_puts(b, ", ");
        if (rc == 0)
            rc = put_value(b, json_array_get(v, i), sort);
    }
    return rc ? rc : dsw_buf_puts(b, "]");
}

static int put_value(struct dsw_buf *b, const json_t *v, int sort)
{
    char num[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return put_object(b, v, sort);
    case JSON_ARRAY:
        return put_array(b, v, sort);
    case JSON_STRING:
        return put_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return dsw_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        if (dsw_dagster_float_repr(json_real_value(v), num) < 0)
            return -EINVAL;
        return dsw_buf_puts(b, num);
    case JSON_TRUE:
        return dsw_buf_puts(b, "true");
    case JSON_FALSE:
        return dsw_buf_puts(b, "false");
    case JSON_NULL:
        return dsw_buf_puts(b, "null");
    }
    return -EINVAL;
}

/* v written in Dagster's form into a new string; NULL on an unwritable value. */
static char *write_json(const json_t *v, int sort)
{
    struct dsw_buf b;
    dsw_buf_init(&b, OUT_MAX);
    if (!v || put_value(&b, v, sort) < 0) {
        dsw_buf_free(&b);
        return NULL;
    }
    return dsw_buf_take(&b);
}

/* ---- building values ---- */

/* o[k] = v, taking v; a NULL v (a constructor refused a string) marks *bad. */
static void set(json_t *o, const char *k, json_t *v, int *bad)
{
    if (!o) {
        json_decref(v);
        *bad = 1;
    } else if (!v || json_object_set_new(o, k, v) != 0) {
        *bad = 1;
    }
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *klass(const char *name, int *bad)
{
    json_t *o = json_object();
    set(o, "__class__", json_string(name), bad);
    return o;
}

static json_t *engine_data(const struct dsw_kv *meta, size_t nmeta)
{
    int bad = 0;
    json_t *d = klass("EngineEventData", &bad), *entries = json_array();
    for (size_t i = 0; entries && i < nmeta; i++) {
        json_t *e = klass("EventMetadataEntry", &bad), *text = klass("TextMetadataEntryData", &bad);
        set(text, "text", json_string(meta[i].value ? meta[i].value : ""), &bad);
        set(e, "description", json_null(), &bad);
        set(e, "entry_data", text, &bad);
        set(e, "label", json_string(meta[i].key ? meta[i].key : ""), &bad);
        if (!e || json_array_append_new(entries, e) != 0)
            bad = 1;
    }
    set(d, "error", json_null(), &bad);
    set(d, "marker_end", json_null(), &bad);
    set(d, "marker_start", json_null(), &bad);
    set(d, "metadata_entries", entries, &bad);
    if (bad) {
        json_decref(d);
        return NULL;
    }
    return d;
}

char *dsw_dagster_engine_data(const struct dsw_kv *meta, size_t nmeta)
{
    json_t *d = engine_data(meta, nmeta);
    char *s = write_json(d, 1);
    json_decref(d);
    return s;
}

static json_t *solid_handle(const char *step_key, int *bad)
{
    json_t *h = klass("SolidHandle", bad);
    set(h, "name", json_string(step_key), bad);
    set(h, "parent", json_null(), bad);
    return h;
}

/* The members DagsterEvent.from_step adds for a step-scoped event. */
static void step_members(json_t *de, const struct dsw_dagster_event *ev, int *bad)
{
    json_t *tags = json_object(), *step = klass("StepHandle", bad);
    set(tags, "job_name", str_or_null(ev->job_name), bad);
    set(tags, "op_name", json_string(ev->step_key), bad);
    set(tags, "resource_fn_name", json_string("None"), bad);
    set(tags, "resource_name", json_string("None"), bad);
    set(tags, "run_id", str_or_null(ev->run_id), bad);
    set(tags, "step_key", json_string(ev->step_key), bad);
    set(step, "key", json_string(ev->step_key), bad);
    set(step, "solid_handle", solid_handle(ev->step_key, bad), bad);
    set(de, "logging_tags", tags, bad);
    set(de, "solid_handle", solid_handle(ev->step_key, bad), bad);
    set(de, "step_handle", step, bad);
    set(de, "step_kind_value", json_string("COMPUTE"), bad);
}

/* The DagsterEvent object; takes specific (may be NULL for null). */
static json_t *dagster_event(const struct dsw_dagster_event *ev, json_t *specific, int *bad)
{
    json_t *de = klass("DagsterEvent", bad);
    set(de, "event_specific_data", specific ? specific : json_null(), bad);
    set(de, "event_type_value", json_string(ev->event_type), bad);
    set(de, "message", str_or_null(ev->message), bad);
    set(de, "pid", ev->pid < 0 ? json_null() : json_integer(ev->pid), bad);
    set(de, "pipeline_name", str_or_null(ev->job_name), bad);
    set(de, "step_key", str_or_null(ev->step_key), bad);
    if (ev->step_key) {
        step_members(de, ev, bad);
    } else {
        set(de, "logging_tags", json_object(), bad);
        set(de, "solid_handle", json_null(), bad);
        set(de, "step_handle", json_null(), bad);
        set(de, "step_kind_value", json_null(), bad);
    }
    return de;
}

static json_t *log_entry(const struct dsw_dagster_event *ev, json_t *specific, int *bad)
{
    json_t *e = klass("EventLogEntry", bad);
    if (ev->event_type) {
        set(e, "dagster_event", dagster_event(ev, specific, bad), bad);
    } else {
        json_decref(specific);
        set(e, "dagster_event", json_null(), bad);
    }
    set(e, "error_info", json_null(), bad);
    set(e, "level", json_integer(ev->level), bad);
    set(e, "message", json_string(""), bad);
    set(e, "pipeline_name", str_or_null(ev->job_name), bad);
    set(e, "run_id", str_or_null(ev->run_id), bad);
    set(e, "step_key", str_or_null(ev->step_key), bad);
    set(e, "timestamp", json_real(ev->timestamp), bad); /* NULL for NaN / inf */
    set(e, "user_message", json_string(ev->user_message ? ev->user_message : ""), bad);
    return e;
}

/* Write ev (whole entry, or the DagsterEvent alone) with specific taken. */
static char *write_event(const struct dsw_dagster_event *ev, json_t *specific, int entry)
{
    int bad = 0;
    json_t *v = entry ? log_entry(ev, specific, &bad) : dagster_event(ev, specific, &bad);
    char *s = bad ? NULL : write_json(v, 1);
    json_decref(v);
    return s;
}

static int load_specific(const struct dsw_dagster_event *ev, json_t **out)
{
    *out = NULL;
    if (!ev->specific)
        return 0;
    *out = json_loads(ev->specific, LOAD_FLAGS, NULL);
    return *out ? 0 : -EINVAL;
}

char *dsw_dagster_event_entry(const struct dsw_dagster_event *ev)
{
    json_t *specific;
    if (load_specific(ev, &specific) < 0)
        return NULL;
    return write_event(ev, specific, 1);
}

char *dsw_dagster_event_line(const struct dsw_dagster_event *ev)
{
    json_t *specific;
    if (!ev->event_type || load_specific(ev, &specific) < 0)
        return NULL;
    return write_event(ev, specific, 0);
}

char *dsw_dagster_engine_event(const char *run_id, const char *job_name, const char *message,
                               const struct dsw_kv *meta, size_t nmeta, int pid, double timestamp)
{
    struct dsw_dagster_event ev = {
        .run_id = run_id,
        .job_name = job_name,
        .event_type = "ENGINE_EVENT",
        .message = message,
        .level = 20,
        .pid = pid,
        .timestamp = timestamp,
    };
    json_t *d = engine_data(meta, nmeta);
    return d ? write_event(&ev, d, 1) : NULL;
}

char *dsw_dagster_run_event(const char *run_id, const char *job_name, const char *event_type,
                            const char *message, int pid, double timestamp)
{
    /* report_run_failed and report_run_canceled log at ERROR, everything else at INFO. */
    int error =
        dsw_streq(event_type, "PIPELINE_FAILURE") || dsw_streq(event_type, "PIPELINE_CANCELED");
    struct dsw_dagster_event ev = {
        .run_id = run_id,
        .job_name = job_name,
        .event_type = event_type,
        .message = message,
        .level = error ? 40 : 20,
        .pid = pid,
        .timestamp = timestamp,
    };
    if (!event_type)
        return NULL;
    return write_event(&ev, NULL, 1);
}

/* ---- failures ---- */

static int status_ok(const char *s);

static int reason_ok(const char *s)
{
    return s && status_ok(s);
}

static json_t *failure_data(const char *reason)
{
    int bad = 0;
    char name[64];
    json_t *d = klass("PipelineFailureData", &bad), *r;
    if (reason) {
        snprintf(name, sizeof(name), "RunFailureReason.%s", reason);
        r = json_object();
        set(r, "__enum__", json_string(name), &bad);
    } else {
        r = json_null();
    }
    set(d, "error", json_null(), &bad);
    set(d, "failure_reason", r, &bad);
    set(d, "first_step_failure_event", json_null(), &bad);
    if (bad) {
        json_decref(d);
        return NULL;
    }
    return d;
}

char *dsw_dagster_failure_data(const char *reason)
{
    if (reason && !reason_ok(reason))
        return NULL;
    json_t *d = failure_data(reason);
    char *s = write_json(d, 1);
    json_decref(d);
    return s;
}

char *dsw_dagster_failure_event(const char *run_id, const char *job_name, const char *message,
                                const char *reason, double timestamp)
{
    struct dsw_dagster_event ev = {
        .run_id = run_id,
        .job_name = job_name,
        .event_type = "PIPELINE_FAILURE",
        .message = message,
        .level = 40,
        .pid = -1,
        .timestamp = timestamp,
    };
    if (reason && !reason_ok(reason))
        return NULL;
    json_t *d = failure_data(reason);
    return d ? write_event(&ev, d, 1) : NULL;
}

char *dsw_dagster_marked_message(int canceled, const char *cause)
{
    size_t n = cause ? strlen(cause) : 0;
    while (n > 0 && (cause[n - 1] == '.' || cause[n - 1] == ' '))
        n--;
    const char *end = n > 0 && (cause[n - 1] == '!' || cause[n - 1] == '?') ? "" : ".";
    return dsw_xasprintf("[dagster-sqs-worker] This run has been marked as %s: %.*s%s",
                         canceled ? "canceled" : "failed", (int)n, n ? cause : "", end);
}

/* ---- stored bodies ---- */

int dsw_dagster_json_normalize(const char *json, int sort, char **out)
{
    json_t *v = json ? json_loads(json, LOAD_FLAGS, NULL) : NULL;
    *out = write_json(v, sort);
    json_decref(v);
    return *out ? 0 : -EINVAL;
}

/* The parsed run body, or NULL when it is not a serialized PipelineRun. */
static json_t *load_run(const char *run_body)
{
    json_t *v = run_body ? json_loads(run_body, LOAD_FLAGS, NULL) : NULL;
    const char *cls = json_string_value(json_object_get(v, "__class__"));
    if (!json_is_object(v) || !cls ||
        !(dsw_streq(cls, "PipelineRun") || dsw_streq(cls, "DagsterRun"))) {
        json_decref(v);
        return NULL;
    }
    return v;
}

static int status_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 32)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || *s == '_'))
            return 0;
    return 1;
}

/* tags with the new ones merged, as a new object with sorted keys (serialize_value's order). */
static json_t *merged_tags(json_t *old, const struct dsw_kv *tags, size_t ntags, int *bad)
{
    json_t *all = json_is_object(old) ? json_copy(old) : json_object(), *sorted = json_object();
    for (size_t i = 0; all && i < ntags; i++) {
        if (!tags[i].key || !tags[i].value)
            *bad = 1;
        else
            set(all, tags[i].key, json_string(tags[i].value), bad); /* NULL: not UTF-8 */
    }
    size_t n = json_object_size(all), i = 0;
    const char **keys = dsw_xcalloc(n ? n : 1, sizeof(*keys));
    const char *k;
    json_t *v;
    json_object_foreach(all, k, v) keys[i++] = k;
    qsort(keys, n, sizeof(*keys), cmp_keys);
    for (i = 0; i < n; i++)
        set(sorted, keys[i], json_incref(json_object_get(all, keys[i])), bad);
    free(keys);
    json_decref(all);
    return sorted;
}

int dsw_dagster_body_update(const char *run_body, const char *status, const struct dsw_kv *tags,
                            size_t ntags, char **out)
{
    *out = NULL;
    json_t *run = load_run(run_body);
    char name[64];
    int bad = 0;
    if (!run || (status && (!status_ok(status) || !json_object_get(run, "status"))) ||
        (ntags && !tags)) {
        json_decref(run);
        return -EINVAL;
    }
    if (status) {
        snprintf(name, sizeof(name), "PipelineRunStatus.%s", status);
        json_t *e = json_object();
        set(e, "__enum__", json_string(name), &bad);
        set(run, "status", e, &bad); /* replaced in place: the member keeps its position */
    }
    if (ntags) {
        json_t *old = json_object_get(run, "tags");
        if (old && !json_is_null(old) && !json_is_object(old))
            bad = 1;
        else
            set(run, "tags", merged_tags(old, tags, ntags, &bad), &bad);
    }
    if (!bad)
        *out = write_json(run, 0);
    json_decref(run);
    return *out ? 0 : -EINVAL;
}

int dsw_dagster_body_set_status(const char *run_body, const char *status, char **out)
{
    if (!status) {
        *out = NULL;
        return -EINVAL;
    }
    return dsw_dagster_body_update(run_body, status, NULL, 0, out);
}

static void free_argv(char **argv)
{
    for (size_t i = 0; argv && argv[i]; i++)
        free(argv[i]);
    free(argv);
}

/* A JSON array of strings as a NULL-terminated argv; NULL for null/absent; -EINVAL else. */
static int to_argv(const json_t *a, char ***out)
{
    *out = NULL;
    if (!a || json_is_null(a))
        return 0;
    if (!json_is_array(a) || json_array_size(a) > 1024)
        return -EINVAL;
    char **argv = dsw_xcalloc(json_array_size(a) + 1, sizeof(*argv));
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *s = json_array_get(a, i);
        if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s)) {
            free_argv(argv);
            return -EINVAL;
        }
        argv[i] = dsw_xstrdup(json_string_value(s));
    }
    *out = argv;
    return 0;
}

int dsw_dagster_body_origin(const char *run_body, char **origin, char ***entry_point, char **exe)
{
    char *o = NULL, **ep = NULL;
    json_t *run = load_run(run_body);
    json_t *po = json_object_get(run, "pipeline_code_origin");
    json_t *repo = json_object_get(po, "repository_origin");
    json_t *path = json_object_get(repo, "executable_path");
    int rc = -EINVAL;
    if (!json_is_object(po) || (path && !json_is_null(path) && !json_is_string(path)))
        goto out;
    if (origin && !(o = write_json(po, 0)))
        goto out;
    if (entry_point && to_argv(json_object_get(repo, "entry_point"), &ep) < 0)
        goto out;
    if (origin)
        *origin = o, o = NULL;
    if (entry_point)
        *entry_point = ep, ep = NULL;
    if (exe)
        *exe = json_is_string(path) ? dsw_xstrdup(json_string_value(path)) : NULL;
    rc = 0;
out:
    free(o);
    free_argv(ep);
    json_decref(run);
    return rc;
}

int dsw_dagster_body_tag(const char *run_body, const char *key, char **out)
{
    *out = NULL;
    json_t *run = load_run(run_body);
    json_t *tags = json_object_get(run, "tags");
    int rc = 0;
    if (!run || !key || (tags && !json_is_null(tags) && !json_is_object(tags)))
        rc = -EINVAL;
    else if (json_is_string(json_object_get(tags, key)))
        *out = dsw_xstrdup(json_string_value(json_object_get(tags, key)));
    json_decref(run);
    return rc;
}

/* json (may be NULL: null) parsed as an object, or null; NULL when it is neither. */
static json_t *object_or_null(const char *json)
{
    json_t *v = json ? json_loads(json, LOAD_FLAGS, NULL) : json_null();
    if (!json_is_object(v) && !json_is_null(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* A new object of class cls with the members every *Args class of the child has, in sorted
 * order: instance_ref (instance_ref_json; NULL writes null), between_key = between (taken; left
 * out when between_key is NULL), pipeline_origin and pipeline_run_id. NULL on bad arguments. */
static json_t *child_args(const char *cls, const char *run_id, const char *origin_json,
                          const char *instance_ref_json, const char *between_key, json_t *between)
{
    int bad = 0;
    json_t *origin = origin_json ? json_loads(origin_json, LOAD_FLAGS, NULL) : NULL;
    json_t *ref = object_or_null(instance_ref_json);
    if (!run_id || !json_is_object(origin) || !ref) {
        json_decref(origin);
        json_decref(ref);
        json_decref(between);
        return NULL;
    }
    json_t *args = klass(cls, &bad);
    set(args, "instance_ref", ref, &bad);
    if (between_key)
        set(args, between_key, between, &bad);
    set(args, "pipeline_origin", origin, &bad);
    set(args, "pipeline_run_id", json_string(run_id), &bad);
    if (bad) {
        json_decref(args);
        return NULL;
    }
    return args;
}

/* args written with sort (its members are already in sorted order), taken; 0 or -EINVAL. */
static int finish_args(json_t *args, int bad, int sort, char **out)
{
    *out = args && !bad ? write_json(args, sort) : NULL;
    json_decref(args);
    return *out ? 0 : -EINVAL;
}

int dsw_dagster_run_args(const char *run_id, const char *origin_json, const char *instance_ref_json,
                         int resume, char **out)
{
    int bad = 0;
    /* Members in sorted order; the embedded origin and ref keep theirs. */
    json_t *args = child_args(resume ? "ResumeRunArgs" : "ExecuteRunArgs", run_id, origin_json,
                              instance_ref_json, NULL, NULL);
    set(args, "set_exit_code_on_failure", json_true(), &bad);
    return finish_args(args, bad, 0, out);
}

int dsw_dagster_step_args(const char *run_id, const char *origin_json,
                          const char *instance_ref_json, const struct dsw_dagster_step *step,
                          char **out)
{
    int bad = 0;
    json_t *state = step ? object_or_null(step->known_state) : NULL;
    json_t *mode = step ? object_or_null(step->retry_mode) : NULL;
    *out = NULL;
    if (!step || !step->step_key || !*step->step_key || !state || !mode) {
        json_decref(state);
        json_decref(mode);
        return -EINVAL;
    }
    json_t *args =
        child_args("ExecuteStepArgs", run_id, origin_json, instance_ref_json, "known_state", state);
    if (step->print_events >= 0)
        set(args, "print_serialized_events", json_boolean(step->print_events), &bad);
    set(args, "retry_mode", mode, &bad);
    set(args, "should_verify_step", json_true(), &bad);
    json_t *keys = json_array();
    if (!keys || json_array_append_new(keys, json_string(step->step_key)) != 0)
        bad = 1;
    set(args, "step_keys_to_execute", keys, &bad);
    /* Every object sorted, as serialize_value writes it (json.dumps sort_keys=True): the child
     * gets exactly what Dagster itself would write for these args, whatever the order of the
     * message's known_state (a Celery message's pack_value keeps field order). */
    return finish_args(args, bad, 1, out);
}
