/* Integration tests of the http module against fauxqs (DSW_TEST_FAUXQS_URL, a keep-alive
 * server on loopback) and a loopback port that never answers: one callback per request,
 * connection reuse, timeouts, the body cap, cancel, and close from inside a callback. */
#include "sqs_testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct res {
    int fired;
    int calls;
    int err;
    long status;
    char body[256];
    uint64_t t_done;
};

static void on_done(int err, const struct dsw_http_resp *r, void *arg)
{
    struct res *x = arg;
    x->fired = 1;
    x->calls++;
    x->err = err;
    x->status = r->status;
    snprintf(x->body, sizeof(x->body), "%s", r->body);
    x->t_done = dsw_now_ms();
}

static int fired(void *arg)
{
    return ((struct res *)arg)->fired;
}

struct many {
    struct res r[16];
    int n;
};

static int all_fired(void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < m->n; i++)
        if (!m->r[i].fired)
            return 0;
    return 1;
}

static void open_loop(uv_loop_t *loop, struct dsw_http **h)
{
    assert_int_equal(uv_loop_init(loop), 0);
    assert_int_equal(dsw_http_init(h, loop), 0);
}

static void close_loop(uv_loop_t *loop, struct dsw_http *h)
{
    dsw_http_close(h, NULL, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    tu_loop_close(loop);
}

static int blackhole(char *url, size_t n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(url, n, "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    return fd;
}

/* Sequential and concurrent GETs: each fires once; keep-alive keeps the connection count low. */
static void test_get_and_reuse(void **state)
{
    uv_loop_t loop;
    struct dsw_http *h;
    char url[256];
    snprintf(url, sizeof(url), "%s/health", tu_need_env("DSW_TEST_FAUXQS_URL"));
    open_loop(&loop, &h);
    for (int i = 0; i < 10; i++) {
        struct res r = {0};
        struct dsw_http_req req = {.url = url};
        assert_int_equal(dsw_http_request(h, &req, on_done, &r, NULL), 0);
        assert_int_equal(r.calls, 0);
        assert_true(st_run_until(&loop, fired, &r, 5000));
        assert_int_equal(r.err, 0);
        assert_int_equal(r.status, 200);
    }
    assert_int_equal(dsw_http_connects(h), 1);
    struct many m = {.n = 16};
    for (int i = 0; i < m.n; i++) {
        struct dsw_http_req req = {.url = url};
        assert_int_equal(dsw_http_request(h, &req, on_done, &m.r[i], NULL), 0);
    }
    assert_int_equal(dsw_http_pending(h), 16);
    assert_true(st_run_until(&loop, all_fired, &m, 5000));
    for (int i = 0; i < m.n; i++) {
        assert_int_equal(m.r[i].calls, 1);
        assert_int_equal(m.r[i].status, 200);
    }
    assert_int_equal(dsw_http_pending(h), 0);
    close_loop(&loop, h);
}

/* A body over the cap is -E2BIG; a server that never answers is -ETIMEDOUT on time. */
static void test_cap_and_timeout(void **state)
{
    uv_loop_t loop;
    struct dsw_http *h;
    char url[256], hole[64];
    snprintf(url, sizeof(url), "%s/", tu_need_env("DSW_TEST_FAUXQS_URL"));
    open_loop(&loop, &h);
    struct res r = {0};
    const char *body = "{}";
    struct dsw_http_req req = {.url = url,
                               .headers = {"Content-Type: application/x-amz-json-1.0",
                                           "X-Amz-Target: AmazonSQS.ListQueues"},
                               .body = body,
                               .body_len = 2,
                               .max_body = 4};
    assert_int_equal(dsw_http_request(h, &req, on_done, &r, NULL), 0);
    assert_true(st_run_until(&loop, fired, &r, 5000));
    assert_int_equal(r.err, -E2BIG);

    int fd = blackhole(hole, sizeof(hole));
    memset(&r, 0, sizeof(r));
    struct dsw_http_req slow = {.url = hole, .timeout_ms = 300};
    uint64_t t0 = dsw_now_ms();
    assert_int_equal(dsw_http_request(h, &slow, on_done, &r, NULL), 0);
    assert_true(st_run_until(&loop, fired, &r, 5000));
    assert_int_equal(r.err, -ETIMEDOUT);
    assert_true(r.t_done - t0 >= 280 && r.t_done - t0 < 300 + tu_slack_ms());
    close(fd);

    struct dsw_http_req bad = {.url = "ftp://127.0.0.1/"};
    assert_int_equal(dsw_http_request(h, &bad, on_done, &r, NULL), -EINVAL);
    close_loop(&loop, h);
}

/* Cancel fires the callback at once with -ECANCELED; close cancels the rest, once each. */
static void test_cancel_and_close(void **state)
{
    uv_loop_t loop;
    struct dsw_http *h;
    char hole[64];
    int fd = blackhole(hole, sizeof(hole));
    open_loop(&loop, &h);
    struct res a = {0}, b = {0};
    struct dsw_http_xfer *xa;
    struct dsw_http_req req = {.url = hole, .timeout_ms = 10000};
    assert_int_equal(dsw_http_request(h, &req, on_done, &a, &xa), 0);
    assert_int_equal(dsw_http_request(h, &req, on_done, &b, NULL), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    dsw_http_cancel(h, xa);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, -ECANCELED);
    assert_int_equal(b.calls, 0);
    dsw_http_close(h, NULL, NULL);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.err, -ECANCELED);
    uv_run(&loop, UV_RUN_DEFAULT);
    tu_loop_close(&loop);
    close(fd);
}

struct reentrant {
    uv_loop_t *loop;
    struct dsw_http *h;
    struct res r;
    int closed;
};

static void on_closed(void *arg)
{
    ((struct reentrant *)arg)->closed++;
}

static void on_done_close(int err, const struct dsw_http_resp *resp, void *arg)
{
    struct reentrant *x = arg;
    on_done(err, resp, &x->r);
    dsw_http_close(x->h, on_closed, x);
    struct dsw_http_req req = {.url = "http://127.0.0.1/"};
    assert_int_equal(dsw_http_request(x->h, &req, on_done, &x->r, NULL), -ESHUTDOWN);
}

static int is_closed(void *arg)
{
    return ((struct reentrant *)arg)->closed;
}

/* Closing from inside a completion callback is safe and its callback fires once. */
static void test_close_from_callback(void **state)
{
    uv_loop_t loop;
    struct reentrant x = {.loop = &loop};
    char url[256];
    snprintf(url, sizeof(url), "%s/health", tu_need_env("DSW_TEST_FAUXQS_URL"));
    open_loop(&loop, &x.h);
    struct dsw_http_req req = {.url = url};
    assert_int_equal(dsw_http_request(x.h, &req, on_done_close, &x, NULL), 0);
    assert_true(st_run_until(&loop, is_closed, &x, 5000));
    assert_int_equal(x.r.calls, 1);
    assert_int_equal(x.r.status, 200);
    assert_int_equal(x.closed, 1);
    tu_loop_close(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_reuse),
        cmocka_unit_test(test_cap_and_timeout),
        cmocka_unit_test(test_cancel_and_close),
        cmocka_unit_test(test_close_from_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
