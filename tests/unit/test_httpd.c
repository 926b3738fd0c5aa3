/* httpd: the server runs its loop in a second thread while this one plays the clients, with
 * libcurl for well-formed requests and raw sockets for the hostile ones (oversize heads,
 * slowloris, too many connections). Every test ends with uv_loop_close() == 0. */
#include "testutil.h"

#include "dsw/httpd.h"
#include "dsw/metrics.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct srv {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    struct dsw_httpd *h;
    int port;
    atomic_int ready;
    char reason[64];
    atomic_int closed;
    size_t conns_at_stop;
    unsigned long refused_at_stop;
};

static int ready_cb(const char **reason, void *arg)
{
    struct srv *s = arg;
    *reason = s->reason[0] ? s->reason : NULL;
    return atomic_load(&s->ready);
}

static void on_closed(void *arg)
{
    struct srv *s = arg;
    atomic_store(&s->closed, 1);
}

static void on_stop(uv_async_t *a)
{
    struct srv *s = a->data;
    s->conns_at_stop = dsw_httpd_conns(s->h);
    s->refused_at_stop = dsw_httpd_refused(s->h);
    dsw_httpd_close(s->h, on_closed, s);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_thread(void *arg)
{
    struct srv *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void srv_start(struct srv *s, const char *listen, uint64_t timeout_ms, unsigned max_conns)
{
    memset(s, 0, sizeof(*s));
    atomic_store(&s->ready, 1);
    assert_int_equal(uv_loop_init(&s->loop), 0);
    struct dsw_httpd_opts o = {.listen = listen,
                               .read_timeout_ms = timeout_ms,
                               .max_conns = max_conns,
                               .ready = ready_cb,
                               .ready_arg = s};
    assert_int_equal(dsw_httpd_init(&s->h, &s->loop, &o), 0);
    s->port = dsw_httpd_port(s->h);
    assert_true(s->port > 0);
    assert_int_equal(uv_async_init(&s->loop, &s->stop, on_stop), 0);
    s->stop.data = s;
    assert_int_equal(pthread_create(&s->thread, NULL, loop_thread, s), 0);
}

static void srv_stop(struct srv *s)
{
    assert_int_equal(uv_async_send(&s->stop), 0);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(atomic_load(&s->closed), 1);
    tu_loop_close(&s->loop);
}

/* ---- clients -------------------------------------------------------------------------- */

struct reply {
    long status;
    char body[65536];
    size_t len;
    char headers[4096];
    size_t hlen;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t k = size * n;
    assert_true(r->len + k < sizeof(r->body));
    memcpy(r->body + r->len, p, k);
    r->len += k;
    r->body[r->len] = '\0';
    return k;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t k = size * n;
    if (r->hlen + k < sizeof(r->headers)) {
        memcpy(r->headers + r->hlen, p, k);
        r->hlen += k;
        r->headers[r->hlen] = '\0';
    }
    return k;
}

/* One request with libcurl; returns the status (0 on a transport error). */
static long request(const char *host, int port, const char *method, const char *path,
                    struct reply *r)
{
    char url[256];
    snprintf(url, sizeof(url), "http://%s:%d%s", host, port, path);
    memset(r, 0, sizeof(*r));
    CURL *e = curl_easy_init();
    assert_non_null(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET"))
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(e);
    return r->status;
}

static long get(struct srv *s, const char *path, struct reply *r)
{
    return request("127.0.0.1", s->port, "GET", path, r);
}

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Read until EOF, reset or timeout_ms; returns bytes read into buf (NUL-terminated), and sets
 * *closed when the server closed (EOF or reset) rather than the wait running out. */
static size_t raw_read_all(int fd, char *buf, size_t cap, int timeout_ms, int *closed)
{
    size_t len = 0;
    uint64_t deadline = dsw_now_ms() + (uint64_t)timeout_ms;
    *closed = 0;
    for (;;) {
        uint64_t now = dsw_now_ms();
        if (now >= deadline)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0) {
            *closed = 1;
            break;
        }
        len += (size_t)r;
    }
    buf[len] = '\0';
    return len;
}

static void raw_send(int fd, const char *s, size_t n)
{
    assert_int_equal(send(fd, s, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_parse_listen(void **state)
{
    struct sockaddr_storage ss;
    assert_int_equal(dsw_httpd_parse_listen("127.0.0.1:9464", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9464);
    assert_int_equal(dsw_httpd_parse_listen("[::1]:0", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(dsw_httpd_parse_listen("[::]:65535", &ss), 0);
    assert_int_equal(dsw_httpd_parse_listen(":80", &ss), 0);
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_ANY));
    assert_int_equal(dsw_httpd_parse_listen("*:80", &ss), 0);
    assert_int_equal(dsw_httpd_parse_listen("localhost:80", &ss), 0);
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(dsw_httpd_parse_listen("off", &ss), -ENOENT);
    assert_int_equal(dsw_httpd_parse_listen(NULL, &ss), -ENOENT);
    const char *bad[] = {"",         "127.0.0.1",    "127.0.0.1:",   "127.0.0.1:65536",
                         "1.2.3:80", "127.0.0.1:-1", "127.0.0.1:8a", "::1:80",
                         "[::1]80",  "[::1:80",      "[zz]:80",      "127.0.0.1:123456",
                         "[]:80",    "999.1.1.1:80", "off:"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++) {
        int rc = dsw_httpd_parse_listen(bad[i], &ss);
        if (rc != -EINVAL && rc != -EHOSTUNREACH)
            fail_msg("\"%s\" parsed (%d)", bad[i], rc);
    }
}

static void test_init_errors(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct dsw_httpd *h = (void *)1, *h2;
    struct dsw_httpd_opts o = {.listen = "off"};
    assert_int_equal(dsw_httpd_init(&h, &loop, &o), -ENOENT);
    assert_null(h);
    o.listen = "127.0.0.1:0";
    assert_int_equal(dsw_httpd_init(&h, &loop, &o), 0);
    char busy[64];
    snprintf(busy, sizeof(busy), "127.0.0.1:%d", dsw_httpd_port(h));
    o.listen = busy;
    assert_int_equal(dsw_httpd_init(&h2, &loop, &o), -EADDRINUSE);
    assert_null(h2);
    dsw_httpd_close(h, NULL, NULL);
    tu_loop_close(&loop);
}

static void test_routes(void **state)
{
    struct srv s;
    struct reply r;
    dsw_metrics_reset();
    dsw_metrics_inc(DSW_METRIC_CLAIMS, "won", 2);
    srv_start(&s, "127.0.0.1:0", 0, 0);

    assert_int_equal(get(&s, "/healthz", &r), 200);
    assert_string_equal(r.body, "ok\n");
    assert_non_null(strstr(r.headers, "Connection: close\r\n"));
    assert_int_equal(get(&s, "/healthz?verbose=1", &r), 200);

    assert_int_equal(get(&s, "/readyz", &r), 200);
    assert_string_equal(r.body, "ready\n");

    assert_int_equal(get(&s, "/metrics", &r), 200);
    assert_non_null(strstr(r.headers, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert_non_null(strstr(r.body, "# TYPE dsw_claims_total counter\n"));
    assert_non_null(strstr(r.body, "\ndsw_claims_total{result=\"won\"} 2\n"));
    assert_non_null(strstr(r.body, "\ndsw_build_info{version=\"" DSW_VERSION "\"} 1\n"));

    assert_int_equal(request("127.0.0.1", s.port, "HEAD", "/metrics", &r), 200);
    assert_int_equal(r.len, 0);
    assert_non_null(strstr(r.headers, "Content-Length: "));
    assert_int_equal(request("127.0.0.1", s.port, "HEAD", "/healthz", &r), 200);
    assert_non_null(strstr(r.headers, "Content-Length: 3\r\n"));

    assert_int_equal(get(&s, "/", &r), 404);
    assert_int_equal(get(&s, "/healthz/x", &r), 404);
    assert_int_equal(get(&s, "/metricsx", &r), 404);
    assert_int_equal(request("127.0.0.1", s.port, "POST", "/nope", &r), 404);
    const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS"};
    const char *paths[] = {"/healthz", "/readyz", "/metrics"};
    for (size_t m = 0; m < DSW_ARRAY_LEN(methods); m++)
        for (size_t p = 0; p < DSW_ARRAY_LEN(paths); p++) {
            assert_int_equal(request("127.0.0.1", s.port, methods[m], paths[p], &r), 405);
            assert_non_null(strstr(r.headers, "Allow: GET, HEAD\r\n"));
        }
    srv_stop(&s);
}

static void test_readyz_follows_callback(void **state)
{
    struct srv s;
    struct reply r;
    srv_start(&s, "127.0.0.1:0", 0, 0);
    atomic_store(&s.ready, 0);
    assert_int_equal(get(&s, "/readyz", &r), 503);
    assert_string_equal(r.body, "not ready\n");
    /* The reason is read by the loop thread only while a request is served. */
    strcpy(s.reason, "postgres unreachable\nfor 12 s");
    assert_int_equal(get(&s, "/readyz", &r), 503);
    assert_string_equal(r.body, "not ready: postgres unreachable for 12 s\n");
    assert_int_equal(get(&s, "/healthz", &r), 200); /* alive all along */
    atomic_store(&s.ready, 1);
    s.reason[0] = '\0';
    assert_int_equal(get(&s, "/readyz", &r), 200);
    assert_string_equal(r.body, "ready\n");
    atomic_store(&s.ready, 0);
    assert_int_equal(get(&s, "/readyz", &r), 503);
    srv_stop(&s);
}

static void test_ipv6(void **state)
{
    struct srv s;
    struct reply r;
    srv_start(&s, "[::1]:0", 0, 0);
    assert_int_equal(request("[::1]", s.port, "GET", "/healthz", &r), 200);
    assert_string_equal(r.body, "ok\n");
    srv_stop(&s);
}

static void test_bad_and_oversize_heads(void **state)
{
    struct srv s;
    char buf[4096];
    int closed;
    srv_start(&s, "127.0.0.1:0", 2000, 0);

    /* A head of 9000 bytes that never ends: 431, then close. */
    int fd = raw_connect(s.port);
    static char big[9000];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET /healthz HTTP/1.1\r\nX-Pad: ", 30);
    send(fd, big, sizeof(big), MSG_NOSIGNAL); /* may be cut short by the server's close */
    raw_read_all(fd, buf, sizeof(buf), 1500, &closed);
    assert_true(closed);
    assert_memory_equal(buf, "HTTP/1.1 431 ", 13);
    close(fd);

    /* Just under the cap is fine. */
    fd = raw_connect(s.port);
    memset(big, 'a', 8000);
    memcpy(big, "GET /healthz HTTP/1.1\r\nX-Pad: ", 30);
    memcpy(big + 8000 - 4, "\r\n\r\n", 4);
    raw_send(fd, big, 8000);
    raw_read_all(fd, buf, sizeof(buf), 1500, &closed);
    assert_memory_equal(buf, "HTTP/1.1 200 OK\r\n", 17);
    assert_non_null(strstr(buf, "\r\n\r\nok\n"));
    close(fd);

    const char *bad[] = {"GARBAGE\r\n\r\n",
                         "GET /healthz\r\n\r\n",
                         "GET healthz HTTP/1.1\r\n\r\n",
                         "GET /healthz HTTP/2.0\r\n\r\n",
                         "GET  /healthz HTTP/1.1\r\n\r\n",
                         "GET /healthz HTTP/1.1 x\r\n\r\n",
                         "G(T /healthz HTTP/1.1\r\n\r\n"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++) {
        fd = raw_connect(s.port);
        raw_send(fd, bad[i], strlen(bad[i]));
        raw_read_all(fd, buf, sizeof(buf), 1500, &closed);
        if (strncmp(buf, "HTTP/1.1 400 ", 13))
            fail_msg("%s got %.40s", bad[i], buf);
        close(fd);
    }
    /* A NUL byte in the head. */
    fd = raw_connect(s.port);
    raw_send(fd, "GET /healthz\0 HTTP/1.1\r\n\r\n", 26);
    raw_read_all(fd, buf, sizeof(buf), 1500, &closed);
    assert_memory_equal(buf, "HTTP/1.1 400 ", 13);
    close(fd);

    /* Bare LF line ends, HTTP/1.0, a request body we never read: all answered. */
    fd = raw_connect(s.port);
    const char *lf = "POST /healthz HTTP/1.0\nContent-Length: 5\n\nhello";
    raw_send(fd, lf, strlen(lf));
    raw_read_all(fd, buf, sizeof(buf), 1500, &closed);
    assert_true(closed);
    assert_memory_equal(buf, "HTTP/1.1 405 ", 13);
    close(fd);
    srv_stop(&s);
}

/* A client that trickles its head is cut off by the read timeout, however steady it is. */
static void test_slowloris(void **state)
{
    struct srv s;
    char buf[256];
    int closed;
    srv_start(&s, "127.0.0.1:0", 300, 0);
    int fd = raw_connect(s.port);
    uint64_t t0 = dsw_now_ms();
    const char *head = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    int cut = 0;
    for (size_t i = 0; i < strlen(head) && !cut; i++) {
        cut = send(fd, head + i, 1, MSG_NOSIGNAL) != 1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cut |= poll(&p, 1, 50) > 0; /* readable: the server closed */
    }
    raw_read_all(fd, buf, sizeof(buf), 2000, &closed);
    uint64_t took = dsw_now_ms() - t0;
    assert_true(closed);
    assert_int_equal(strlen(buf), 0);
    print_message("slowloris client closed after %llu ms\n", (unsigned long long)took);
    assert_true(took >= 250 && took < 1500);
    close(fd);

    /* A silent client too. */
    fd = raw_connect(s.port);
    t0 = dsw_now_ms();
    raw_read_all(fd, buf, sizeof(buf), 2000, &closed);
    assert_true(closed);
    assert_true(dsw_now_ms() - t0 < 1500);
    close(fd);

    /* A client that never reads its response nor closes is let go after the timeout too. */
    fd = raw_connect(s.port);
    raw_send(fd, "GET /metrics HTTP/1.1\r\n\r\n", 25);
    usleep(700000);
    raw_read_all(fd, buf, sizeof(buf), 2000, &closed);
    assert_true(closed);
    close(fd);
    srv_stop(&s);
    assert_int_equal(s.conns_at_stop, 0);
}

static void test_connection_cap(void **state)
{
    struct srv s;
    struct reply r;
    char buf[256];
    int closed, fds[4];
    srv_start(&s, "127.0.0.1:0", 10000, 4);
    for (int i = 0; i < 4; i++)
        fds[i] = raw_connect(s.port);
    /* The fifth is accepted and closed at once, long before any read timeout. */
    int extra = raw_connect(s.port);
    uint64_t t0 = dsw_now_ms();
    raw_read_all(extra, buf, sizeof(buf), 3000, &closed);
    assert_true(closed);
    assert_true(dsw_now_ms() - t0 < 1000);
    close(extra);
    /* So is a well-behaved client while the four hold their slots. */
    assert_int_equal(get(&s, "/healthz", &r), 0);
    /* Once one goes away, requests are served again. */
    close(fds[0]);
    long st = 0;
    for (int i = 0; i < 100 && st != 200; i++) {
        st = get(&s, "/healthz", &r);
        if (st != 200)
            usleep(20000);
    }
    assert_int_equal(st, 200);
    srv_stop(&s);
    assert_int_equal(s.conns_at_stop, 3);
    assert_true(s.refused_at_stop >= 2);
    /* Closing the server closed the idle clients. */
    for (int i = 1; i < 4; i++) {
        raw_read_all(fds[i], buf, sizeof(buf), 2000, &closed);
        assert_true(closed);
        close(fds[i]);
    }
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_listen), cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_routes),       cmocka_unit_test(test_readyz_follows_callback),
        cmocka_unit_test(test_ipv6),         cmocka_unit_test(test_bad_and_oversize_heads),
        cmocka_unit_test(test_slowloris),    cmocka_unit_test(test_connection_cap),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
