/* Operating the daemon (issue 7), with the real binary: the sd_notify sequence READY ->
 * WATCHDOG... -> STOPPING and the watchdog going quiet while the loop is wedged; /readyz
 * following PostgreSQL down and up; /metrics parsing as Prometheus text with its accounting
 * holding; JSON log lines that are valid JSON and never carry a secret. */
#include "testutil.h"

#include "dsw/util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Secrets planted in the daemon's environment and in message bodies: none may reach a log. */
static const char *const secrets[] = {
    "wJalrXUtnFEMI-TEST-SECRET-KEY", "IOSFODNN7EXAMPLE",    "pg-test-password-42",
    "child-env-secret-99",           "hunter2-inline-yaml", "body-secret-in-rejected",
};

struct fixture {
    char *dir;
    char pg_conninfo[256];
    char pg_port[16];
    char queue_url[512];
    char http_port[16];
    pid_t daemon;
    char log_path[600];
};

static struct fixture F;

/* ---- small process helpers (no shell) ------------------------------------------------ */

static void services(const char *what)
{
    char script[4096];
    snprintf(script, sizeof(script), "%s/scripts/services.sh", tu_need_env("DSW_SOURCE_DIR"));
    char *argv[] = {"bash", script, (char *)what, F.dir, NULL};
    if (tu_run_quiet(argv, NULL) != 0)
        fail_msg("services.sh %s failed", what);
}

static void env_value(const char *text, const char *name, char *out, size_t n)
{
    const char *p = strstr(text, name);
    assert_non_null(p);
    p += strlen(name) + 1;
    if (*p == '\'')
        p++;
    size_t len = strcspn(p, "'\n");
    assert_true(len < n);
    memcpy(out, p, len);
    out[len] = '\0';
}

static void free_port(char *out, size_t n)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    snprintf(out, n, "%d", ntohs(a.sin_port));
    close(s);
}

struct reply {
    char text[65536];
    size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t room = sizeof(r->text) - 1 - r->len, take = size * n < room ? size * n : room;
    memcpy(r->text + r->len, p, take);
    r->len += take;
    r->text[r->len] = '\0';
    return size * n;
}

