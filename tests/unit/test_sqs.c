/* Unit tests of sqs's pure parts: error replies (JSON 1.0 and XML), their categories and which
 * of them are retried or trigger a credential refresh. */
#include "testutil.h"

#include "dsw/sqs.h"

#include <errno.h>
#include <string.h>

static int code_of(const char *body, char *out)
{
    return dsw_sqs_parse_error(body, strlen(body), out, 64);
}

static void test_parse_error(void **state)
{
    char c[64];
    assert_int_equal(code_of("{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\","
                             "\"message\":\"The specified queue does not exist.\"}",
                             c),
                     0);
    assert_string_equal(c, "QueueDoesNotExist");
    assert_int_equal(code_of("{\"__type\": \"ThrottlingException\", \"Message\": \"x\"}", c), 0);
    assert_string_equal(c, "ThrottlingException");
    assert_int_equal(code_of("{\"code\": \"AWS.SimpleQueueService.NonExistentQueue\"}", c), 0);
    assert_string_equal(c, "AWS.SimpleQueueService.NonExistentQueue");
    assert_int_equal(code_of("\n<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse>"
                             "<Errors><Error><Code>SignatureDoesNotMatch</Code><Message>m"
                             "</Message><Type>Sender</Type></Error></Errors></ErrorResponse>",
                             c),
                     0);
    assert_string_equal(c, "SignatureDoesNotMatch");
    assert_int_equal(code_of("<html>500 Internal Server Error</html>", c), -ENOENT);
    assert_int_equal(code_of("{\"message\": \"no type\"}", c), -ENOENT);
    assert_int_equal(code_of("not json", c), -ENOENT);
    assert_int_equal(code_of("", c), -ENOENT);
    assert_int_equal(code_of("{\"__type\": \"com.amazonaws.sqs#\"}", c), -ENOENT);
}

static void test_status(void **state)
{
    assert_int_equal(dsw_sqs_error_status(200, NULL), 0);
    assert_int_equal(dsw_sqs_error_status(403, "SignatureDoesNotMatch"), -EACCES);
    assert_int_equal(dsw_sqs_error_status(403, "InvalidClientTokenId"), -EACCES);
    assert_int_equal(dsw_sqs_error_status(400, "ExpiredToken"), -EACCES);
    assert_int_equal(dsw_sqs_error_status(400, "AccessDenied"), -EACCES);
    assert_int_equal(dsw_sqs_error_status(403, ""), -EACCES);
    assert_int_equal(dsw_sqs_error_status(400, "QueueDoesNotExist"), -ENOENT);
    assert_int_equal(dsw_sqs_error_status(400, "AWS.SimpleQueueService.NonExistentQueue"), -ENOENT);
    assert_int_equal(dsw_sqs_error_status(400, "ThrottlingException"), -EBUSY);
    assert_int_equal(dsw_sqs_error_status(400, "RequestThrottled"), -EBUSY);
    assert_int_equal(dsw_sqs_error_status(429, ""), -EBUSY);
    assert_int_equal(dsw_sqs_error_status(500, "InternalError"), -EREMOTEIO);
    assert_int_equal(dsw_sqs_error_status(503, NULL), -EREMOTEIO);
    assert_int_equal(dsw_sqs_error_status(400, "InvalidParameterValue"), -EINVAL);
    assert_int_equal(dsw_sqs_error_status(400, "InvalidAddress"), -EINVAL);
}

static void test_classes(void **state)
{
    assert_int_equal(dsw_sqs_errclass(0), DSW_SQS_OK);
    assert_int_equal(dsw_sqs_errclass(-EACCES), DSW_SQS_ERR_AUTH);
    assert_int_equal(dsw_sqs_errclass(-ENOENT), DSW_SQS_ERR_NOT_FOUND);
    assert_int_equal(dsw_sqs_errclass(-EBUSY), DSW_SQS_ERR_THROTTLED);
    assert_int_equal(dsw_sqs_errclass(-ECONNREFUSED), DSW_SQS_ERR_TRANSPORT);
    assert_int_equal(dsw_sqs_errclass(-ETIMEDOUT), DSW_SQS_ERR_TRANSPORT);
    assert_int_equal(dsw_sqs_errclass(-EREMOTEIO), DSW_SQS_ERR_TRANSPORT);
    assert_int_equal(dsw_sqs_errclass(-EINVAL), DSW_SQS_ERR_INVALID);
    assert_int_equal(dsw_sqs_errclass(-E2BIG), DSW_SQS_ERR_INVALID);
    assert_int_equal(dsw_sqs_errclass(-ECANCELED), DSW_SQS_ERR_CANCELED);
    assert_true(dsw_sqs_retryable(-EBUSY));
    assert_true(dsw_sqs_retryable(-EREMOTEIO));
    assert_true(dsw_sqs_retryable(-ECONNRESET));
    assert_false(dsw_sqs_retryable(-EACCES));
    assert_false(dsw_sqs_retryable(-EINVAL));
    assert_false(dsw_sqs_retryable(-ENOENT));
    assert_false(dsw_sqs_retryable(-ECANCELED));
    assert_false(dsw_sqs_retryable(0));
    assert_true(dsw_sqs_refresh_code("ExpiredToken"));
    assert_true(dsw_sqs_refresh_code("InvalidClientTokenId"));
    assert_true(dsw_sqs_refresh_code("SignatureDoesNotMatch"));
    assert_false(dsw_sqs_refresh_code("AccessDenied"));
    assert_false(dsw_sqs_refresh_code(NULL));
}

static void test_names(void **state)
{
    assert_string_equal(dsw_sqs_op_name(DSW_SQS_OP_RECEIVE), "receive");
    assert_string_equal(dsw_sqs_op_name(DSW_SQS_OP_CHANGE_VISIBILITY_BATCH),
                        "change_visibility_batch");
    assert_string_equal(dsw_sqs_errclass_name(DSW_SQS_ERR_THROTTLED), "throttled");
    assert_string_equal(dsw_sqs_errclass_name(DSW_SQS_ERR_COUNT), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
