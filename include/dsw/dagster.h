/* dagster: pure functions that write JSON exactly as Dagster's serdes does (sorted keys,
 * ", " / ": " separators, ASCII escapes, float timestamps) and read the few members of a stored
 * run body the daemon needs. No I/O. Strings returned are heap-allocated; the caller frees. */
#ifndef DSW_DAGSTER_H
#define DSW_DAGSTER_H

#include "dsw/util.h"

#include <stddef.h>

/* One text metadata entry (EventMetadataEntry with TextMetadataEntryData). */
struct dsw_kv {
    const char *key;
    const char *value;
};

/* An EventLogEntry JSON for an ENGINE_EVENT (level 20) whose event_specific_data is
 * EngineEventData with the given text metadata entries, in the given order. pid < 0 writes
 * null. timestamp is unix seconds and is always written as a JSON float. */
char *dsw_dagster_engine_event(const char *run_id, const char *job_name, const char *message,
                               const struct dsw_kv *meta, size_t nmeta, int pid, double timestamp);

/* An EventLogEntry JSON for a run-level event written from outside the run, e.g.
 * "PIPELINE_FAILURE" (level 40) or "PIPELINE_CANCELED" (level 40, as Dagster's
 * report_run_canceled logs it), "PIPELINE_STARTING" (20; any other type is 20),
 * with event_specific_data null, like Dagster's own report_run_failed. message NULL writes null
 * (Dagster's PIPELINE_STARTING). pid < 0 writes null. The two event writers return NULL only
 * when a string is not valid UTF-8 or timestamp is not finite. */
char *dsw_dagster_run_event(const char *run_id, const char *job_name, const char *event_type,
                            const char *message, int pid, double timestamp);

/* ---- failures as current Dagster records them ---- */

/* RunFailureReason members (dagster._core.events), the value of the run tag
 * DSW_DAGSTER_TAG_FAILURE_REASON. 1.7 knows all but RUN_WORKER_RESTART (it reads an unknown
 * member as UNKNOWN); 1.3 has no failure_reason and ignores the member. */
#define DSW_FAILURE_UNEXPECTED_TERMINATION     "UNEXPECTED_TERMINATION"
#define DSW_FAILURE_RUN_WORKER_RESTART         "RUN_WORKER_RESTART"
#define DSW_FAILURE_RUN_EXCEPTION              "RUN_EXCEPTION"
#define DSW_FAILURE_STEP_FAILURE               "STEP_FAILURE"
#define DSW_FAILURE_JOB_INITIALIZATION_FAILURE "JOB_INITIALIZATION_FAILURE"
#define DSW_FAILURE_START_TIMEOUT              "START_TIMEOUT"
#define DSW_FAILURE_UNKNOWN                    "UNKNOWN"
/* The run tag Dagster's run storage sets from a PIPELINE_FAILURE's failure_reason (not for
 * UNKNOWN); its UI and run retries read it. */
#define DSW_DAGSTER_TAG_FAILURE_REASON "dagster/failure_reason"

/* PipelineFailureData JSON (JobFailureData's storage name) as current Dagster writes it:
 * {"__class__": "PipelineFailureData", "error": null, "failure_reason": {"__enum__":
 * "RunFailureReason.<reason>"}, "first_step_failure_event": null}; reason NULL writes
 * failure_reason null. NULL when reason is not an upper-case name ([A-Z_]{1,32}). */
char *dsw_dagster_failure_data(const char *reason);

/* An EventLogEntry JSON for a PIPELINE_FAILURE written from outside the run (level 40, like
 * report_run_failed) whose event_specific_data is dsw_dagster_failure_data(reason). NULL as
 * for dsw_dagster_run_event, or for a bad reason. */
char *dsw_dagster_failure_event(const char *run_id, const char *job_name, const char *message,
                                const char *reason, double timestamp);

/* "[dagster-sqs-worker] This run has been marked as failed: <cause>." (canceled: "... as
 * canceled: ...") with exactly one final period: the cause's own trailing periods and spaces
 * are dropped, and a cause ending in '!' or '?' gets none. Caller frees. */
char *dsw_dagster_marked_message(int canceled, const char *cause);

/* The stored run_body with its status (when status is not NULL) set as
 * dsw_dagster_body_set_status does and the tags merged into its "tags" object (an existing key
 * takes the new value in place, a new key is added; the object is written with sorted keys, as
 * serialize_value writes it) -- what Dagster's add_run_tags writes. A null or missing "tags"
 * becomes an object. 0 and *out, or -EINVAL (not a PipelineRun, bad status, a tag string that
 * is not UTF-8). */
int dsw_dagster_body_update(const char *run_body, const char *status, const struct dsw_kv *tags,
                            size_t ntags, char **out) DSW_WUR;

/* The stored run_body with its "status" member replaced by
 * {"__enum__": "PipelineRunStatus.<status>"}, every other member kept in Dagster's form.
 * Returns 0 and *out, or -EINVAL when run_body is not a PipelineRun object. */
int dsw_dagster_body_set_status(const char *run_body, const char *status, char **out) DSW_WUR;

/* From a stored run_body: the pipeline_code_origin member re-serialized in Dagster's form
 * (*origin), its repository_origin.entry_point as a NULL-terminated argv (*entry_point, may be
 * NULL when absent; free each string and the array), and executable_path (*exe, may be NULL).
 * Any out pointer may be NULL. Returns 0 or -EINVAL. */
