/* metrics: SPEC §7's metrics as one designated-initializer table (name, help, type, labels,
 * buckets) plus fixed-size state: every series lives in a static array, so cardinality and
 * memory are bounded by construction. Rendering writes Prometheus text format 0.0.4. */
#include "dsw/metrics.h"

#include "dsw/log.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BUCKETS 16
#define MAX_HSERIES 2 /* label values of a labelled histogram */

enum kind { COUNTER, GAUGE, HISTOGRAM };

struct def {
    const char *name;
    const char *help;
    enum kind kind;
    int nlabels;
    const char *labels[2];
    const double *buckets; /* upper bounds, ascending; +Inf is implicit */
    size_t nbuckets;
    const char *values[MAX_HSERIES]; /* a labelled histogram's fixed label values */
};

static const double run_buckets[] = {1,   5,    10,   30,   60,    120,  300,
                                     600, 1800, 3600, 7200, 14400, 43200};
static const double wait_buckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600};
static const double start_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                       1.5,  2.5,   5,    10,  30,   60};

#define C0(n, h)                                                                                   \
    {                                                                                              \
        .name = n, .help = h, .kind = COUNTER                                                      \
    }
#define C1(n, l, h)                                                                                \
    {                                                                                              \
        .name = n, .help = h, .kind = COUNTER, .nlabels = 1, .labels = { l }                       \
    }
#define C2(n, a, b, h)                                                                             \
    {                                                                                              \
        .name = n, .help = h, .kind = COUNTER, .nlabels = 2, .labels = { a, b }                    \
    }
#define G(n, h)                                                                                    \
    {                                                                                              \
        .name = n, .help = h, .kind = GAUGE                                                        \
    }
#define H(n, bk, h)                                                                                \
    {                                                                                              \
        .name = n, .help = h, .kind = HISTOGRAM, .buckets = bk, .nbuckets = DSW_ARRAY_LEN(bk)      \
    }
#define H1(n, l, v1, v2, bk, h)                                                                    \
    {                                                                                              \
        .name = n, .help = h, .kind = HISTOGRAM, .nlabels = 1, .labels = {l}, .buckets = bk,       \
        .nbuckets = DSW_ARRAY_LEN(bk), .values = {                                                 \
            v1,                                                                                    \
            v2                                                                                     \
        }                                                                                          \
    }

_Static_assert(DSW_ARRAY_LEN(run_buckets) < MAX_BUCKETS &&
                   DSW_ARRAY_LEN(wait_buckets) < MAX_BUCKETS &&
                   DSW_ARRAY_LEN(start_buckets) < MAX_BUCKETS,
               "MAX_BUCKETS holds every bucket plus +Inf");

static const struct def defs[DSW_METRIC_COUNT] = {
    [DSW_METRIC_MESSAGES_RECEIVED] = C0("dsw_messages_received_total", "SQS messages received."),
    [DSW_METRIC_MESSAGES_DELETED] =
        C1("dsw_messages_deleted_total", "reason", "SQS messages deleted, by reason."),
    [DSW_METRIC_MESSAGES_REJECTED] =
        C1("dsw_messages_rejected_total", "reason", "Messages rejected by validation, by reason."),
    [DSW_METRIC_MESSAGES_RELEASED] =
        C0("dsw_messages_released_total",
           "Received but unclaimed messages made visible again (visibility 0)."),
    [DSW_METRIC_MESSAGES_DEFERRED] =
        C0("dsw_messages_deferred_total",
           "Messages left for later by a visibility change (run not launched yet, or owned)."),
    [DSW_METRIC_CLAIMS] = C1("dsw_claims_total", "result", "Run claim attempts, by result."),
    [DSW_METRIC_RUNS_STARTED] =
        C1("dsw_runs_started_total", "kind",
           "Run and step workers spawned, by kind (execute, resume, step)."),
    [DSW_METRIC_RUNS_FINISHED] =
        C1("dsw_runs_finished_total", "outcome", "Run workers finished, by recorded outcome."),
    [DSW_METRIC_STEPS_FINISHED] =
        C1("dsw_steps_finished_total", "outcome",
           "Step workers finished (or step claims closed), by recorded claim outcome."),
    [DSW_METRIC_SQS_REQUESTS] =
        C2("dsw_sqs_requests_total", "op", "result", "SQS API requests, by operation and result."),
    [DSW_METRIC_DB_ERRORS] = C0("dsw_db_errors_total", "PostgreSQL errors (query or connection)."),
    [DSW_METRIC_WARM_FAILURES] =
        C0("dsw_warm_runner_failures_total",
           "Warm runners that died before being used or never became ready."),
    [DSW_METRIC_RUNS_IN_FLIGHT] = G("dsw_runs_in_flight", "Run workers currently running."),
    [DSW_METRIC_SLOTS] = G("dsw_slots", "Configured concurrent run slots (runs.max_concurrent)."),
    [DSW_METRIC_DRAINING] = G("dsw_draining", "1 while the daemon drains before exiting, else 0."),
    [DSW_METRIC_WARM_READY] =
        G("dsw_warm_runners_ready", "Warm runners ready to take a run (runs.warm)."),
    [DSW_METRIC_RUN_DURATION] =
        H("dsw_run_duration_seconds", run_buckets, "Wall time of run workers, from spawn to exit."),
    [DSW_METRIC_QUEUE_WAIT] = H("dsw_queue_wait_seconds", wait_buckets,
                                "Time messages waited in the queue (SentTimestamp to receive)."),
    [DSW_METRIC_RUN_START] = H1("dsw_run_start_seconds", "mode", "warm", "cold", start_buckets,
                                "Spawn (cold) or hand-over (warm) to the run worker's first "
                                "output line."),
};

