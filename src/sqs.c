/* sqs: each call is an op that builds its JSON 1.0 request once, then runs attempts: wait for
 * credentials, sign, POST, classify the reply, and either deliver it, refresh credentials and
 * retry once (auth), back off and retry (throttling, 5xx, transport) or fail. Every op owns a
 * uv_timer_t for its first attempt and its backoff; it is freed in that timer's close callback. */
#include "dsw/sqs.h"

#include "dsw/failpoint.h"
#include "dsw/list.h"

#include "dsw/log.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define URL_MAX  2048
#define CODE_MAX 128

static const char *const op_target[DSW_SQS_OP_COUNT] = {
    "ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch",
    "SendMessage",    "GetQueueAttributes", "GetQueueUrl",
    "CreateQueue"};
static const char *const op_names[DSW_SQS_OP_COUNT] = {
    "receive",       "delete_batch", "change_visibility_batch", "send", "get_attributes",
    "get_queue_url", "create_queue"};
static const char *const class_names[DSW_SQS_ERR_COUNT] = {
    "ok", "auth", "not_found", "throttled", "transport", "invalid", "canceled"};

struct op {
    struct dsw_sqs *s;
    enum dsw_sqs_op kind;
    char *req;
    size_t req_len;
    long timeout_ms;
    int attempt;
    int auth_retried;
    int waiting_aws;
    int done;
    int injected; /* failpoint "fail": the status the first attempt reports instead of sending */
    struct dsw_http_xfer *xfer;
    uv_timer_t timer;
    void (*cb)(void);
    void *arg;
    char **ids; /* batch entry ids, in request order */
    size_t nids;
    struct dsw_list link; /* in s->ops */
};

struct dsw_sqs {
    uv_loop_t *loop;
    struct dsw_http *http;
    struct dsw_aws *aws;
    char *endpoint;
    int max_attempts, base_ms, max_ms;
    long timeout_ms;
    size_t max_reply;
    struct dsw_list ops; /* struct op, newest first */
    size_t nops;
    uint64_t stats[DSW_SQS_OP_COUNT][DSW_SQS_ERR_COUNT];
    uv_timer_t guard; /* makes the close callback asynchronous; until then the delete window */
    struct dsw_list deletes; /* struct pending_delete, oldest first */
    size_t ndeletes;
    int closing;
    dsw_sqs_close_cb close_cb;
    void *close_arg;
};

static void send_attempt(struct op *op);
static void on_guard_closed(uv_handle_t *h);

/* ---- classification -------------------------------------------------------------------- */

static int code_in(const char *code, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(code, *list) == 0)
            return 1;
    return 0;
}

static const char *const auth_codes[] = {"SignatureDoesNotMatch",
                                         "InvalidClientTokenId",
                                         "ExpiredToken",
                                         "ExpiredTokenException",
                                         "AccessDenied",
                                         "AccessDeniedException",
                                         "UnrecognizedClientException",
                                         "MissingAuthenticationToken",
                                         "MissingAuthenticationTokenException",
                                         "IncompleteSignature",
                                         "IncompleteSignatureException",
                                         "InvalidSignatureException",
                                         "InvalidAccessKeyId",
                                         "InvalidSecurity",
                                         "RequestExpired",
                                         "AuthFailure",
                                         "OptInRequired",
                                         NULL};
static const char *const refresh_codes[] = {"ExpiredToken",
                                            "ExpiredTokenException",
                                            "InvalidClientTokenId",
                                            "SignatureDoesNotMatch",
                                            "RequestExpired",
                                            "UnrecognizedClientException",
                                            NULL};
static const char *const notfound_codes[] = {
    "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue", NULL};
static const char *const throttle_codes[] = {"ThrottlingException",
                                             "Throttling",
                                             "RequestThrottled",
                                             "ThrottledException",
                                             "TooManyRequestsException",
                                             "SlowDown",
                                             "RequestLimitExceeded",
                                             "KmsThrottled",
                                             "KMS.ThrottlingException",
                                             "OverLimit",
                                             NULL};
static const char *const server_codes[] = {"InternalError", "InternalFailure", "ServiceUnavailable",
                                           NULL};

