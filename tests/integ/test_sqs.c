/* Integration tests of the sqs module against real SQS-compatible servers: moto
 * (DSW_TEST_MOTO_URL) and fauxqs (DSW_TEST_FAUXQS_URL), both on loopback. Long polls,
 * visibility, batch results, attributes, errors, and backoff against a server that is down. */
#include "sqs_testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const char *server_url(void **state)
{
    return tu_need_env((const char *)*state);
}

static void on_send_timer(uv_timer_t *t)
{
    struct st_env *e = t->data;
    static struct st_call c;
    memset(&c, 0, sizeof(c));
    struct dsw_sqs_send_req r = {.body = "wake", .body_len = 4};
    assert_int_equal(dsw_sqs_send(e->sqs, (const char *)t->loop->data, &r, st_on_str, &c), 0);
    uv_close((uv_handle_t *)t, NULL);
}

/* A long poll returns as soon as a message is sent; an empty one waits its full time. */
static void test_long_poll(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c;
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "lp", 30, url, sizeof(url));

    uint64_t t0 = dsw_now_ms();
    st_receive(&e, url, 10, 1, -1, &c);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.n, 0);
    assert_true(c.t_done - t0 >= 900);

    uv_timer_t t;
    uv_timer_init(&e.loop, &t);
    t.data = &e;
    e.loop.data = url;
    uv_timer_start(&t, on_send_timer, 300, 0);
    t0 = dsw_now_ms();
    st_receive(&e, url, 10, 5, -1, &c);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.msgs[0].body, "wake");
    assert_true(c.t_done - t0 < 4000);
    assert_int_equal(c.msgs[0].receive_count, 1);
    assert_true(c.msgs[0].sent > 1600000000000LL);
    st_close(&e);
}

/* A message whose visibility runs out comes back with a higher receive count. */
static void test_visibility_expiry(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c;
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "vis", 30, url, sizeof(url));
    assert_int_equal(st_send(&e, url, "again", NULL, 0), 0);
    st_receive(&e, url, 1, 1, 1, &c);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.msgs[0].receive_count, 1);
    st_receive(&e, url, 1, 4, 1, &c);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.msgs[0].body, "again");
    assert_int_equal(c.msgs[0].receive_count, 2);
    st_close(&e);
}

/* ChangeMessageVisibilityBatch extends the lease; visibility 0 releases the message. */
static void test_change_visibility(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c, b = {0};
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "chg", 30, url, sizeof(url));
    assert_int_equal(st_send(&e, url, "lease", NULL, 0), 0);
    st_receive(&e, url, 1, 1, 1, &c);
    assert_int_equal(c.n, 1);
    struct dsw_sqs_entry ent = {
        .id = "e0", .receipt_handle = c.msgs[0].receipt, .visibility_s = 30};
    assert_int_equal(dsw_sqs_change_visibility_batch(e.sqs, url, &ent, 1, st_on_batch, &b), 0);
    st_wait(&e, &b, 10000);
    assert_int_equal(b.status, 0);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.entry_status[0], 0);
    /* Without the extension it would be back after 1 s. */
    struct st_call empty;
    st_receive(&e, url, 1, 2, -1, &empty);
    assert_int_equal(empty.n, 0);

    ent.visibility_s = 0;
    memset(&b, 0, sizeof(b));
    assert_int_equal(dsw_sqs_change_visibility_batch(e.sqs, url, &ent, 1, st_on_batch, &b), 0);
    st_wait(&e, &b, 10000);
    assert_int_equal(b.entry_status[0], 0);
    uint64_t t0 = dsw_now_ms();
    st_receive(&e, url, 1, 2, 30, &c);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.msgs[0].receive_count, 2);
    assert_true(c.t_done - t0 < 1500);
    st_close(&e);
}

/* Delete a batch; a made-up receipt handle is reported for its entry only (moto). */
static void test_delete_batch_bad_handle(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c, b = {0};
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "del", 30, url, sizeof(url));
    assert_int_equal(st_send(&e, url, "doomed", NULL, 0), 0);
    st_receive(&e, url, 1, 1, 30, &c);
    assert_int_equal(c.n, 1);
    struct dsw_sqs_entry ent[2] = {{.id = "good", .receipt_handle = c.msgs[0].receipt},
                                   {.id = "bad", .receipt_handle = "not-a-real-handle"}};
    assert_int_equal(dsw_sqs_delete_batch(e.sqs, url, ent, 2, st_on_batch, &b), 0);
    st_wait(&e, &b, 10000);
    assert_int_equal(b.status, 0);
    assert_int_equal(b.n, 2);
    assert_int_equal(b.entry_status[0], 0);
    assert_true(b.entry_status[1] < 0);
    assert_true(strlen(b.entry_code[1]) > 0);
    print_message("bad handle: %s (%d)\n", b.entry_code[1], b.entry_status[1]);
    st_close(&e);
}

/* Deletes of several callers share one DeleteMessageBatch; each hears its own entry: a bad
 * handle fails only its caller's delete (moto reports it per entry). */
