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
 * "PIPELINE_FAILURE" (level 40) or "PIPELINE_CANCELED" (level 20), "PIPELINE_STARTING" (20),
 * with event_specific_data null, like Dagster's own report_run_failed. */
char *dsw_dagster_run_event(const char *run_id, const char *job_name, const char *event_type,
                            const char *message, int pid, double timestamp);

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

#endif