int dsw_sqs_error_status(long http, const char *code)
{
    if (http >= 200 && http < 300)
        return 0;
    if (!code)
        code = "";
    if (code_in(code, auth_codes))
        return -EACCES;
    if (code_in(code, notfound_codes))
        return -ENOENT;
    if (code_in(code, throttle_codes) || http == 429)
        return -EBUSY;
    if (code_in(code, server_codes) || http >= 500)
        return -EREMOTEIO;
    if (http == 401 || http == 403)
        return -EACCES;
    return -EINVAL;
}

int dsw_sqs_refresh_code(const char *code)
{
    return code && code_in(code, refresh_codes);
}

enum dsw_sqs_errclass dsw_sqs_errclass(int status)
{
    switch (status) {
    case 0:
        return DSW_SQS_OK;
    case -EACCES:
        return DSW_SQS_ERR_AUTH;
    case -ENOENT:
        return DSW_SQS_ERR_NOT_FOUND;
    case -EBUSY:
        return DSW_SQS_ERR_THROTTLED;
    case -EINVAL:
    case -E2BIG:
    case -EBADMSG:
        return DSW_SQS_ERR_INVALID;
    case -ECANCELED:
    case -ESHUTDOWN:
        return DSW_SQS_ERR_CANCELED;
    default:
        return DSW_SQS_ERR_TRANSPORT;
    }
}

int dsw_sqs_retryable(int status)
{
    enum dsw_sqs_errclass c = dsw_sqs_errclass(status);
    return c == DSW_SQS_ERR_THROTTLED || c == DSW_SQS_ERR_TRANSPORT;
}

const char *dsw_sqs_op_name(enum dsw_sqs_op op)
{
    return (unsigned)op < DSW_SQS_OP_COUNT ? op_names[op] : "?";
}

const char *dsw_sqs_errclass_name(enum dsw_sqs_errclass c)
{
    return (unsigned)c < DSW_SQS_ERR_COUNT ? class_names[c] : "?";
}

