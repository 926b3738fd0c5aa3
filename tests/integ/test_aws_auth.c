/* SigV4 against a moto that verifies signatures (tests/support/moto_auth.sh starts it with
 * INITIAL_NO_AUTH_ACTION_COUNT and makes an IAM user key and STS temporary credentials): good
 * keys work, bad ones are auth errors after exactly one refresh-and-retry. */
#include "sqs_testlib.h"

static char dir[64];
static char url[128], key[128], secret[128], tkey[128], tsecret[128], token[2048];

static void read_env(void)
{
    char path[128], line[4096];
    snprintf(path, sizeof(path), "%s/env", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq++ = '\0';
        struct {
            const char *name;
            char *dst;
            size_t n;
        } v[] = {{"URL", url, sizeof(url)},
                 {"KEY", key, sizeof(key)},
                 {"SECRET", secret, sizeof(secret)},
                 {"TKEY", tkey, sizeof(tkey)},
                 {"TSECRET", tsecret, sizeof(tsecret)},
                 {"TOKEN", token, sizeof(token)}};
        for (size_t i = 0; i < DSW_ARRAY_LEN(v); i++)
            if (strcmp(line, v[i].name) == 0)
                snprintf(v[i].dst, v[i].n, "%s", eq);
    }
    fclose(f);
}

static int setup(void **state)
{
    char cmd[512];
    const char *src = tu_need_env("DSW_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "/tmp/dsw-moto-auth-%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "%s/tests/support/moto_auth.sh start %s >/dev/null 2>&1", src, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "moto_auth.sh start failed (see %s/moto-auth.log)\n", dir);
        return -1;
    }
    read_env();
    return 0;
}

static int teardown(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "%s/tests/support/moto_auth.sh stop %s; rm -rf %s",
             tu_need_env("DSW_SOURCE_DIR"), dir, dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void creds(struct dsw_aws_creds *c, const char *k, const char *s, const char *t)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->key_id, sizeof(c->key_id), "%s", k);
    snprintf(c->secret, sizeof(c->secret), "%s", s);
    snprintf(c->token, sizeof(c->token), "%s", t ? t : "");
}

/* Create a queue, send and receive one message with these credentials; returns the first
 * failing status (0 when all worked) and the number of CreateQueue requests made. */
static int roundtrip(const struct dsw_aws_creds *c, uint64_t *attempts)
{
    struct st_env e;
    struct st_call u = {0};
    char name[64];
    snprintf(name, sizeof(name), "auth-%d-%llu", (int)getpid(), (unsigned long long)dsw_now_ms());
    st_open(&e, url, c, NULL);
    assert_int_equal(dsw_sqs_create_queue(e.sqs, name, NULL, 0, st_on_str, &u), 0);
    st_wait(&e, &u, 10000);
    int status = u.status;
    if (status == 0) {
        status = st_send(&e, u.str, "signed", NULL, 0);
        struct st_call r;
        st_receive(&e, u.str, 1, 1, 30, &r);
        assert_int_equal(r.status, 0);
        assert_int_equal(r.n, 1);
        assert_string_equal(r.msgs[0].body, "signed");
    }
    *attempts = 0;
    for (int k = 0; k < DSW_SQS_ERR_COUNT; k++)
        *attempts += dsw_sqs_requests(e.sqs, DSW_SQS_OP_CREATE_QUEUE, k);
    st_close(&e);
    return status;
}

static void test_good_key(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, key, secret, NULL);
    assert_int_equal(roundtrip(&c, &n), 0);
    assert_int_equal(n, 1);
}

static void test_wrong_secret(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, key, "wrong-secret-wrong-secret-wrong-secret00", NULL);
    assert_int_equal(roundtrip(&c, &n), -EACCES);
    assert_int_equal(n, 2); /* one refresh and one retry, no more */
}

static void test_unknown_key(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, "AKIAUNKNOWNUNKNOWN00", secret, NULL);
    assert_int_equal(roundtrip(&c, &n), -EACCES);
    assert_int_equal(n, 2);
}

static void test_temporary(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, tkey, tsecret, token);
    assert_int_equal(roundtrip(&c, &n), 0);
}

static void test_temporary_without_token(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, tkey, tsecret, NULL);
    assert_int_equal(roundtrip(&c, &n), -EACCES);
    assert_int_equal(n, 2);
}

static void test_temporary_wrong_token(void **state)
{
    struct dsw_aws_creds c;
    uint64_t n;
    creds(&c, tkey, tsecret, "FQoGZXIvYXdzEBYaDwrongwrongwrongwrongwrong");
    assert_int_equal(roundtrip(&c, &n), -EACCES);
    assert_int_equal(n, 2);
}

struct chain {
    struct st_env e;
    struct st_call c;
};

static int chain_ready(void *arg)
{
    return dsw_aws_creds(((struct chain *)arg)->e.aws) != NULL;
}

static void on_wait(int status, void *arg)
{
}

/* Credentials from the chain (a shared credentials file here) are refreshed after an auth error:
 * the file is fixed between the first resolution and the call, and the one retry succeeds. */
static void test_refresh_after_auth_error(void **state)
{
    char *tmp = tu_tmpdir(), path[300], envf[340], text[512];
    snprintf(path, sizeof(path), "%s/credentials", tmp);
    snprintf(envf, sizeof(envf), "AWS_SHARED_CREDENTIALS_FILE=%s", path);
    snprintf(text, sizeof(text), "[default]\naws_access_key_id=%s\naws_secret_access_key=wrong\n",
             key);
    tu_write_file(path, text, 0600);
    char *env[] = {envf, "AWS_EC2_METADATA_DISABLED=true", NULL};
    struct dsw_aws_opts ao = {.region = "us-east-1", .env = env};
    struct dsw_sqs_opts so = {.endpoint = url};
    struct chain ch = {0};
    struct st_env *e = &ch.e;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(dsw_http_init(&e->http, &e->loop), 0);
    assert_int_equal(dsw_aws_init(&e->aws, &e->loop, e->http, &ao), 0);
    assert_int_equal(dsw_sqs_init(&e->sqs, &e->loop, e->http, e->aws, &so), 0);
    dsw_aws_wait(e->aws, on_wait, NULL);
    assert_true(st_run_until(&e->loop, chain_ready, &ch, 5000));
    assert_int_equal(dsw_aws_generation(e->aws), 1);

    snprintf(text, sizeof(text), "[default]\naws_access_key_id=%s\naws_secret_access_key=%s\n", key,
             secret);
    tu_write_file(path, text, 0600);
    assert_int_equal(dsw_sqs_get_queue_url(e->sqs, "no-such-queue-auth", st_on_str, &ch.c), 0);
    st_wait(e, &ch.c, 10000);
    /* Signed correctly on the retry: moto now says the queue does not exist. */
    assert_int_equal(ch.c.status, -ENOENT);
    assert_int_equal(dsw_aws_generation(e->aws), 2);
    assert_int_equal(dsw_sqs_requests(e->sqs, DSW_SQS_OP_GET_QUEUE_URL, DSW_SQS_ERR_AUTH), 1);
    st_close(e);
    tu_rm_rf(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_key),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_temporary),
        cmocka_unit_test(test_temporary_without_token),
        cmocka_unit_test(test_temporary_wrong_token),
        cmocka_unit_test(test_refresh_after_auth_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
