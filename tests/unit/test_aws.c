/* Unit tests of aws's pure parts: shared credentials/config files, STS XML, ISO-8601 times and
 * the container/IMDS credential JSON. */
#include "testutil.h"

#include "dsw/aws.h"

#include <errno.h>
#include <string.h>

static int parse(const char *text, const char *profile, int config, struct dsw_aws_creds *c)
{
    return dsw_aws_parse_profile(text, strlen(text), profile, config, c);
}

static void test_credentials_file(void **state)
{
    struct dsw_aws_creds c;
    const char *f = "# top comment\n"
                    "[default]\r\n"
                    "aws_access_key_id = AKIADEFAULT\r\n"
                    "aws_secret_access_key = sec=ret/with+chars\r\n"
                    "\n"
                    "[ prod ]\n"
                    "; another comment\n"
                    "aws_access_key_id=AKIAPROD\n"
                    "aws_secret_access_key=prodsecret\n"
                    "aws_session_token = tok\n"
                    "region = eu-west-1\n"
                    "[legacy]\n"
                    "aws_access_key_id=AKIALEGACY\n"
                    "aws_secret_access_key=l\n"
                    "aws_security_token=oldtok\n";
    assert_int_equal(parse(f, "default", 0, &c), 0);
    assert_string_equal(c.key_id, "AKIADEFAULT");
    assert_string_equal(c.secret, "sec=ret/with+chars");
    assert_string_equal(c.token, "");
    assert_int_equal(parse(f, "prod", 0, &c), 0);
    assert_string_equal(c.key_id, "AKIAPROD");
    assert_string_equal(c.token, "tok");
    assert_int_equal(parse(f, "legacy", 0, &c), 0);
    assert_string_equal(c.token, "oldtok");
    assert_int_equal(parse(f, "nope", 0, &c), -ENOENT);
    /* In the config file style, [prod] is not "profile prod". */
    assert_int_equal(parse(f, "prod", 1, &c), -ENOENT);
}

static void test_config_file(void **state)
{
    struct dsw_aws_creds c;
    const char *f = "[default]\n"
                    "region = us-east-1\n"
                    "[profile  dev]\n"
                    "s3 =\n"
                    "  aws_access_key_id = NESTED\n"
                    "aws_access_key_id = AKIADEV\n"
                    "aws_secret_access_key = devsecret\n";
    assert_int_equal(parse(f, "dev", 1, &c), 0);
    assert_string_equal(c.key_id, "AKIADEV");
    assert_int_equal(parse(f, "default", 1, &c), -ENOENT); /* no keys there */
}

static void test_malformed_profiles(void **state)
{
    struct dsw_aws_creds c;
    assert_int_equal(parse("[default]\naws_access_key_id = A\n", "default", 0, &c), -EINVAL);
    assert_int_equal(parse("[default\naws_access_key_id = A\n", "default", 0, &c), -EINVAL);
    char big[600];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char text[800];
    snprintf(text, sizeof(text), "[default]\naws_access_key_id = %s\naws_secret_access_key=s\n",
             big);
    assert_int_equal(parse(text, "default", 0, &c), -EINVAL);
    assert_int_equal(parse("", "default", 0, &c), -ENOENT);
}

static void test_xml(void **state)
{
    const char *x = "<?xml version=\"1.0\"?><ErrorResponse><Error><Type>Sender</Type>"
                    "<Code>InvalidClientTokenId</Code><Message>a &amp; b &lt;c&gt; &quot;d&quot;"
                    "</Message></Error></ErrorResponse>";
    char out[64];
    assert_int_equal(dsw_aws_xml_text(x, strlen(x), "Code", out, sizeof(out)), 0);
    assert_string_equal(out, "InvalidClientTokenId");
    assert_int_equal(dsw_aws_xml_text(x, strlen(x), "Message", out, sizeof(out)), 0);
    assert_string_equal(out, "a & b <c> \"d\"");
    assert_int_equal(dsw_aws_xml_text(x, strlen(x), "Nope", out, sizeof(out)), -ENOENT);
    assert_int_equal(dsw_aws_xml_text(x, strlen(x), "Message", out, 5), -E2BIG);
    assert_int_equal(dsw_aws_xml_text("<Code>unterminated", 18, "Code", out, sizeof(out)), -ENOENT);
}

static void test_time(void **state)
{
    int64_t t;
    assert_int_equal(dsw_aws_parse_time("1970-01-01T00:00:00Z", &t), 0);
    assert_int_equal(t, 0);
    assert_int_equal(dsw_aws_parse_time("2026-11-27T05:29:55Z", &t), 0);
    assert_int_equal(t, 1795757395);
    assert_int_equal(dsw_aws_parse_time("2026-11-27T05:29:55.792012+00:00", &t), 0);
    assert_int_equal(t, 1795757395);
    assert_int_equal(dsw_aws_parse_time("2026-11-27T05:29:55+02:00", &t), -EINVAL);
    assert_int_equal(dsw_aws_parse_time("yesterday", &t), -EINVAL);
    assert_int_equal(dsw_aws_parse_time("2026-13-01T00:00:00Z", &t), -EINVAL);
    assert_int_equal(dsw_aws_parse_time(NULL, &t), -EINVAL);
}

static void test_json_creds(void **state)
{
    struct dsw_aws_creds c;
    const char *imds = "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2026-01-01T00:00:00Z\","
                       "\n  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"ASIAX\",\n"
                       "  \"SecretAccessKey\" : \"s\\/x\",\n  \"Token\" : \"t\",\n"
                       "  \"Expiration\" : \"1970-01-01T01:00:00Z\"\n}";
    assert_int_equal(dsw_aws_parse_json_creds(imds, strlen(imds), &c), 0);
    assert_string_equal(c.key_id, "ASIAX");
    assert_string_equal(c.secret, "s/x");
    assert_string_equal(c.token, "t");
    assert_int_equal(c.expires, 3600);
    const char *failed = "{\"Code\": \"Failure\", \"AccessKeyId\": \"A\", \"SecretAccessKey\": "
                         "\"s\"}";
    assert_int_equal(dsw_aws_parse_json_creds(failed, strlen(failed), &c), -EINVAL);
    const char *nosecret = "{\"AccessKeyId\": \"A\"}";
    assert_int_equal(dsw_aws_parse_json_creds(nosecret, strlen(nosecret), &c), -EINVAL);
    const char *trunc = "{\"AccessKeyId\": \"A";
    assert_int_equal(dsw_aws_parse_json_creds(trunc, strlen(trunc), &c), -EINVAL);
    const char *badexp = "{\"AccessKeyId\": \"A\", \"SecretAccessKey\": \"s\", \"Expiration\": "
                         "\"soon\"}";
    assert_int_equal(dsw_aws_parse_json_creds(badexp, strlen(badexp), &c), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_credentials_file),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_malformed_profiles),
        cmocka_unit_test(test_xml),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_json_creds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
