/* The short, seeded fault-injection scenario (issue 8) for CI: tests/fault/driver.py runs 60
 * runs across 3 real daemons on a private PostgreSQL cluster and a private fauxqs server,
 * injecting 16 faults (kills at failpoints, kill -9, SIGSTOP past the lease, pg_terminate_backend
 * and a crash restart, an SQS server restart, duplicate sends, hostile bodies, failing
 * operations), then tests/fault/check.py verifies the invariants over the whole history: no run
 * lost, no double execution, no delete before the outcome committed, metrics accounting.
 * Seed and size can be changed with DSW_FAULT_SEED / DSW_FAULT_RUNS / DSW_FAULT_FAULTS. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static void test_fault_short(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char driver[1024], out[1100];
    snprintf(driver, sizeof(driver), "%s/tests/fault/driver.py", tu_need_env("DSW_SOURCE_DIR"));
    snprintf(out, sizeof(out), "%s/history", dir);
    char *const argv[] = {"/usr/bin/python3",
                          driver,
                          "--bin",
                          (char *)tu_need_env("DSW_BIN"),
                          "--fake",
                          (char *)tu_need_env("DSW_SUPPORT_fake_dagster"),
                          "--out",
                          out,
                          "--seed",
                          (char *)env_or("DSW_FAULT_SEED", "8"),
                          "--runs",
                          (char *)env_or("DSW_FAULT_RUNS", "60"),
                          "--daemons",
                          "3",
                          "--faults",
                          (char *)env_or("DSW_FAULT_FAULTS", "16"),
                          "--load-seconds",
                          "60",
                          "--settle-seconds",
                          "75",
                          NULL};
    char *output = NULL;
    int rc = tu_run(argv, NULL, &output);
    fprintf(stderr, "%s\n", output ? output : "");
    if (rc != 0)
        fprintf(stderr, "fault scenario failed (status %d); history kept in %s\n", rc, out);
    else
        tu_rm_rf(dir);
    free(output);
    free(dir);
    assert_int_equal(rc, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_short),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