static void test_delete_coalesced(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c, d[3];
    memset(d, 0, sizeof(d));
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "coal", 30, url, sizeof(url));
    assert_int_equal(st_send(&e, url, "one", NULL, 0), 0);
    assert_int_equal(st_send(&e, url, "two", NULL, 0), 0);
    st_receive(&e, url, 10, 1, 30, &c);
    if (c.n < 2) { /* a server may hand out one at a time */
        struct st_call c2;
        st_receive(&e, url, 10, 1, 30, &c2);
        assert_int_equal(c2.n, 1);
        c.msgs[1] = c2.msgs[0];
        c.n = 2;
    }
    uint64_t before = dsw_sqs_requests(e.sqs, DSW_SQS_OP_DELETE_BATCH, DSW_SQS_OK);
    assert_int_equal(dsw_sqs_delete(e.sqs, url, c.msgs[0].receipt, st_on_batch, &d[0]), 0);
    assert_int_equal(dsw_sqs_delete(e.sqs, url, "not-a-real-handle", st_on_batch, &d[1]), 0);
    assert_int_equal(dsw_sqs_delete(e.sqs, url, c.msgs[1].receipt, st_on_batch, &d[2]), 0);
    assert_int_equal(dsw_sqs_delete(e.sqs, url, "", st_on_batch, &d[0]), -EINVAL);
    for (int i = 0; i < 3; i++)
        st_wait(&e, &d[i], 10000);
    assert_int_equal(dsw_sqs_requests(e.sqs, DSW_SQS_OP_DELETE_BATCH, DSW_SQS_OK) - before, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].status, 0);
        assert_int_equal(d[i].n, 1);
    }
    assert_int_equal(d[0].entry_status[0], 0);
    assert_true(d[1].entry_status[0] < 0);
    assert_int_equal(d[2].entry_status[0], 0);
    /* Closing with a delete waiting in the window cancels it through its callback. */
    struct st_call late = {0};
    assert_int_equal(dsw_sqs_delete(e.sqs, url, c.msgs[0].receipt, st_on_batch, &late), 0);
    st_close(&e);
    assert_true(late.fired);
    assert_int_equal(late.status, -ECANCELED);
}

/* Delete works (fauxqs too) and the queue is empty afterwards; counts by attributes. */
static void test_delete_and_attributes(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c, b = {0}, a = {0};
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "attr", 30, url, sizeof(url));
    assert_int_equal(st_send(&e, url, "one", NULL, 0), 0);
    assert_int_equal(st_send(&e, url, "two", NULL, 0), 0);
    const char *names[] = {"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"};
    assert_int_equal(dsw_sqs_get_attributes(e.sqs, url, names, 2, st_on_attrs, &a), 0);
    st_wait(&e, &a, 10000);
    assert_int_equal(a.status, 0);
    assert_non_null(strstr(a.str, "ApproximateNumberOfMessages=2;"));

    st_receive(&e, url, 10, 1, 30, &c);
    assert_true(c.n >= 1);
    struct dsw_sqs_entry ent[2];
    for (size_t i = 0; i < c.n; i++) {
        ent[i].id = i ? "m1" : "m0";
        ent[i].receipt_handle = c.msgs[i].receipt;
    }
    assert_int_equal(dsw_sqs_delete_batch(e.sqs, url, ent, c.n, st_on_batch, &b), 0);
    st_wait(&e, &b, 10000);
    assert_int_equal(b.status, 0);
    for (size_t i = 0; i < c.n; i++)
        assert_int_equal(b.entry_status[i], 0);

    /* GetQueueUrl finds it by name. */
    struct st_call u = {0};
    const char *name = strrchr(url, '/') + 1;
    assert_int_equal(dsw_sqs_get_queue_url(e.sqs, name, st_on_str, &u), 0);
    st_wait(&e, &u, 10000);
    assert_int_equal(u.status, 0);
    assert_non_null(strstr(u.str, name));
    st_close(&e);
}

/* Message attributes and a non-ASCII body survive the round trip. */
static void test_message_attributes(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c;
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "mattr", 30, url, sizeof(url));
    struct dsw_sqs_attr attrs[] = {{.name = "s3_extended_message", .value = "True"},
                                   {.name = "count", .data_type = "Number", .value = "42"}};
    const char *body = "{\"task_id\": \"caf\xc3\xa9\", \"q\": \"a\\\"b\"}";
    assert_int_equal(st_send(&e, url, body, attrs, 2), 0);
    st_receive(&e, url, 1, 1, 30, &c);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.msgs[0].body, body);
    assert_non_null(strstr(c.msgs[0].attrs, "s3_extended_message=String:True;"));
    assert_non_null(strstr(c.msgs[0].attrs, "count=Number:42;"));
    st_close(&e);
}

