/* http: libcurl multi on libuv, after curl's docs/examples/multi-uv.c. curl tells us which
 * sockets to watch (on_socket) and when to wake (on_curl_timer); we call
 * curl_multi_socket_action from uv_poll_t / uv_timer_t callbacks and read finished transfers
 * after each one. Handle memory is freed only in close callbacks. */
#include "dsw/http.h"

#include "dsw/buf.h"
#include "dsw/list.h"
#include "dsw/log.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct dsw_http *h;
    struct dsw_list link; /* in h->socks */
};

struct dsw_http_xfer {
    CURL *easy;
    struct curl_slist *hdrs;
    struct dsw_buf body;
    int overflow;
    dsw_http_cb cb;
    void *arg;
    struct dsw_http *h;
    struct dsw_list link; /* in h->xfers */
    char errbuf[CURL_ERROR_SIZE];
};

struct dsw_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct dsw_list socks; /* struct sock_ctx */
    struct dsw_list xfers; /* struct dsw_http_xfer */
    size_t pending;
    unsigned long connects;
    int busy;                /* > 0 while user callbacks run: teardown waits */
    struct dsw_closer close; /* dsw_http_close was called */
    int torn;                /* teardown started */
    int nclosing;            /* uv handles whose close callback has not run yet */
};

static void maybe_teardown(struct dsw_http *h);

/* ---- handles -------------------------------------------------------------------------- */

static void finalize(struct dsw_http *h)
{
    dsw_closer_done(&h->close, h);
}

static void on_handle_closed(uv_handle_t *hd)
{
    struct dsw_http *h;
    if (hd->type == UV_POLL) {
        struct sock_ctx *c = hd->data;
        h = c->h;
        free(c);
    } else {
        h = hd->data;
    }
    if (--h->nclosing == 0 && h->torn)
        finalize(h);
}

static void sock_close(struct sock_ctx *c)
{
    struct dsw_http *h = c->h;
    dsw_list_remove(&c->link);
    h->nclosing++;
    uv_close((uv_handle_t *)&c->poll, on_handle_closed);
}

/* ---- completion ----------------------------------------------------------------------- */

static int curl_err(const struct dsw_http_xfer *x, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_WRITE_ERROR:
        return x->overflow ? -E2BIG : -EIO;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        return -ECONNRESET;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return -EINVAL;
    default:
        return -EIO;
    }
}

static void xfer_unlink_free(struct dsw_http_xfer *x)
{
    struct dsw_http *h = x->h;
    dsw_list_remove(&x->link);
    h->pending--;
    curl_multi_remove_handle(h->multi, x->easy);
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    dsw_buf_free(&x->body);
    free(x);
}

/* Detach x from curl, run its callback with err, free it. */
static void finish(struct dsw_http_xfer *x, int err)
{
    struct dsw_http *h = x->h;
    struct dsw_http_resp resp = {0};
    long nconn = 0;

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &resp.status);
    curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &nconn);
    h->connects += (unsigned long)nconn;
    resp.body = dsw_buf_str(&x->body);
    resp.len = x->body.len;
    dsw_http_cb cb = x->cb;
    void *arg = x->arg;
    /* Unlink before the callback, which may start new requests or close the client; the
     * body stays alive until it returns. */
    struct dsw_buf body = x->body;
    dsw_buf_init(&x->body, 0);
    xfer_unlink_free(x);
    h->busy++;
    cb(err, &resp, arg);
    h->busy--;
    dsw_buf_free(&body);
}

static void check_info(struct dsw_http *h)
{
    CURLMsg *msg;
    int left;
    while (!h->torn && (msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct dsw_http_xfer *x = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        int err = curl_err(x, rc);
        if (err && err != -E2BIG)
            dsw_debug("http: transfer failed: %s (%s)", curl_easy_strerror(rc),
                      x->errbuf[0] ? x->errbuf : "-");
        finish(x, err);
    }
    maybe_teardown(h);
}

/* ---- curl <-> uv glue ------------------------------------------------------------------ */

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock_ctx *c = p->data;
    struct dsw_http *h = c->h;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(h->multi, c->fd, flags, &running);
    check_info(h);
}

