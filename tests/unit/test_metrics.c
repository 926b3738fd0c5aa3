/* metrics: every rendering goes through a strict parser of the Prometheus text format 0.0.4
 * (names, label syntax and escapes, HELP/TYPE placement, grouping, histogram invariants, no
 * duplicate series), then values are checked; plus the cardinality cap and the size bound. */
#include "testutil.h"

#include "dsw/metrics.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a small Prometheus text parser --------------------------------------------------- */

#define MAX_SAMPLES  1024
#define MAX_FAMILIES 64

struct sample {
    char name[128];
    char key[1024];         /* name{labels as written}: the lookup key */
    char le[32];            /* the le label of a histogram bucket, "" otherwise */
    char labels[2][2][128]; /* up to two (name, unescaped value) pairs, for the tests */
    int nlabels;
    double value;
    int family;
};

struct family {
    char name[128];
    char type[16];
    int help, typed, closed;
};

struct parsed {
    struct sample s[MAX_SAMPLES];
    size_t n;
    struct family f[MAX_FAMILIES];
    size_t nf;
};

static int is_name_start(int c, int colon)
{
    return isalpha(c) || c == '_' || (colon && c == ':');
}

/* Read a metric (colon=1) or label name at *p; returns its length, 0 when invalid. */
static size_t read_name(const char **p, char *out, size_t cap, int colon)
{
    const char *s = *p;
    if (!is_name_start((unsigned char)*s, colon))
        return 0;
    size_t n = 0;
    while (is_name_start((unsigned char)s[n], colon) || isdigit((unsigned char)s[n]))
        n++;
    if (n >= cap)
        return 0;
    memcpy(out, s, n);
    out[n] = '\0';
    *p = s + n;
    return n;
}

static int parse_value(const char *s, const char *end, double *out)
{
    char tmp[64];
    size_t n = (size_t)(end - s);
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (!strcmp(tmp, "+Inf") || !strcmp(tmp, "-Inf") || !strcmp(tmp, "NaN")) {
        *out = !strcmp(tmp, "NaN") ? NAN : tmp[0] == '+' ? INFINITY : -INFINITY;
        return 0;
    }
    char *e;
    *out = strtod(tmp, &e);
    return *e || isspace((unsigned char)tmp[0]) ? -1 : 0;
}

static struct family *family_of(struct parsed *P, const char *name, int *idx)
{
    for (size_t i = 0; i < P->nf; i++)
        if (!strcmp(P->f[i].name, name)) {
            *idx = (int)i;
            return &P->f[i];
        }
    return NULL;
}

static struct family *family_new(struct parsed *P, const char *name, int *idx)
{
    struct family *f = family_of(P, name, idx);
    if (f)
        return f;
    assert_true(P->nf < MAX_FAMILIES);
    f = &P->f[P->nf];
    memset(f, 0, sizeof(*f));
    strcpy(f->name, name);
    *idx = (int)P->nf++;
    return f;
}

static void fail_line(const char *line, const char *why)
{
    fail_msg("bad exposition line \"%.*s\": %s", (int)strcspn(line, "\n"), line, why);
}

/* "# HELP name text" / "# TYPE name type"; other comments are allowed and ignored. */
static void parse_comment(struct parsed *P, const char *line, const char *end)
{
    int help = !strncmp(line, "# HELP ", 7), type = !strncmp(line, "# TYPE ", 7), idx;
    if (!help && !type)
        return;
    const char *p = line + 7;
    char name[128];
    if (!read_name(&p, name, sizeof(name), 1) || *p != ' ')
        fail_line(line, "bad metric name in HELP/TYPE");
    p++;
    struct family *f = family_new(P, name, &idx);
    if (f->closed || (P->n && P->s[P->n - 1].family == idx))
        fail_line(line, "HELP/TYPE after the family's samples");
    if (help) {
        if (f->help++)
            fail_line(line, "second HELP");
        for (; p < end; p++)
            if (*p == '\\' && p[1] != '\\' && p[1] != 'n')
                fail_line(line, "bad escape in HELP");
        return;
    }
    if (f->typed++)
        fail_line(line, "second TYPE");
    size_t n = (size_t)(end - p);
    const char *types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
    int ok = 0;
    for (size_t i = 0; i < DSW_ARRAY_LEN(types); i++)
        ok |= n == strlen(types[i]) && !strncmp(p, types[i], n);
    if (!ok)
        fail_line(line, "unknown TYPE");
    memcpy(f->type, p, n);
    f->type[n] = '\0';
}

