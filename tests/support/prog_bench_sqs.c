/* bench_sqs: SQS round trips per second through the sqs module. Usage:
 *   bench_sqs ENDPOINT [SECONDS=5] [PIPELINES=4] [WAIT_S=0]
 * Each pipeline loops send -> receive (up to 10, WaitTimeSeconds WAIT_S) -> DeleteMessageBatch on
 * one fresh queue; a round trip is one message sent, received and deleted. With several
 * pipelines and a long poll, a pipeline whose message another one took waits out its poll. */
#include "dsw/aws.h"
#include "dsw/http.h"
#include "dsw/log.h"
#include "dsw/sqs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    uint64_t deadline;
    uint64_t round_trips;
    uint64_t errors;
    int running;
    int wait_s;
    struct pipe_state pipes[64];
};

static void step_send(struct pipe_state *p);

static void on_deleted(int status, const struct dsw_sqs_entry_result *r, size_t n, void *arg)
{
    struct pipe_state *p = arg;
    for (size_t i = 0; i < n; i++)
        if (r[i].status == 0)
            p->b->round_trips++;
    if (status < 0)
        p->b->errors++;
    step_send(p);
}

static void on_received(int status, const struct dsw_sqs_message *m, size_t n, void *arg)
{
    struct pipe_state *p = arg;
    struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
    char ids[DSW_SQS_MAX_BATCH][24];
    if (status < 0 || n == 0) {
        p->b->errors += status < 0;
        step_send(p);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%zu", i);
        e[i] = (struct dsw_sqs_entry){.id = ids[i], .receipt_handle = m[i].receipt_handle};
    }
    if (dsw_sqs_delete_batch(p->b->sqs, p->b->url, e, n, on_deleted, p) < 0)
        abort();
}

static void on_sent(int status, const char *id, void *arg)
{
    struct pipe_state *p = arg;
    if (status < 0)
        p->b->errors++;
    if (dsw_sqs_receive(p->b->sqs, p->b->url, 10, p->b->wait_s, 30, on_received, p) < 0)
        abort();
}

static void step_send(struct pipe_state *p)
{
    static const char body[] = "{\"task_id\": \"0123456789abcdef0123456789abcdef\", "
                               "\"task_name\": \"execute_job\", \"args\": [], \"kwargs\": {}}";
    if (dsw_now_ms() >= p->b->deadline) {
        p->b->running--;
        return;
    }
    struct dsw_sqs_send_req r = {.body = body, .body_len = sizeof(body) - 1};
    if (dsw_sqs_send(p->b->sqs, p->b->url, &r, on_sent, p) < 0)
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_sqs ENDPOINT [SECONDS] [PIPELINES] [WAIT_S]\n");
        return 64;
    }
    int seconds = argc > 2 ? atoi(argv[2]) : 5;
    int npipes = argc > 3 ? atoi(argv[3]) : 4;
    static struct bench b;
    b.wait_s = argc > 4 ? atoi(argv[4]) : 0;
    if (seconds < 1 || npipes < 1 || npipes > 64 || b.wait_s < 0 || b.wait_s > 20)
        return 64;
    struct dsw_aws_creds creds = {.key_id = "test", .secret = "test"};
    struct dsw_aws_opts ao = {.region = "us-east-1", .fixed = &creds};
    struct dsw_sqs_opts so = {.endpoint = argv[1]};
    char name[64];
    dsw_log_setup(DSW_LOG_WARN, DSW_LOG_TEXT, 2);
    uv_loop_init(&b.loop);
    if (dsw_http_init(&b.http, &b.loop) < 0 || dsw_aws_init(&b.aws, &b.loop, b.http, &ao) < 0 ||
        dsw_sqs_init(&b.sqs, &b.loop, b.http, b.aws, &so) < 0)
        return 1;
    snprintf(name, sizeof(name), "bench-%d", (int)getpid());
    if (dsw_sqs_create_queue(b.sqs, name, NULL, 0, on_created, &b) < 0)
        return 1;
    while (!b.url[0])
        uv_run(&b.loop, UV_RUN_ONCE);

    uint64_t t0 = dsw_now_ms();
    b.deadline = t0 + (uint64_t)seconds * 1000;
    b.running = npipes;
    for (int i = 0; i < npipes; i++) {
        b.pipes[i] = (struct pipe_state){.b = &b, .id = i};
        step_send(&b.pipes[i]);
    }
    while (b.running > 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    double secs = (double)(dsw_now_ms() - t0) / 1000.0;
    uint64_t reqs = 0;
    for (int op = 0; op < DSW_SQS_OP_COUNT; op++)
        for (int c = 0; c < DSW_SQS_ERR_COUNT; c++)
            reqs += dsw_sqs_requests(b.sqs, op, c);
    printf("bench_sqs: %llu send+receive+delete round trips in %.2f s = %.0f/s "
           "(%d pipelines, wait %d s, %llu HTTP requests, %lu connections, %llu errors)\n",
           (unsigned long long)b.round_trips, secs, (double)b.round_trips / secs, npipes, b.wait_s,
           (unsigned long long)reqs, dsw_http_connects(b.http), (unsigned long long)b.errors);
    dsw_sqs_close(b.sqs, NULL, NULL);
    dsw_aws_close(b.aws, NULL, NULL);
    dsw_http_close(b.http, NULL, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    return uv_loop_close(&b.loop) == 0 && b.errors == 0 ? 0 : 1;
}
