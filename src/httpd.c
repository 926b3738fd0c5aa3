/* httpd: one uv_tcp_t listener and, per client, a uv_tcp_t plus a uv_timer_t that bounds the
 * whole exchange. A client sends one request head (capped), gets one response with
 * Connection: close, then we shut down our side and linger briefly for its EOF so that unread
 * request bytes do not turn our close into a reset that eats the response. */
#include "dsw/httpd.h"

#include "dsw/buf.h"
#include "dsw/list.h"
#include "dsw/log.h"
#include "dsw/metrics.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_READ_TIMEOUT_MS 5000
#define DEFAULT_MAX_CONNS       64
#define DEFAULT_MAX_HEAD        8192
#define LINGER_MAX_MS           2000
#define REASON_MAX              200
#define BACKLOG                 128

enum conn_state { READING, WRITING, LINGERING, CLOSING };

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct dsw_buf head;
    char *resp; /* bytes being written; freed by on_written */
    enum conn_state state;
    int nclosing;
    struct dsw_httpd *h;
    struct dsw_list link; /* in h->conns until closing */
    char rbuf[2048];
};

struct dsw_httpd {
    uv_tcp_t listener;
    struct dsw_httpd_opts o;
    int port;
    struct dsw_list conns; /* open connections */
    size_t nconns;         /* open, counted against max_conns */
    size_t nobjs;          /* struct conn not yet freed (closing ones included) */
    unsigned long refused;
    struct dsw_closer close;
    int listener_closed;
};

/* ---- addresses ------------------------------------------------------------------------ */

static int parse_port(const char *s, int *port)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || strspn(s, "0123456789") != n)
        return -EINVAL;
    *port = atoi(s);
    return *port <= 65535 ? 0 : -EINVAL;
}

static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *res;
    if (getaddrinfo(host, NULL, &hints, &res) != 0)
        return -EHOSTUNREACH;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (out->ss_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)port);
    return 0;
}

int dsw_httpd_parse_listen(const char *listen, struct sockaddr_storage *out)
{
    char host[256];
    const char *colon;
    int port, v6 = 0;
    memset(out, 0, sizeof(*out));
    if (!listen || !strcmp(listen, "off"))
        return -ENOENT;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':' || (size_t)(close - listen - 1) >= sizeof(host))
            return -EINVAL;
        memcpy(host, listen + 1, (size_t)(close - listen - 1));
        host[close - listen - 1] = '\0';
        colon = close + 1;
        v6 = 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon || memchr(listen, ':', (size_t)(colon - listen)) ||
            (size_t)(colon - listen) >= sizeof(host))
            return -EINVAL; /* an IPv6 literal must be bracketed */
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
    }
    if (parse_port(colon + 1, &port) < 0)
        return -EINVAL;
    if (v6)
        return uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) ? -EINVAL : 0;
    if (!host[0] || !strcmp(host, "*"))
        strcpy(host, "0.0.0.0");
    else if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0)
        return 0;
    if (strspn(host, "0123456789.") == strlen(host))
        return -EINVAL; /* a malformed IPv4 literal, not a name to look up */
    return resolve(host, port, out);
}

/* ---- connections ---------------------------------------------------------------------- */

static void maybe_finish(struct dsw_httpd *h)
{
    if (!h->close.started || !h->listener_closed || h->nobjs > 0)
        return;
    dsw_closer_done(&h->close, h);
}

static void on_conn_closed(uv_handle_t *hd)
{
    struct conn *c = hd->data;
    if (--c->nclosing > 0)
        return;
    struct dsw_httpd *h = c->h;
    dsw_buf_free(&c->head);
    free(c);
    h->nobjs--;
    maybe_finish(h);
}

static void conn_close(struct conn *c)
{
    struct dsw_httpd *h = c->h;
    if (c->state == CLOSING)
        return;
    c->state = CLOSING;
    dsw_list_remove(&c->link);
    h->nconns--;
    c->nclosing = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->state == READING)
        dsw_debug("httpd: closing a client that sent no complete request in %llu ms",
                  (unsigned long long)c->h->o.read_timeout_ms);
    conn_close(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    /* Nothing to do: on_read closes at the client's EOF, on_timeout if it never comes. */
}

