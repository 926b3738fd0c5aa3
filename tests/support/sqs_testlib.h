/* Helpers for the sqs/aws integration tests: a loop with http + aws + sqs, and blocking
 * wrappers that run the loop until one call's callback fired (header-only, static functions). */
#ifndef DSW_SQS_TESTLIB_H
#define DSW_SQS_TESTLIB_H

#include "testutil.h"

#include "dsw/aws.h"
#include "dsw/http.h"
#include "dsw/sqs.h"
#include "dsw/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ST_MAX_MSGS 10

struct st_env {
    uv_loop_t loop;
    struct dsw_http *http;
    struct dsw_aws *aws;
    struct dsw_sqs *sqs;
};

struct st_msg {
    char id[128];
    char receipt[2048];
    char body[4096];
    size_t body_len;
    int receive_count;
    long long sent;
    char attrs[1024]; /* "name=type:value;" ... */
};

struct st_call {
    int fired;
    int calls;
    int status;
    size_t n;
    struct st_msg msgs[ST_MAX_MSGS];
    int entry_status[DSW_SQS_MAX_BATCH];
    char entry_code[DSW_SQS_MAX_BATCH][64];
    char str[2048];
    uint64_t t_done;
};

static inline int st_fired(void *arg)
{
    return ((struct st_call *)arg)->fired;
}

static inline void st_tick(uv_timer_t *t)
{
}

/* tu_run_until, with a 10 ms tick: a callback that fires from a timer at the start of a
 * UV_RUN_ONCE iteration would otherwise leave the loop blocked in poll until the next event. */
static inline int st_run_until(uv_loop_t *loop, int (*cond)(void *), void *arg, uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, st_tick, 10, 10);
    int ok = tu_run_until(loop, cond, arg, ms);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static inline void st_wait(struct st_env *e, struct st_call *c, uint64_t timeout_ms)
{
    assert_true(st_run_until(&e->loop, st_fired, c, timeout_ms));
}

static inline void st_fire(struct st_call *c, int status)
{
    c->fired = 1;
    c->calls++;
    c->status = status;
    c->t_done = dsw_now_ms();
}

static inline void st_on_receive(int status, const struct dsw_sqs_message *m, size_t n, void *arg)
{
    struct st_call *c = arg;
    c->n = n;
    for (size_t i = 0; i < n && i < ST_MAX_MSGS; i++) {
        struct st_msg *o = &c->msgs[i];
        snprintf(o->id, sizeof(o->id), "%s", m[i].message_id);
        snprintf(o->receipt, sizeof(o->receipt), "%s", m[i].receipt_handle);
        o->body_len = DSW_MIN(m[i].body_len, sizeof(o->body) - 1);
        memcpy(o->body, m[i].body, o->body_len);
        o->body[o->body_len] = '\0';
        o->receive_count = m[i].receive_count;
        o->sent = (long long)m[i].sent_timestamp;
        o->attrs[0] = '\0';
        for (size_t j = 0; j < m[i].nattrs; j++) {
            size_t l = strlen(o->attrs);
            snprintf(o->attrs + l, sizeof(o->attrs) - l, "%s=%s:%s;", m[i].attrs[j].name,
                     m[i].attrs[j].data_type ? m[i].attrs[j].data_type : "-", m[i].attrs[j].value);
        }
    }
    st_fire(c, status);
}

static inline void st_on_batch(int status, const struct dsw_sqs_entry_result *r, size_t n,
                               void *arg)
{
    struct st_call *c = arg;
    c->n = n;
    for (size_t i = 0; i < n && i < DSW_SQS_MAX_BATCH; i++) {
        c->entry_status[i] = r[i].status;
        snprintf(c->entry_code[i], sizeof(c->entry_code[i]), "%s", r[i].code);
    }
    st_fire(c, status);
}

static inline void st_on_str(int status, const char *s, void *arg)
{
    struct st_call *c = arg;
    snprintf(c->str, sizeof(c->str), "%s", s ? s : "");
    st_fire(c, status);
}

static inline void st_on_attrs(int status, const struct dsw_sqs_attr *a, size_t n, void *arg)
{
    struct st_call *c = arg;
    c->str[0] = '\0';
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(c->str);
        snprintf(c->str + l, sizeof(c->str) - l, "%s=%s;", a[i].name, a[i].value);
    }
    st_fire(c, status);
}

/* Set up loop, http, aws (fixed creds when key is non-NULL), sqs on endpoint. */
static inline void st_open(struct st_env *e, const char *endpoint,
                           const struct dsw_aws_creds *creds, const struct dsw_sqs_opts *so)
{
    struct dsw_aws_opts ao = {.region = "us-east-1", .fixed = creds};
    struct dsw_aws_creds dflt = {.key_id = "test", .secret = "test"};
    struct dsw_sqs_opts o = so ? *so : (struct dsw_sqs_opts){0};
    static char *const no_env[] = {"AWS_EC2_METADATA_DISABLED=true", NULL};
    if (!creds)
        ao.fixed = &dflt;
    ao.env = no_env;
    o.endpoint = endpoint;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(dsw_http_init(&e->http, &e->loop), 0);
    assert_int_equal(dsw_aws_init(&e->aws, &e->loop, e->http, &ao), 0);
    assert_int_equal(dsw_sqs_init(&e->sqs, &e->loop, e->http, e->aws, &o), 0);
}

static inline void st_close(struct st_env *e)
{
    dsw_sqs_close(e->sqs, NULL, NULL);
    dsw_aws_close(e->aws, NULL, NULL);
    dsw_http_close(e->http, NULL, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    tu_loop_close(&e->loop);
}

/* Create a queue with a unique name; returns its URL (static storage per call site copy). */
static inline void st_create_queue(struct st_env *e, const char *prefix, int visibility_s,
                                   char *url, size_t n)
{
    static int seq;
    char name[80], vis[16];
    struct st_call c = {0};
    snprintf(name, sizeof(name), "%s-%d-%d-%lld", prefix, (int)getpid(), ++seq,
             (long long)dsw_now_ms());
    snprintf(vis, sizeof(vis), "%d", visibility_s);
    struct dsw_sqs_attr a = {.name = "VisibilityTimeout", .value = vis};
    assert_int_equal(dsw_sqs_create_queue(e->sqs, name, &a, 1, st_on_str, &c), 0);
    st_wait(e, &c, 10000);
    assert_int_equal(c.status, 0);
    dsw_strlcpy(url, c.str, n);
}

static inline int st_send(struct st_env *e, const char *url, const char *body,
                          const struct dsw_sqs_attr *attrs, size_t nattrs)
{
    struct st_call c = {0};
    struct dsw_sqs_send_req r = {
        .body = body, .body_len = strlen(body), .attrs = attrs, .nattrs = nattrs};
    assert_int_equal(dsw_sqs_send(e->sqs, url, &r, st_on_str, &c), 0);
    st_wait(e, &c, 10000);
    return c.status;
}

static inline void st_receive(struct st_env *e, const char *url, int max, int wait_s, int vis,
                              struct st_call *c)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(dsw_sqs_receive(e->sqs, url, max, wait_s, vis, st_on_receive, c), 0);
    st_wait(e, c, (uint64_t)wait_s * 1000 + 20000);
}

#endif