/* GET or SQS-JSON POST; returns the HTTP status (0 when nothing answered). */
static long http(const char *url, const char *target, const char *body, struct reply *r)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    r->len = 0;
    r->text[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (target) {
        char t[128];
        snprintf(t, sizeof(t), "X-Amz-Target: AmazonSQS.%s", target);
        hd = curl_slist_append(hd, t);
        hd = curl_slist_append(hd, "Content-Type: application/x-amz-json-1.0");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    long status = 0;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return status;
}

static void sqs(const char *action, const char *body, struct reply *r)
{
    if (http(tu_need_env("DSW_TEST_FAUXQS_URL"), action, body, r) != 200)
        fail_msg("SQS %s failed: %s", action, r->text);
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll cond every 50 ms until it holds or seconds pass. */
static int await(int (*cond)(void), int seconds)
{
    for (int i = 0; i < seconds * 20; i++) {
        if (cond())
            return 1;
        pause_ms(50);
    }
    return cond();
}

/* ---- fixture: a private PostgreSQL, a fresh queue ---------------------------------------- */

static int setup(void **state)
{
    memset(&F, 0, sizeof(F));
    F.dir = tu_tmpdir();
    chmod(F.dir, 0755); /* the postgres user starts the server inside */
    services("start-pg");
    char envfile[600];
    snprintf(envfile, sizeof(envfile), "%s/env", F.dir);
    char *env = tu_read_file(envfile, NULL);
    env_value(env, "DSW_TEST_PG_CONNINFO", F.pg_conninfo, sizeof(F.pg_conninfo));
    env_value(env, "DSW_TEST_PG_PORT", F.pg_port, sizeof(F.pg_port));
    free(env);
    struct reply r;
    char body[128];
    snprintf(body, sizeof(body), "{\"QueueName\": \"ops-%d-%ld\"}", (int)getpid(),
             (long)time(NULL));
    sqs("CreateQueue", body, &r);
    json_t *j = json_loads(r.text, 0, NULL);
    assert_non_null(j);
    snprintf(F.queue_url, sizeof(F.queue_url), "%s",
             json_string_value(json_object_get(j, "QueueUrl")));
    json_decref(j);
    free_port(F.http_port, sizeof(F.http_port));
    snprintf(F.log_path, sizeof(F.log_path), "%s/daemon.log", F.dir);
    return 0;
}

static int teardown(void **state)
{
    if (F.daemon > 0) {
        kill(F.daemon, SIGKILL);
        waitpid(F.daemon, NULL, 0);
    }
    services("stop");
    tu_rm_rf(F.dir);
    free(F.dir);
    return 0;
}

/* The daemon's environment: configuration from DSW_* alone, plus planted secrets. */
static char **daemon_env(const char *const *extra)
{
    static char buf[40][700];
    static char *envp[48];
    size_t n = 0;
    const char *path = getenv("PATH");
#define ADD(...) snprintf(buf[n], sizeof(buf[n]), __VA_ARGS__), envp[n] = buf[n], n++
    ADD("PATH=%s", path ? path : "/usr/bin:/bin");
    ADD("DSW_QUEUE_URL=%s", F.queue_url);
    ADD("DSW_QUEUE_ENDPOINT=%s", tu_need_env("DSW_TEST_FAUXQS_URL"));
    ADD("DSW_QUEUE_REGION=us-east-1");
    ADD("DSW_QUEUE_WAIT_TIME=1s");
    ADD("DSW_POSTGRES_CONNINFO=%s", F.pg_conninfo);
    ADD("DSW_RUNS_DAGSTER_HOME=%s", F.dir);
    ADD("DSW_RUNS_COMMAND=%s", tu_need_env("DSW_SUPPORT_fake_dagster"));
    ADD("DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO=%s", F.pg_conninfo);
    ADD("DSW_RUNS_ENV_DAGSTER_PG_PASSWORD=%s", secrets[3]);
    ADD("DSW_RUNS_REQUEUE_DELAY=1h");
    ADD("DSW_HTTP_LISTEN=127.0.0.1:%s", F.http_port);
    ADD("DSW_LOG_FORMAT=json");
    ADD("DSW_LOG_LEVEL=debug");
    ADD("AWS_ACCESS_KEY_ID=AKIA%s", secrets[1]);
    ADD("AWS_SECRET_ACCESS_KEY=%s", secrets[0]);
    ADD("PGPASSWORD=%s", secrets[2]);
    for (size_t i = 0; extra && extra[i] && n < 39; i++)
        ADD("%s", extra[i]);
#undef ADD
    envp[n] = NULL;
    return envp;
}

static void start_daemon(const char *const *extra)
{
    char **envp = daemon_env(extra);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(F.log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        for (int i = 3; i < 1024; i++)
            close(i);
        char *argv[] = {(char *)tu_need_env("DSW_BIN"), "run", NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    F.daemon = pid;
}

static int stop_daemon(void)
{
    int st;
    assert_int_equal(kill(F.daemon, SIGTERM), 0);
    assert_int_equal(waitpid(F.daemon, &st, 0), F.daemon);
    F.daemon = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A daemon command with the same environment (db-init, enqueue). */
static int daemon_cmd(const char *cmd, const char *arg)
{
    char **envp = daemon_env(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(F.log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        char *argv[] = {(char *)tu_need_env("DSW_BIN"), (char *)cmd, (char *)arg, NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void make_run(const char *run_id, const char *status, const char *behavior)
{
    char script[4096];
    snprintf(script, sizeof(script), "%s/scripts/mkrun.py", tu_need_env("DSW_SOURCE_DIR"));
    char *argv[] = {"python3",      script,           F.pg_conninfo, (char *)run_id,
                    (char *)status, (char *)behavior, NULL};
    assert_int_equal(tu_run_quiet(argv, F.log_path), 0);
}

static void uuid(char out[37])
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    assert_int_equal(fread(b, 1, 16, f), 16);
    fclose(f);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-4%01x%02x-8%01x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 15, b[7], b[8] & 15, b[9], b[10], b[11],
             b[12], b[13], b[14], b[15]);
}

/* ---- reading the daemon's outside ------------------------------------------------------- */

static long get(const char *path, struct reply *r)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%s%s", F.http_port, path);
    return http(url, NULL, NULL, r);
}

/* Sum of every sample of a metric family (all label sets); -1 when absent. Also checks that
 * every line is Prometheus text: comments, or `name{labels} value`. */
static double metric(const char *text, const char *name)
{
    double sum = -1;
    char *copy = strdup(text), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            assert_true(strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0);
            continue;
        }
        size_t n = strcspn(line, "{ ");
        assert_true(n > 0);
        for (size_t i = 0; i < n; i++)
            assert_true(line[i] == '_' || line[i] == ':' || (line[i] >= 'a' && line[i] <= 'z') ||
                        (line[i] >= 'A' && line[i] <= 'Z') ||
                        (i && line[i] >= '0' && line[i] <= '9'));
        const char *v = line + n;
        if (*v == '{') {
            v = strchr(v, '}');
            assert_non_null(v);
            v++;
        }
        assert_true(*v == ' ');
        char *end;
        double d = strtod(v + 1, &end);
        assert_true(end != v + 1 && (*end == '\0' || *end == ' '));
        if (strlen(name) == n && strncmp(line, name, n) == 0)
            sum = (sum < 0 ? 0 : sum) + d;
    }
    free(copy);
    return sum < 0 ? 0 : sum;
}

static char run_a[37], run_b[37], run_q[37];

static int runs_done(void)
{
    struct reply r;
    if (get("/metrics", &r) != 200)
        return 0;
    return metric(r.text, "dsw_runs_finished_total") >= 2 &&
           metric(r.text, "dsw_messages_deferred_total") >= 1 &&
           metric(r.text, "dsw_messages_rejected_total") >= 2 &&
           metric(r.text, "dsw_messages_deleted_total") >= 2;
}

static int sqs_counted(void)
{
    struct reply r;
    return get("/metrics", &r) == 200 && metric(r.text, "dsw_sqs_requests_total") >= 5;
}

static int ready_is(long want)
{
    struct reply r;
    return get("/readyz", &r) == want;
}

static int ready_200(void)
{
    return ready_is(200);
}

static int ready_503(void)
{
    return ready_is(503);
}

static void send_body(const char *body)
{
    json_t *req = json_pack("{s:s, s:s}", "QueueUrl", F.queue_url, "MessageBody", body);
    char *text = json_dumps(req, JSON_COMPACT);
    struct reply r;
    sqs("SendMessage", text, &r);
    free(text);
    json_decref(req);
}

/* Every log line is one JSON object and no planted secret appears anywhere. */
static void check_log(void)
{
    size_t len;
    char *log = tu_read_file(F.log_path, &len);
    for (size_t i = 0; i < DSW_ARRAY_LEN(secrets); i++)
        if (strstr(log, secrets[i]))
            fail_msg("secret %s found in the daemon's log", secrets[i]);
    int lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '{')
            continue; /* mkrun.py / psql / enqueue output shares the file */
        json_error_t e;
        json_t *j = json_loads(line, 0, &e);
        if (!j || !json_is_object(j))
            fail_msg("not one JSON object: %s (%s)", line, e.text);
        assert_non_null(json_object_get(j, "ts"));
        assert_non_null(json_object_get(j, "level"));
        json_decref(j);
        lines++;
    }
    assert_true(lines > 20);
    free(log);
}

static void test_readyz_metrics_and_logs(void **state)
{
    assert_int_equal(daemon_cmd("db-init", NULL), 0);
    uuid(run_a);
    uuid(run_b);
    uuid(run_q);
    make_run(run_a, "NOT_STARTED", "success");
    make_run(run_b, "NOT_STARTED", "failure");
    make_run(run_q, "QUEUED", "success");
    assert_int_equal(daemon_cmd("enqueue", run_a), 0);
    assert_int_equal(daemon_cmd("enqueue", run_b), 0);
    /* A QUEUED run's message (deferred), one with an inline password in instance_ref, and
     * a hostile body carrying a secret-looking value (rejected). */
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"task_id\": \"00000000000000000000000000000001\", \"task_name\": "
             "\"execute_job\", \"labels\": {}, \"labels_types\": null, \"args\": [], \"kwargs\": "
             "{\"execute_job_args_packed\": {\"__class__\": \"ExecuteRunArgs\", "
             "\"pipeline_origin\": {\"__class__\": \"PipelinePythonOrigin\", \"pipeline_name\": "
             "\"success_job\", \"repository_origin\": {\"__class__\": "
             "\"RepositoryPythonOrigin\", \"executable_path\": \"/usr/bin/python3\", "
             "\"code_pointer\": {\"__class__\": \"FileCodePointer\", \"python_file\": \"j.py\", "
             "\"fn_name\": \"defs\", \"working_directory\": \"/\"}, \"container_image\": null, "
             "\"entry_point\": [\"dagster\"], \"container_context\": null}}, "
             "\"pipeline_run_id\": \"%s\", \"instance_ref\": {\"__class__\": \"InstanceRef\", "
             "\"run_storage_data\": {\"__class__\": \"ConfigurableClassData\", \"module_name\": "
             "\"dagster_postgres\", \"class_name\": \"PostgresRunStorage\", \"config_yaml\": "
             "\"postgres_db:\\n  password: %s\\n\"}}, \"set_exit_code_on_failure\": true}}}",
             run_q, secrets[4]);
    send_body(body);
    snprintf(body, sizeof(body), "{\"task_name\": \"execute_job\", \"password\": \"%s\"",
             secrets[5]);
    send_body(body);
    send_body("{\"s3_bucket\": \"b\", \"s3_key\": \"k\"}  not json at all");

    start_daemon(NULL);
    if (!await(runs_done, 60))
        fail_msg("the daemon did not process the messages; see %s", F.log_path);
    struct reply r;
    assert_int_equal(get("/healthz", &r), 200);
    assert_int_equal(get("/readyz", &r), 200);
    assert_int_equal(get("/nope", &r), 404);

    /* Accounting at rest: received = deleted + rejected + released + deferred + in flight. */
    assert_int_equal(get("/metrics", &r), 200);
    double received = metric(r.text, "dsw_messages_received_total");
    double settled = metric(r.text, "dsw_messages_deleted_total") +
                     metric(r.text, "dsw_messages_rejected_total") +
                     metric(r.text, "dsw_messages_released_total") +
                     metric(r.text, "dsw_messages_deferred_total");
    assert_true(received == 5);
    assert_true(settled == received);
    assert_true(metric(r.text, "dsw_runs_in_flight") == 0);
    /* The SQS client's counters reach the registry once a second. */
    if (!await(sqs_counted, 5))
        fail_msg("dsw_sqs_requests_total never counted the requests");
    assert_true(metric(r.text, "process_resident_memory_bytes") > 0);

    /* PostgreSQL goes away: unready within a check; back: ready again. */
    services("kill-pg");
    if (!await(ready_503, 15))
        fail_msg("/readyz did not turn 503 after PostgreSQL stopped");
    assert_int_equal(get("/readyz", &r), 503);
    assert_non_null(strstr(r.text, "postgres"));
    services("restart-pg");
    if (!await(ready_200, 60))
        fail_msg("/readyz did not recover after PostgreSQL came back");

    assert_int_equal(stop_daemon(), 0);
    check_log();
}

/* ---- sd_notify ------------------------------------------------------------------------- */

/* The case arms a failpoint: a release build has none, and neither the case nor its helpers. */
#ifdef DSW_FAILPOINTS
struct dgram {
    char text[256];
    uint64_t at_ms;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Receive datagrams for up to ms, or until one starts with stop (when not NULL). */
static size_t collect_dgrams(int fd, struct dgram *out, size_t max, size_t have, uint64_t ms,
                             const char *stop)
{
    uint64_t end = now_ms() + ms;
    while (have < max && now_ms() < end) {
        struct timeval tv = {0, 50000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ssize_t n = recv(fd, out[have].text, sizeof(out[have].text) - 1, 0);
        if (n <= 0)
            continue;
        out[have].text[n] = '\0';
        out[have].at_ms = now_ms();
        if (stop && strncmp(out[have].text, stop, strlen(stop)) == 0)
            return have + 1;
        have++;
    }
    return have;
}

static void test_notify_sequence_and_wedge(void **state)
{
    assert_int_equal(daemon_cmd("db-init", NULL), 0);
    char sock[700], ns[720];
    snprintf(sock, sizeof(sock), "%s/notify.sock", F.dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    assert_true(strlen(sock) < sizeof(a.sun_path));
    memcpy(a.sun_path, sock, strlen(sock) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    snprintf(ns, sizeof(ns), "NOTIFY_SOCKET=%s", sock);
    /* Watchdog every 150 ms; the loop is wedged for 1 s after the 10th ping (~1.5 s in). */
    const char *extra[] = {ns, "WATCHDOG_USEC=300000",
                           "DSW_FAILPOINTS=watchdog_wedge=sleep:1000@10", NULL};
    start_daemon(extra);
    static struct dgram d[400];
    size_t n = collect_dgrams(fd, d, 400, 0, 4000, NULL);
    assert_int_equal(kill(F.daemon, SIGTERM), 0);
    n = collect_dgrams(fd, d, 400, n, 5000, "STOPPING=1");
    int st;
    assert_int_equal(waitpid(F.daemon, &st, 0), F.daemon);
    F.daemon = 0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fd);

    long ready = -1, stopping = -1, first_wd = -1, pings = 0;
    uint64_t last = 0, max_gap = 0;
    for (size_t i = 0; i < n; i++) {
        if (strstr(d[i].text, "READY=1") && ready < 0)
            ready = (long)i;
        if (strstr(d[i].text, "STOPPING=1"))
            stopping = (long)i;
        if (strcmp(d[i].text, "WATCHDOG=1") == 0) {
            if (first_wd < 0)
                first_wd = (long)i;
            if (last && d[i].at_ms - last > max_gap)
                max_gap = d[i].at_ms - last;
            last = d[i].at_ms;
            pings++;
        }
    }
    if (ready < 0 || stopping < 0 || first_wd < 0)
        fail_msg("datagrams: READY at %ld, first WATCHDOG at %ld, STOPPING at %ld", ready, first_wd,
                 stopping);
    assert_true(ready < first_wd);
    assert_true(first_wd < stopping);
    assert_true(pings >= 10);
    /* The wedge: no ping for most of a second; otherwise they come every ~150 ms. */
    assert_true(max_gap >= 800);
}
#endif

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_readyz_metrics_and_logs, setup, teardown),
#ifdef DSW_FAILPOINTS
        cmocka_unit_test_setup_teardown(test_notify_sequence_and_wedge, setup, teardown),
#endif
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
