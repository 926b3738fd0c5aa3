/* The harness itself: the services scripts/test.sh started answer. Postgres has Dagster's
 * schema loaded; each SQS server creates and lists a queue over the JSON protocol. */
#include "testutil.h"

#include <curl/curl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_postgres_has_dagster_schema(void **state)
{
    PGconn *c = PQconnectdb(tu_need_env("DSW_TEST_PG_CONNINFO"));
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(c));
    const char *params[] = {"runs"};
    PGresult *r = PQexecParams(c,
                               "SELECT count(*) FROM information_schema.columns "
                               "WHERE table_schema = 'public' AND table_name = $1 AND "
                               "column_name IN ('run_id','status','run_body','update_timestamp',"
                               "'start_time','end_time')",
                               1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "6");
    PQclear(r);
    r = PQexec(c, "SELECT to_regclass('public.event_logs') IS NOT NULL, "
                  "to_regclass('public.run_tags') IS NOT NULL");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "t");
    assert_string_equal(PQgetvalue(r, 0, 1), "t");
    PQclear(r);
    PQfinish(c);
}

struct reply {
    char text[8192];
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

/* One AWS JSON 1.0 call; returns the HTTP status, the reply in r. */
static long sqs_call(const char *endpoint, const char *action, const char *body, struct reply *r)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    char target[128];
    snprintf(target, sizeof(target), "X-Amz-Target: AmazonSQS.%s", action);
    hd = curl_slist_append(hd, target);
    hd = curl_slist_append(hd, "Content-Type: application/x-amz-json-1.0");
    r->len = 0;
    r->text[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, endpoint);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, "aws:amz:us-east-1:sqs");
    curl_easy_setopt(h, CURLOPT_USERPWD, "test:test");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", endpoint, action, curl_easy_strerror(rc));
    return status;
}

static void create_and_list(const char *endpoint)
{
    struct reply r;
    assert_int_equal(sqs_call(endpoint, "CreateQueue", "{\"QueueName\": \"dsw-harness\"}", &r),
                     200);
    assert_non_null(strstr(r.text, "dsw-harness"));
    assert_int_equal(sqs_call(endpoint, "ListQueues", "{}", &r), 200);
    assert_non_null(strstr(r.text, "dsw-harness"));
    assert_int_equal(sqs_call(endpoint, "GetQueueUrl", "{\"QueueName\": \"no-such-queue\"}", &r),
                     400);
    assert_non_null(strstr(r.text, "QueueDoesNotExist"));
}

static void test_moto(void **state)
{
    create_and_list(tu_need_env("DSW_TEST_MOTO_URL"));
}

static void test_fauxqs(void **state)
{
    create_and_list(tu_need_env("DSW_TEST_FAUXQS_URL"));
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postgres_has_dagster_schema),
        cmocka_unit_test(test_moto),
        cmocka_unit_test(test_fauxqs),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
