/* Quarantine (SPEC §1.5): with queue.quarantine_url set, a rejected message is sent to the
 * quarantine queue as it came (its body byte for byte, the reason as the message attribute
 * dsw_reject_reason) and only then deleted from the work queue; when the quarantine send
 * fails, the original stays on the work queue (nothing is lost) and comes back. */
#include "testutil.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 30000

TU_WORKER_FIXTURE(false)

static const char *const bad_body = "{\"not\": \"an envelope\", \"n\": [1, 2, 3]}";

static bool has_message(void *arg)
{
    const struct tu_queue *qq = arg;
    long vis, inflight;
    tu_queue_counts(qq, &vis, &inflight);
    return vis + inflight > 0;
}

/* The one quarantined message: its body (heap) and its dsw_reject_reason attribute (heap). */
static void receive_quarantined(const struct tu_queue *qq, char **body, char **reason)
{
    char *req = NULL, *reply = NULL;
    json_t *j = json_pack("{s:s, s:i, s:i, s:[s]}", "QueueUrl", qq->url, "MaxNumberOfMessages", 10,
                          "WaitTimeSeconds", 1, "MessageAttributeNames", "All");
    req = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    assert_int_equal(tu_sqs_call(qq->endpoint, "ReceiveMessage", req, &reply), 200);
    free(req);
    json_t *r = json_loads(reply, 0, NULL);
    assert_non_null(r);
    json_t *msgs = json_object_get(r, "Messages");
    assert_int_equal(json_array_size(msgs), 1);
    json_t *m = json_array_get(msgs, 0);
    *body = strdup(json_string_value(json_object_get(m, "Body")));
    json_t *attr = json_object_get(json_object_get(m, "MessageAttributes"), "dsw_reject_reason");
    const char *v = json_string_value(json_object_get(attr, "StringValue"));
    *reason = v ? strdup(v) : NULL;
    json_decref(r);
    free(reply);
}

static void stop(struct tu_daemon *d)
{
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
}

static void test_rejected_goes_to_quarantine(void **state)
{
    struct tu_queue qq;
    tu_queue_create(&qq, q.endpoint, 30);
    tu_env_set(&env, "DSW_QUEUE_QUARANTINE_URL", "%s", qq.url);
    tu_queue_send(&q, bad_body, NULL, 0);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait(has_message, &qq, WAIT_MS));
    assert_true(tu_wait_queue_empty(&q, WAIT_MS));
    char *body, *reason;
    receive_quarantined(&qq, &body, &reason);
    assert_string_equal(body, bad_body);
    assert_non_null(reason);
    assert_string_equal(reason, "bad_envelope");
    free(body);
    free(reason);
    assert_true(tu_daemon_log_has(d, "rejected message: bad_envelope"));
    assert_true(tu_daemon_log_has(d, "deleting message (rejected)"));
    assert_false(tu_daemon_log_has(d, "\"not\"")); /* the body is never logged */
    stop(d);
}

static bool quarantine_failed_twice(void *arg)
{
    char *log = tu_daemon_log(arg);
    const char *first = strstr(log, "quarantine_failed");
    bool twice = first && strstr(first + 1, "could not move the rejected message");
    free(log);
    return twice;
}

/* The quarantine queue does not exist: the send fails, the original is kept and retried
 * (receive count grows), never deleted. */
static void test_quarantine_failure_keeps_the_message(void **state)
{
    char missing[600];
    snprintf(missing, sizeof(missing), "%s-missing", q.url);
    tu_env_set(&env, "DSW_QUEUE_QUARANTINE_URL", "%s", missing);
    tu_queue_send(&q, bad_body, NULL, 0);
    struct tu_daemon *d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait(quarantine_failed_twice, d, WAIT_MS));
    stop(d);
    assert_false(tu_queue_empty(&q));
    assert_false(tu_daemon_log_has(d, "event=delete"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rejected_goes_to_quarantine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quarantine_failure_keeps_the_message, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