int dsw_sqs_parse_error(const char *body, size_t len, char *out, size_t n)
{
    const char *p = body;
    while (p < body + len && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    if (p < body + len && *p == '<')
        return dsw_aws_xml_text(body, len, "Code", out, n) == 0 ? 0 : -ENOENT;
    json_t *root = json_loadb(body, len, 0, NULL);
    const char *t = NULL;
    if (root) {
        t = json_string_value(json_object_get(root, "__type"));
        if (!t)
            t = json_string_value(json_object_get(root, "code"));
    }
    int rc = -ENOENT;
    if (t) {
        const char *hash = strrchr(t, '#');
        dsw_strlcpy(out, hash ? hash + 1 : t, n);
        rc = *out ? 0 : -ENOENT;
    }
    json_decref(root);
    return rc;
}

/* ---- op lifecycle ---------------------------------------------------------------------- */

static void free_op(uv_handle_t *h)
{
    struct op *op = h->data;
    struct dsw_sqs *s = op->s;
    for (size_t i = 0; i < op->nids; i++)
        free(op->ids[i]);
    free(op->ids);
    free(op->req);
    free(op);
    if (--s->nops == 0 && s->closing)
        uv_close((uv_handle_t *)&s->guard, on_guard_closed);
}

static void unlink_op(struct op *op)
{
    op->done = 1;
    dsw_list_remove(&op->link);
    uv_close((uv_handle_t *)&op->timer, free_op);
}

static int entry_status(const char *code, int sender_fault)
{
    static const char *const gone[] = {"ReceiptHandleIsInvalid", "InvalidReceiptHandle",
                                       "MessageNotInflight", "InvalidParameterValue", NULL};
    if (code_in(code, gone))
        return -ENOENT;
    return sender_fault ? -EINVAL : -EREMOTEIO;
}

/* The entry of arr whose "Id" is id, or NULL. */
static json_t *find_entry(json_t *arr, const char *id)
{
    size_t j;
    json_t *e;
    json_array_foreach(arr, j, e)
    {
        if (dsw_streq(json_string_value(json_object_get(e, "Id")), id))
            return e;
    }
    return NULL;
}

static void deliver_batch(struct op *op, int status, json_t *root)
{
    dsw_sqs_batch_cb cb = (dsw_sqs_batch_cb)op->cb;
    if (status < 0) {
        cb(status, NULL, 0, op->arg);
        return;
    }
    struct dsw_sqs_entry_result *res = dsw_xcalloc(op->nids, sizeof(*res));
    json_t *ok = json_object_get(root, "Successful"), *failed = json_object_get(root, "Failed");
    for (size_t i = 0; i < op->nids; i++) {
        json_t *f = find_entry(failed, op->ids[i]);
        res[i].id = op->ids[i];
        if (f) {
            const char *code = json_string_value(json_object_get(f, "Code"));
            res[i].code = code ? code : "";
            res[i].status =
                entry_status(res[i].code, json_is_true(json_object_get(f, "SenderFault")));
        } else if (find_entry(ok, op->ids[i])) {
            res[i].code = "";
        } else {
            res[i].status = -EBADMSG;
            res[i].code = "MissingFromReply";
        }
    }
    cb(0, res, op->nids, op->arg);
    free(res);
}

static void parse_message(json_t *m, struct dsw_sqs_message *out, struct dsw_sqs_attr **attrs)
{
    json_t *sys = json_object_get(m, "Attributes"), *ma = json_object_get(m, "MessageAttributes");
    json_t *body = json_object_get(m, "Body");
    const char *name, *v;
    json_t *val;
    size_t i = 0;

    out->message_id = json_string_value(json_object_get(m, "MessageId"));
    out->receipt_handle = json_string_value(json_object_get(m, "ReceiptHandle"));
    out->body = json_is_string(body) ? json_string_value(body) : "";
    out->body_len = json_is_string(body) ? json_string_length(body) : 0;
    if ((v = json_string_value(json_object_get(sys, "ApproximateReceiveCount"))))
        out->receive_count = atoi(v);
    if ((v = json_string_value(json_object_get(sys, "SentTimestamp"))))
        out->sent_timestamp = strtoll(v, NULL, 10);
    *attrs = dsw_xcalloc(json_object_size(ma) + 1, sizeof(**attrs));
    json_object_foreach(ma, name, val)
    {
        json_t *sv = json_object_get(val, "StringValue");
        if (!sv)
            sv = json_object_get(val, "BinaryValue");
        (*attrs)[i].name = name;
        (*attrs)[i].data_type = json_string_value(json_object_get(val, "DataType"));
        (*attrs)[i].value = json_string_value(sv) ? json_string_value(sv) : "";
        i++;
    }
    out->attrs = *attrs;
    out->nattrs = i;
}

static void deliver_receive(struct op *op, int status, json_t *root)
{
    dsw_sqs_receive_cb cb = (dsw_sqs_receive_cb)op->cb;
    json_t *arr = json_object_get(root, "Messages");
    size_t n = status == 0 ? json_array_size(arr) : 0;
    if (n > DSW_SQS_MAX_BATCH)
        n = DSW_SQS_MAX_BATCH; /* the reply is the server's word; never more than asked */
    struct dsw_sqs_message *msgs = dsw_xcalloc(n + 1, sizeof(*msgs));
    struct dsw_sqs_attr **attrs = dsw_xcalloc(n + 1, sizeof(*attrs));
    size_t good = 0;
    for (size_t i = 0; i < n; i++) {
        parse_message(json_array_get(arr, i), &msgs[good], &attrs[good]);
        if (msgs[good].message_id && msgs[good].receipt_handle)
            good++;
        else {
            dsw_warn("sqs: ReceiveMessage: skipping a message without id or receipt handle");
            free(attrs[good]);
            attrs[good] = NULL;
        }
    }
    cb(status, status == 0 ? msgs : NULL, good, op->arg);
    for (size_t i = 0; i < n; i++)
        free(attrs[i]);
    free(attrs);
    free(msgs);
}

static void deliver_attrs(struct op *op, int status, json_t *root)
{
    json_t *obj = json_object_get(root, "Attributes"), *val;
    const char *name;
    size_t i = 0;
    struct dsw_sqs_attr *attrs = dsw_xcalloc(json_object_size(obj) + 1, sizeof(*attrs));
    json_object_foreach(obj, name, val)
    {
        if (status == 0 && json_is_string(val)) {
            attrs[i].name = name;
            attrs[i++].value = json_string_value(val);
        }
    }
    ((dsw_sqs_attrs_cb)op->cb)(status, status == 0 ? attrs : NULL, i, op->arg);
    free(attrs);
}

/* Run the op's callback once, with the parsed reply when status is 0; then retire the op. */
static void complete(struct op *op, int status, json_t *root)
{
    const char *str = NULL;
    if (op->done)
        return;
    unlink_op(op);
    /* Failpoint: messages were received (and are now invisible) but the caller never sees them:
     * they come back after their visibility timeout. */
    if (op->kind == DSW_SQS_OP_RECEIVE && status == 0) {
        int fp = DSW_FAILPOINT("after_receive");
        if (fp < 0)
            status = fp;
    }
    switch (op->kind) {
    case DSW_SQS_OP_RECEIVE:
        deliver_receive(op, status, root);
        break;
    case DSW_SQS_OP_DELETE_BATCH:
    case DSW_SQS_OP_CHANGE_VISIBILITY_BATCH:
        deliver_batch(op, status, root);
        break;
    case DSW_SQS_OP_SEND:
        str = status == 0 ? json_string_value(json_object_get(root, "MessageId")) : NULL;
        ((dsw_sqs_send_cb)op->cb)(status, str, op->arg);
        break;
    case DSW_SQS_OP_GET_ATTRIBUTES:
        deliver_attrs(op, status, root);
        break;
    default:
        str = status == 0 ? json_string_value(json_object_get(root, "QueueUrl")) : NULL;
        ((dsw_sqs_url_cb)op->cb)(status, str, op->arg);
    }
}

/* ---- attempts -------------------------------------------------------------------------- */

static void on_start(uv_timer_t *t)
{
    struct op *op = t->data;
    if (op->injected) {
        complete(op, op->injected, NULL);
        return;
    }
    send_attempt(op);
}

static void on_creds(int rc, void *arg)
{
    struct op *op = arg;
    op->waiting_aws = 0;
    if (rc == -ECANCELED)
        complete(op, -ECANCELED, NULL);
    else if (rc < 0) {
        op->s->stats[op->kind][DSW_SQS_ERR_AUTH]++;
        complete(op, -EACCES, NULL);
    } else
        send_attempt(op);
}

static long backoff_ms(const struct dsw_sqs *s, int attempt)
{
    long d = s->base_ms;
    for (int i = 1; i < attempt && d < s->max_ms; i++)
        d *= 2;
    d = DSW_MIN(d, (long)s->max_ms);
    /* "Equal jitter": never less than half the step, so a dead server is never hammered. */
    return d / 2 + (long)(rand() % (int)(d / 2 + 1));
}

static int reply_status(struct op *op, int err, const struct dsw_http_resp *r, char *code)
{
    code[0] = '\0';
    if (err < 0)
        return err;
    int status = dsw_sqs_error_status(r->status, "");
    if (status == 0)
        return 0;
    if (dsw_sqs_parse_error(r->body, r->len, code, CODE_MAX) < 0)
        snprintf(code, CODE_MAX, "HTTP %ld", r->status);
    return dsw_sqs_error_status(r->status, code);
}

static void on_reply(int err, const struct dsw_http_resp *r, void *arg)
{
    struct op *op = arg;
    struct dsw_sqs *s = op->s;
    char code[CODE_MAX];
    op->xfer = NULL;
    if (err == -ECANCELED) {
        complete(op, -ECANCELED, NULL);
        return;
    }
    int status = reply_status(op, err, r, code);
    json_t *root = NULL;
    if (status == 0) {
        root = json_loadb(r->body, r->len, JSON_ALLOW_NUL, NULL);
        if (!json_is_object(root)) {
            dsw_warn("sqs: %s: unparsable reply (%zu bytes)", op_target[op->kind], r->len);
            status = -EBADMSG;
        }
    }
    s->stats[op->kind][dsw_sqs_errclass(status)]++;
    if (status == -EACCES && !op->auth_retried && dsw_sqs_refresh_code(code)) {
        dsw_info("sqs: %s: %s; refreshing credentials and retrying once", op_target[op->kind],
                 code);
        op->auth_retried = 1;
        op->waiting_aws = 1;
        dsw_aws_refresh(s->aws, on_creds, op);
        return;
    }
    if (dsw_sqs_retryable(status) && op->attempt < s->max_attempts && !s->closing) {
        long d = backoff_ms(s, op->attempt);
        dsw_debug("sqs: %s: %s (%s); retry %d in %ld ms", op_target[op->kind],
                  code[0] ? code : strerror(-status),
                  dsw_sqs_errclass_name(dsw_sqs_errclass(status)), op->attempt, d);
        uv_timer_start(&op->timer, on_start, (uint64_t)d, 0);
        json_decref(root);
        return;
    }
    if (status < 0)
        dsw_warn("sqs: %s failed after %d attempt(s): %s (%s)", op_target[op->kind], op->attempt,
                 code[0] ? code : strerror(-status),
                 dsw_sqs_errclass_name(dsw_sqs_errclass(status)));
    complete(op, status, root);
    json_decref(root);
}

static void send_attempt(struct op *op)
{
    struct dsw_sqs *s = op->s;
    struct dsw_aws_signing sig;
    char target[64];
    if (dsw_aws_sign(s->aws, &sig) < 0) {
        op->waiting_aws = 1;
        dsw_aws_wait(s->aws, on_creds, op);
        return;
    }
    snprintf(target, sizeof(target), "X-Amz-Target: AmazonSQS.%s", op_target[op->kind]);
    struct dsw_http_req req = {
        .method = "POST",
        .url = s->endpoint,
        .headers = {"Content-Type: application/x-amz-json-1.0", target,
                    sig.token_header[0] ? sig.token_header : NULL},
        .body = op->req,
        .body_len = op->req_len,
        .timeout_ms = op->timeout_ms,
        .max_body = s->max_reply,
        .sign = sig.sign,
    };
    op->attempt++;
    int rc = dsw_http_request(s->http, &req, on_reply, op, &op->xfer);
    explicit_bzero(&sig, sizeof(sig));
    if (rc < 0) {
        op->xfer = NULL;
        s->stats[op->kind][dsw_sqs_errclass(rc)]++;
        complete(op, rc == -ESHUTDOWN ? -ECANCELED : rc, NULL);
    }
}

static void cancel_op(struct op *op)
{
    if (op->done)
        return;
    if (op->xfer)
        dsw_http_cancel(op->s->http, op->xfer); /* on_reply completes it */
    else if (op->waiting_aws)
        dsw_aws_wait_cancel(op->s->aws, on_creds, op);
    else {
        uv_timer_stop(&op->timer);
        complete(op, -ECANCELED, NULL);
    }
}

/* Take ownership of req (a JSON object) and start the op; the first attempt runs on the next
 * loop turn so that no callback fires inside the public call. */
static int submit(struct dsw_sqs *s, enum dsw_sqs_op kind, json_t *req, long timeout_ms,
                  void (*cb)(void), void *arg, struct op **out)
{
    if (s->closing) {
        json_decref(req);
        return -ESHUTDOWN;
    }
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!text)
        return -EINVAL;
    struct op *op = dsw_xcalloc(1, sizeof(*op));
    op->s = s;
    op->kind = kind;
    op->req = text;
    op->req_len = strlen(text);
    op->timeout_ms = timeout_ms ? timeout_ms : s->timeout_ms;
    op->cb = cb;
    op->arg = arg;
    uv_timer_init(s->loop, &op->timer);
    op->timer.data = op;
    dsw_list_push_front(&s->ops, &op->link);
    s->nops++;
    uv_timer_start(&op->timer, on_start, 0, 0);
    if (out)
        *out = op;
    return 0;
}