/* The family a sample name belongs to (histograms own _bucket, _sum and _count). */
static int sample_family(struct parsed *P, const char *name)
{
    int idx;
    if (family_of(P, name, &idx))
        return idx;
    const char *suffix[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(suffix); i++) {
        size_t n = strlen(name), k = strlen(suffix[i]);
        char base[128];
        if (n <= k || strcmp(name + n - k, suffix[i]))
            continue;
        memcpy(base, name, n - k);
        base[n - k] = '\0';
        struct family *f = family_of(P, base, &idx);
        if (f && !strcmp(f->type, "histogram"))
            return idx;
    }
    return family_new(P, name, &idx), idx; /* untyped */
}

/* {name="value",...}: checks syntax and escapes, fills s->labels and s->le. */
static const char *parse_labels(struct sample *s, const char *line, const char *p)
{
    p++; /* '{' */
    while (*p != '}') {
        char lname[128], val[256];
        size_t vn = 0;
        if (!read_name(&p, lname, sizeof(lname), 0) || *p++ != '=' || *p++ != '"')
            fail_line(line, "bad label");
        for (; *p != '"'; p++) {
            if (*p == '\n' || !*p || vn + 1 >= sizeof(val))
                fail_line(line, "unterminated label value");
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    fail_line(line, "bad escape in label value");
                val[vn++] = *p == 'n' ? '\n' : *p;
            } else {
                val[vn++] = *p;
            }
        }
        val[vn] = '\0';
        p++;
        for (int i = 0; i < s->nlabels && i < 2; i++)
            if (!strcmp(s->labels[i][0], lname))
                fail_line(line, "duplicate label name");
        if (!strcmp(lname, "le"))
            dsw_strlcpy(s->le, val, sizeof(s->le));
        else if (s->nlabels < 2) {
            dsw_strlcpy(s->labels[s->nlabels][0], lname, sizeof(s->labels[0][0]));
            dsw_strlcpy(s->labels[s->nlabels++][1], val, sizeof(s->labels[0][1]));
        }
        if (*p == ',')
            p++;
        else if (*p != '}')
            fail_line(line, "expected , or }");
    }
    return p + 1;
}

static void parse_sample(struct parsed *P, const char *line, const char *end)
{
    assert_true(P->n < MAX_SAMPLES);
    struct sample *s = &P->s[P->n];
    memset(s, 0, sizeof(*s));
    const char *p = line;
    if (!read_name(&p, s->name, sizeof(s->name), 1))
        fail_line(line, "bad metric name");
    if (*p == '{')
        p = parse_labels(s, line, p);
    snprintf(s->key, sizeof(s->key), "%.*s", (int)(p - line), line);
    if (*p++ != ' ')
        fail_line(line, "expected one space before the value");
    const char *ve = memchr(p, ' ', (size_t)(end - p));
    if (parse_value(p, ve ? ve : end, &s->value) < 0)
        fail_line(line, "bad value");
    if (ve && parse_value(ve + 1, end, &(double){0}) < 0)
        fail_line(line, "bad timestamp");
    s->family = sample_family(P, s->name);
    for (size_t i = 0; i < P->n; i++)
        if (!strcmp(P->s[i].key, s->key))
            fail_line(line, "duplicate series");
    /* Samples of one family are contiguous: a family whose samples ended is closed. */
    if (P->n && P->s[P->n - 1].family != s->family)
        P->f[P->s[P->n - 1].family].closed = 1;
    if (P->f[s->family].closed)
        fail_line(line, "family's samples are not contiguous");
    if (!strcmp(P->f[s->family].type, "counter") && !(s->value >= 0))
        fail_line(line, "negative counter");
    P->n++;
}

/* The labels of a sample other than le, as one string: the series a histogram sample is in. */
static void series_of(const struct sample *s, char *out, size_t n)
{
    out[0] = '\0';
    for (int i = 0; i < s->nlabels; i++)
        snprintf(out + strlen(out), n - strlen(out), "%s=%s,", s->labels[i][0], s->labels[i][1]);
}

