/* sqs: the SQS calls the worker needs, over the AWS JSON 1.0 protocol (POST / to the configured
 * endpoint, X-Amz-Target: AmazonSQS.<Action>), signed through aws, sent through http. Throttling,
 * 5xx and transport errors are retried with capped exponential backoff and jitter; auth errors
 * get one credential refresh and one retry; validation errors are not retried. Every request is
 * counted by operation and result for the metrics endpoint. */
#ifndef DSW_SQS_H
#define DSW_SQS_H

#include "dsw/aws.h"
#include "dsw/http.h"
#include "dsw/util.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct dsw_sqs; /* opaque: created by dsw_sqs_init, freed by dsw_sqs_close's callback */

/* SQS limits (SPEC §6). */
#define DSW_SQS_MAX_BATCH      10
#define DSW_SQS_MAX_WAIT_S     20
#define DSW_SQS_MAX_VISIBILITY (12 * 3600)
#define DSW_SQS_MAX_BODY       (1024 * 1024)

/* Operations and results, for dsw_sqs_requests (metric dsw_sqs_requests_total{op,result}). */
enum dsw_sqs_op {
    DSW_SQS_OP_RECEIVE,
    DSW_SQS_OP_DELETE_BATCH,
    DSW_SQS_OP_CHANGE_VISIBILITY_BATCH,
    DSW_SQS_OP_SEND,
    DSW_SQS_OP_GET_ATTRIBUTES,
    DSW_SQS_OP_GET_QUEUE_URL,
    DSW_SQS_OP_CREATE_QUEUE,
    DSW_SQS_OP_COUNT
};

/* Error categories. Callback statuses are 0 or one negative errno per category:
 *   DSW_SQS_ERR_AUTH       -EACCES     credentials refused (SignatureDoesNotMatch, ExpiredToken,
 *                                      InvalidClientTokenId, AccessDenied...) or none found
 *   DSW_SQS_ERR_NOT_FOUND  -ENOENT     QueueDoesNotExist / NonExistentQueue
 *   DSW_SQS_ERR_THROTTLED  -EBUSY      throttled on every attempt
 *   DSW_SQS_ERR_TRANSPORT  any other   connection, timeout, 5xx (-EREMOTEIO) on every attempt
 *   DSW_SQS_ERR_INVALID    -EINVAL     a 4xx the server blamed on the request (also -E2BIG for
 *                                      a reply over the cap, -EBADMSG for an unparsable reply)
 *   DSW_SQS_ERR_CANCELED   -ECANCELED  dsw_sqs_close / dsw_sqs_cancel_receives */
enum dsw_sqs_errclass {
    DSW_SQS_OK,
    DSW_SQS_ERR_AUTH,
    DSW_SQS_ERR_NOT_FOUND,
    DSW_SQS_ERR_THROTTLED,
    DSW_SQS_ERR_TRANSPORT,
    DSW_SQS_ERR_INVALID,
    DSW_SQS_ERR_CANCELED,
    DSW_SQS_ERR_COUNT
};

/* The category of a callback status. */
enum dsw_sqs_errclass dsw_sqs_errclass(int status);
/* "receive", "delete_batch", ... / "ok", "auth", "not_found", "throttled", "transport",
 * "invalid", "canceled": metric label values. */
const char *dsw_sqs_op_name(enum dsw_sqs_op op);
const char *dsw_sqs_errclass_name(enum dsw_sqs_errclass c);

/* One message attribute: name -> value. data_type is "String", "Number" or "Binary" (or a
 * custom "String.x"); value is the StringValue (for Binary: the base64 text). */
struct dsw_sqs_attr {
    const char *name;
    const char *data_type;
    const char *value;
};

/* A received message. All pointers are borrowed: valid only during the receive callback. */
struct dsw_sqs_message {
    const char *message_id;
    const char *receipt_handle;
    const char *body; /* body_len bytes plus a NUL (the body may itself contain NULs) */
    size_t body_len;
    int receive_count;                /* ApproximateReceiveCount, 0 when absent */
    int64_t sent_timestamp;           /* SentTimestamp, unix milliseconds, 0 when absent */
    const struct dsw_sqs_attr *attrs; /* message attributes */
    size_t nattrs;
};