static void on_written(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    free(c->resp);
    c->resp = NULL;
    if (c->state != WRITING)
        return; /* closing: the write was cancelled */
    if (status < 0 || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    c->state = LINGERING;
    uv_timer_start(&c->timer, on_timeout, DSW_MIN(c->h->o.read_timeout_ms, LINGER_MAX_MS), 0);
}

static void respond(struct conn *c, int status, const char *phrase, const char *ctype,
                    const char *extra, const char *body, size_t len, int head_only)
{
    struct dsw_buf b;
    dsw_buf_init(&b, SIZE_MAX);
    int rc = dsw_buf_printf(&b,
                            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                            "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                            status, phrase, ctype, len, extra ? extra : "");
    if (rc == 0 && !head_only)
        rc = dsw_buf_append(&b, body, len);
    if (rc < 0) {
        dsw_buf_free(&b);
        conn_close(c);
        return;
    }
    size_t n = b.len;
    c->resp = dsw_buf_take(&b);
    c->state = WRITING;
    c->wreq.data = c;
    uv_buf_t ub = uv_buf_init(c->resp, (unsigned)n);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &ub, 1, on_written) < 0) {
        free(c->resp);
        c->resp = NULL;
        conn_close(c);
        return;
    }
    /* The same deadline bounds the write of the response to a client that does not read. */
    uv_timer_start(&c->timer, on_timeout, c->h->o.read_timeout_ms, 0);
}

static void respond_text(struct conn *c, int status, const char *phrase, const char *text,
                         int head_only)
{
    respond(c, status, phrase, "text/plain; charset=utf-8", NULL, text, strlen(text), head_only);
}

/* ---- routes --------------------------------------------------------------------------- */

static void serve_readyz(struct conn *c, int head_only)
{
    struct dsw_httpd *h = c->h;
    const char *reason = NULL;
    int ready = h->o.ready ? h->o.ready(&reason, h->o.ready_arg) : 1;
    char body[REASON_MAX + 32];
    snprintf(body, sizeof(body), "%s%s%.*s\n", ready ? "ready" : "not ready",
             reason && *reason ? ": " : "", REASON_MAX, reason ? reason : "");
    for (char *p = body; p[1]; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    if (ready)
        respond_text(c, 200, "OK", body, head_only);
    else
        respond_text(c, 503, "Service Unavailable", body, head_only);
}

static void serve_metrics(struct conn *c, int head_only)
{
    struct dsw_buf b;
    dsw_buf_init(&b, DSW_METRICS_RENDER_MAX);
    if (dsw_metrics_render(&b) < 0) {
        dsw_warn("httpd: the metrics rendering exceeded %u bytes", DSW_METRICS_RENDER_MAX);
        respond_text(c, 500, "Internal Server Error", "metrics too large\n", head_only);
    } else {
        respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", NULL, dsw_buf_str(&b),
                b.len, head_only);
    }
    dsw_buf_free(&b);
}

static int is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == '-' ||
              s[i] == '_'))
            return 0;
    return n > 0;
}

/* head is NUL-terminated and holds the request line and headers (the blank line cut off). */
static void route(struct conn *c, char *head)
{
    char *line_end = head + strcspn(head, "\r\n");
    *line_end = '\0';
    char *method = head, *target = strchr(head, ' '), *version;
    if (!target || !(version = strchr(target + 1, ' ')) || strchr(version + 1, ' ') ||
        !is_token(method, (size_t)(target - method)) || target[1] != '/' ||
        (strcmp(version + 1, "HTTP/1.1") && strcmp(version + 1, "HTTP/1.0"))) {
        respond_text(c, 400, "Bad Request", "bad request\n", 0);
        return;
    }
    *target++ = '\0';
    *version = '\0';
    target[strcspn(target, "?#")] = '\0';
    int get = !strcmp(method, "GET"), head_only = !strcmp(method, "HEAD");
    int known =
        !strcmp(target, "/healthz") || !strcmp(target, "/readyz") || !strcmp(target, "/metrics");
    dsw_debug("httpd: %s %s", method, target);
    if (!known)
        respond_text(c, 404, "Not Found", "not found\n", head_only);
    else if (!get && !head_only)
        respond(c, 405, "Method Not Allowed", "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n",
                "method not allowed\n", strlen("method not allowed\n"), 0);
    else if (!strcmp(target, "/healthz"))
        respond_text(c, 200, "OK", "ok\n", head_only);
    else if (!strcmp(target, "/readyz"))
        serve_readyz(c, head_only);
    else
        serve_metrics(c, head_only);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = hd->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread < 0) {
        conn_close(c); /* EOF or error, in any state */
        return;
    }
    if (nread == 0 || c->state != READING)
        return; /* after the request, anything the client sends is discarded */
    if (dsw_buf_append(&c->head, buf->base, (size_t)nread) < 0) {
        respond_text(c, 431, "Request Header Fields Too Large", "request head too large\n", 0);
        return;
    }
    char *head = c->head.data;
    if (memchr(head, '\0', c->head.len)) {
        respond_text(c, 400, "Bad Request", "bad request\n", 0);
        return;
    }
    char *crlf = strstr(head, "\r\n\r\n"), *lf = strstr(head, "\n\n");
    char *end = crlf && (!lf || crlf < lf) ? crlf : lf;
    if (end) {
        *end = '\0';
        route(c, head);
    }
}

