/* sweep: the sweeper's round. Each swept run claim is closed by its own fenced write; a failure
 * is logged and left to a later round, which finds the claim stale again. Then the stale step
 * claims are closed in one statement. */
#include "dsw/sweep.h"

#include "dsw/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_BATCH 100

struct round {
    struct dsw_store *store;
    struct dsw_sweep_policy policy;
    dsw_sweep_cb cb;
    void *arg;
};

static void on_released(int status, void *arg)
{
    char *run_id = arg;
    if (status)
        dsw_warn("sweeper: could not release the claim of run %s (%s); it will go stale again",
                 run_id, strerror(-status));
    free(run_id);
}

static void on_recorded(int status, const struct dsw_store_record_result *res, void *arg)
{
    char *run_id = arg;
    if (status == 0)
        dsw_info("sweeper: run %s of a dead worker is now %s", run_id,
                 dsw_store_status_name(res->after));
    else
        dsw_warn("sweeper: could not record run %s (%s)", run_id, strerror(-status));
    free(run_id);
}

static void on_left(int status, void *arg)
{
    char *run_id = arg;
    if (status == 0)
        dsw_info("sweeper: run %s of a dead worker is left STARTED for a resume (runs.resume)",
                 run_id);
    else
        dsw_warn("sweeper: could not close the claim of run %s (%s); it will go stale again",
                 run_id, strerror(-status));
    free(run_id);
}

/* Whether a STARTED run is left for a resume rather than recorded FAILURE. The swept claim's
 * attempt already counts this sweep; the attempt before it is what the message path counts. */
static bool resumable(const struct dsw_sweep_policy *pol, const struct dsw_store_swept *it)
{
    bool resumed = it->claim.kind && strcmp(it->claim.kind, "resume") == 0;
    int done = resumed ? it->claim.attempt - 1 : 0;
    return pol->resume && it->run_status == DSW_STATUS_STARTED && done < pol->max_resumes;
}

/* Close one claim the round took over. */
static void close_claim(struct dsw_store *store, const struct dsw_sweep_policy *pol,
                        const struct dsw_store_swept *it)
{
    struct dsw_store_outcome o = {.run_id = it->run_id, .token = it->claim.token};
    char *id = dsw_xstrdup(it->run_id);
    int rc;
    if (resumable(pol, it)) {
        rc = dsw_store_leave_for_resume(store, it->run_id, it->claim.token, on_left, id);
        goto out;
    }
    if (it->run_status == DSW_STATUS_CANCELING) {
        o.outcome = "canceled";
        o.cause = "Run canceled; its worker was lost";
    } else if (it->run_status == DSW_STATUS_STARTED || it->prev_state == DSW_CLAIM_RUNNING) {
        o.outcome = "lost";
        o.cause = "Run worker lost: its dagster-sqs-worker stopped heartbeating (recorded by "
                  "the sweeper)";
    }
    if (o.outcome) {
        rc = dsw_store_record_outcome(store, &o, on_recorded, id);
    } else { /* the dead worker never started a child: its message will come back */
        rc = dsw_store_release(store, it->run_id, it->claim.token, on_released, id);
    }
out:
    if (rc) {
        dsw_warn("sweeper: could not close the claim of run %s (%s); a later round retries", id,
                 strerror(-rc));
        free(id);
    }
}

static void round_done(struct round *r, int status)
{
    r->cb(status, r->arg);
    free(r);
}

/* Step claims of dead workers are only closed ("lost"): the run's executor reads them and
 * reports the step unhealthy; Dagster's retry policy decides what follows. */
static void on_steps_swept(int status, int64_t n, void *arg)
{
    if (status == 0 && n > 0)
        dsw_info("sweeper: %lld step claim(s) of dead workers closed as lost", (long long)n);
    else if (status)
        dsw_warn("sweeper: could not close stale step claims (%s); a later round retries",
                 strerror(-status));
    round_done(arg, status);
}

static void on_swept(int status, const struct dsw_store_swept *items, size_t n, void *arg)
{
    struct round *r = arg;
    for (size_t i = 0; status == 0 && i < n; i++)
        close_claim(r->store, &r->policy, &items[i]);
    if (status || dsw_store_step_sweep(r->store, on_steps_swept, r))
        round_done(r, status);
}

int dsw_sweep(struct dsw_store *store, const struct dsw_sweep_policy *policy, dsw_sweep_cb cb,
              void *arg)
{
    struct round *r = dsw_xcalloc(1, sizeof(*r));
    *r = (struct round){.store = store, .policy = *policy, .cb = cb, .arg = arg};
    int rc = dsw_store_sweep(store, SWEEP_BATCH, on_swept, r);
    if (rc)
        free(r);
    return rc;
}