/* ---- public calls ---------------------------------------------------------------------- */

static int bad_url(const char *u)
{
    return !u || !*u || strlen(u) >= URL_MAX;
}

int dsw_sqs_init(struct dsw_sqs **out, uv_loop_t *loop, struct dsw_http *http, struct dsw_aws *aws,
                 const struct dsw_sqs_opts *o)
{
    if (bad_url(o->endpoint) || !http || !aws)
        return -EINVAL;
    struct dsw_sqs *s = dsw_xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->http = http;
    s->aws = aws;
    s->endpoint = dsw_xstrdup(o->endpoint);
    s->max_attempts = o->max_attempts > 0 ? o->max_attempts : 5;
    s->base_ms = o->backoff_base_ms > 0 ? o->backoff_base_ms : 100;
    s->max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 20000;
    s->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
    s->max_reply = o->max_reply ? o->max_reply : 12u * 1024 * 1024;
    dsw_list_init(&s->ops);
    dsw_list_init(&s->deletes);
    uv_timer_init(loop, &s->guard);
    s->guard.data = s;
    *out = s;
    return 0;
}

int dsw_sqs_receive(struct dsw_sqs *s, const char *url, int max, int wait_s, int visibility_s,
                    dsw_sqs_receive_cb cb, void *arg)
{
    if (bad_url(url) || max < 1 || max > DSW_SQS_MAX_BATCH || wait_s < 0 ||
        wait_s > DSW_SQS_MAX_WAIT_S || visibility_s < -1 || visibility_s > DSW_SQS_MAX_VISIBILITY)
        return -EINVAL;
    json_t *req = json_pack("{s:s, s:i, s:i, s:[s,s], s:[s,s], s:[s]}", "QueueUrl", url,
                            "MaxNumberOfMessages", max, "WaitTimeSeconds", wait_s,
                            "MessageSystemAttributeNames", "ApproximateReceiveCount",
                            "SentTimestamp", "AttributeNames", "ApproximateReceiveCount",
                            "SentTimestamp", "MessageAttributeNames", "All");
    if (req && visibility_s >= 0)
        json_object_set_new(req, "VisibilityTimeout", json_integer(visibility_s));
    return submit(s, DSW_SQS_OP_RECEIVE, req, wait_s * 1000L + 15000, (void (*)(void))cb, arg,
                  NULL);
}

