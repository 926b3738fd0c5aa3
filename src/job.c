/* job: the SPEC §4 decision table as a pure function. Rows are tried in order; the only
 * deviation from the table's literal order is that the give-up row (too many deliveries) is
 * tried before the rows that would spawn, as its purpose requires. dsw_job_decide_step is the
 * docs/steps.md §5 table for a step message, in its literal order. */
#include "dsw/job.h"

#include <string.h>

static bool is(const char *status, const char *a)
{
    return status && strcmp(status, a) == 0;
}

bool dsw_job_status_terminal(const char *status)
{
    return is(status, "SUCCESS") || is(status, "FAILURE") || is(status, "CANCELED");
}

static bool unowned(enum dsw_job_claim c)
{
    return c != DSW_JOB_CLAIM_LIVE;
}

enum dsw_job_action dsw_job_decide(const struct dsw_job_facts *f)
{
    const char *s = f->status;
    if (dsw_job_status_terminal(s))
        return DSW_JOB_DELETE_TERMINAL;
    if (f->claim == DSW_JOB_CLAIM_LIVE)
        return f->claim_same_message ? DSW_JOB_DEFER_OWNED : DSW_JOB_DELETE_DUPLICATE;
    if (is(s, "CANCELING"))
        return DSW_JOB_RECORD_CANCELED;
    if (is(s, "QUEUED"))
        return f->receive_count > f->max_receives ? DSW_JOB_DELETE_NOT_LAUNCHED
                                                  : DSW_JOB_DEFER_QUEUED;
    bool startable = is(s, "NOT_STARTED") || is(s, "STARTING");
    if (!startable && !is(s, "STARTED"))
        return DSW_JOB_DELETE_UNEXPECTED;
    /* STARTED with no claim row: another launcher or a person started it. It is not ours:
     * delete the message (unexpected_status) and never touch the run, not even to give up. */
    if (!startable && f->claim == DSW_JOB_CLAIM_NONE)
        return DSW_JOB_DELETE_UNEXPECTED;
    if (f->receive_count > f->max_receives && unowned(f->claim))
        return DSW_JOB_RECORD_GIVE_UP;
    if (startable)
        return DSW_JOB_EXECUTE;
    /* STARTED, our claim stale or done: the worker that started it is gone. Only runs.resume
     * resumes; a resume_job message does not override the config (SPEC §4). */
    if (f->resume_enabled && f->resumes_done < f->max_resumes)
        return DSW_JOB_RESUME;
    return DSW_JOB_RECORD_LOST;
}

enum dsw_job_action dsw_job_decide_step(const struct dsw_job_facts *f)
{
    /* A step never runs unless its run is running: CANCELING stops steps (run_not_running). */
    if (dsw_job_status_terminal(f->status) || is(f->status, "CANCELING"))
        return DSW_JOB_DELETE_TERMINAL;
    if (!is(f->status, "STARTED"))
        return DSW_JOB_DELETE_UNEXPECTED;
    switch (f->claim) {
    case DSW_JOB_CLAIM_DONE: /* this attempt already ran */
        return DSW_JOB_DELETE_DUPLICATE;
    case DSW_JOB_CLAIM_LIVE:
        return f->claim_same_message ? DSW_JOB_DEFER_OWNED : DSW_JOB_DELETE_DUPLICATE;
    case DSW_JOB_CLAIM_STALE: /* its worker died: the executor's retry policy decides */
        return DSW_JOB_RECORD_LOST;
    case DSW_JOB_CLAIM_NONE:
        break;
    }
    return f->receive_count > f->max_receives ? DSW_JOB_RECORD_GIVE_UP : DSW_JOB_EXECUTE;
}

const char *dsw_job_action_name(enum dsw_job_action a)
{
    static const char *const names[] = {
        [DSW_JOB_DELETE_TERMINAL] = "delete_terminal",
        [DSW_JOB_DELETE_DUPLICATE] = "delete_duplicate",
        [DSW_JOB_DEFER_OWNED] = "defer_owned",
        [DSW_JOB_DEFER_QUEUED] = "defer_queued",
        [DSW_JOB_DELETE_NOT_LAUNCHED] = "delete_not_launched",
        [DSW_JOB_DELETE_UNEXPECTED] = "delete_unexpected_status",
        [DSW_JOB_EXECUTE] = "execute",
        [DSW_JOB_RESUME] = "resume",
        [DSW_JOB_RECORD_LOST] = "record_lost",
        [DSW_JOB_RECORD_GIVE_UP] = "record_give_up",
        [DSW_JOB_RECORD_CANCELED] = "record_canceled",
    };
    return (unsigned)a < DSW_ARRAY_LEN(names) ? names[a] : "unknown";
}