struct series {
    char label[2][DSW_METRICS_LABEL_MAX + 1];
    uint64_t count;
};

struct hist {
    uint64_t buckets[MAX_BUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    double sum;
};

struct state {
    struct series series[DSW_METRICS_MAX_SERIES];
    size_t nseries;
    double gauge;
    struct hist hist[MAX_HSERIES]; /* [0] only, unless the histogram is labelled */
};

static struct state states[DSW_METRIC_COUNT];

static const struct def *get(enum dsw_metric m, enum kind kind)
{
    if ((unsigned)m >= DSW_METRIC_COUNT || defs[m].kind != kind) {
        assert(!"dsw_metrics: wrong metric for this call");
        return NULL;
    }
    return &defs[m];
}

/* Copy a label value, bounded: too long becomes "other", unprintable bytes become '_'. */
static void label_copy(char *dst, const char *src)
{
    if (!src)
        src = "unknown";
    size_t n = strlen(src);
    if (n > DSW_METRICS_LABEL_MAX) {
        src = "other";
        n = 5;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)src[i] < 0x20 || (unsigned char)src[i] >= 0x7f ? '_' : src[i];
    dst[n] = '\0';
}

static struct series *find(struct state *st, const char *l1, const char *l2)
{
    for (size_t i = 0; i < st->nseries; i++)
        if (!strcmp(st->series[i].label[0], l1) && !strcmp(st->series[i].label[1], l2))
            return &st->series[i];
    return NULL;
}

static struct series *append(struct state *st, const char *l1, const char *l2)
{
    struct series *s = &st->series[st->nseries++];
    memset(s, 0, sizeof(*s));
    strcpy(s->label[0], l1);
    strcpy(s->label[1], l2);
    return s;
}

/* The series for these labels, created on first use; past the cap, the "other" series. */
static struct series *series_for(enum dsw_metric m, const char *label1, const char *label2)
{
    const struct def *d = &defs[m];
    struct state *st = &states[m];
    char l1[DSW_METRICS_LABEL_MAX + 1] = "", l2[DSW_METRICS_LABEL_MAX + 1] = "";
    if (d->nlabels >= 1)
        label_copy(l1, label1);
    if (d->nlabels >= 2)
        label_copy(l2, label2);
    struct series *s = find(st, l1, l2);
    if (s)
        return s;
    if (st->nseries < DSW_METRICS_MAX_SERIES - 1)
        return append(st, l1, l2);
    const char *o2 = d->nlabels >= 2 ? "other" : "";
    s = find(st, "other", o2);
    return s ? s : append(st, "other", o2);
}

void dsw_metrics_inc2(enum dsw_metric m, const char *label1, const char *label2, uint64_t n)
{
    if (get(m, COUNTER))
        series_for(m, label1, label2)->count += n;
}

void dsw_metrics_inc(enum dsw_metric m, const char *label, uint64_t n)
{
    dsw_metrics_inc2(m, label, NULL, n);
}

void dsw_metrics_declare(enum dsw_metric m, const char *label1, const char *label2)
{
    dsw_metrics_inc2(m, label1, label2, 0);
}

void dsw_metrics_set(enum dsw_metric m, double value)
{
    if (get(m, GAUGE))
        states[m].gauge = value;
}

void dsw_metrics_add(enum dsw_metric m, double delta)
{
    if (get(m, GAUGE))
        states[m].gauge += delta;
}

static void observe(const struct def *d, struct hist *h, double value)
{
    if (!(value > 0)) /* negative or NaN */
        value = 0;
    size_t i = 0;
    while (i < d->nbuckets && value > d->buckets[i])
        i++;
    h->buckets[i]++; /* i == nbuckets is the +Inf bucket */
    h->count++;
    h->sum += value;
}

/* Index of a labelled histogram's label value, -1 when it is not one of them. */
static int hist_index(const struct def *d, const char *label)
{
    for (int i = 0; label && i < MAX_HSERIES && d->values[i]; i++)
        if (!strcmp(d->values[i], label))
            return i;
    return -1;
}

void dsw_metrics_observe(enum dsw_metric m, double value)
{
    const struct def *d = get(m, HISTOGRAM);
    if (!d)
        return;
    assert(d->nlabels == 0 && "use dsw_metrics_observe_label");
    if (d->nlabels == 0)
        observe(d, &states[m].hist[0], value);
}

void dsw_metrics_observe_label(enum dsw_metric m, const char *label, double value)
{
    const struct def *d = get(m, HISTOGRAM);
    int i = d ? hist_index(d, label) : -1;
    assert(!d || i >= 0);
    if (i >= 0)
        observe(d, &states[m].hist[i], value);
}

static uint64_t hist_count(enum dsw_metric m, const char *label)
{
    const struct def *d = &defs[m];
    uint64_t n = 0;
    if (d->nlabels == 0 || !label)
        for (int i = 0; i < MAX_HSERIES; i++)
            n += states[m].hist[i].count;
    else if (hist_index(d, label) >= 0)
        n = states[m].hist[hist_index(d, label)].count;
    return n;
}

double dsw_metrics_value(enum dsw_metric m, const char *label1, const char *label2)
{
    if ((unsigned)m >= DSW_METRIC_COUNT)
        return 0;
    const struct def *d = &defs[m];
    if (d->kind == GAUGE)
        return states[m].gauge;
    if (d->kind == HISTOGRAM)
        return (double)hist_count(m, label1);
    char l1[DSW_METRICS_LABEL_MAX + 1] = "", l2[DSW_METRICS_LABEL_MAX + 1] = "";
    if (d->nlabels >= 1)
        label_copy(l1, label1);
    if (d->nlabels >= 2)
        label_copy(l2, label2);
    struct series *s = find(&states[m], l1, l2);
    return s ? (double)s->count : 0;
}

const char *dsw_metrics_name(enum dsw_metric m)
{
    return (unsigned)m < DSW_METRIC_COUNT ? defs[m].name : NULL;
}

void dsw_metrics_reset(void)
{
    memset(states, 0, sizeof(states));
}

/* ---- rendering ------------------------------------------------------------------------ */

/* A float the way Prometheus reads it: integers plainly, others in the shortest %g that reads
 * back exactly, and +Inf/-Inf/NaN spelled out. */
static void fmt_double(char *out, size_t n, double v)
{
    if (isnan(v))
        snprintf(out, n, "NaN");
    else if (isinf(v))
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == trunc(v) && fabs(v) < 1e15)
        snprintf(out, n, "%.0f", v);
    else if (snprintf(out, n, "%.15g", v) > 0 && strtod(out, NULL) != v)
        snprintf(out, n, "%.17g", v);
}