/* Histogram invariants, per series (label set without le): le ascending ending at +Inf,
 * cumulative counts, +Inf == _count, _sum. */
static void check_histogram_series(struct parsed *P, int fam, const char *series)
{
    double prev_le = -INFINITY, prev = 0, inf = -1, count = -1;
    int sum = 0;
    char key[600];
    for (size_t i = 0; i < P->n; i++) {
        struct sample *s = &P->s[i];
        if (s->family != fam)
            continue;
        series_of(s, key, sizeof(key));
        if (strcmp(key, series))
            continue;
        size_t n = strlen(s->name);
        if (n > 7 && !strcmp(s->name + n - 7, "_bucket")) {
            double le;
            assert_int_equal(parse_value(s->le, s->le + strlen(s->le), &le), 0);
            assert_true(le > prev_le);
            assert_true(s->value >= prev);
            prev_le = le;
            prev = s->value;
            if (isinf(le))
                inf = s->value;
        } else if (n > 6 && !strcmp(s->name + n - 6, "_count")) {
            count = s->value;
        } else if (n > 4 && !strcmp(s->name + n - 4, "_sum")) {
            sum = 1;
        } else {
            fail_msg("stray sample %s in histogram %s", s->name, P->f[fam].name);
        }
    }
    assert_true(inf >= 0);
    assert_true(sum);
    assert_true(inf == count);
}

static void check_histogram(struct parsed *P, int fam)
{
    char key[600];
    for (size_t i = 0; i < P->n; i++) {
        if (P->s[i].family != fam)
            continue;
        series_of(&P->s[i], key, sizeof(key));
        check_histogram_series(P, fam, key);
    }
}

static void parse_exposition(struct parsed *P, const char *text)
{
    memset(P, 0, sizeof(*P));
    size_t len = strlen(text);
    assert_true(len > 0 && text[len - 1] == '\n');
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        if (end == line)
            fail_line(line, "empty line");
        if (line[0] == '#')
            parse_comment(P, line, end);
        else
            parse_sample(P, line, end);
        line = end + 1;
    }
    for (size_t i = 0; i < P->nf; i++) {
        assert_true(P->f[i].help && P->f[i].typed); /* every family documented */
        if (!strcmp(P->f[i].type, "histogram"))
            check_histogram(P, (int)i);
    }
}

static const struct sample *find_sample(const struct parsed *P, const char *key)
{
    for (size_t i = 0; i < P->n; i++)
        if (!strcmp(P->s[i].key, key))
            return &P->s[i];
    return NULL;
}

static double value(const struct parsed *P, const char *key)
{
    const struct sample *s = find_sample(P, key);
    if (!s)
        fail_msg("no sample %s", key);
    return s->value;
}

static const char *type_of(struct parsed *P, const char *name)
{
    int idx;
    struct family *f = family_of(P, name, &idx);
    return f ? f->type : "";
}

static struct parsed *render_parse(void)
{
    struct dsw_buf b;
    dsw_buf_init(&b, DSW_METRICS_RENDER_MAX);
    assert_int_equal(dsw_metrics_render(&b), 0);
    struct parsed *P = malloc(sizeof(*P));
    parse_exposition(P, dsw_buf_str(&b));
    dsw_buf_free(&b);
    return P;
}

/* ---- the parser itself rejects what it should ------------------------------------------ */

static void test_parser_accepts_reference(void **state)
{
    struct parsed *P = malloc(sizeof(*P));
    parse_exposition(P, "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n"
                        "# TYPE h histogram\n# HELP h H.\nh_bucket{le=\"1\"} 1\n"
                        "h_bucket{le=\"+Inf\"} 2\nh_sum 7.5\nh_count 2\n");
    assert_int_equal(P->n, 5);
    assert_string_equal(P->s[0].labels[0][1], "q\"\\\n");
    assert_true(value(P, "h_sum") == 7.5);
    free(P);
}

/* ---- the registry ---------------------------------------------------------------------- */

static int setup(void **state)
{
    dsw_metrics_reset();
    return 0;
}