static int batch(struct dsw_sqs *s, enum dsw_sqs_op kind, const char *url,
                 const struct dsw_sqs_entry *e, size_t n, dsw_sqs_batch_cb cb, void *arg)
{
    if (bad_url(url) || n < 1 || n > DSW_SQS_MAX_BATCH)
        return -EINVAL;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!e[i].id || !e[i].receipt_handle || e[i].visibility_s < 0 ||
            e[i].visibility_s > DSW_SQS_MAX_VISIBILITY || strlen(e[i].id) > 80) {
            json_decref(arr);
            return -EINVAL;
        }
        json_t *o = json_pack("{s:s, s:s}", "Id", e[i].id, "ReceiptHandle", e[i].receipt_handle);
        if (o && kind == DSW_SQS_OP_CHANGE_VISIBILITY_BATCH)
            json_object_set_new(o, "VisibilityTimeout", json_integer(e[i].visibility_s));
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return -EINVAL;
        }
    }
    json_t *req = json_pack("{s:s, s:o}", "QueueUrl", url, "Entries", arr);
    struct op *op = NULL;
    int rc = submit(s, kind, req, 0, (void (*)(void))cb, arg, &op);
    if (rc < 0)
        return rc;
    op->ids = dsw_xcalloc(n, sizeof(*op->ids));
    op->nids = n;
    for (size_t i = 0; i < n; i++)
        op->ids[i] = dsw_xstrdup(e[i].id);
    /* Failpoints: before a delete is sent / inside the visibility heartbeat. "fail" completes
     * the call with -EIO on its first turn, through the callback like any transport error. */
    op->injected =
        DSW_FAILPOINT(kind == DSW_SQS_OP_DELETE_BATCH ? "before_delete" : "heartbeat_visibility");
    return 0;
}

