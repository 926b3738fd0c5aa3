/* job: what to do with one delivered message (SPEC §4 for runs, docs/steps.md §5 for steps). The
 * decision is a pure function of the run's status, the run's (or the step's) claim and the
 * delivery, so every row of both tables is unit-tested without services; the worker carries
 * the decision out. */
#ifndef DSW_JOB_H
#define DSW_JOB_H

#include "dsw/util.h"

#include <stdbool.h>

/* The claim a run has in dagster_sqs_worker.run_claims (for a step: the step attempt's row in
 * step_claims), as seen with the database's clock. */
enum dsw_job_claim {
    DSW_JOB_CLAIM_NONE,  /* no row */
    DSW_JOB_CLAIM_LIVE,  /* not done, heartbeat younger than claims.ttl */
    DSW_JOB_CLAIM_STALE, /* not done, heartbeat older than claims.ttl */
    DSW_JOB_CLAIM_DONE,  /* an earlier attempt finished and recorded its outcome */
};

enum dsw_job_action {
    DSW_JOB_DELETE_TERMINAL,     /* run already SUCCESS/FAILURE/CANCELED: delete (terminal_skip);
                                    for a step also CANCELING (run_not_running) */
    DSW_JOB_DELETE_DUPLICATE,    /* another live owner with another message: delete (duplicate) */
    DSW_JOB_DEFER_OWNED,         /* our own message, owned and live: defer for claims.ttl */
    DSW_JOB_DEFER_QUEUED,        /* QUEUED, not launched yet: defer for runs.requeue_delay */
    DSW_JOB_DELETE_NOT_LAUNCHED, /* QUEUED past max_receives: delete, leave the run alone */
    DSW_JOB_DELETE_UNEXPECTED,   /* a status we do not execute from (MANAGED...): delete */
    DSW_JOB_EXECUTE,             /* claim (or take over) and spawn execute_run (a step:
                                    claim and spawn execute_step) */
    DSW_JOB_RESUME,              /* take over and spawn resume_run */
    DSW_JOB_RECORD_LOST,         /* take over and record FAILURE "run worker lost", delete (a
                                    step: close the stale claim as lost, delete) */
    DSW_JOB_RECORD_GIVE_UP,      /* take over and record FAILURE "gave up after N deliveries" (a
                                    step: insert a done claim, outcome gave_up, delete) */
    DSW_JOB_RECORD_CANCELED,     /* take over and record CANCELED, delete */
};

struct dsw_job_facts {
    const char *status;       /* runs.status */
    enum dsw_job_claim claim; /* the run's claim */
    bool claim_same_message;  /* the claim's message_id is this message's id */
    int receive_count;        /* ApproximateReceiveCount of this delivery */
    int max_receives;         /* runs.max_receives */
    bool resume_requested;    /* the message is a resume_job / ResumeRunArgs */
    bool resume_enabled;      /* runs.resume */
    int resumes_done;         /* resume attempts already made for this run */
    int max_resumes;          /* runs.max_resumes */
};

/* The SPEC §4 decision. The give-up row is checked before the rows that would start a child,
 * so a run that keeps killing its workers cannot loop forever. */
enum dsw_job_action dsw_job_decide(const struct dsw_job_facts *f);

/* docs/steps.md §5 with the same facts (resume fields ignored) and actions: DELETE_TERMINAL (run
 * terminal or CANCELING), DELETE_UNEXPECTED, DELETE_DUPLICATE, DEFER_OWNED, RECORD_LOST (stale),
 * RECORD_GIVE_UP, EXECUTE. */
enum dsw_job_action dsw_job_decide_step(const struct dsw_job_facts *f);

/* "delete_terminal", ... for logs. */
const char *dsw_job_action_name(enum dsw_job_action a);

/* Whether status is one of SUCCESS, FAILURE, CANCELED. */
bool dsw_job_status_terminal(const char *status);

#endif