static void test_every_metric_rendered(void **state)
{
    struct parsed *P = render_parse();
    const char *counters[] = {"dsw_messages_received_total", "dsw_messages_deleted_total",
                              "dsw_messages_rejected_total", "dsw_messages_released_total",
                              "dsw_messages_deferred_total", "dsw_claims_total",
                              "dsw_runs_started_total",      "dsw_runs_finished_total",
                              "dsw_steps_finished_total",    "dsw_sqs_requests_total",
                              "dsw_db_errors_total",         "dsw_warm_runner_failures_total",
                              "dsw_log_dropped_total"};
    const char *gauges[] = {"dsw_runs_in_flight", "dsw_slots",
                            "dsw_draining",       "dsw_warm_runners_ready",
                            "dsw_build_info",     "process_resident_memory_bytes"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(counters); i++)
        assert_string_equal(type_of(P, counters[i]), "counter");
    for (size_t i = 0; i < DSW_ARRAY_LEN(gauges); i++)
        assert_string_equal(type_of(P, gauges[i]), "gauge");
    assert_string_equal(type_of(P, "dsw_run_duration_seconds"), "histogram");
    assert_string_equal(type_of(P, "dsw_queue_wait_seconds"), "histogram");
    assert_string_equal(type_of(P, "dsw_run_start_seconds"), "histogram");
    assert_int_equal(P->nf, DSW_ARRAY_LEN(counters) + DSW_ARRAY_LEN(gauges) + 3);
    /* Unlabelled counters and gauges read 0 from the start; labelled ones have no series yet. */
    assert_true(value(P, "dsw_messages_received_total") == 0);
    assert_true(value(P, "dsw_db_errors_total") == 0);
    assert_true(value(P, "dsw_slots") == 0);
    assert_null(find_sample(P, "dsw_claims_total"));
    assert_true(value(P, "dsw_build_info{version=\"" DSW_VERSION "\"}") == 1);
    double rss = value(P, "process_resident_memory_bytes");
    assert_true(rss > 100000 && rss < 1e10);
    assert_true(value(P, "dsw_queue_wait_seconds_count") == 0);
    assert_true(value(P, "dsw_warm_runner_failures_total") == 0);
    assert_true(value(P, "dsw_warm_runners_ready") == 0);
    /* Both modes are there from the start. */
    assert_true(value(P, "dsw_run_start_seconds_count{mode=\"warm\"}") == 0);
    assert_true(value(P, "dsw_run_start_seconds_bucket{mode=\"cold\",le=\"+Inf\"}") == 0);
    for (int m = 0; m < DSW_METRIC_COUNT; m++)
        assert_non_null(dsw_metrics_name((enum dsw_metric)m));
    assert_null(dsw_metrics_name(DSW_METRIC_COUNT));
    free(P);
}

