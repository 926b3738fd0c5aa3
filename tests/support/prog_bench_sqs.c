/* bench_sqs: a queue server's rates through the daemon's own sqs module (libuv + curl multi,
 * keep-alive), PIPELINES request loops at a time on one fresh queue. Usage:
 *   bench_sqs ENDPOINT [SECONDS=5] [PIPELINES=4] [WAIT_S=0]
 *     Round trips: each pipeline loops send -> receive (up to 10, WaitTimeSeconds WAIT_S) ->
 *     DeleteMessageBatch; a round trip is one message sent, received and deleted. With several
 *     pipelines and a long poll, a pipeline whose message another one took waits out its poll.
 *   bench_sqs --drain ENDPOINT [MESSAGES=2000] [PIPELINES=4]
 *     Receive+delete: fills the queue with MESSAGES messages (SendMessage, PIPELINES at a time;
 *     not timed), then times the pipelines' ReceiveMessage (10, WaitTimeSeconds 0) ->
 *     DeleteMessageBatch loops until every message is deleted. Prints one line:
 *     "sqs_drain messages=N seconds=S rate=R requests=Q errors=E" (bench/bench.py reads it). */
#include "dsw/aws.h"
#include "dsw/http.h"
#include "dsw/log.h"
#include "dsw/sqs.h"
#include "dsw/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char body[] = "{\"task_id\": \"0123456789abcdef0123456789abcdef\", "
                           "\"task_name\": \"execute_job\", \"args\": [], \"kwargs\": {}}";

struct bench;

struct pipe_state {
    struct bench *b;
    int id;
};

struct bench {
    uv_loop_t loop;
    struct dsw_http *http;
    struct dsw_aws *aws;
    struct dsw_sqs *sqs;
    char url[512];
    int drain;         /* --drain: receive+delete of a filled queue, else round trips */
    uint64_t deadline; /* round trips: until then */
    long target;       /* drain: this many messages */
    long sent, inflight_sends, empty_polls;
    uint64_t deleted; /* messages deleted: round trips, or drained */
    uint64_t errors;
    int running;
    int wait_s;
    struct pipe_state pipes[64];
};

static void step(struct pipe_state *p);

static void on_deleted(int status, const struct dsw_sqs_entry_result *r, size_t n, void *arg)
{
    struct pipe_state *p = arg;
    for (size_t i = 0; i < n; i++)
        if (r[i].status == 0)
            p->b->deleted++;
    if (status < 0)
        p->b->errors++;
    step(p);
}

static void on_received(int status, const struct dsw_sqs_message *m, size_t n, void *arg)
{
    struct pipe_state *p = arg;
    struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
    char ids[DSW_SQS_MAX_BATCH][24];
    if (status < 0 || n == 0) {
        p->b->errors += status < 0;
        p->b->empty_polls += n == 0;
        step(p);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%zu", i);
        e[i] = (struct dsw_sqs_entry){.id = ids[i], .receipt_handle = m[i].receipt_handle};
    }
    if (dsw_sqs_delete_batch(p->b->sqs, p->b->url, e, n, on_deleted, p) < 0)
        abort();
}

static void receive(struct pipe_state *p, int wait_s, int visibility_s)
{
    if (dsw_sqs_receive(p->b->sqs, p->b->url, 10, wait_s, visibility_s, on_received, p) < 0)
        abort();
}

static void on_sent(int status, const char *id, void *arg)
{
    struct pipe_state *p = arg;
    if (status < 0)
        p->b->errors++;
    receive(p, p->b->wait_s, 30);
}

/* A pipeline's next request, or its end. */
static void step(struct pipe_state *p)
{
    struct bench *b = p->b;
    if (b->drain ? (long)b->deleted >= b->target || b->errors > 100 || b->empty_polls > 2000
                 : dsw_now_ms() >= b->deadline) {
        b->running--;
        return;
    }
    if (b->drain) {
        receive(p, 0, 60);
        return;
    }
    struct dsw_sqs_send_req r = {.body = body, .body_len = sizeof(body) - 1};
    if (dsw_sqs_send(b->sqs, b->url, &r, on_sent, p) < 0)
        abort();
}

/* --drain's untimed fill: PIPELINES sends in flight until target were sent. */
static void fill_one(struct bench *b);

static void on_filled(int status, const char *id, void *arg)
{
    struct bench *b = arg;
    b->inflight_sends--;
    if (status < 0) {
        b->errors++;
        b->sent--; /* send it again */
    }
    fill_one(b);
}

static void fill_one(struct bench *b)
{
    if (b->sent >= b->target || b->errors > 100)
        return;
    struct dsw_sqs_send_req r = {.body = body, .body_len = sizeof(body) - 1};
    b->sent++;
    b->inflight_sends++;
    if (dsw_sqs_send(b->sqs, b->url, &r, on_filled, b) < 0)
        abort();
}