int dsw_sqs_delete_batch(struct dsw_sqs *s, const char *url, const struct dsw_sqs_entry *e,
                         size_t n, dsw_sqs_batch_cb cb, void *arg)
{
    return batch(s, DSW_SQS_OP_DELETE_BATCH, url, e, n, cb, arg);
}

int dsw_sqs_change_visibility_batch(struct dsw_sqs *s, const char *url,
                                    const struct dsw_sqs_entry *e, size_t n, dsw_sqs_batch_cb cb,
                                    void *arg)
{
    return batch(s, DSW_SQS_OP_CHANGE_VISIBILITY_BATCH, url, e, n, cb, arg);
}

/* ---- coalesced deletes ----------------------------------------------------------------- */

struct pending_delete {
    char *url, *receipt;
    dsw_sqs_batch_cb cb;
    void *arg;
    struct dsw_list link; /* in s->deletes */
};

/* The callers of one DeleteMessageBatch, in entry order. */
struct delete_group {
    size_t n;
    struct {
        dsw_sqs_batch_cb cb;
        void *arg;
    } who[DSW_SQS_MAX_BATCH];
};

static void on_group_deleted(int status, const struct dsw_sqs_entry_result *res, size_t n,
                             void *arg)
{
    struct delete_group *g = arg;
    for (size_t i = 0; i < g->n; i++) {
        if (status == 0 && i < n)
            g->who[i].cb(0, &res[i], 1, g->who[i].arg);
        else
            g->who[i].cb(status ? status : -EBADMSG, NULL, 0, g->who[i].arg);
    }
    free(g);
}

