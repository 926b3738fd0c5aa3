/* msg: a pure decoder from an SQS message body (plus its message attributes) to a validated run
 * or step request, or to a reject reason of SPEC §1.5. Accepted forms: the TaskIQ envelope
 * (execute_job / resume_job / execute_step with kwargs, legacy dagster_execute_job with
 * args[0]), the bare serdes ExecuteRunArgs / ResumeRunArgs / ExecuteStepArgs object, and a
 * Celery message as kombu's SQS transport writes it (execute_job, resume_job, and
 * dagster-celery's execute_plan step task; also with kombu's zlib compression,
 * headers.compression = application/x-gzip). A step (docs/steps.md §1) names exactly one step key;
 * its attempt is 1 + known_state.previous_retry_attempts[step key].
 * No I/O, no logging, no globals: safe to fuzz and to call from any thread.
 * Every body is treated as secret: nothing from it reaches a reject detail. */
#ifndef DSW_MSG_H
#define DSW_MSG_H

#include "dsw/util.h"

#include <stddef.h>

/* Hard ceiling of a body (SQS's own limit) and the default of queue.max_body. */
#define DSW_MSG_MAX_BODY     (1024u * 1024u)
#define DSW_MSG_DEFAULT_BODY (256u * 1024u)
/* Deepest JSON nesting accepted anywhere in a body (Dagster's objects need about 8). */
#define DSW_MSG_MAX_DEPTH 64
/* Most bytes a compressed Celery body may inflate to; more is a too_large reject, found while
 * inflating in bounded chunks (never allocated). */
#define DSW_MSG_MAX_INFLATED (1024u * 1024u)
/* Longest run id (non-strict mode) and task id, without the NUL. */
#define DSW_MSG_RUN_ID_MAX  64
#define DSW_MSG_TASK_ID_MAX 128

/* Why a body was refused; the names are the label values of dsw_messages_rejected_total. */
enum dsw_msg_reason {
    DSW_MSG_OK = 0,
    DSW_MSG_TOO_LARGE,               /* "too_large": over opts.max_body */
    DSW_MSG_BAD_JSON,                /* "bad_json": not (base64 of) strict JSON, or too deep */
    DSW_MSG_BAD_ENVELOPE,            /* "bad_envelope": JSON, but not a shape we know; for a
                                        step also: not exactly one step key, a bad key, attempt
                                        or retry_mode (docs/steps.md §1) */
    DSW_MSG_UNSUPPORTED_TASK,        /* "unsupported_task": a task name other than those above
                                        (e.g. execute_plan in a TaskIQ envelope) */
    DSW_MSG_BAD_CLASS,               /* "bad_class": a serdes __class__ other than expected
                                        (args, pipeline_origin, instance_ref, known_state) */
    DSW_MSG_BAD_RUN_ID,              /* "bad_run_id": missing, not a string, or bad format */
    DSW_MSG_S3_POINTER_UNSUPPORTED,  /* "s3_pointer_unsupported": taskiq-aio-sqs S3 pointer */
    DSW_MSG_UNKNOWN_RUN,             /* "unknown_run": decided by the caller (no runs row) */
    DSW_MSG_BAD_SIGNATURE,           /* "bad_signature": decided by the caller (signing) */
    DSW_MSG_UNSUPPORTED_COMPRESSION, /* "unsupported_compression": a Celery body compressed
                                        with anything but zlib (headers.compression) */
};
#define DSW_MSG_REASON_COUNT (DSW_MSG_UNSUPPORTED_COMPRESSION + 1)

enum dsw_msg_kind { DSW_MSG_EXECUTE, DSW_MSG_RESUME, DSW_MSG_STEP }; /* kind name "step" */
#define DSW_MSG_STEP_KEY_MAX 255
/* Most previous attempts a step may report (known_state.previous_retry_attempts[key]). */
#define DSW_MSG_STEP_PREVIOUS_MAX 1000

/* Which wire form the request came in (for logs and metrics). */
enum dsw_msg_form {
    DSW_MSG_FORM_TASKIQ,        /* TaskIQ envelope, packed args in kwargs */
    DSW_MSG_FORM_TASKIQ_LEGACY, /* dagster_execute_job / ...simple_tasks:execute_job, args[0] */
    DSW_MSG_FORM_SERDES,        /* the bare ExecuteRunArgs / ResumeRunArgs / ExecuteStepArgs */
    DSW_MSG_FORM_CELERY,        /* kombu SQS transport: base64 envelope, Celery protocol 2 */
};

