/* Unit tests of sqs's pure parts: error replies (JSON 1.0 and XML), their categories and which
 * of them are retried or trigger a credential refresh. */
#include "testutil.h"

#include "dsw/sqs.h"
#include "dsw/util.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

static int code_of(const char *body, char *out)
{
    return dsw_sqs_parse_error(body, strlen(body), out, 64);
}

/* An error body and the code it carries (NULL: none found, -ENOENT). */
static const struct {
    const char *body, *code;
} error_bodies[] = {
    {"{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\","
     "\"message\":\"The specified queue does not exist.\"}",
     "QueueDoesNotExist"},
    {"{\"__type\": \"ThrottlingException\", \"Message\": \"x\"}", "ThrottlingException"},
    {"{\"code\": \"AWS.SimpleQueueService.NonExistentQueue\"}",
     "AWS.SimpleQueueService.NonExistentQueue"},
    {"\n<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse>"
     "<Errors><Error><Code>SignatureDoesNotMatch</Code><Message>m"
     "</Message><Type>Sender</Type></Error></Errors></ErrorResponse>",
     "SignatureDoesNotMatch"},
    {"<html>500 Internal Server Error</html>", NULL},
    {"{\"message\": \"no type\"}", NULL},
    {"not json", NULL},
    {"", NULL},
    {"{\"__type\": \"com.amazonaws.sqs#\"}", NULL},
};

static void test_parse_error(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(error_bodies); i++) {
        char c[64];
        const char *want = error_bodies[i].code;
        assert_int_equal(code_of(error_bodies[i].body, c), want ? 0 : -ENOENT);
        if (want)
            assert_string_equal(c, want);
    }
}

static void test_status(void **state)
{
    static const struct {
        long http;
        const char *code;
        int want;
    } cases[] = {
        {200, NULL, 0},
        {403, "SignatureDoesNotMatch", -EACCES},
        {403, "InvalidClientTokenId", -EACCES},
        {400, "ExpiredToken", -EACCES},
        {400, "AccessDenied", -EACCES},
        {403, "", -EACCES},
        {400, "QueueDoesNotExist", -ENOENT},
        {400, "AWS.SimpleQueueService.NonExistentQueue", -ENOENT},
        {400, "ThrottlingException", -EBUSY},
        {400, "RequestThrottled", -EBUSY},
        {429, "", -EBUSY},
        {500, "InternalError", -EREMOTEIO},
        {503, NULL, -EREMOTEIO},
        {400, "InvalidParameterValue", -EINVAL},
        {400, "InvalidAddress", -EINVAL},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++)
        if (dsw_sqs_error_status(cases[i].http, cases[i].code) != cases[i].want)
            fail_msg("%ld %s: %d, not %d", cases[i].http, cases[i].code ? cases[i].code : "(null)",
                     dsw_sqs_error_status(cases[i].http, cases[i].code), cases[i].want);
}

static void test_classes(void **state)
{
    static const struct {
        int err;
        enum dsw_sqs_errclass cls;
        bool retryable;
    } cases[] = {
        {0, DSW_SQS_OK, false},
        {-EACCES, DSW_SQS_ERR_AUTH, false},
        {-ENOENT, DSW_SQS_ERR_NOT_FOUND, false},
        {-EBUSY, DSW_SQS_ERR_THROTTLED, true},
        {-ECONNREFUSED, DSW_SQS_ERR_TRANSPORT, true},
        {-ETIMEDOUT, DSW_SQS_ERR_TRANSPORT, true},
        {-EREMOTEIO, DSW_SQS_ERR_TRANSPORT, true},
        {-ECONNRESET, DSW_SQS_ERR_TRANSPORT, true},
        {-EINVAL, DSW_SQS_ERR_INVALID, false},
        {-E2BIG, DSW_SQS_ERR_INVALID, false},
        {-ECANCELED, DSW_SQS_ERR_CANCELED, false},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
        assert_int_equal(dsw_sqs_errclass(cases[i].err), cases[i].cls);
        assert_int_equal(dsw_sqs_retryable(cases[i].err), cases[i].retryable);
    }
    static const char *const refresh[] = {"ExpiredToken", "InvalidClientTokenId",
                                          "SignatureDoesNotMatch"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(refresh); i++)
        assert_true(dsw_sqs_refresh_code(refresh[i]));
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