static int put_label_value(struct dsw_buf *b, const char *v)
{
    int rc = 0;
    for (; *v && rc == 0; v++) {
        if (*v == '\\')
            rc = dsw_buf_puts(b, "\\\\");
        else if (*v == '"')
            rc = dsw_buf_puts(b, "\\\"");
        else if (*v == '\n')
            rc = dsw_buf_puts(b, "\\n");
        else
            rc = dsw_buf_append(b, v, 1);
    }
    return rc;
}

static int put_header(struct dsw_buf *b, const char *name, const char *help, const char *type)
{
    return dsw_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int put_counter(struct dsw_buf *b, const struct def *d, const struct state *st)
{
    int rc = put_header(b, d->name, d->help, "counter");
    if (rc == 0 && d->nlabels == 0) /* an unlabelled counter is always shown, even at 0 */
        return dsw_buf_printf(b, "%s %llu\n", d->name,
                              (unsigned long long)(st->nseries ? st->series[0].count : 0));
    for (size_t i = 0; rc == 0 && i < st->nseries; i++) {
        const struct series *s = &st->series[i];
        rc = dsw_buf_printf(b, "%s{", d->name);
        for (int l = 0; rc == 0 && l < d->nlabels; l++) {
            rc = dsw_buf_printf(b, "%s%s=\"", l ? "," : "", d->labels[l]);
            if (rc == 0)
                rc = put_label_value(b, s->label[l]);
            if (rc == 0)
                rc = dsw_buf_puts(b, "\"");
        }
        if (rc == 0)
            rc = dsw_buf_printf(b, "} %llu\n", (unsigned long long)s->count);
    }
    return rc;
}

static int put_gauge(struct dsw_buf *b, const struct def *d, const struct state *st)
{
    char v[40];
    fmt_double(v, sizeof(v), st->gauge);
    int rc = put_header(b, d->name, d->help, "gauge");
    return rc ? rc : dsw_buf_printf(b, "%s %s\n", d->name, v);
}

/* One series: lab is "" or `name="value"` (label values here are fixed, no escaping). */
static int put_hist_series(struct dsw_buf *b, const struct def *d, const struct hist *h,
                           const char *lab)
{
    char v[40];
    uint64_t cum = 0;
    int rc = 0;
    const char *sep = *lab ? "," : "";
    for (size_t i = 0; rc == 0 && i <= d->nbuckets; i++) {
        cum += h->buckets[i];
        fmt_double(v, sizeof(v), i < d->nbuckets ? d->buckets[i] : INFINITY);
        rc = dsw_buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", d->name, lab, sep, v,
                            (unsigned long long)cum);
    }
    fmt_double(v, sizeof(v), h->sum);
    if (rc == 0 && *lab)
        rc = dsw_buf_printf(b, "%s_sum{%s} %s\n%s_count{%s} %llu\n", d->name, lab, v, d->name, lab,
                            (unsigned long long)h->count);
    else if (rc == 0)
        rc = dsw_buf_printf(b, "%s_sum %s\n%s_count %llu\n", d->name, v, d->name,
                            (unsigned long long)h->count);
    return rc;
}