static void on_timer(uv_timer_t *t)
{
    struct dsw_http *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_info(h);
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct dsw_http *h = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&h->timer);
    else
        uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static int on_socket(CURL *e, curl_socket_t fd, int action, void *userp, void *socketp)
{
    struct dsw_http *h = userp;
    struct sock_ctx *c = socketp;

    if (action == CURL_POLL_REMOVE) {
        if (c) {
            sock_close(c);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }
    if (!c) {
        c = dsw_xcalloc(1, sizeof(*c));
        c->fd = fd;
        c->h = h;
        if (uv_poll_init_socket(h->loop, &c->poll, fd) < 0) {
            free(c);
            return -1;
        }
        c->poll.data = c;
        dsw_list_push_front(&h->socks, &c->link);
        curl_multi_assign(h->multi, fd, c);
    }
    int events = 0;
    if (action & CURL_POLL_IN)
        events |= UV_READABLE;
    if (action & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&c->poll, events, on_poll);
    return 0;
}

/* ---- public ---------------------------------------------------------------------------- */

int dsw_http_init(struct dsw_http **out, uv_loop_t *loop)
{
    static int global_done;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -EIO;
        global_done = 1;
    }
    struct dsw_http *h = dsw_xcalloc(1, sizeof(*h));
    dsw_list_init(&h->socks);
    dsw_list_init(&h->xfers);
    h->loop = loop;
    h->multi = curl_multi_init();
    if (!h->multi) {
        free(h);
        return -ENOMEM;
    }
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 32L);
    *out = h;
    return 0;
}

static size_t on_write(char *p, size_t size, size_t n, void *userp)
{
    struct dsw_http_xfer *x = userp;
    if (dsw_buf_append(&x->body, p, n) < 0) {
        x->overflow = 1;
        return 0;
    }
    return n;
}

static int setup_easy(struct dsw_http_xfer *x, const struct dsw_http_req *r)
{
    CURL *e = x->easy;
    long timeout = r->timeout_ms > 0 ? r->timeout_ms : 30000;
    long ctimeout = r->connect_timeout_ms > 0 ? r->connect_timeout_ms : 10000;
    const char *method = r->method ? r->method : (r->body ? "POST" : "GET");

    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, DSW_MIN(ctimeout, timeout));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    for (size_t i = 0; i < DSW_HTTP_MAX_HEADERS && r->headers[i]; i++) {
        struct curl_slist *n = curl_slist_append(x->hdrs, r->headers[i]);
        if (!n)
            return -ENOMEM;
        x->hdrs = n;
    }
    if (x->hdrs)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    if (strcmp(method, "GET") != 0) {
        /* The body goes in as POSTFIELDS: curl's SigV4 signs a read callback body as empty. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, r->body ? r->body : "") != CURLE_OK)
            return -ENOMEM;
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (r->sign.provider) {
        if (curl_easy_setopt(e, CURLOPT_AWS_SIGV4, r->sign.provider) != CURLE_OK)
            return -EINVAL;
        curl_easy_setopt(e, CURLOPT_USERNAME, r->sign.user ? r->sign.user : "");
        curl_easy_setopt(e, CURLOPT_PASSWORD, r->sign.password ? r->sign.password : "");
    }
    return 0;
}

int dsw_http_request(struct dsw_http *h, const struct dsw_http_req *r, dsw_http_cb cb, void *arg,
                     struct dsw_http_xfer **xfer)
{
    if (h->close.started)
        return -ESHUTDOWN;
    if (!r->url || (strncmp(r->url, "http://", 7) != 0 && strncmp(r->url, "https://", 8) != 0))
        return -EINVAL;
    struct dsw_http_xfer *x = dsw_xcalloc(1, sizeof(*x));
    int rc = -ENOMEM;
    x->h = h;
    x->cb = cb;
    x->arg = arg;
    dsw_buf_init(&x->body, r->max_body ? r->max_body : DSW_HTTP_DEFAULT_MAX_BODY);
    x->easy = curl_easy_init();
    if (!x->easy)
        goto out;
    rc = setup_easy(x, r);
    if (rc < 0)
        goto out;
    if (curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
        rc = -EIO;
        goto out;
    }
    dsw_list_push_front(&h->xfers, &x->link);
    h->pending++;
    if (xfer)
        *xfer = x;
    return 0;
out:
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    dsw_buf_free(&x->body);
    free(x);
    return rc;
}

void dsw_http_cancel(struct dsw_http *h, struct dsw_http_xfer *x)
{
    finish(x, -ECANCELED);
    maybe_teardown(h);
}

size_t dsw_http_pending(const struct dsw_http *h)
{
    return h->pending;
}

unsigned long dsw_http_connects(const struct dsw_http *h)
{
    return h->connects;
}

static void maybe_teardown(struct dsw_http *h)
{
    if (!h->close.started || h->busy || h->torn)
        return;
    h->torn = 1;
    /* Stop polling before curl closes its sockets; on_socket is not reached afterwards
     * because every socket we watched is forgotten here. */
    while (!dsw_list_empty(&h->socks)) {
        struct sock_ctx *c = dsw_list_entry(h->socks.next, struct sock_ctx, link);
        curl_multi_assign(h->multi, c->fd, NULL);
        sock_close(c);
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, NULL);
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    h->nclosing++;
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
}

void dsw_http_close(struct dsw_http *h, dsw_http_close_cb cb, void *arg)
{
    if (dsw_closer_start(&h->close, cb, arg))
        return;
    while (!dsw_list_empty(&h->xfers))
        finish(dsw_list_entry(h->xfers.next, struct dsw_http_xfer, link), -ECANCELED);
    maybe_teardown(h);
}
