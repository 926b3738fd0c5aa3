/* Integration: a real Celery message, published by Debian's kombu 5.2 through its SQS transport
 * to moto (DSW_TEST_MOTO_URL, required: the test fails without it) the way dagster-celery's
 * CeleryRunLauncher sends execute_job / resume_job, then received raw and decoded by msg; also
 * with kombu's compression on (zlib: decoded; bz2: unsupported_compression), and end to end:
 * a compressed message left on the queue for the real daemon (`once`) runs its run to
 * SUCCESS (test PostgreSQL, the fake dagster). */
#include "testutil.h"

#include "dsw/msg.h"
#include "dsw/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RUN1 "00000000-0000-4000-8000-000000000001"

struct published {
    char *body;
    size_t len;
    char task_id[64];
};

/* How to publish: the kombu compression (NULL: none), the args file (NULL: the vector), and
 * leave_on (a queue name: publish only, the message stays there for a daemon). */
struct how {
    const char *compression;
    const char *args_file;
    const char *leave_on;
};

/* Publish one task through tests/support/celery_publish.py and read back what SQS delivered
 * (unless h->leave_on). */
static void publish_how(const char *task, int sqs_base64, const struct how *h, struct published *p)
{
    const char *moto = tu_need_env("DSW_TEST_MOTO_URL");
    const char *src = tu_need_env("DSW_SOURCE_DIR");
    char *script = NULL, *vec = tu_vector_path("execute_run_args_packed.json");
    char *dir = tu_tmpdir(), *out_path = NULL, *queue = NULL, *out = NULL;
    int rc;

    assert_true(asprintf(&script, "%s/tests/support/celery_publish.py", src) > 0);
    assert_true(asprintf(&out_path, "%s/body", dir) > 0);
    assert_true(asprintf(&queue, "dsw-celery-%d-%s-%d-%s", (int)getpid(), task, sqs_base64,
                         h->compression ? h->compression : "plain") > 0);
    char *argv[16] = {"/usr/bin/python3", script,
                      "--endpoint",       (char *)moto,
                      "--queue",          h->leave_on ? (char *)h->leave_on : queue,
                      "--args-file",      h->args_file ? (char *)h->args_file : vec,
                      "--task",           (char *)task};
    int n = 10;
    if (h->leave_on) {
        argv[n++] = "--leave";
    } else {
        argv[n++] = "--out";
        argv[n++] = out_path;
    }
    if (!sqs_base64)
        argv[n++] = "--no-sqs-base64";
    if (h->compression) {
        argv[n++] = "--compression";
        argv[n++] = (char *)h->compression;
    }
    argv[n] = NULL;
    rc = tu_run(argv, NULL, &out);
    if (rc != 0)
        fail_msg("celery_publish.py exited %d:\n%s", rc, out);
    assert_int_equal(sscanf(out, "%63s", p->task_id), 1);
    p->body = h->leave_on ? NULL : tu_read_file(out_path, &p->len);
    free(out);
    free(queue);
    free(out_path);
    tu_rm_rf(dir);
    free(dir);
    free(vec);
    free(script);
}

static void publish(const char *task, int sqs_base64, struct published *p)
{
    const struct how plain = {0};
    publish_how(task, sqs_base64, &plain, p);
}

static void decode_published(const char *task, int sqs_base64, enum dsw_msg_kind kind)
{
    struct dsw_msg_opts o = {.strict_run_id = 1, .max_body = DSW_MSG_DEFAULT_BODY};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    struct published p;

    publish(task, sqs_base64, &p);
    /* kombu's default: the body is base64 text, not JSON */
    assert_int_equal(p.body[0] == '{', !sqs_base64);
    if (dsw_msg_decode(p.body, p.len, &o, &req, &rej) != 0)
        fail_msg("kombu's %s message rejected as %s: %s", task, dsw_msg_reason_name(rej.reason),
                 rej.detail);
    assert_int_equal(req.form, DSW_MSG_FORM_CELERY);
    assert_int_equal(req.kind, kind);
    assert_string_equal(req.run_id, RUN1);
    assert_string_equal(req.task_id, p.task_id);
    assert_int_equal(req.set_exit_code_on_failure, 1);
    assert_non_null(req.instance_ref);
    assert_non_null(strstr(req.instance_ref, "\"__class__\":\"InstanceRef\""));
    dsw_msg_request_clear(&req);
    free(p.body);
}