/* One entry of DeleteMessageBatch (visibility ignored) or ChangeMessageVisibilityBatch. id must
 * be unique within the batch ([A-Za-z0-9_-]{1,80}). */
struct dsw_sqs_entry {
    const char *id;
    const char *receipt_handle;
    int visibility_s; /* 0..43200; 0 releases the message at once */
};

/* The outcome of one batch entry, in the order of the request's entries. status is 0, or
 * -ENOENT (ReceiptHandleIsInvalid, MessageNotInflight...) / -EINVAL (other sender fault) /
 * -EREMOTEIO (server fault); code is the server's error code ("" when ok). */
struct dsw_sqs_entry_result {
    const char *id;
    int status;
    const char *code;
};

/* A SendMessage request. body must be valid UTF-8 of at most DSW_SQS_MAX_BODY bytes. */
struct dsw_sqs_send_req {
    const char *body;
    size_t body_len;
    const struct dsw_sqs_attr *attrs; /* data_type NULL means "String" */
    size_t nattrs;
    int delay_s;          /* 0..900 */
    const char *group_id; /* FIFO queues: MessageGroupId, else NULL */
    const char *dedup_id; /* FIFO queues: MessageDeduplicationId, else NULL */
};

/* Options: strings are copied. */
struct dsw_sqs_opts {
    const char *endpoint; /* required: "http://127.0.0.1:4566" or https://sqs.<region>... */
    int max_attempts;     /* per call, counting the first; 0 = 5 */
    int backoff_base_ms;  /* first retry after base/2..base; doubles; 0 = 100 */
    int backoff_max_ms;   /* cap of one delay; 0 = 20000 */
    long timeout_ms;      /* HTTP timeout of non-polling calls; 0 = 15000 */
    size_t max_reply;     /* response body cap; 0 = 12 MiB (10 messages of 1 MiB + JSON) */
};

/* Callbacks. Each fires exactly once per accepted call, never from inside the call, with
 * status 0 or a negative errno (see enum dsw_sqs_errclass); the data is borrowed. */
typedef void (*dsw_sqs_receive_cb)(int status, const struct dsw_sqs_message *msgs, size_t n,
                                   void *arg);
/* Batch calls: status is 0 when the call itself succeeded, even if some entries failed: check
 * res[i].status. On a call error res is NULL and n is 0. */
typedef void (*dsw_sqs_batch_cb)(int status, const struct dsw_sqs_entry_result *res, size_t n,
                                 void *arg);
typedef void (*dsw_sqs_send_cb)(int status, const char *message_id, void *arg);
/* Queue attributes as name -> value strings (data_type NULL). */
typedef void (*dsw_sqs_attrs_cb)(int status, const struct dsw_sqs_attr *attrs, size_t n, void *arg);
typedef void (*dsw_sqs_url_cb)(int status, const char *queue_url, void *arg);
typedef void (*dsw_sqs_close_cb)(void *arg);

/* Create a client. http and aws are borrowed and must outlive it (close sqs first).
 * 0 or -EINVAL (no endpoint). */
int dsw_sqs_init(struct dsw_sqs **out, uv_loop_t *loop, struct dsw_http *http, struct dsw_aws *aws,
                 const struct dsw_sqs_opts *opts) DSW_WUR;

/* ReceiveMessage: long poll wait_s (0..20) for up to max (1..10) messages, hidden for
 * visibility_s (-1: the queue's default) once received; asks for ApproximateReceiveCount,
 * SentTimestamp and all message attributes. The HTTP timeout is wait_s + 15 s. An empty reply
 * is status 0 with n = 0. 0 or -EINVAL (bad argument) / -ESHUTDOWN (closing). */
int dsw_sqs_receive(struct dsw_sqs *s, const char *queue_url, int max, int wait_s, int visibility_s,
                    dsw_sqs_receive_cb cb, void *arg) DSW_WUR;

/* DeleteMessageBatch of n (1..10) entries; per-entry results in cb. 0 or -EINVAL. */
int dsw_sqs_delete_batch(struct dsw_sqs *s, const char *queue_url,
                         const struct dsw_sqs_entry *entries, size_t n, dsw_sqs_batch_cb cb,
                         void *arg) DSW_WUR;