/* Errors by category: a missing queue is "not found", bad arguments are refused locally. */
static void test_errors(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call a = {0};
    st_open(&e, server_url(state), NULL, NULL);
    snprintf(url, sizeof(url), "%s/000000000000/no-such-queue-%d", server_url(state),
             (int)getpid());
    const char *names[] = {"All"};
    assert_int_equal(dsw_sqs_get_attributes(e.sqs, url, names, 1, st_on_attrs, &a), 0);
    st_wait(&e, &a, 10000);
    print_message("missing queue: %d (%s)\n", a.status,
                  dsw_sqs_errclass_name(dsw_sqs_errclass(a.status)));
    assert_int_equal(dsw_sqs_errclass(a.status), DSW_SQS_ERR_NOT_FOUND);
    assert_int_equal(dsw_sqs_requests(e.sqs, DSW_SQS_OP_GET_ATTRIBUTES, DSW_SQS_ERR_NOT_FOUND), 1);
    struct st_call c = {0};
    assert_int_equal(dsw_sqs_receive(e.sqs, url, 11, 1, 1, st_on_receive, &c), -EINVAL);
    assert_int_equal(dsw_sqs_receive(e.sqs, url, 1, 21, 1, st_on_receive, &c), -EINVAL);
    struct dsw_sqs_send_req bad = {.body = "\xff\xfe", .body_len = 2};
    assert_int_equal(dsw_sqs_send(e.sqs, url, &bad, st_on_str, &c), -EINVAL);
    st_close(&e);
}

/* Closing with a long poll in flight fires its callback once with -ECANCELED. */
static void test_close_cancels(void **state)
{
    struct st_env e;
    char url[512];
    struct st_call c = {0};
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "cls", 30, url, sizeof(url));
    assert_int_equal(dsw_sqs_receive(e.sqs, url, 1, 20, 30, st_on_receive, &c), 0);
    uv_run(&e.loop, UV_RUN_NOWAIT);
    uv_run(&e.loop, UV_RUN_NOWAIT);
    struct st_call d = {0};
    assert_int_equal(dsw_sqs_receive(e.sqs, url, 1, 20, 30, st_on_receive, &d), 0);
    dsw_sqs_cancel_receives(e.sqs);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, -ECANCELED);
    assert_int_equal(c.calls, 1);
    st_close(&e);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.status, -ECANCELED);
}

/* A server that is down: the call backs off (no spin) and ends as a transport error after
 * max_attempts attempts. */
static void test_server_down_backoff(void **state)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd); /* nobody listens there now */
    char ep[64];
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    struct dsw_sqs_opts o = {.max_attempts = 5, .backoff_base_ms = 100, .backoff_max_ms = 1000};
    struct st_env e;
    struct st_call c = {0};
    st_open(&e, ep, NULL, &o);
    uint64_t t0 = dsw_now_ms();
    assert_int_equal(dsw_sqs_receive(e.sqs, "http://127.0.0.1/1/q", 1, 1, 1, st_on_receive, &c), 0);
    st_wait(&e, &c, 20000);
    uint64_t took = c.t_done - t0;
    print_message("down: %d after %llu ms\n", c.status, (unsigned long long)took);
    assert_int_equal(dsw_sqs_errclass(c.status), DSW_SQS_ERR_TRANSPORT);
    assert_int_equal(dsw_sqs_requests(e.sqs, DSW_SQS_OP_RECEIVE, DSW_SQS_ERR_TRANSPORT), 5);
    /* Delays are at least 50 + 100 + 200 + 400 ms. */
    assert_true(took >= 750);
    assert_true(took < 5000);
    st_close(&e);
}

/* fauxqs keeps connections alive: many calls, one connection. */
static void test_keep_alive(void **state)
{
    struct st_env e;
    char url[512];
    st_open(&e, server_url(state), NULL, NULL);
    st_create_queue(&e, "ka", 30, url, sizeof(url));
    for (int i = 0; i < 20; i++)
        assert_int_equal(st_send(&e, url, "k", NULL, 0), 0);
    print_message("connections for 21 requests: %lu\n", dsw_http_connects(e.http));
    assert_true(dsw_http_connects(e.http) <= 2);
    st_close(&e);
}

#define BOTH(fn)                                                                                   \
    cmocka_unit_test_prestate(fn, "DSW_TEST_MOTO_URL"),                                            \
        cmocka_unit_test_prestate(fn, "DSW_TEST_FAUXQS_URL")

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_long_poll),
        BOTH(test_visibility_expiry),
        BOTH(test_change_visibility),
        cmocka_unit_test_prestate(test_delete_batch_bad_handle, "DSW_TEST_MOTO_URL"),
        cmocka_unit_test_prestate(test_delete_coalesced, "DSW_TEST_MOTO_URL"),
        BOTH(test_delete_and_attributes),
        BOTH(test_message_attributes),
        BOTH(test_errors),
        BOTH(test_close_cancels),
        cmocka_unit_test(test_server_down_backoff),
        cmocka_unit_test_prestate(test_keep_alive, "DSW_TEST_FAUXQS_URL"),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
