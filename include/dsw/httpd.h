/* httpd: the daemon's tiny HTTP/1.1 server on the libuv loop (http.listen): GET /healthz,
 * GET /readyz (decided by a callback of the worker) and GET /metrics (dsw_metrics_render).
 * Every request is bounded: the request head is capped, a client must send it within a read
 * timeout, the number of connections is capped, and each connection serves one request and is
 * closed (Connection: close). HEAD is served like GET without a body. */
#ifndef DSW_HTTPD_H
#define DSW_HTTPD_H

#include "dsw/util.h"

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

/* Opaque; created by dsw_httpd_init, freed only by dsw_httpd_close's callback. */
struct dsw_httpd;

/* Readiness for GET /readyz, asked on every request: return non-zero when ready. *reason may be
 * set to a short text (one line, copied at once, at most 200 bytes used) shown in the body;
 * it starts out NULL. Runs on the loop thread; must not block or close the server. */
typedef int (*dsw_httpd_ready_cb)(const char **reason, void *arg);
/* dsw_httpd_close done: every handle is closed and the server's memory freed. */
typedef void (*dsw_httpd_close_cb)(void *arg);

struct dsw_httpd_opts {
    const char *listen;       /* "HOST:PORT", "[IPv6]:PORT"; port 0 picks a free port. Borrowed */
    uint64_t read_timeout_ms; /* whole request head within this; 0 = 5000. Also bounds the
                                 lingering close after the response */
    unsigned max_conns;       /* concurrent connections; more are closed at once; 0 = 64 */
    size_t max_head;          /* request line + headers; 0 = 8192. Beyond: 431 and close */
    dsw_httpd_ready_cb ready; /* NULL: always ready */
    void *ready_arg;
};

/* Parse a listen address: an IPv4 or bracketed IPv6 literal, "localhost", "*" or "" (any IPv4
 * address), then ':' and a port 0-65535. Returns 0, -ENOENT for "off" (the server is disabled),
 * -EINVAL when malformed. Other host names are resolved with getaddrinfo (blocking; fine at
 * startup), -EHOSTUNREACH when that fails. */
int dsw_httpd_parse_listen(const char *listen, struct sockaddr_storage *out) DSW_WUR;

/* Bind, listen and serve on loop. opts is copied (listen parsed at once). Returns 0 with *out
 * set, or: -ENOENT (listen is "off": nothing created, *out NULL, the caller treats the server as
 * disabled), -EINVAL / -EHOSTUNREACH (bad address), a libuv error such as -EADDRINUSE or
 * -EACCES (logged once here). The handles are referenced: the loop runs until dsw_httpd_close. */
int dsw_httpd_init(struct dsw_httpd **out, uv_loop_t *loop,
                   const struct dsw_httpd_opts *opts) DSW_WUR;

/* The port actually bound (useful with port 0). */
int dsw_httpd_port(const struct dsw_httpd *h);

/* Open client connections right now, and connections refused by the cap so far (for tests and
 * logs). */
size_t dsw_httpd_conns(const struct dsw_httpd *h);
unsigned long dsw_httpd_refused(const struct dsw_httpd *h);

/* Stop listening and close every client connection at once (responses in flight are dropped);
 * cb(arg) fires from the loop when everything is closed, after which h is freed. cb may be
 * NULL. Call once. */
void dsw_httpd_close(struct dsw_httpd *h, dsw_httpd_close_cb cb, void *arg);

#endif