static void pending_free(struct pending_delete *d)
{
    free(d->url);
    free(d->receipt);
    free(d);
}

/* Send everything waiting: one batch per ten deletes of the same queue, oldest first. */
static void flush_deletes(struct dsw_sqs *s)
{
    while (!dsw_list_empty(&s->deletes)) {
        struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
        struct pending_delete *taken[DSW_SQS_MAX_BATCH];
        char ids[DSW_SQS_MAX_BATCH][4];
        struct delete_group *g = dsw_xcalloc(1, sizeof(*g));
        const char *url = dsw_list_entry(s->deletes.next, struct pending_delete, link)->url;
        struct dsw_list *i, *next;
        dsw_list_foreach_safe(i, next, &s->deletes)
        {
            struct pending_delete *d = dsw_list_entry(i, struct pending_delete, link);
            if (g->n == DSW_SQS_MAX_BATCH)
                break;
            if (strcmp(d->url, url) != 0)
                continue;
            snprintf(ids[g->n], sizeof(ids[0]), "d%zu", g->n);
            e[g->n] = (struct dsw_sqs_entry){.id = ids[g->n], .receipt_handle = d->receipt};
            g->who[g->n].cb = d->cb;
            g->who[g->n].arg = d->arg;
            taken[g->n++] = d;
            dsw_list_remove(&d->link);
            s->ndeletes--;
        }
        int rc = batch(s, DSW_SQS_OP_DELETE_BATCH, url, e, g->n, on_group_deleted, g);
        for (size_t k = 0; k < g->n; k++)
            pending_free(taken[k]);
        if (rc < 0) /* from the loop (the window's timer or close), never inside a caller */
            on_group_deleted(rc, NULL, 0, g);
    }
}

static void on_delete_window(uv_timer_t *t)
{
    flush_deletes(t->data);
}

int dsw_sqs_delete(struct dsw_sqs *s, const char *url, const char *receipt, dsw_sqs_batch_cb cb,
                   void *arg)
{
    if (bad_url(url) || !receipt || !*receipt || !cb)
        return -EINVAL;
    if (s->closing)
        return -ESHUTDOWN;
    struct pending_delete *d = dsw_xcalloc(1, sizeof(*d));
    d->url = dsw_xstrdup(url);
    d->receipt = dsw_xstrdup(receipt);
    d->cb = cb;
    d->arg = arg;
    dsw_list_push_back(&s->deletes, &d->link);
    if (++s->ndeletes >= DSW_SQS_MAX_BATCH)
        uv_timer_start(&s->guard, on_delete_window, 0, 0);
    else if (s->ndeletes == 1)
        uv_timer_start(&s->guard, on_delete_window, DSW_SQS_DELETE_DELAY_MS, 0);
    return 0;
}

