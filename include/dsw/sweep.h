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

/* Start a round on store (borrowed: it must outlive the round's records). 0 and cb later, or a
 * negative errno from the store (cb never fires). */
int dsw_sweep(struct dsw_store *store, dsw_sweep_cb cb, void *arg) DSW_WUR;

#endif