int dsw_dagster_body_origin(const char *run_body, char **origin, char ***entry_point,
                            char **exe) DSW_WUR;

/* The value of tag key in run_body's "tags" object (*out, NULL when absent). 0 or -EINVAL. */
int dsw_dagster_body_tag(const char *run_body, const char *key, char **out) DSW_WUR;

/* The ExecuteRunArgs (or ResumeRunArgs when resume) JSON the daemon hands to the child:
 * {"__class__": ..., "instance_ref": <instance_ref_json or null>, "pipeline_origin": <origin>,
 * "pipeline_run_id": <run_id>, "set_exit_code_on_failure": true} in Dagster's form.
 * instance_ref_json may be NULL (writes null). Returns 0 or -EINVAL. */
int dsw_dagster_run_args(const char *run_id, const char *origin_json, const char *instance_ref_json,
                         int resume, char **out) DSW_WUR;

/* The step of an ExecuteStepArgs for the child (docs/steps.md §2). */
struct dsw_dagster_step {
    const char *step_key;
    const char *known_state; /* JSON text or NULL (writes null) */
    const char *retry_mode;  /* JSON text or NULL (writes null) */
    int print_events;        /* < 0: leave the field out; else false/true */
};
/* The ExecuteStepArgs JSON of docs/steps.md §2 for the child (caller frees *out). 0 or -EINVAL
 * (bad arguments, known_state/retry_mode not JSON). */
/* {"__class__": "ExecuteStepArgs", "instance_ref": <instance_ref_json or null>, "known_state":
 * <known_state or null>, "pipeline_origin": <origin>, "pipeline_run_id": <run_id>,
 * ["print_serialized_events": <print_events>,] "retry_mode": <retry_mode or null>,
 * "should_verify_step": true, "step_keys_to_execute": [<step_key>]}, every object's keys sorted
 * (the embedded ones too) as Dagster's serialize_value writes them. known_state, retry_mode
 * and instance_ref must be JSON objects (step_key non-empty). */
int dsw_dagster_step_args(const char *run_id, const char *origin_json,
                          const char *instance_ref_json, const struct dsw_dagster_step *step,
                          char **out) DSW_WUR;

/* ---- additions: the general event writer and the number/time forms behind it ---- */

/* Everything one EventLogEntry / DagsterEvent says, for writers that need more than the two
 * helpers above (the test double of the run worker writes events from inside the run). */
struct dsw_dagster_event {
    const char *run_id;
    const char *job_name;
    const char *event_type;   /* "PIPELINE_START", ...; NULL: a plain log record (no
                                 dagster_event), like a user's context.log line */
    const char *message;      /* DagsterEvent.message; NULL writes null */
    const char *user_message; /* EventLogEntry.user_message; NULL writes "" */
    int level;                /* 10 debug, 20 info, 40 error */
    int pid;                  /* DagsterEvent.pid; < 0 writes null */
    const char *step_key;     /* NULL: run-level. Else a step event as DagsterEvent.from_step
                                 writes it: logging_tags, solid/step handles, kind COMPUTE */
    const char *specific;     /* event_specific_data as JSON text (e.g. from
                                 dsw_dagster_engine_data); NULL writes null */
    double timestamp;         /* unix seconds, written as a JSON float */
};

/* The EventLogEntry JSON for ev (caller frees), or NULL when ev->specific is not JSON, a string
 * is not valid UTF-8 or the timestamp is not finite. */
char *dsw_dagster_event_entry(const struct dsw_dagster_event *ev);

/* The DagsterEvent JSON alone, the line `dagster api execute_run` prints on stdout for each
 * event (caller frees); NULL as above or when ev->event_type is NULL. */
char *dsw_dagster_event_line(const struct dsw_dagster_event *ev);

/* EngineEventData JSON with the given text metadata entries (caller frees), for
 * dsw_dagster_event.specific; NULL when a string is not valid UTF-8. */
char *dsw_dagster_engine_data(const struct dsw_kv *meta, size_t nmeta);

/* v as Python's repr(float) writes it (shortest round-trip digits, "1.0", "1e+16", "-0.0"),
 * which is what json.dumps writes for a float. 0, or -EINVAL for NaN / infinity (Python would
 * write invalid JSON). out holds at least 32 bytes. */
int dsw_dagster_float_repr(double v, char out[32]) DSW_WUR;

/* Unix seconds as the naive UTC timestamp Dagster stores (datetime.utcfromtimestamp: the
 * microsecond rounded half-even), "YYYY-MM-DDTHH:MM:SS.ffffff", for event_logs.timestamp and
 * runs.update_timestamp. 0, or -EINVAL when ts is not finite or out of range. */
int dsw_dagster_naive_utc(double ts, char out[32]) DSW_WUR;

/* Text v re-serialized in Dagster's form (members in their stored order, Python's escapes and
 * float repr); sort non-zero also sorts every object's keys. Parsed with JSON_ALLOW_NUL and
 * JSON_REJECT_DUPLICATES. 0 and *out (caller frees), or -EINVAL when it is not JSON (or holds
 * an integer beyond 64 bits, which jansson cannot read). */
int dsw_dagster_json_normalize(const char *json, int sort, char **out) DSW_WUR;

#endif
