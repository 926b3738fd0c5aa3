/* http: an HTTP client on the libuv loop (libcurl multi driven by curl_multi_socket_action, with
 * socket and timer callbacks on uv_poll_t / uv_timer_t). One completion callback per request,
 * keep-alive connection reuse through the multi handle's connection cache, per-request timeouts,
 * response bodies capped. Knows nothing of SQS or AWS beyond passing curl's SigV4 settings. */
#ifndef DSW_HTTP_H
#define DSW_HTTP_H

#include "dsw/util.h"

#include <stddef.h>
#include <uv.h>

/* The client: opaque; created by dsw_http_init, freed only by dsw_http_close's callback. */
struct dsw_http;
/* One request in flight: opaque; valid from dsw_http_request until its callback starts. */
struct dsw_http_xfer;

#define DSW_HTTP_MAX_HEADERS      8
#define DSW_HTTP_DEFAULT_MAX_BODY (2u * 1024 * 1024)

/* SigV4 signing through CURLOPT_AWS_SIGV4; all NULL means unsigned. Borrowed for the duration
 * of dsw_http_request only (curl copies them). */
struct dsw_http_sign {
    const char *provider; /* "aws:amz:<region>:<service>", region and service explicit */
    const char *user;     /* access key id */
    const char *password; /* secret access key: never logged */
};

/* A request. Every pointer is borrowed for the duration of dsw_http_request only: the body is
 * copied (CURLOPT_COPYPOSTFIELDS, so that SigV4 covers it) and so are the headers. */
struct dsw_http_req {
    const char *method; /* "GET", "POST", "PUT"; NULL = GET, or POST when body is set */
    const char *url;    /* http:// or https:// only */
    const char *headers[DSW_HTTP_MAX_HEADERS]; /* "Name: value", NULL-terminated if < max */
    const void *body;                          /* may be NULL */
    size_t body_len;
    long timeout_ms;         /* whole transfer; 0 = 30 s. A long poll must exceed its wait time */
    long connect_timeout_ms; /* 0 = 10 s (or timeout_ms when smaller) */
    size_t max_body;         /* response body cap; 0 = DSW_HTTP_DEFAULT_MAX_BODY */
    struct dsw_http_sign sign;
};

/* What came back. body is NUL-terminated (len excludes the NUL) and borrowed: valid only
 * during the callback. */
struct dsw_http_resp {
    long status;      /* HTTP status, 0 when no response was received */
    const char *body; /* never NULL ("" when empty) */
    size_t len;
};

/* Completion: err is 0 when an HTTP response arrived (whatever its status), else a negative
 * errno: -ETIMEDOUT, -ECONNREFUSED, -EHOSTUNREACH (cannot resolve/reach), -E2BIG (body over
 * max_body), -ECANCELED (dsw_http_cancel / dsw_http_close), -EIO (any other transport error;
 * curl's text is logged once at debug level). Fires exactly once per accepted request. */
typedef void (*dsw_http_cb)(int err, const struct dsw_http_resp *resp, void *arg);
/* dsw_http_close done: every handle is closed and the client's memory freed. */
typedef void (*dsw_http_close_cb)(void *arg);

/* Create a client on loop (curl_global_init is done once, here). 0, or -ENOMEM / -EIO. */
int dsw_http_init(struct dsw_http **out, uv_loop_t *loop) DSW_WUR;

/* Start a request; cb fires exactly once, never from inside this call. *xfer (when xfer is not
 * NULL) identifies the request for dsw_http_cancel until cb runs. Returns 0, -EINVAL (bad
 * request), -ESHUTDOWN (client closing); on error cb is never called. */
int dsw_http_request(struct dsw_http *h, const struct dsw_http_req *req, dsw_http_cb cb, void *arg,
                     struct dsw_http_xfer **xfer) DSW_WUR;

/* Abort a request in flight: its callback fires now with -ECANCELED. */
void dsw_http_cancel(struct dsw_http *h, struct dsw_http_xfer *xfer);

/* Number of requests in flight (for tests and metrics). */
size_t dsw_http_pending(const struct dsw_http *h);

/* Number of TCP connections opened so far (CURLINFO_NUM_CONNECTS summed): shows keep-alive. */
unsigned long dsw_http_connects(const struct dsw_http *h);

/* Cancel every request (callbacks fire with -ECANCELED), close the multi handle, every poll
 * handle and the timer; cb(arg) fires once all are closed, after which h is freed. May be called
 * from inside a request callback. cb may be NULL. */
void dsw_http_close(struct dsw_http *h, dsw_http_close_cb cb, void *arg);

#endif