static json_t *attrs_json(const struct dsw_sqs_attr *a, size_t n)
{
    json_t *obj = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_pack("{s:s, s:s}", "DataType", a[i].data_type ? a[i].data_type : "String",
                              "StringValue", a[i].value ? a[i].value : "");
        if (!v || !a[i].name || json_object_set_new(obj, a[i].name, v) < 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

int dsw_sqs_send(struct dsw_sqs *s, const char *url, const struct dsw_sqs_send_req *r,
                 dsw_sqs_send_cb cb, void *arg)
{
    if (bad_url(url) || !r->body || r->body_len > DSW_SQS_MAX_BODY || r->delay_s < 0 ||
        r->delay_s > 900)
        return -EINVAL;
    json_t *body = json_stringn(r->body, r->body_len); /* NULL on invalid UTF-8 */
    json_t *req = json_pack("{s:s, s:o}", "QueueUrl", url, "MessageBody", body);
    if (!req)
        return -EINVAL;
    if (r->delay_s)
        json_object_set_new(req, "DelaySeconds", json_integer(r->delay_s));
    if (r->nattrs) {
        json_t *a = attrs_json(r->attrs, r->nattrs);
        if (!a) {
            json_decref(req);
            return -EINVAL;
        }
        json_object_set_new(req, "MessageAttributes", a);
    }
    if (r->group_id)
        json_object_set_new(req, "MessageGroupId", json_string(r->group_id));
    if (r->dedup_id)
        json_object_set_new(req, "MessageDeduplicationId", json_string(r->dedup_id));
    return submit(s, DSW_SQS_OP_SEND, req, 0, (void (*)(void))cb, arg, NULL);
}

int dsw_sqs_get_attributes(struct dsw_sqs *s, const char *url, const char *const *names,
                           size_t nnames, dsw_sqs_attrs_cb cb, void *arg)
{
    if (bad_url(url) || nnames == 0 || nnames > 64)
        return -EINVAL;
    json_t *arr = json_array();
    for (size_t i = 0; i < nnames; i++)
        if (!names[i] || json_array_append_new(arr, json_string(names[i])) < 0) {
            json_decref(arr);
            return -EINVAL;
        }
    json_t *req = json_pack("{s:s, s:o}", "QueueUrl", url, "AttributeNames", arr);
    return submit(s, DSW_SQS_OP_GET_ATTRIBUTES, req, 0, (void (*)(void))cb, arg, NULL);
}

int dsw_sqs_get_queue_url(struct dsw_sqs *s, const char *name, dsw_sqs_url_cb cb, void *arg)
{
    if (!name || !*name || strlen(name) > 80)
        return -EINVAL;
    json_t *req = json_pack("{s:s}", "QueueName", name);
    return submit(s, DSW_SQS_OP_GET_QUEUE_URL, req, 0, (void (*)(void))cb, arg, NULL);
}

int dsw_sqs_create_queue(struct dsw_sqs *s, const char *name, const struct dsw_sqs_attr *attrs,
                         size_t nattrs, dsw_sqs_url_cb cb, void *arg)
{
    if (!name || !*name || strlen(name) > 80)
        return -EINVAL;
    json_t *req = json_pack("{s:s}", "QueueName", name);
    if (req && nattrs) {
        json_t *obj = json_object();
        for (size_t i = 0; i < nattrs; i++)
            json_object_set_new(obj, attrs[i].name, json_string(attrs[i].value));
        json_object_set_new(req, "Attributes", obj);
    }
    return submit(s, DSW_SQS_OP_CREATE_QUEUE, req, 0, (void (*)(void))cb, arg, NULL);
}

void dsw_sqs_cancel_receives(struct dsw_sqs *s)
{
    /* Ops are freed only in their timer's close callback, so next stays readable even when a
     * callback retires other ops. */
    struct dsw_list *n, *next;
    dsw_list_foreach_safe(n, next, &s->ops)
    {
        struct op *op = dsw_list_entry(n, struct op, link);
        if (op->kind == DSW_SQS_OP_RECEIVE)
            cancel_op(op);
    }
}

uint64_t dsw_sqs_requests(const struct dsw_sqs *s, enum dsw_sqs_op op, enum dsw_sqs_errclass c)
{
    if ((unsigned)op >= DSW_SQS_OP_COUNT || (unsigned)c >= DSW_SQS_ERR_COUNT)
        return 0;
    return s->stats[op][c];
}

size_t dsw_sqs_pending(const struct dsw_sqs *s)
{
    size_t n = 0;
    const struct dsw_list *i;
    dsw_list_foreach(i, &s->ops) n++;
    return n;
}

static void on_guard_closed(uv_handle_t *h)
{
    struct dsw_sqs *s = h->data;
    dsw_sqs_close_cb cb = s->close_cb;
    void *arg = s->close_arg;
    free(s->endpoint);
    free(s);
    if (cb)
        cb(arg);
}

void dsw_sqs_close(struct dsw_sqs *s, dsw_sqs_close_cb cb, void *arg)
{
    if (s->closing)
        return;
    uv_timer_stop(&s->guard);
    flush_deletes(s); /* sent, then canceled below with the other calls */
    s->closing = 1;
    s->close_cb = cb;
    s->close_arg = arg;
    while (!dsw_list_empty(&s->ops)) {
        struct op *op = dsw_list_entry(s->ops.next, struct op, link);
        cancel_op(op);
        if (!op->done) /* a wait aws already dropped: retire it here */
            complete(op, -ECANCELED, NULL);
    }
    if (s->nops == 0)
        uv_close((uv_handle_t *)&s->guard, on_guard_closed);
}
