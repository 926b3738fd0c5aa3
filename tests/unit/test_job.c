/* job: every row of the SPEC §4 decision table, including the order between rows. */
#include "testutil.h"

#include "dsw/job.h"

#include <stdio.h>
#include <string.h>

#define N DSW_JOB_CLAIM_NONE
#define L DSW_JOB_CLAIM_LIVE
#define S DSW_JOB_CLAIM_STALE
#define D DSW_JOB_CLAIM_DONE

struct row {
    const char *status;
    enum dsw_job_claim claim;
    bool same;
    int receives;
    bool resume_req, resume_on;
    int resumes_done;
    enum dsw_job_action want;
};

static const struct row rows[] = {
    /* terminal: delete whatever the claim */
    {"SUCCESS", N, 0, 1, 0, 0, 0, DSW_JOB_DELETE_TERMINAL},
    {"FAILURE", L, 1, 1, 0, 0, 0, DSW_JOB_DELETE_TERMINAL},
    {"CANCELED", S, 0, 9, 0, 0, 0, DSW_JOB_DELETE_TERMINAL},
    {"SUCCESS", D, 0, 99, 0, 0, 0, DSW_JOB_DELETE_TERMINAL},
    /* launched, unclaimed: execute */
    {"NOT_STARTED", N, 0, 1, 0, 0, 0, DSW_JOB_EXECUTE},
    {"STARTING", N, 0, 1, 0, 0, 0, DSW_JOB_EXECUTE},
    {"STARTING", D, 0, 2, 0, 0, 0, DSW_JOB_EXECUTE},
    /* a live owner: duplicate message deleted, our own message deferred */
    {"STARTING", L, 0, 1, 0, 0, 0, DSW_JOB_DELETE_DUPLICATE},
    {"STARTED", L, 0, 1, 0, 0, 0, DSW_JOB_DELETE_DUPLICATE},
    {"CANCELING", L, 0, 1, 0, 0, 0, DSW_JOB_DELETE_DUPLICATE},
    {"QUEUED", L, 0, 1, 0, 0, 0, DSW_JOB_DELETE_DUPLICATE},
    {"STARTED", L, 1, 2, 0, 0, 0, DSW_JOB_DEFER_OWNED},
    {"NOT_STARTED", L, 1, 7, 0, 0, 0, DSW_JOB_DEFER_OWNED},
    /* stale owner that never started it: take over and execute */
    {"STARTING", S, 0, 2, 0, 0, 0, DSW_JOB_EXECUTE},
    {"NOT_STARTED", S, 1, 2, 0, 0, 0, DSW_JOB_EXECUTE},
    /* STARTED with no live owner: resume when allowed, else record the loss */
    {"STARTED", S, 0, 2, 0, 1, 0, DSW_JOB_RESUME},
    {"STARTED", S, 0, 2, 1, 1, 0, DSW_JOB_RESUME},
    /* a resume_job message does not override runs.resume = off */
    {"STARTED", S, 0, 2, 1, 0, 0, DSW_JOB_RECORD_LOST},
    {"STARTED", S, 0, 2, 1, 1, 1, DSW_JOB_RECORD_LOST},
    /* STARTED with no claim row is not ours: delete the message, never record on the run */
    {"STARTED", N, 0, 2, 0, 1, 0, DSW_JOB_DELETE_UNEXPECTED},
    {"STARTED", N, 0, 2, 1, 1, 0, DSW_JOB_DELETE_UNEXPECTED},
    {"STARTED", S, 0, 2, 0, 1, 1, DSW_JOB_RECORD_LOST},
    {"STARTED", S, 0, 2, 0, 0, 0, DSW_JOB_RECORD_LOST},
    {"STARTED", N, 0, 1, 0, 0, 0, DSW_JOB_DELETE_UNEXPECTED},
    {"STARTED", D, 0, 1, 0, 0, 0, DSW_JOB_RECORD_LOST},
    /* CANCELING with no live owner */
    {"CANCELING", N, 0, 1, 0, 0, 0, DSW_JOB_RECORD_CANCELED},
    {"CANCELING", S, 0, 9, 0, 0, 0, DSW_JOB_RECORD_CANCELED},
    /* QUEUED: not launched yet */
    {"QUEUED", N, 0, 1, 0, 0, 0, DSW_JOB_DEFER_QUEUED},
    {"QUEUED", N, 0, 5, 0, 0, 0, DSW_JOB_DEFER_QUEUED},
    {"QUEUED", N, 0, 6, 0, 0, 0, DSW_JOB_DELETE_NOT_LAUNCHED},
    /* too many deliveries without a live owner: give up (before execute/resume) */
    {"NOT_STARTED", N, 0, 6, 0, 0, 0, DSW_JOB_RECORD_GIVE_UP},
    {"STARTING", S, 0, 6, 0, 0, 0, DSW_JOB_RECORD_GIVE_UP},
    {"STARTED", S, 0, 6, 0, 1, 0, DSW_JOB_RECORD_GIVE_UP},
    {"STARTED", N, 0, 6, 0, 0, 0, DSW_JOB_DELETE_UNEXPECTED},
    {"STARTED", D, 0, 6, 0, 0, 0, DSW_JOB_RECORD_GIVE_UP},
    {"STARTING", N, 0, 5, 0, 0, 0, DSW_JOB_EXECUTE},
    /* statuses we never execute from */
    {"MANAGED", N, 0, 1, 0, 0, 0, DSW_JOB_DELETE_UNEXPECTED},
    {"WEIRD", N, 0, 1, 0, 0, 0, DSW_JOB_DELETE_UNEXPECTED},
};