static int put_histogram(struct dsw_buf *b, const struct def *d, const struct state *st)
{
    char lab[DSW_METRICS_LABEL_MAX + 32];
    int rc = put_header(b, d->name, d->help, "histogram");
    if (d->nlabels == 0)
        return rc ? rc : put_hist_series(b, d, &st->hist[0], "");
    for (int i = 0; rc == 0 && i < MAX_HSERIES && d->values[i]; i++) {
        snprintf(lab, sizeof(lab), "%s=\"%s\"", d->labels[0], d->values[i]);
        rc = put_hist_series(b, d, &st->hist[i], lab);
    }
    return rc;
}

/* Resident set size from /proc/self/statm (pages); -errno when unreadable. */
static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    if (!f)
        return -errno;
    unsigned long long size, resident;
    int n = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    if (n != 2)
        return -EIO;
    return (long long)(resident * (unsigned long long)sysconf(_SC_PAGESIZE));
}

static int put_process(struct dsw_buf *b)
{
    int rc = put_header(b, "dsw_log_dropped_total",
                        "Log lines dropped because stderr was not writable.", "counter");
    if (rc == 0)
        rc = dsw_buf_printf(b, "dsw_log_dropped_total %llu\n",
                            (unsigned long long)dsw_log_dropped());
    if (rc == 0)
        rc = put_header(b, "dsw_build_info", "Build information; the value is always 1.", "gauge");
    if (rc == 0)
        rc = dsw_buf_printf(b, "dsw_build_info{version=\"%s\"} 1\n", DSW_VERSION);
    long long rss = rss_bytes();
    if (rc == 0 && rss >= 0)
        rc = put_header(b, "process_resident_memory_bytes", "Resident memory size in bytes.",
                        "gauge");
    if (rc == 0 && rss >= 0)
        rc = dsw_buf_printf(b, "process_resident_memory_bytes %lld\n", rss);
    return rc;
}

int dsw_metrics_render(struct dsw_buf *out)
{
    int rc = 0;
    for (int m = 0; rc == 0 && m < DSW_METRIC_COUNT; m++) {
        const struct def *d = &defs[m];
        if (d->kind == COUNTER)
            rc = put_counter(out, d, &states[m]);
        else if (d->kind == GAUGE)
            rc = put_gauge(out, d, &states[m]);
        else
            rc = put_histogram(out, d, &states[m]);
    }
    return rc ? rc : put_process(out);
}