static void test_counters(void **state)
{
    dsw_metrics_inc(DSW_METRIC_MESSAGES_RECEIVED, NULL, 5);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_RECEIVED, NULL, 2);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_REJECTED, "bad_json", 1);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_REJECTED, "too_large", 2);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_REJECTED, "bad_json", 1);
    dsw_metrics_declare(DSW_METRIC_MESSAGES_REJECTED, "bad_signature", NULL);
    dsw_metrics_inc(DSW_METRIC_CLAIMS, NULL, 1); /* a label is required: "unknown" */
    dsw_metrics_inc2(DSW_METRIC_SQS_REQUESTS, "ReceiveMessage", "ok", 10);
    dsw_metrics_inc2(DSW_METRIC_SQS_REQUESTS, "ReceiveMessage", "error", 1);
    dsw_metrics_inc2(DSW_METRIC_SQS_REQUESTS, "DeleteMessageBatch", "ok", 3);
    dsw_metrics_inc(DSW_METRIC_DB_ERRORS, NULL, 1);
    assert_true(dsw_metrics_value(DSW_METRIC_MESSAGES_RECEIVED, NULL, NULL) == 7);
    assert_true(dsw_metrics_value(DSW_METRIC_MESSAGES_REJECTED, "bad_json", NULL) == 2);
    assert_true(dsw_metrics_value(DSW_METRIC_MESSAGES_REJECTED, "nope", NULL) == 0);
    assert_true(dsw_metrics_value(DSW_METRIC_SQS_REQUESTS, "ReceiveMessage", "ok") == 10);

    struct parsed *P = render_parse();
    assert_true(value(P, "dsw_messages_received_total") == 7);
    assert_true(value(P, "dsw_messages_rejected_total{reason=\"bad_json\"}") == 2);
    assert_true(value(P, "dsw_messages_rejected_total{reason=\"too_large\"}") == 2);
    assert_true(value(P, "dsw_messages_rejected_total{reason=\"bad_signature\"}") == 0);
    assert_true(value(P, "dsw_claims_total{result=\"unknown\"}") == 1);
    assert_true(value(P, "dsw_sqs_requests_total{op=\"ReceiveMessage\",result=\"ok\"}") == 10);
    assert_true(value(P, "dsw_sqs_requests_total{op=\"ReceiveMessage\",result=\"error\"}") == 1);
    assert_true(value(P, "dsw_sqs_requests_total{op=\"DeleteMessageBatch\",result=\"ok\"}") == 3);
    assert_true(value(P, "dsw_db_errors_total") == 1);
    free(P);

    dsw_metrics_reset();
    assert_true(dsw_metrics_value(DSW_METRIC_MESSAGES_RECEIVED, NULL, NULL) == 0);
    P = render_parse();
    assert_null(find_sample(P, "dsw_messages_rejected_total{reason=\"bad_json\"}"));
    free(P);
}

static void test_label_escaping_and_bounds(void **state)
{
    char long_label[DSW_METRICS_LABEL_MAX + 2];
    memset(long_label, 'a', sizeof(long_label) - 1);
    long_label[sizeof(long_label) - 1] = '\0';
    dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, "q\"uote\\back", 1);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, "new\nline\x01\xff", 1);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, long_label, 1);
    dsw_metrics_inc(DSW_METRIC_MESSAGES_DELETED, long_label + 1, 1); /* exactly the max */
    struct parsed *P = render_parse();
    assert_true(value(P, "dsw_messages_deleted_total{reason=\"q\\\"uote\\\\back\"}") == 1);
    assert_true(value(P, "dsw_messages_deleted_total{reason=\"new_line__\"}") == 1);
    assert_true(value(P, "dsw_messages_deleted_total{reason=\"other\"}") == 1);
    const struct sample *s = NULL;
    for (size_t i = 0; i < P->n; i++)
        if (!strcmp(P->s[i].name, "dsw_messages_deleted_total") &&
            !strcmp(P->s[i].labels[0][1], "q\"uote\\back"))
            s = &P->s[i];
    assert_non_null(s); /* the parser unescaped it back to the original */
    char key[256];
    snprintf(key, sizeof(key), "dsw_messages_deleted_total{reason=\"%s\"}", long_label + 1);
    assert_true(value(P, key) == 1);
    free(P);
}

/* However many distinct values arrive, a metric keeps DSW_METRICS_MAX_SERIES series. */
static void test_cardinality_cap(void **state)
{
    char l[32];
    for (int i = 0; i < 100; i++) {
        snprintf(l, sizeof(l), "r%d", i);
        dsw_metrics_inc(DSW_METRIC_RUNS_FINISHED, l, 1);
        dsw_metrics_inc2(DSW_METRIC_SQS_REQUESTS, l, "ok", 2);
    }
    dsw_metrics_inc(DSW_METRIC_RUNS_FINISHED, "r0", 1); /* existing series still count */
    dsw_metrics_inc(DSW_METRIC_RUNS_FINISHED, "other", 1);
    struct parsed *P = render_parse();
    size_t finished = 0, sqs = 0;
    for (size_t i = 0; i < P->n; i++) {
        finished += !strcmp(P->s[i].name, "dsw_runs_finished_total");
        sqs += !strcmp(P->s[i].name, "dsw_sqs_requests_total");
    }
    assert_int_equal(finished, DSW_METRICS_MAX_SERIES);
    assert_int_equal(sqs, DSW_METRICS_MAX_SERIES);
    assert_true(value(P, "dsw_runs_finished_total{outcome=\"r0\"}") == 2);
    assert_true(value(P, "dsw_runs_finished_total{outcome=\"other\"}") ==
                100 - (DSW_METRICS_MAX_SERIES - 1) + 1);
    assert_true(value(P, "dsw_sqs_requests_total{op=\"other\",result=\"other\"}") ==
                2 * (100 - (DSW_METRICS_MAX_SERIES - 1)));
    free(P);
}