static void test_table(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(rows); i++) {
        const struct row *r = &rows[i];
        struct dsw_job_facts f = {
            .status = r->status,
            .claim = r->claim,
            .claim_same_message = r->same,
            .receive_count = r->receives,
            .max_receives = 5,
            .resume_requested = r->resume_req,
            .resume_enabled = r->resume_on,
            .resumes_done = r->resumes_done,
            .max_resumes = 1,
        };
        enum dsw_job_action got = dsw_job_decide(&f);
        if (got != r->want)
            fail_msg("row %zu (%s, claim %d, receives %d): got %s, want %s", i, r->status, r->claim,
                     r->receives, dsw_job_action_name(got), dsw_job_action_name(r->want));
    }
}

/* docs/steps.md section 5, every row in its order: the first matching row wins. */
struct step_row {
    const char *status;
    enum dsw_job_claim claim;
    bool same;
    int receives;
    enum dsw_job_action want;
};

static const struct step_row step_rows[] = {
    /* row 1: run terminal or CANCELING, whatever the claim or deliveries (never spawn) */
    {"SUCCESS", N, 0, 1, DSW_JOB_DELETE_TERMINAL},
    {"FAILURE", L, 1, 1, DSW_JOB_DELETE_TERMINAL},
    {"CANCELED", S, 0, 99, DSW_JOB_DELETE_TERMINAL},
    {"CANCELING", N, 0, 1, DSW_JOB_DELETE_TERMINAL},
    {"CANCELING", L, 1, 1, DSW_JOB_DELETE_TERMINAL},
    {"CANCELING", D, 0, 9, DSW_JOB_DELETE_TERMINAL},
    /* row 2: not STARTED, whatever the claim */
    {"QUEUED", N, 0, 1, DSW_JOB_DELETE_UNEXPECTED},
    {"NOT_STARTED", N, 0, 1, DSW_JOB_DELETE_UNEXPECTED},
    {"STARTING", L, 1, 1, DSW_JOB_DELETE_UNEXPECTED},
    {"MANAGED", S, 0, 9, DSW_JOB_DELETE_UNEXPECTED},
    {NULL, N, 0, 1, DSW_JOB_DELETE_UNEXPECTED},
    {"started", N, 0, 1, DSW_JOB_DELETE_UNEXPECTED},
    /* row 3: done: this attempt already ran (before the give-up row) */
    {"STARTED", D, 0, 1, DSW_JOB_DELETE_DUPLICATE},
    {"STARTED", D, 1, 99, DSW_JOB_DELETE_DUPLICATE},
    /* rows 4, 5: live */
    {"STARTED", L, 0, 1, DSW_JOB_DELETE_DUPLICATE},
    {"STARTED", L, 0, 99, DSW_JOB_DELETE_DUPLICATE},
    {"STARTED", L, 1, 2, DSW_JOB_DEFER_OWNED},
    {"STARTED", L, 1, 99, DSW_JOB_DEFER_OWNED},
    /* row 6: stale, before the give-up row */
    {"STARTED", S, 0, 2, DSW_JOB_RECORD_LOST},
    {"STARTED", S, 1, 99, DSW_JOB_RECORD_LOST},
    /* rows 7, 8: no claim */
    {"STARTED", N, 0, 6, DSW_JOB_RECORD_GIVE_UP},
    {"STARTED", N, 1, 99, DSW_JOB_RECORD_GIVE_UP},
    {"STARTED", N, 0, 5, DSW_JOB_EXECUTE},
    {"STARTED", N, 0, 1, DSW_JOB_EXECUTE},
};

static void test_step_table(void **state)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(step_rows); i++) {
        const struct step_row *r = &step_rows[i];
        for (int resume = 0; resume < 2; resume++) { /* resume fields are ignored */
            struct dsw_job_facts f = {
                .status = r->status,
                .claim = r->claim,
                .claim_same_message = r->same,
                .receive_count = r->receives,
                .max_receives = 5,
                .resume_requested = resume,
                .resume_enabled = resume,
                .resumes_done = 0,
                .max_resumes = resume,
            };
            enum dsw_job_action got = dsw_job_decide_step(&f);
            if (got != r->want)
                fail_msg("step row %zu (%s, claim %d, receives %d): got %s, want %s", i,
                         r->status ? r->status : "NULL", r->claim, r->receives,
                         dsw_job_action_name(got), dsw_job_action_name(r->want));
        }
    }
}

static void test_names(void **state)
{
    assert_string_equal(dsw_job_action_name(DSW_JOB_RECORD_GIVE_UP), "record_give_up");
    assert_string_equal(dsw_job_action_name((enum dsw_job_action)99), "unknown");
    assert_true(dsw_job_status_terminal("CANCELED"));
    assert_false(dsw_job_status_terminal("CANCELING"));
    assert_false(dsw_job_status_terminal(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_step_table),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