static void on_created(int status, const char *url, void *arg)
{
    struct bench *b = arg;
    if (status < 0) {
        fprintf(stderr, "bench_sqs: CreateQueue failed: %d\n", status);
        exit(1);
    }
    snprintf(b->url, sizeof(b->url), "%s", url);
}

static uint64_t total_requests(struct bench *b)
{
    uint64_t reqs = 0;
    for (int op = 0; op < DSW_SQS_OP_COUNT; op++)
        for (int c = 0; c < DSW_SQS_ERR_COUNT; c++)
            reqs += dsw_sqs_requests(b->sqs, op, c);
    return reqs;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_sqs ENDPOINT [SECONDS] [PIPELINES] [WAIT_S]\n"
                    "       bench_sqs --drain ENDPOINT [MESSAGES] [PIPELINES]\n");
    return 64;
}

int main(int argc, char **argv)
{
    static struct bench b;
    b.drain = argc > 1 && !strcmp(argv[1], "--drain");
    argv += b.drain;
    argc -= b.drain;
    if (argc < 2)
        return usage();
    int seconds = 0;
    int npipes = argc > 3 ? atoi(argv[3]) : 4;
    if (b.drain) {
        b.target = argc > 2 ? atol(argv[2]) : 2000;
        if (b.target < 10 || b.target > 1000000 || argc > 4)
            return usage();
    } else {
        seconds = argc > 2 ? atoi(argv[2]) : 5;
        b.wait_s = argc > 4 ? atoi(argv[4]) : 0;
        if (seconds < 1 || b.wait_s < 0 || b.wait_s > 20)
            return usage();
    }
    if (npipes < 1 || npipes > 64)
        return usage();
    struct dsw_aws_creds creds = {.key_id = "test", .secret = "test"};
    struct dsw_aws_opts ao = {.region = "us-east-1", .fixed = &creds};
    struct dsw_sqs_opts so = {.endpoint = argv[1]};
    char name[64];
    dsw_log_setup(DSW_LOG_WARN, DSW_LOG_TEXT, 2);
    uv_loop_init(&b.loop);
    if (dsw_http_init(&b.http, &b.loop) < 0 || dsw_aws_init(&b.aws, &b.loop, b.http, &ao) < 0 ||
        dsw_sqs_init(&b.sqs, &b.loop, b.http, b.aws, &so) < 0)
        return 1;
    snprintf(name, sizeof(name), "%s-%d", b.drain ? "drain" : "bench", (int)getpid());
    if (dsw_sqs_create_queue(b.sqs, name, NULL, 0, on_created, &b) < 0)
        return 1;
    while (!b.url[0])
        uv_run(&b.loop, UV_RUN_ONCE);

    if (b.drain) {
        for (int i = 0; i < npipes; i++)
            fill_one(&b);
        while (b.inflight_sends > 0)
            uv_run(&b.loop, UV_RUN_ONCE);
        if (b.errors > 100) {
            fprintf(stderr, "bench_sqs: too many send errors\n");
            return 1;
        }
    }
    uint64_t r0 = total_requests(&b);
    double t0 = dsw_wall_time();
    b.deadline = dsw_now_ms() + (uint64_t)seconds * 1000;
    b.running = npipes;
    for (int i = 0; i < npipes; i++) {
        b.pipes[i] = (struct pipe_state){.b = &b, .id = i};
        step(&b.pipes[i]);
    }
    while (b.running > 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    double secs = dsw_wall_time() - t0;
    uint64_t reqs = total_requests(&b) - r0;
    if (b.drain)
        printf("sqs_drain messages=%llu seconds=%.3f rate=%.1f requests=%llu errors=%llu\n",
               (unsigned long long)b.deleted, secs, (double)b.deleted / secs,
               (unsigned long long)reqs, (unsigned long long)b.errors);
    else
        printf("bench_sqs: %llu send+receive+delete round trips in %.2f s = %.0f/s "
               "(%d pipelines, wait %d s, %llu HTTP requests, %lu connections, %llu errors)\n",
               (unsigned long long)b.deleted, secs, (double)b.deleted / secs, npipes, b.wait_s,
               (unsigned long long)reqs, dsw_http_connects(b.http), (unsigned long long)b.errors);
    dsw_sqs_close(b.sqs, NULL, NULL);
    dsw_aws_close(b.aws, NULL, NULL);
    dsw_http_close(b.http, NULL, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    if (b.drain)
        return (long)b.deleted >= b.target ? 0 : 1;
    return uv_loop_close(&b.loop) == 0 && b.errors == 0 ? 0 : 1;
}
