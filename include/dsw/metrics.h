/* metrics: the process-wide registry of SPEC §7's metrics and its Prometheus text rendering
 * (exposition format 0.0.4). One daemon per process, so the registry is a global singleton;
 * every function must be called from the loop thread (nothing here locks). Label values are
 * bounded: at most DSW_METRICS_MAX_SERIES series per metric (later values are counted under
 * "other") and DSW_METRICS_LABEL_MAX bytes per value; never pass a run id or a message id. */
#ifndef DSW_METRICS_H
#define DSW_METRICS_H

#include "dsw/buf.h"
#include "dsw/util.h"

#include <stdint.h>

#define DSW_METRICS_MAX_SERIES 32 /* per metric, the "other" series included */
#define DSW_METRICS_LABEL_MAX  48 /* bytes per label value; longer values become "other" */
#define DSW_METRICS_RENDER_MAX (128u * 1024) /* a rendering never exceeds this many bytes */

enum dsw_metric {
    /* counters; the label names are in braces */
    DSW_METRIC_MESSAGES_RECEIVED, /* dsw_messages_received_total */
    DSW_METRIC_MESSAGES_DELETED,  /* dsw_messages_deleted_total{reason} */
    DSW_METRIC_MESSAGES_REJECTED, /* dsw_messages_rejected_total{reason} */
    DSW_METRIC_MESSAGES_RELEASED, /* dsw_messages_released_total */
    DSW_METRIC_MESSAGES_DEFERRED, /* dsw_messages_deferred_total */
    DSW_METRIC_CLAIMS,            /* dsw_claims_total{result} */
    DSW_METRIC_RUNS_STARTED,      /* dsw_runs_started_total{kind} */
    DSW_METRIC_RUNS_FINISHED,     /* dsw_runs_finished_total{outcome} */
    DSW_METRIC_STEPS_FINISHED,    /* dsw_steps_finished_total{outcome} */
    DSW_METRIC_SQS_REQUESTS,      /* dsw_sqs_requests_total{op,result} */
    DSW_METRIC_DB_ERRORS,         /* dsw_db_errors_total */
    DSW_METRIC_WARM_FAILURES,     /* dsw_warm_runner_failures_total: died or never ready */
    /* gauges */
    DSW_METRIC_RUNS_IN_FLIGHT, /* dsw_runs_in_flight */
    DSW_METRIC_SLOTS,          /* dsw_slots */
    DSW_METRIC_DRAINING,       /* dsw_draining (0 or 1) */
    DSW_METRIC_WARM_READY,     /* dsw_warm_runners_ready */
    /* histograms (seconds) */
    DSW_METRIC_RUN_DURATION, /* dsw_run_duration_seconds: spawn to exit */
    DSW_METRIC_QUEUE_WAIT,   /* dsw_queue_wait_seconds: SentTimestamp to receive */
    /* dsw_run_start_seconds{mode}: spawn or warm hand-over to the run worker's first output
     * line; mode is "warm" or "cold" (a fixed vocabulary, both always rendered) */
    DSW_METRIC_RUN_START,
    DSW_METRIC_COUNT
};
/* Rendered too, computed at render time: dsw_build_info{version} 1 and
 * process_resident_memory_bytes (from /proc/self/statm; left out when unreadable). */

/* Add n to a counter. label is the value of its one label (e.g. the reason), NULL for an
 * unlabelled counter; a labelled counter given NULL counts under "unknown". Strings are copied.
 * Calling it on a gauge or histogram is a programming error (assert in debug builds, ignored
 * otherwise). */
void dsw_metrics_inc(enum dsw_metric m, const char *label, uint64_t n);
/* The same for a counter with two labels (dsw_sqs_requests_total{op,result}). */
void dsw_metrics_inc2(enum dsw_metric m, const char *label1, const char *label2, uint64_t n);

/* Create a series at 0 so that it is rendered before its first event (Prometheus' rate() needs
 * the zero). Use it at start for the known vocabulary, e.g. every reject reason. label2 is NULL
 * for one-label counters. */
void dsw_metrics_declare(enum dsw_metric m, const char *label1, const char *label2);

/* Set / add to a gauge. */
void dsw_metrics_set(enum dsw_metric m, double value);
void dsw_metrics_add(enum dsw_metric m, double delta);

/* Record one observation (seconds) in a histogram; negative values count as 0. */
void dsw_metrics_observe(enum dsw_metric m, double value);
/* The same for a labelled histogram (dsw_run_start_seconds{mode}); label must be one of its
 * fixed values ("warm", "cold"): anything else is a programming error (assert in debug builds,
 * ignored otherwise), as is calling dsw_metrics_observe on it. */
void dsw_metrics_observe_label(enum dsw_metric m, const char *label, double value);

/* Current value of a series, for tests and the STATUS= line: a counter's count (labels as given
 * to dsw_metrics_inc2, NULL when unused), a gauge's value, a histogram's observation count (of
 * the label1 series of a labelled histogram; all series when label1 is NULL); 0 for a series
 * that does not exist. */
double dsw_metrics_value(enum dsw_metric m, const char *label1, const char *label2);

/* The metric's exposition name ("dsw_claims_total"), NULL out of range. */
const char *dsw_metrics_name(enum dsw_metric m);

/* Append every metric in Prometheus text format 0.0.4 (# HELP and # TYPE lines, escaped label
 * values, cumulative histogram buckets, a final newline) to out. Returns 0, or -E2BIG when out's
 * cap is too small (out then holds a truncated rendering the caller should discard); a cap of
 * DSW_METRICS_RENDER_MAX always suffices. */
int dsw_metrics_render(struct dsw_buf *out) DSW_WUR;

/* Forget every series and value (tests only; the daemon never resets). */
void dsw_metrics_reset(void);

#endif