/* Deletes coalesced across callers: the delete of one message is held for at most
 * DSW_SQS_DELETE_DELAY_MS and sent in one DeleteMessageBatch with the other deletes of that
 * window for the same queue (at once when ten wait). cb gets this message's own entry result
 * (n = 1: status 0, or that entry's failure, which the caller handles for its message alone)
 * or, when the call itself failed, the call's status with n = 0. Closing the client sends
 * what waits and then cancels it like every other call (-ECANCELED). 0, -EINVAL or
 * -ESHUTDOWN. */
#define DSW_SQS_DELETE_DELAY_MS 100
int dsw_sqs_delete(struct dsw_sqs *s, const char *queue_url, const char *receipt_handle,
                   dsw_sqs_batch_cb cb, void *arg) DSW_WUR;

/* ChangeMessageVisibilityBatch of n (1..10) entries (visibility_s each; 0 releases). */
int dsw_sqs_change_visibility_batch(struct dsw_sqs *s, const char *queue_url,
                                    const struct dsw_sqs_entry *entries, size_t n,
                                    dsw_sqs_batch_cb cb, void *arg) DSW_WUR;

/* SendMessage; cb gets the new MessageId. 0 or -EINVAL (too big, bad UTF-8, bad delay). */
int dsw_sqs_send(struct dsw_sqs *s, const char *queue_url, const struct dsw_sqs_send_req *req,
                 dsw_sqs_send_cb cb, void *arg) DSW_WUR;

/* GetQueueAttributes for names (e.g. "ApproximateNumberOfMessages",
 * "ApproximateNumberOfMessagesNotVisible", "VisibilityTimeout"; "All" for all). */
int dsw_sqs_get_attributes(struct dsw_sqs *s, const char *queue_url, const char *const *names,
                           size_t nnames, dsw_sqs_attrs_cb cb, void *arg) DSW_WUR;

/* GetQueueUrl for a queue name. */
int dsw_sqs_get_queue_url(struct dsw_sqs *s, const char *name, dsw_sqs_url_cb cb,
                          void *arg) DSW_WUR;

/* CreateQueue (tests, tooling) with attributes name -> value (e.g. "VisibilityTimeout"). */
int dsw_sqs_create_queue(struct dsw_sqs *s, const char *name, const struct dsw_sqs_attr *attrs,
                         size_t nattrs, dsw_sqs_url_cb cb, void *arg) DSW_WUR;

/* Abort every ReceiveMessage in flight or waiting to retry (drain): callbacks fire now with
 * -ECANCELED. Messages the server already handed out stay invisible until their timeout. */
void dsw_sqs_cancel_receives(struct dsw_sqs *s);

/* HTTP requests made so far for op that ended in category c (DSW_SQS_OK for success); every
 * attempt counts, retries included. */
uint64_t dsw_sqs_requests(const struct dsw_sqs *s, enum dsw_sqs_op op, enum dsw_sqs_errclass c);

/* Calls in progress (including ones waiting for a retry or for credentials). */
size_t dsw_sqs_pending(const struct dsw_sqs *s);

/* Cancel every call (callbacks fire with -ECANCELED) and close every timer; cb(arg) once all
 * are closed and s is freed. http and aws stay open. cb may be NULL. */
void dsw_sqs_close(struct dsw_sqs *s, dsw_sqs_close_cb cb, void *arg);

/* ---- pure helpers (exposed for tests) ------------------------------------------------- */

/* The error code of an error reply: JSON {"__type": "com.amazonaws.sqs#Code", "message": ...}
 * (the part after '#'; "code" also accepted) or XML <Code>...</Code>. 0 and the code in out, or
 * -ENOENT when none is found. */
int dsw_sqs_parse_error(const char *body, size_t len, char *out, size_t n) DSW_WUR;

/* The status for a reply with HTTP status http and error code (may be "" or NULL): 0 for 2xx,
 * else one of the negative errnos of enum dsw_sqs_errclass. */
int dsw_sqs_error_status(long http, const char *code);

/* Whether a status is worth retrying (throttled or transport). */
int dsw_sqs_retryable(int status);

/* Whether code calls for one credential refresh and one retry (ExpiredToken,
 * InvalidClientTokenId, SignatureDoesNotMatch, ...). */
int dsw_sqs_refresh_code(const char *code);

#endif
