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

/* Create, list, and ask for a queue that does not exist (the JSON protocol's error form). */
static void create_and_list(const char *endpoint)
{
    static const struct {
        const char *action, *body, *expect;
        long status;
    } calls[] = {
        {"CreateQueue", "{\"QueueName\": \"dsw-harness\"}", "dsw-harness", 200},
        {"ListQueues", "{}", "dsw-harness", 200},
        {"GetQueueUrl", "{\"QueueName\": \"no-such-queue\"}", "QueueDoesNotExist", 400},
    };
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        char *reply = NULL;
        assert_int_equal(tu_sqs_call(endpoint, calls[i].action, calls[i].body, &reply),
                         calls[i].status);
        if (!strstr(reply, calls[i].expect))
            fail_msg("%s: %s lacks %s", calls[i].action, reply, calls[i].expect);
        free(reply);
    }
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
