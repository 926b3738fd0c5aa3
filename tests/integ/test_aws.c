/* The credential chain against a loopback stand-in for STS, the container endpoint and IMDSv2
 * (tests/support/cred_server.py): each provider, the chain order, the token headers, refresh
 * before expiry without blocking, and fast fall-through past a provider that does not answer.
 * Every test passes its own environment, so nothing here can reach a non-loopback address. */
#include "sqs_testlib.h"

#include "dsw/log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

static pid_t server_pid;
static char base[64]; /* http://127.0.0.1:PORT */
static char *tmpdir;

static int setup(void **state)
{
    char portfile[256], script[512];
    tmpdir = tu_tmpdir();
    snprintf(portfile, sizeof(portfile), "%s/port", tmpdir);
    snprintf(script, sizeof(script), "%s/tests/support/cred_server.py",
             tu_need_env("DSW_SOURCE_DIR"));
    server_pid = fork();
    if (server_pid == 0) {
        execlp("python3", "python3", script, portfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(portfile, "r");
        int port = 0;
        if (f && fscanf(f, "%d", &port) == 1 && port > 0) {
            fclose(f);
            snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
            return 0;
        }
        if (f)
            fclose(f);
        usleep(50 * 1000);
    }
    return -1;
}

static int teardown(void **state)
{
    kill(server_pid, SIGTERM);
    waitpid(server_pid, NULL, 0);
    tu_rm_rf(tmpdir);
    free(tmpdir);
    return 0;
}

struct fixture {
    uv_loop_t loop;
    struct dsw_http *http;
    struct dsw_aws *aws;
    struct st_call c;
};

static void on_ready(int status, void *arg)
{
    struct st_call *c = arg;
    c->fired = 1;
    c->calls++;
    c->status = status;
    c->t_done = dsw_now_ms();
}

static void fx_open(struct fixture *f, char *const *env, int64_t refresh_before_ms)
{
    struct dsw_aws_opts o = {
        .region = "us-east-1", .env = env, .refresh_before_ms = refresh_before_ms};
    memset(&f->c, 0, sizeof(f->c));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(dsw_http_init(&f->http, &f->loop), 0);
    assert_int_equal(dsw_aws_init(&f->aws, &f->loop, f->http, &o), 0);
}

/* Resolve and return the status; *took gets the milliseconds it needed. */
static int fx_resolve(struct fixture *f, uint64_t *took)
{
    uint64_t t0 = dsw_now_ms();
    memset(&f->c, 0, sizeof(f->c));
    dsw_aws_wait(f->aws, on_ready, &f->c);
    assert_int_equal(f->c.calls, 0); /* never from inside the call */
    assert_true(st_run_until(&f->loop, st_fired, &f->c, 15000));
    if (took)
        *took = f->c.t_done - t0;
    return f->c.status;
}

static void fx_close(struct fixture *f)
{
    dsw_aws_close(f->aws, NULL, NULL);
    dsw_http_close(f->http, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    tu_loop_close(&f->loop);
}

/* A loopback port that accepts connections into its backlog and never answers. */
static int blackhole(char *url, size_t n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(url, n, "http://127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

static int stat_count(const char *name)
{
    char cmd[256], *out = NULL;
    char url[128];
    snprintf(url, sizeof(url), "%s/stats", base);
    char *argv[] = {"/usr/bin/curl", "-fsS", url, NULL};
    assert_int_equal(tu_run(argv, NULL, &out), 0);
    snprintf(cmd, sizeof(cmd), "\"%s\": ", name);
    char *p = strstr(out, cmd);
    int n = p ? atoi(p + strlen(cmd)) : 0;
    free(out);
    return n;
}

#define IMDS_OFF "AWS_EC2_METADATA_DISABLED=true"

static void test_env_provider(void **state)
{
    struct fixture f;
    char *env[] = {"AWS_ACCESS_KEY_ID=AKIAENV", "AWS_SECRET_ACCESS_KEY=envsecret",
                   "AWS_SESSION_TOKEN=envtoken", IMDS_OFF, NULL};
    fx_open(&f, env, 0);
    struct dsw_aws_signing s;
    assert_int_equal(dsw_aws_sign(f.aws, &s), -EAGAIN);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    const struct dsw_aws_creds *c = dsw_aws_creds(f.aws);
    assert_string_equal(c->source, "env");
    assert_string_equal(c->key_id, "AKIAENV");
    assert_int_equal(dsw_aws_sign(f.aws, &s), 0);
    assert_string_equal(s.sign.provider, "aws:amz:us-east-1:sqs");
    assert_string_equal(s.sign.user, "AKIAENV");
    assert_string_equal(s.token_header, "X-Amz-Security-Token: envtoken");
    fx_close(&f);
}

static void test_shared_files(void **state)
{
    char cred[300], conf[300], e1[340], e2[340];
    snprintf(cred, sizeof(cred), "%s/credentials", tmpdir);
    snprintf(conf, sizeof(conf), "%s/config", tmpdir);
    tu_write_file(cred,
                  "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d\n"
                  "# comment\n[other]\naws_access_key_id=AKIAOTHER\naws_secret_access_key=o\n"
                  "aws_session_token = othertoken\n",
                  0600);
    tu_write_file(conf,
                  "[default]\nregion = us-east-1\n[profile cfg]\ns3 =\n  max_concurrent_requests "
                  "= 2\naws_access_key_id = AKIACONFIG\naws_secret_access_key = c\n",
                  0600);
    snprintf(e1, sizeof(e1), "AWS_SHARED_CREDENTIALS_FILE=%s", cred);
    snprintf(e2, sizeof(e2), "AWS_CONFIG_FILE=%s", conf);
    struct fixture f;
    char *env[] = {e1, e2, "AWS_PROFILE=other", IMDS_OFF, NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->key_id, "AKIAOTHER");
    assert_string_equal(dsw_aws_creds(f.aws)->token, "othertoken");
    assert_string_equal(dsw_aws_creds(f.aws)->source, "shared-file");
    fx_close(&f);

    char *env2[] = {e1, e2, "AWS_PROFILE=cfg", IMDS_OFF, NULL};
    fx_open(&f, env2, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->key_id, "AKIACONFIG");
    fx_close(&f);

    char *env3[] = {e1, e2, "AWS_PROFILE=missing", IMDS_OFF, NULL};
    fx_open(&f, env3, 0);
    assert_int_equal(fx_resolve(&f, NULL), -ENOKEY);
    fx_close(&f);
}

static void test_web_identity(void **state)
{
    char tok[300], e1[340], e2[128];
    snprintf(tok, sizeof(tok), "%s/web-token", tmpdir);
    tu_write_file(tok, "web-identity-token\n", 0600);
    snprintf(e1, sizeof(e1), "AWS_WEB_IDENTITY_TOKEN_FILE=%s", tok);
    snprintf(e2, sizeof(e2), "AWS_ENDPOINT_URL_STS=%s/sts/", base);
    struct fixture f;
    char *env[] = {e1, e2, "AWS_ROLE_ARN=arn:aws:iam::123456789012:role/web", IMDS_OFF, NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    const struct dsw_aws_creds *c = dsw_aws_creds(f.aws);
    assert_string_equal(c->source, "web-identity");
    assert_memory_equal(c->key_id, "ASIAWEB", 7);
    assert_non_null(strstr(c->token, "&x")); /* XML entities decoded */
    assert_true(c->expires > (int64_t)time(NULL) + 3000);
    fx_close(&f);

    /* A refused token is an auth error, not a fall-through. */
    tu_write_file(tok, "wrong\n", 0600);
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), -EACCES);
    fx_close(&f);
}

static void test_container(void **state)
{
    char tok[300], e1[340], e2[128];
    snprintf(tok, sizeof(tok), "%s/container-token", tmpdir);
    tu_write_file(tok, "Bearer container-secret\n", 0600);
    snprintf(e1, sizeof(e1), "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=%s", tok);
    snprintf(e2, sizeof(e2), "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s/container/creds", base);
    struct fixture f;
    char *env[] = {e1, e2, IMDS_OFF, NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->source, "container");
    assert_memory_equal(dsw_aws_creds(f.aws)->key_id, "ASIACONT", 8);
    assert_memory_equal(dsw_aws_creds(f.aws)->token, "token-", 6);
    fx_close(&f);

    /* The token from the environment works too; a wrong one is refused (403). */
    char *env2[] = {e2, "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer container-secret", IMDS_OFF,
                    NULL};
    fx_open(&f, env2, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    fx_close(&f);
    int before = stat_count("container_unauthorized");
    char *env3[] = {e2, "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer nope", IMDS_OFF, NULL};
    fx_open(&f, env3, 0);
    assert_int_equal(fx_resolve(&f, NULL), -EACCES);
    fx_close(&f);
    assert_int_equal(stat_count("container_unauthorized"), before + 1);

    /* A full URI to a non-loopback plain-http host is refused without any traffic. */
    char *env4[] = {"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://192.0.2.1/creds", IMDS_OFF, NULL};
    fx_open(&f, env4, 0);
    assert_int_equal(fx_resolve(&f, NULL), -EINVAL);
    fx_close(&f);
}

static void test_imds(void **state)
{
    char e1[128];
    snprintf(e1, sizeof(e1), "AWS_EC2_METADATA_SERVICE_ENDPOINT=%s/", base);
    int tokens = stat_count("imds_token");
    struct fixture f;
    char *env[] = {e1, NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->source, "imds");
    assert_memory_equal(dsw_aws_creds(f.aws)->key_id, "ASIAIMDS", 8);
    fx_close(&f);
    assert_int_equal(stat_count("imds_token"), tokens + 1);
    assert_int_equal(stat_count("imds_unauthorized"), 0);
}

/* Environment first: the container endpoint is never asked when env keys are set. */
static void test_chain_order(void **state)
{
    char e2[128];
    snprintf(e2, sizeof(e2), "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s/container/creds", base);
    int before = stat_count("ASIACONT");
    struct fixture f;
    char *env[] = {"AWS_ACCESS_KEY_ID=AKIAENV",
                   "AWS_SECRET_ACCESS_KEY=s",
                   e2,
                   "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer container-secret",
                   IMDS_OFF,
                   NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->source, "env");
    fx_close(&f);
    assert_int_equal(stat_count("ASIACONT"), before);
}

/* dsw_aws_opts.provider_timeout_ms when 0, as fx_open leaves it. */
#define PROVIDER_TIMEOUT_MS 1000

/* A container endpoint that never answers is skipped after the provider timeout and IMDS
 * answers; with nothing answering at all the chain ends in -ENOKEY just as fast. */
static void test_fall_through_fast(void **state)
{
    char hole[64], e1[160], e2[128];
    int fd = blackhole(hole, sizeof(hole));
    snprintf(e1, sizeof(e1), "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s/creds", hole);
    snprintf(e2, sizeof(e2), "AWS_EC2_METADATA_SERVICE_ENDPOINT=%s", base);
    struct fixture f;
    uint64_t took;
    char *env[] = {e1, e2, NULL};
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, &took), 0);
    assert_string_equal(dsw_aws_creds(f.aws)->source, "imds");
    print_message("container silent, imds answered after %llu ms\n", (unsigned long long)took);
    assert_true(took < 2 * PROVIDER_TIMEOUT_MS); /* one provider timeout waited out, not two */
    fx_close(&f);

    snprintf(e2, sizeof(e2), "AWS_EC2_METADATA_SERVICE_ENDPOINT=%s", hole);
    char *env2[] = {e2, NULL};
    fx_open(&f, env2, 0);
    assert_int_equal(fx_resolve(&f, &took), -ENOKEY);
    print_message("imds silent: no credentials after %llu ms\n", (unsigned long long)took);
    assert_true(took < 2 * PROVIDER_TIMEOUT_MS);
    fx_close(&f);
    close(fd);
}

static int gen_at_least(void *arg)
{
    struct fixture *f = arg;
    /* Signing must keep working while the refresh runs. */
    struct dsw_aws_signing s;
    assert_int_equal(dsw_aws_sign(f->aws, &s), 0);
    return dsw_aws_generation(f->aws) >= 3;
}

/* Credentials that expire in 4 s are refreshed ahead of time, twice, without a gap. */
static void test_refresh_before_expiry(void **state)
{
    char e1[160];
    snprintf(e1, sizeof(e1), "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s/container/creds?exp=4", base);
    struct fixture f;
    char *env[] = {e1, "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer container-secret", IMDS_OFF, NULL};
    fx_open(&f, env, 2000);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    char first[DSW_AWS_KEY_MAX];
    snprintf(first, sizeof(first), "%s", dsw_aws_creds(f.aws)->key_id);
    int64_t exp1 = dsw_aws_creds(f.aws)->expires;
    assert_true(st_run_until(&f.loop, gen_at_least, &f, 10000));
    assert_string_not_equal(dsw_aws_creds(f.aws)->key_id, first);
    assert_true(dsw_aws_creds(f.aws)->expires >= exp1);
    fx_close(&f);
}

/* dsw_aws_refresh after an auth error re-runs the provider that gave the credentials. */
static void test_forced_refresh(void **state)
{
    char e1[160];
    snprintf(e1, sizeof(e1), "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s/container/creds", base);
    struct fixture f;
    char *env[] = {e1, "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer container-secret", IMDS_OFF, NULL};
    /* The source is logged once: the refresh from the same provider is no news. */
    FILE *log = tmpfile();
    assert_non_null(log);
    dsw_log_setup(DSW_LOG_INFO, DSW_LOG_TEXT, fileno(log));
    fx_open(&f, env, 0);
    assert_int_equal(fx_resolve(&f, NULL), 0);
    char first[DSW_AWS_KEY_MAX];
    snprintf(first, sizeof(first), "%s", dsw_aws_creds(f.aws)->key_id);
    struct st_call a = {0}, b = {0};
    dsw_aws_refresh(f.aws, on_ready, &a);
    dsw_aws_refresh(f.aws, on_ready, &b); /* shares the same refresh */
    assert_true(st_run_until(&f.loop, st_fired, &b, 5000));
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    assert_int_equal(dsw_aws_generation(f.aws), 2);
    assert_string_not_equal(dsw_aws_creds(f.aws)->key_id, first);
    fx_close(&f);
    dsw_log_setup(DSW_LOG_INFO, DSW_LOG_TEXT, 2);
    char text[4096] = "";
    rewind(log);
    text[fread(text, 1, sizeof(text) - 1, log)] = '\0';
    fclose(log);
    int n = 0;
    for (const char *p = text; (p = strstr(p, "aws: credentials from")) != NULL; p++)
        n++;
    if (n != 1)
        fail_msg("'aws: credentials from' logged %d times:\n%s", n, text);
}

/* Closing with a resolution in flight cancels the wait exactly once. */
static void test_close_cancels(void **state)
{
    char hole[64], e1[128];
    int fd = blackhole(hole, sizeof(hole));
    snprintf(e1, sizeof(e1), "AWS_EC2_METADATA_SERVICE_ENDPOINT=%s", hole);
    struct fixture f;
    char *env[] = {e1, NULL};
    fx_open(&f, env, 0);
    dsw_aws_wait(f.aws, on_ready, &f.c);
    for (int i = 0; i < 5; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    fx_close(&f);
    assert_int_equal(f.c.calls, 1);
    assert_int_equal(f.c.status, -ECANCELED);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_provider),
        cmocka_unit_test(test_shared_files),
        cmocka_unit_test(test_web_identity),
        cmocka_unit_test(test_container),
        cmocka_unit_test(test_imds),
        cmocka_unit_test(test_chain_order),
        cmocka_unit_test(test_fall_through_fast),
        cmocka_unit_test(test_refresh_before_expiry),
        cmocka_unit_test(test_forced_refresh),
        cmocka_unit_test(test_close_cancels),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
