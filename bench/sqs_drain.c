/* sqs_drain: the queue server's own receive+delete rate, from a tight client (the daemon's own
 * sqs module on libuv + curl multi, keep-alive). Usage:
 *   sqs_drain ENDPOINT [MESSAGES=2000] [PIPELINES=4]
 * Fills a fresh queue with MESSAGES messages (SendMessage, PIPELINES at a time; not timed), then
 * times PIPELINES loops of ReceiveMessage (10, WaitTimeSeconds 0) -> DeleteMessageBatch until
 * every message is deleted. Prints one line: "sqs_drain messages=N seconds=S rate=R requests=Q". */
#include "dsw/aws.h"
#include "dsw/http.h"
#include "dsw/log.h"
#include "dsw/sqs.h"
#include "dsw/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct bench {
    uv_loop_t loop;
    struct dsw_http *http;
    struct dsw_aws *aws;
    struct dsw_sqs *sqs;
    char url[512];
    long target, sent, inflight_sends, deleted, empty_polls;
    int running;
    uint64_t errors;
};

static void fill_one(struct bench *b);

static void on_sent(int status, const char *id, void *arg)
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
    static const char body[] = "{\"task_id\": \"0123456789abcdef0123456789abcdef\", "
                               "\"task_name\": \"execute_job\", \"args\": [], \"kwargs\": {}}";
    if (b->sent >= b->target || b->errors > 100)
        return;
    struct dsw_sqs_send_req r = {.body = body, .body_len = sizeof(body) - 1};
    b->sent++;
    b->inflight_sends++;
    if (dsw_sqs_send(b->sqs, b->url, &r, on_sent, b) < 0)
        abort();
}

static void step_receive(struct bench *b);

static void on_deleted(int status, const struct dsw_sqs_entry_result *r, size_t n, void *arg)
{
    struct bench *b = arg;
    for (size_t i = 0; i < n; i++)
        if (r[i].status == 0)
            b->deleted++;
    if (status < 0)
        b->errors++;
    step_receive(b);
}

static void on_received(int status, const struct dsw_sqs_message *m, size_t n, void *arg)
{
    struct bench *b = arg;
    struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
    char ids[DSW_SQS_MAX_BATCH][8];
    if (status < 0 || n == 0) {
        b->errors += status < 0;
        b->empty_polls += n == 0;
        step_receive(b);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%zu", i);
        e[i] = (struct dsw_sqs_entry){.id = ids[i], .receipt_handle = m[i].receipt_handle};
    }
    if (dsw_sqs_delete_batch(b->sqs, b->url, e, n, on_deleted, b) < 0)
        abort();
}

static void step_receive(struct bench *b)
{
    if (b->deleted >= b->target || b->errors > 100 || b->empty_polls > 2000) {
        b->running--;
        return;
    }
    if (dsw_sqs_receive(b->sqs, b->url, 10, 0, 60, on_received, b) < 0)
        abort();
}

static void on_created(int status, const char *url, void *arg)
{
    struct bench *b = arg;
    if (status < 0) {
        fprintf(stderr, "sqs_drain: CreateQueue failed: %d\n", status);
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sqs_drain ENDPOINT [MESSAGES] [PIPELINES]\n");
        return 64;
    }
    static struct bench b;
    b.target = argc > 2 ? atol(argv[2]) : 2000;
    int npipes = argc > 3 ? atoi(argv[3]) : 4;
    if (b.target < 10 || b.target > 1000000 || npipes < 1 || npipes > 64)
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
    snprintf(name, sizeof(name), "drain-%d", (int)getpid());
    if (dsw_sqs_create_queue(b.sqs, name, NULL, 0, on_created, &b) < 0)
        return 1;
    while (!b.url[0])
        uv_run(&b.loop, UV_RUN_ONCE);

    for (int i = 0; i < npipes; i++)
        fill_one(&b);
    while (b.inflight_sends > 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    if (b.errors > 100) {
        fprintf(stderr, "sqs_drain: too many send errors\n");
        return 1;
    }
    uint64_t r0 = total_requests(&b);
    double t0 = dsw_wall_time();
    b.running = npipes;
    for (int i = 0; i < npipes; i++)
        step_receive(&b);
    while (b.running > 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    double secs = dsw_wall_time() - t0;
    printf("sqs_drain messages=%ld seconds=%.3f rate=%.1f requests=%llu errors=%llu\n", b.deleted,
           secs, (double)b.deleted / secs, (unsigned long long)(total_requests(&b) - r0),
           (unsigned long long)b.errors);
    dsw_sqs_close(b.sqs, NULL, NULL);
    dsw_aws_close(b.aws, NULL, NULL);
    dsw_http_close(b.http, NULL, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    return b.deleted >= b.target ? 0 : 1;
}