/* An explicit "other" before the cap is reached is the same series as the overflow. */
static void test_explicit_other_not_duplicated(void **state)
{
    char l[32];
    dsw_metrics_inc(DSW_METRIC_CLAIMS, "other", 1);
    for (int i = 0; i < 60; i++) {
        snprintf(l, sizeof(l), "c%d", i);
        dsw_metrics_inc(DSW_METRIC_CLAIMS, l, 1);
    }
    struct parsed *P = render_parse(); /* the parser fails on duplicate series */
    assert_true(value(P, "dsw_claims_total{result=\"other\"}") ==
                1 + 60 - (DSW_METRICS_MAX_SERIES - 2));
    free(P);
}

static void test_gauges(void **state)
{
    dsw_metrics_set(DSW_METRIC_SLOTS, 8);
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, 1);
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, 1);
    dsw_metrics_add(DSW_METRIC_RUNS_IN_FLIGHT, -1);
    dsw_metrics_set(DSW_METRIC_DRAINING, 1);
    assert_true(dsw_metrics_value(DSW_METRIC_RUNS_IN_FLIGHT, NULL, NULL) == 1);
    struct parsed *P = render_parse();
    assert_true(value(P, "dsw_slots") == 8);
    assert_true(value(P, "dsw_runs_in_flight") == 1);
    assert_true(value(P, "dsw_draining") == 1);
    free(P);
    dsw_metrics_set(DSW_METRIC_SLOTS, 0.1);
    dsw_metrics_set(DSW_METRIC_DRAINING, 1.0 / 3);
    P = render_parse();
    assert_true(value(P, "dsw_slots") == 0.1); /* shortest exact form round-trips */
    assert_true(value(P, "dsw_draining") == 1.0 / 3);
    free(P);
    struct dsw_buf b;
    dsw_buf_init(&b, DSW_METRICS_RENDER_MAX);
    assert_int_equal(dsw_metrics_render(&b), 0);
    assert_non_null(strstr(dsw_buf_str(&b), "\ndsw_slots 0.1\n"));
    dsw_buf_free(&b);
}

static void test_histograms(void **state)
{
    const double obs[] = {0.5, 1, 1.0000001, 7, 1e6, -3, NAN};
    for (size_t i = 0; i < DSW_ARRAY_LEN(obs); i++)
        dsw_metrics_observe(DSW_METRIC_RUN_DURATION, obs[i]);
    dsw_metrics_observe(DSW_METRIC_QUEUE_WAIT, 0.07);
    assert_true(dsw_metrics_value(DSW_METRIC_RUN_DURATION, NULL, NULL) == 7);
    struct parsed *P = render_parse();
    /* -3 and NaN count as 0; le is inclusive. */
    assert_true(value(P, "dsw_run_duration_seconds_bucket{le=\"1\"}") == 4);
    assert_true(value(P, "dsw_run_duration_seconds_bucket{le=\"5\"}") == 5);
    assert_true(value(P, "dsw_run_duration_seconds_bucket{le=\"10\"}") == 6);
    assert_true(value(P, "dsw_run_duration_seconds_bucket{le=\"43200\"}") == 6);
    assert_true(value(P, "dsw_run_duration_seconds_bucket{le=\"+Inf\"}") == 7);
    assert_true(value(P, "dsw_run_duration_seconds_count") == 7);
    assert_true(fabs(value(P, "dsw_run_duration_seconds_sum") - (1e6 + 9.5000001)) < 1e-6);
    assert_true(value(P, "dsw_queue_wait_seconds_bucket{le=\"0.05\"}") == 0);
    assert_true(value(P, "dsw_queue_wait_seconds_bucket{le=\"0.1\"}") == 1);
    assert_true(value(P, "dsw_queue_wait_seconds_sum") == 0.07);
    free(P);
}