static void free_handle(uv_handle_t *hd)
{
    free(hd);
}

/* Over the cap: accept (so the listener does not stay readable) and close at once. */
static void refuse(struct dsw_httpd *h)
{
    uv_tcp_t *t = dsw_xmalloc(sizeof(*t));
    uv_tcp_init(h->listener.loop, t);
    (void)uv_accept((uv_stream_t *)&h->listener, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, free_handle);
    if (h->refused++ % 100 == 0)
        dsw_warn("httpd: %zu connections open, refusing more (%lu refused so far)", h->nconns,
                 h->refused);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct dsw_httpd *h = server->data;
    if (status < 0) {
        dsw_warn("httpd: accept: %s", uv_strerror(status));
        return;
    }
    if (h->close.started)
        return;
    if (h->nconns >= h->o.max_conns) {
        refuse(h);
        return;
    }
    struct conn *c = dsw_xcalloc(1, sizeof(*c));
    c->h = h;
    dsw_buf_init(&c->head, h->o.max_head);
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    dsw_list_push_front(&h->conns, &c->link);
    h->nconns++;
    h->nobjs++;
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) {
        dsw_debug("httpd: accept: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, h->o.read_timeout_ms, 0);
}

/* ---- the server ----------------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *hd)
{
    struct dsw_httpd *h = hd->data;
    h->listener_closed = 1;
    maybe_finish(h);
}

int dsw_httpd_init(struct dsw_httpd **out, uv_loop_t *loop, const struct dsw_httpd_opts *opts)
{
    struct sockaddr_storage ss;
    *out = NULL;
    int rc = dsw_httpd_parse_listen(opts->listen, &ss);
    if (rc < 0) {
        if (rc != -ENOENT)
            dsw_error("httpd: http.listen: cannot use \"%s\"", opts->listen);
        return rc;
    }
    struct dsw_httpd *h = dsw_xcalloc(1, sizeof(*h));
    dsw_list_init(&h->conns);
    h->o = *opts;
    h->o.listen = NULL; /* borrowed: not kept */
    if (!h->o.read_timeout_ms)
        h->o.read_timeout_ms = DEFAULT_READ_TIMEOUT_MS;
    if (!h->o.max_conns)
        h->o.max_conns = DEFAULT_MAX_CONNS;
    if (!h->o.max_head)
        h->o.max_head = DEFAULT_MAX_HEAD;
    uv_tcp_init(loop, &h->listener);
    h->listener.data = h;
    rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->listener, BACKLOG, on_connection);
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    if (rc == 0)
        rc = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &len);
    if (rc < 0) {
        dsw_error("httpd: cannot listen on %s: %s", opts->listen, uv_strerror(rc));
        h->close.started = 1; /* freed by its close callback, nobody called back */
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
        return rc;
    }
    h->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    dsw_info("httpd: listening on %s (port %d)", opts->listen, h->port);
    *out = h;
    return 0;
}

int dsw_httpd_port(const struct dsw_httpd *h)
{
    return h->port;
}

size_t dsw_httpd_conns(const struct dsw_httpd *h)
{
    return h->nconns;
}

unsigned long dsw_httpd_refused(const struct dsw_httpd *h)
{
    return h->refused;
}

void dsw_httpd_close(struct dsw_httpd *h, dsw_httpd_close_cb cb, void *arg)
{
    if (dsw_closer_start(&h->close, cb, arg))
        return;
    while (!dsw_list_empty(&h->conns))
        conn_close(dsw_list_entry(h->conns.next, struct conn, link));
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
}
