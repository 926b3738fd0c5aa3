/* Unit tests of aws's pure parts: shared credentials/config files, STS XML, ISO-8601 times and
 * the container/IMDS credential JSON. */
#include "testutil.h"

#include "dsw/aws.h"
#include "dsw/util.h"

#include <errno.h>
#include <string.h>

static int parse(const char *text, const char *profile, int config, struct dsw_aws_creds *c)
{
    return dsw_aws_parse_profile(text, strlen(text), profile, config, c);
}

/* A profile looked up in a file and what comes of it: rc, and for 0 the key id, the secret and
 * the token (NULL: not checked). */
struct profile_case {
    const char *profile;
    int config, rc;
    const char *key_id, *secret, *token;
};

static void expect_profiles(const char *text, const struct profile_case *pc, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct dsw_aws_creds c;
        int rc = parse(text, pc[i].profile, pc[i].config, &c);
        if (rc != pc[i].rc)
            fail_msg("profile '%s' (config %d): %d, not %d", pc[i].profile, pc[i].config, rc,
                     pc[i].rc);
        if (pc[i].key_id)
            assert_string_equal(c.key_id, pc[i].key_id);
        if (pc[i].secret)
            assert_string_equal(c.secret, pc[i].secret);
        if (pc[i].token)
            assert_string_equal(c.token, pc[i].token);
    }
}

static void test_credentials_file(void **state)
{
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
    static const struct profile_case cases[] = {
        {"default", 0, 0, "AKIADEFAULT", "sec=ret/with+chars", ""},
        {"prod", 0, 0, "AKIAPROD", NULL, "tok"},
        {"legacy", 0, 0, NULL, NULL, "oldtok"},
        {"nope", 0, -ENOENT, NULL, NULL, NULL},
        /* In the config file style, [prod] is not "profile prod". */
        {"prod", 1, -ENOENT, NULL, NULL, NULL},
    };
    expect_profiles(f, cases, DSW_ARRAY_LEN(cases));
}

static void test_config_file(void **state)
{
    const char *f = "[default]\n"
                    "region = us-east-1\n"
                    "[profile  dev]\n"
                    "s3 =\n"
                    "  aws_access_key_id = NESTED\n"
                    "aws_access_key_id = AKIADEV\n"
                    "aws_secret_access_key = devsecret\n";
    static const struct profile_case cases[] = {
        {"dev", 1, 0, "AKIADEV", NULL, NULL},
        {"default", 1, -ENOENT, NULL, NULL, NULL}, /* no keys there */
    };
    expect_profiles(f, cases, DSW_ARRAY_LEN(cases));
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
    static const struct {
        const char *text;
        int rc;
        int64_t t;
    } cases[] = {
        {"1970-01-01T00:00:00Z", 0, 0},
        {"2026-11-27T05:29:55Z", 0, 1795757395},
        {"2026-11-27T05:29:55.792012+00:00", 0, 1795757395},
        {"2026-11-27T05:29:55+02:00", -EINVAL, 0},
        {"yesterday", -EINVAL, 0},
        {"2026-13-01T00:00:00Z", -EINVAL, 0},
        {NULL, -EINVAL, 0},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
        int64_t t;
        assert_int_equal(dsw_aws_parse_time(cases[i].text, &t), cases[i].rc);
        if (!cases[i].rc)
            assert_int_equal(t, cases[i].t);
    }
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
    /* A failure code, no secret, truncated, an expiration that is not a time. */
    static const char *const bad[] = {
        "{\"Code\": \"Failure\", \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"s\"}",
        "{\"AccessKeyId\": \"A\"}",
        "{\"AccessKeyId\": \"A",
        "{\"AccessKeyId\": \"A\", \"SecretAccessKey\": \"s\", \"Expiration\": \"soon\"}",
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++)
        assert_int_equal(dsw_aws_parse_json_creds(bad[i], strlen(bad[i]), &c), -EINVAL);
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
