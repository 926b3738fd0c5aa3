/* Integration: a real Celery message, published by Debian's kombu 5.2 through its SQS transport
 * to moto (DSW_TEST_MOTO_URL, required: the test fails without it) the way dagster-celery's
 * CeleryRunLauncher sends execute_job / resume_job, then received raw and decoded by msg. */
#include "testutil.h"

#include "dsw/msg.h"

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

/* Publish one task through tests/support/celery_publish.py and read back what SQS delivered. */
static void publish(const char *task, int sqs_base64, struct published *p)
{
    const char *moto = tu_need_env("DSW_TEST_MOTO_URL");
    const char *src = tu_need_env("DSW_SOURCE_DIR");
    char *script = NULL, *args = tu_vector_path("execute_run_args_packed.json");
    char *dir = tu_tmpdir(), *out_path = NULL, *queue = NULL, *out = NULL;
    int rc;

    assert_true(asprintf(&script, "%s/tests/support/celery_publish.py", src) > 0);
    assert_true(asprintf(&out_path, "%s/body", dir) > 0);
    assert_true(asprintf(&queue, "dsw-celery-%d-%s-%d", (int)getpid(), task, sqs_base64) > 0);
    char *argv[] = {"/usr/bin/python3",
                    script,
                    "--endpoint",
                    (char *)moto,
                    "--queue",
                    queue,
                    "--args-file",
                    args,
                    "--out",
                    out_path,
                    "--task",
                    (char *)task,
                    sqs_base64 ? NULL : "--no-sqs-base64",
                    NULL};
    rc = tu_run(argv, NULL, &out);
    if (rc != 0)
        fail_msg("celery_publish.py exited %d:\n%s", rc, out);
    assert_int_equal(sscanf(out, "%63s", p->task_id), 1);
    p->body = tu_read_file(out_path, &p->len);
    free(out);
    free(queue);
    free(out_path);
    tu_rm_rf(dir);
    free(dir);
    free(args);
    free(script);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_celery_execute_job),
        cmocka_unit_test(test_celery_resume_job),
        cmocka_unit_test(test_celery_plain_envelope),
        cmocka_unit_test(test_celery_damaged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