static void test_celery_execute_job(void **state)
{
    decode_published("execute_job", 1, DSW_MSG_EXECUTE);
}

static void test_celery_resume_job(void **state)
{
    decode_published("resume_job", 1, DSW_MSG_RESUME);
}

/* transport_options sqs_base64_encoding = False: the envelope arrives as plain JSON. */
static void test_celery_plain_envelope(void **state)
{
    decode_published("execute_job", 0, DSW_MSG_EXECUTE);
}

/* The same delivered body, damaged the ways a queue could damage it, is rejected. */
static void test_celery_damaged(void **state)
{
    struct dsw_msg_opts o = {.strict_run_id = 1};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    struct published p;

    publish("execute_job", 1, &p);
    /* cut in the middle of a base64 quad */
    assert_int_equal(dsw_msg_decode(p.body, p.len - 1, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_JSON);
    /* a cap below its size */
    o.max_body = p.len - 1;
    assert_int_equal(dsw_msg_decode(p.body, p.len, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_TOO_LARGE);
    /* a character outside the alphabet */
    o.max_body = 0;
    p.body[p.len / 2] = '*';
    assert_int_equal(dsw_msg_decode(p.body, p.len, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_BAD_JSON);
    free(p.body);
}

/* Celery with compression on (kombu's Producer.publish(compression=...), what task_compression
 * does): headers.compression application/x-gzip and a zlib body, decoded; bz2 is its own reject
 * reason, not bad_json. */
static void test_celery_compressed(void **state)
{
    struct dsw_msg_opts o = {.strict_run_id = 1};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    struct published p;
    const struct how zlib = {.compression = "zlib"}, bz2 = {.compression = "bzip2"};

    publish_how("execute_job", 1, &zlib, &p);
    if (dsw_msg_decode(p.body, p.len, &o, &req, &rej) != 0)
        fail_msg("kombu's zlib message rejected as %s: %s", dsw_msg_reason_name(rej.reason),
                 rej.detail);
    assert_int_equal(req.form, DSW_MSG_FORM_CELERY);
    assert_string_equal(req.run_id, RUN1);
    assert_string_equal(req.task_id, p.task_id);
    dsw_msg_request_clear(&req);
    free(p.body);

    publish_how("execute_job", 1, &bz2, &p);
    assert_int_equal(dsw_msg_decode(p.body, p.len, &o, &req, &rej), -EBADMSG);
    assert_int_equal(rej.reason, DSW_MSG_UNSUPPORTED_COMPRESSION);
    free(p.body);
}

/* End to end: a compressed Celery message on the queue, the real daemon receives it once and
 * runs the run to SUCCESS, then deletes the message. */
static void test_celery_compressed_runs(void **state)
{
    struct tu_queue q;
    struct tu_env env = {0};
    struct published p;
    char id[37], *out = NULL;

    tu_worker_db_init();
    tu_run_new(id, "STARTING", NULL);
    tu_queue_create(&q, tu_need_env("DSW_TEST_MOTO_URL"), 10);
    tu_worker_env(&env, &q);
    /* The vector's packed args, for this run. */
    char *vec = tu_vector_path("execute_run_args_packed.json"), *dir = tu_tmpdir(), *args_path;
    char *text = tu_read_file(vec, NULL), *at = strstr(text, RUN1);
    assert_non_null(at);
    memcpy(at, id, 36);
    assert_null(strstr(at + 36, RUN1));
    assert_true(asprintf(&args_path, "%s/args.json", dir) > 0);
    tu_write_file(args_path, text, 0600);
    const struct how h = {
        .compression = "zlib", .args_file = args_path, .leave_on = strrchr(q.url, '/') + 1};
    publish_how("execute_job", 1, &h, &p);

    int rc = tu_cli(&env, (const char *const[]){"once", NULL}, &out, 60000);
    if (rc != 0)
        fail_msg("once exited %d:\n%s", rc, out);
    assert_true(tu_wait_status(id, "SUCCESS", 20000));
    assert_true(tu_wait_queue_empty(&q, 20000));
    free(out);
    tu_daemons_cleanup();
    tu_env_free(&env);
    tu_rm_rf(dir);
    free(dir);
    free(args_path);
    free(text);
    free(vec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_celery_execute_job),    cmocka_unit_test(test_celery_resume_job),
        cmocka_unit_test(test_celery_plain_envelope), cmocka_unit_test(test_celery_damaged),
        cmocka_unit_test(test_celery_compressed),     cmocka_unit_test(test_celery_compressed_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
