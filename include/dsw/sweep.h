/* sweep: one round of the sweeper (SPEC §3): take over at most a batch of dead workers' stale
 * claims (FOR UPDATE SKIP LOCKED, so each goes to exactly one sweeper) and close each one: a run
 * that was started is recorded FAILURE ("run worker lost"; CANCELED when it was CANCELING), a
 * claim whose worker never started a child is released so that the run's message claims it
 * afresh. The worker calls it every claims.sweep. */
#ifndef DSW_SWEEP_H
#define DSW_SWEEP_H

#include "dsw/store.h"
#include "dsw/util.h"

/* The round's claims were taken (or the sweep failed: status); their records continue on their
 * own and are logged. */
typedef void (*dsw_sweep_cb)(int status, void *arg);

/* What the round does with a STARTED run whose worker died: with resume (runs.resume = on) and
 * resumes left (a claim of kind "resume" counts its attempt as resumes done, as the message
 * path does), the claim is closed and the run left STARTED for a resume (SPEC §4's row for a
 * stale claim); otherwise the run is recorded FAILURE. */
struct dsw_sweep_policy {
    bool resume;
    int max_resumes;
};

/* Start a round on store (borrowed: it must outlive the round's records). 0 and cb later, or a
 * negative errno from the store (cb never fires). */
int dsw_sweep(struct dsw_store *store, const struct dsw_sweep_policy *policy, dsw_sweep_cb cb,
              void *arg) DSW_WUR;

#endif