static void test_labelled_histogram(void **state)
{
    dsw_metrics_observe_label(DSW_METRIC_RUN_START, "warm", 0.02);
    dsw_metrics_observe_label(DSW_METRIC_RUN_START, "warm", 0.2);
    dsw_metrics_observe_label(DSW_METRIC_RUN_START, "cold", 1.2);
    assert_true(dsw_metrics_value(DSW_METRIC_RUN_START, "warm", NULL) == 2);
    assert_true(dsw_metrics_value(DSW_METRIC_RUN_START, "cold", NULL) == 1);
    assert_true(dsw_metrics_value(DSW_METRIC_RUN_START, NULL, NULL) == 3);
    assert_true(dsw_metrics_value(DSW_METRIC_RUN_START, "tepid", NULL) == 0);
    dsw_metrics_inc(DSW_METRIC_WARM_FAILURES, NULL, 2);
    dsw_metrics_set(DSW_METRIC_WARM_READY, 3);
    struct parsed *P = render_parse();
    const char *b = "dsw_run_start_seconds_bucket";
    char k[128];
    snprintf(k, sizeof(k), "%s{mode=\"warm\",le=\"0.01\"}", b);
    assert_true(value(P, k) == 0);
    snprintf(k, sizeof(k), "%s{mode=\"warm\",le=\"0.025\"}", b);
    assert_true(value(P, k) == 1);
    snprintf(k, sizeof(k), "%s{mode=\"warm\",le=\"0.25\"}", b);
    assert_true(value(P, k) == 2);
    snprintf(k, sizeof(k), "%s{mode=\"cold\",le=\"1\"}", b);
    assert_true(value(P, k) == 0);
    snprintf(k, sizeof(k), "%s{mode=\"cold\",le=\"1.5\"}", b);
    assert_true(value(P, k) == 1);
    assert_true(value(P, "dsw_run_start_seconds_count{mode=\"warm\"}") == 2);
    assert_true(fabs(value(P, "dsw_run_start_seconds_sum{mode=\"warm\"}") - 0.22) < 1e-9);
    assert_true(value(P, "dsw_run_start_seconds_count{mode=\"cold\"}") == 1);
    assert_true(value(P, "dsw_warm_runner_failures_total") == 2);
    assert_true(value(P, "dsw_warm_runners_ready") == 3);
    free(P);
}

/* Worst case: every labelled metric full of maximal labels that all need escaping. */
static void test_render_bounded(void **state)
{
    char l[DSW_METRICS_LABEL_MAX + 1];
    for (int m = 0; m < DSW_METRIC_COUNT; m++) {
        for (int i = 0; i < 2 * DSW_METRICS_MAX_SERIES; i++) {
            memset(l, '"', sizeof(l) - 1);
            l[sizeof(l) - 1] = '\0';
            snprintf(l, sizeof(l), "%03d", i);
            l[3] = '"';
            if (m <= DSW_METRIC_WARM_FAILURES)
                dsw_metrics_inc2((enum dsw_metric)m, l, l, UINT64_MAX / 2);
        }
    }
    struct dsw_buf b;
    dsw_buf_init(&b, DSW_METRICS_RENDER_MAX);
    assert_int_equal(dsw_metrics_render(&b), 0);
    print_message("worst-case rendering: %zu bytes\n", b.len);
    struct parsed *P = malloc(sizeof(*P));
    parse_exposition(P, dsw_buf_str(&b));
    free(P);
    dsw_buf_free(&b);
    dsw_buf_init(&b, 1000);
    assert_int_equal(dsw_metrics_render(&b), -E2BIG);
    dsw_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parser_accepts_reference),
        cmocka_unit_test_setup(test_every_metric_rendered, setup),
        cmocka_unit_test_setup(test_counters, setup),
        cmocka_unit_test_setup(test_label_escaping_and_bounds, setup),
        cmocka_unit_test_setup(test_cardinality_cap, setup),
        cmocka_unit_test_setup(test_explicit_other_not_duplicated, setup),
        cmocka_unit_test_setup(test_gauges, setup),
        cmocka_unit_test_setup(test_histograms, setup),
        cmocka_unit_test_setup(test_labelled_histogram, setup),
        cmocka_unit_test_setup(test_render_bounded, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