/* One SQS message attribute as received (borrowed strings; data_type and value may be NULL). */
struct dsw_msg_attr {
    const char *name;
    const char *data_type; /* "String", "Number", "Binary", ... */
    const char *value;     /* StringValue */
};

/* Decoder options. Zero-initialised means: 256 KiB cap, run ids of any [A-Za-z0-9_-]{1,64}
 * (set strict_run_id for the default runs.strict_run_id = true), no attributes. */
struct dsw_msg_opts {
    size_t max_body;                  /* queue.max_body; 0 = default, clamped to 1 MiB */
    int strict_run_id;                /* 1: exactly [0-9a-f-]{36}; 0: [A-Za-z0-9_-]{1,64} */
    const struct dsw_msg_attr *attrs; /* the message's MessageAttributes (may be NULL) */
    size_t nattrs;
};

/* A validated request. Owned by the caller; release with dsw_msg_request_clear(). */
struct dsw_msg_request {
    enum dsw_msg_kind kind;
    enum dsw_msg_form form;
    char run_id[DSW_MSG_RUN_ID_MAX + 1];   /* validated against opts.strict_run_id */
    char task_id[DSW_MSG_TASK_ID_MAX + 1]; /* TaskIQ/Celery id ([A-Za-z0-9_.:-]), "" if none */
    int set_exit_code_on_failure;          /* 1 when the args said true, else 0 (0 for steps) */
    /* The args' instance_ref (class InstanceRef) as compact JSON, only for
     * runs.instance_ref = forward; NULL when absent or null. Secret: never log it. */
    char *instance_ref;
    /* zero/NULL unless kind == DSW_MSG_STEP, freed by dsw_msg_request_clear: */
    char step_key[DSW_MSG_STEP_KEY_MAX + 1]; /* the one key of step_keys_to_execute */
    int step_attempt;                        /* 1 + previous_retry_attempts[step_key] */
    char *step_known_state; /* known_state as compact JSON, NULL when null/absent */
    char *step_retry_mode;  /* retry_mode enum object as compact JSON, or NULL */
    int step_print_events;  /* print_serialized_events: -1 absent, else 0/1 */
};

/* Why a body was rejected: the reason and a short human detail that names the failing check
 * (fixed text and numbers only, never bytes of the body). */
struct dsw_msg_reject {
    enum dsw_msg_reason reason;
    char detail[120];
};

/* Decode body[0..len) (need not be NUL-terminated; any bytes). On success returns 0 and fills
 * *req (caller clears it); rej->reason is DSW_MSG_OK. On a reject returns -EBADMSG, leaves *req
 * zeroed and fills *rej. opts may be NULL (all defaults). Never logs; allocation failure
 * aborts (dsw_xmalloc). req and rej are required. The size check happens before any parsing. */
int dsw_msg_decode(const void *body, size_t len, const struct dsw_msg_opts *opts,
                   struct dsw_msg_request *req, struct dsw_msg_reject *rej) DSW_WUR;

/* Free what a request owns and zero it; safe on a zeroed or already cleared request. */
void dsw_msg_request_clear(struct dsw_msg_request *req);

/* The SPEC name of a reason ("too_large", ...; "ok" for DSW_MSG_OK, "unknown" out of range). */
const char *dsw_msg_reason_name(enum dsw_msg_reason reason);
/* Parse a SPEC name back to a reason; -EINVAL when unknown. */
int dsw_msg_reason_parse(const char *name, enum dsw_msg_reason *out) DSW_WUR;

/* "execute" / "resume" / "step", and "taskiq" / "taskiq_legacy" / "serdes" / "celery". */
const char *dsw_msg_kind_name(enum dsw_msg_kind kind);
const char *dsw_msg_form_name(enum dsw_msg_form form);

/* Check a run id against the format rule of SPEC §1.5 (strict or not). 1 if valid, else 0.
 * Exposed so that other entry points (enqueue RUN_ID) apply the same rule. */
int dsw_msg_run_id_valid(const char *run_id, int strict);

/* Check a step key against docs/steps.md §1: 1..DSW_MSG_STEP_KEY_MAX chars of [A-Za-z0-9_.,[]-].
 * 1 if valid, else 0. */
int dsw_msg_step_key_valid(const char *step_key);

#endif
