/* store: the SQL of the daemon. It reads Dagster's runs (status, name, body, max runtime tag),
 * owns claims in the dagster_sqs_worker schema (claim, heartbeat, takeover, sweep, all fenced by
 * a token from one sequence and aged by the database clock), and writes outcomes the way
 * Dagster does (event rows + pg_notify + runs status/body), each in one fenced transaction that
 * never overwrites a terminal status. Everything is asynchronous over a dsw_db session.
 *
 * Callback rule for every function taking a callback: it returns 0 and the callback then fires
 * exactly once, never from inside the call -- also when the db closes (status -ECANCELED); or
 * it returns a negative errno (-EINVAL for bad arguments, -ESHUTDOWN / -ENOBUFS from the db)
 * and the callback never fires. Result structs and every string in them are borrowed for the
 * duration of the callback; copy what you keep. Common statuses: -ECONNRESET (the session was
 * lost mid-way: a transaction was rolled back by the server, a single statement may or may not
 * have run), -EIO (the server refused a statement; logged by db), -ECANCELED (db closing). */
#ifndef DSW_STORE_H
#define DSW_STORE_H

#include "dsw/dagster.h"
#include "dsw/db.h"
#include "dsw/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The version of the dagster_sqs_worker schema this build writes and requires. */
#define DSW_STORE_SCHEMA_VERSION 2

/* runs.status values (Dagster's PipelineRunStatus). */
enum dsw_store_status {
    DSW_STATUS_UNKNOWN,
    DSW_STATUS_QUEUED,
    DSW_STATUS_NOT_STARTED,
    DSW_STATUS_MANAGED,
    DSW_STATUS_STARTING,
    DSW_STATUS_STARTED,
    DSW_STATUS_SUCCESS,
    DSW_STATUS_FAILURE,
    DSW_STATUS_CANCELING,
    DSW_STATUS_CANCELED,
};

/* run_claims.state; NONE means there is no claim row. */
enum dsw_store_claim_state {
    DSW_CLAIM_NONE,
    DSW_CLAIM_CLAIMED, /* claimed, no child yet */
    DSW_CLAIM_RUNNING, /* a child was spawned (dsw_store_record_launch) */
    DSW_CLAIM_DONE,    /* the outcome was recorded */
};

/* "SUCCESS"... for a status ("UNKNOWN" for DSW_STATUS_UNKNOWN). */
const char *dsw_store_status_name(enum dsw_store_status s);
/* The status named by text; DSW_STATUS_UNKNOWN for NULL or anything else. */
enum dsw_store_status dsw_store_status_parse(const char *text);
/* SUCCESS, FAILURE and CANCELED. */
bool dsw_store_status_terminal(enum dsw_store_status s);

struct dsw_store;

/* Options of dsw_store_new. Strings are copied. */
struct dsw_store_opts {
    const char *worker_id; /* hostname:pid:start-unix-time (required) */
    const char *hostname;  /* for the launch event (required) */
    int64_t ttl_ms;        /* claims.ttl: a claim whose heartbeat is older is stale (60000) */
};

/* A new store on db (borrowed: it must outlive the store). 0 or -EINVAL. */
int dsw_store_new(struct dsw_db *db, const struct dsw_store_opts *opts,
                  struct dsw_store **out) DSW_WUR;
/* Free the store. Only once no call is pending: every callback has fired (close the db first:
 * that fires the pending ones with -ECANCELED). */
void dsw_store_free(struct dsw_store *s);

/* A claim row (run_claims, or step_claims for the step functions) as read from the database;
 * ages by the database clock. */
struct dsw_store_claim {
    enum dsw_store_claim_state state; /* DSW_CLAIM_NONE: no row, nothing else is set */
    int64_t token;                    /* fencing token */
    int attempt;                      /* 1 at the first claim, +1 at every takeover or sweep;
                                         a step claim's: the step's attempt (its key) */
    const char *kind;                 /* "execute" | "resume"; "step" for a step claim */
    const char *worker_id;            /* the owner */
    const char *message_id;           /* may be NULL */
    int receive_count;                /* 0 when unknown */
    int child_pid;                    /* 0 when none */
    bool live;                        /* not done and heartbeat younger than ttl */
    double age_s;                     /* seconds since the last heartbeat */
    const char *outcome;              /* when done; may be NULL */
};

/* ---- schema ---------------------------------------------------------------------------- */

/* found: the version in the database (0: the schema or its version table is missing);
 * wanted: DSW_STORE_SCHEMA_VERSION. */
struct dsw_store_schema {
    int found;
    int wanted;
};
typedef void (*dsw_store_schema_cb)(int status, const struct dsw_store_schema *res, void *arg);

/* db-init: create or upgrade the dagster_sqs_worker schema (schema, fence sequence, run_claims,
 * schema_version; version 2 adds step_claims) in one transaction under an advisory lock, so
 * concurrent runs are safe and a repeated run changes nothing. Never touches Dagster's tables. cb
 * status 0 (res->found is the version before), -EPROTO when the database already holds a newer
 * version, or a db error. */
int dsw_store_db_init(struct dsw_store *s, dsw_store_schema_cb cb, void *arg) DSW_WUR;
/* The start-up check of `run`: 0 when the schema is at DSW_STORE_SCHEMA_VERSION; -ENOENT when
 * it is missing, -EPROTO when it is older (run db-init) or newer (upgrade the daemon); res says
 * which. Other statuses are db errors. */
int dsw_store_check_schema(struct dsw_store *s, dsw_store_schema_cb cb, void *arg) DSW_WUR;

/* ---- reading --------------------------------------------------------------------------- */

/* A run with everything "decide" (SPEC §4) needs, read in one statement. */
struct dsw_store_run {
    const char *run_id;
    enum dsw_store_status status;
    const char *status_text;      /* as stored */
    const char *job_name;         /* runs.pipeline_name */
    const char *body;             /* runs.run_body (serialized PipelineRun) */
    int64_t max_runtime_ms;       /* tag dagster/max_runtime (run_tags, else the body's tags) in
                                     ms; 0 when absent or not a positive number */
    struct dsw_store_claim claim; /* the run's claim, DSW_CLAIM_NONE when there is none */
    /* dsw_store_load_claim only: the claim this load took (claim above is then NONE) */
    bool claimed;
    int claim_status; /* 0, or the error a failpoint reports after the claim committed */
    struct dsw_store_claim won;
};
typedef void (*dsw_store_load_cb)(int status, const struct dsw_store_run *run, void *arg);
/* Load run_id. cb status 0 with run, -ENOENT (no such run; run NULL), or a db error. */
int dsw_store_load(struct dsw_store *s, const char *run_id, dsw_store_load_cb cb,
                   void *arg) DSW_WUR;

/* One row of a status poll. */
struct dsw_store_status_row {
    const char *run_id;
    enum dsw_store_status status;
    bool by_run_worker; /* SUCCESS/FAILURE written by a run worker's own event (it has a pid) */
};
typedef void (*dsw_store_poll_cb)(int status, const struct dsw_store_status_row *rows, size_t nrows,
                                  void *arg);
/* The current status of up to 1000 runs in one statement (runs that do not exist are left out
 * of rows). run_ids is copied. 0, or -EINVAL (n == 0 or > 1000). */
int dsw_store_poll_status(struct dsw_store *s, const char *const *run_ids, size_t n,
                          dsw_store_poll_cb cb, void *arg) DSW_WUR;

/* ---- claims ---------------------------------------------------------------------------- */

/* What a claim or takeover records about the owner. Strings are copied. */
struct dsw_store_claim_req {
    const char *run_id;
    const char *kind;       /* "execute" | "resume" */
    const char *message_id; /* may be NULL */
    int receive_count;
};
typedef void (*dsw_store_claim_cb)(int status, const struct dsw_store_claim *claim, void *arg);
/* Claim a run that has no claim row: INSERT .. ON CONFLICT DO NOTHING with a new token; one
 * winner across all workers. cb status 0: won, claim is the new row (state CLAIMED, token);
 * -EEXIST: a claim exists, claim describes it (live/stale/done, owner, message id) for the
 * decision; other negative: a db error (claim NULL). */
int dsw_store_claim(struct dsw_store *s, const struct dsw_store_claim_req *req,
                    dsw_store_claim_cb cb, void *arg) DSW_WUR;
/* Take over the claim of req->run_id that was seen with token seen_token, only if it is still
 * that token and stale (heartbeat older than ttl) or done: a compare-and-swap that writes a new
 * token, this worker, req's message, state CLAIMED and attempt + 1. cb status 0: won (claim is
 * the new row); -EBUSY: not taken (fresh, or someone else got there), claim describes the
 * current row (state NONE when it vanished); other negative: a db error. */
int dsw_store_takeover(struct dsw_store *s, const struct dsw_store_claim_req *req,
                       int64_t seen_token, dsw_store_claim_cb cb, void *arg) DSW_WUR;
/* dsw_store_load of req->run_id that, in the same statement, also claims it (kind "execute",
 * as dsw_store_claim) when the load's facts can only decide execute (SPEC §4): the run is
 * NOT_STARTED or STARTING, it has no claim row and req->receive_count <= max_receives. Then
 * run->claimed with run->won the new row (run->claim_status: 0, or an injected failure) and
 * run->claim NONE; otherwise as dsw_store_load (a claim lost to a racing insert: not claimed,
 * claim NONE: the caller's own dsw_store_claim finds the winner). One round trip instead of two. */
int dsw_store_load_claim(struct dsw_store *s, const struct dsw_store_claim_req *req,
                         int max_receives, dsw_store_load_cb cb, void *arg) DSW_WUR;

typedef void (*dsw_store_cb)(int status, void *arg);
/* Refresh the lease: heartbeat_at = now() where run_id and token match and not done. cb status
 * 0, -ESTALE (the lease is lost: kill the child and record nothing), or a db error. The token
 * may be a run claim's or a step claim's (run_id: the step's run): both tables are refreshed in
 * one statement (tokens come from one sequence: a token is in one table at most). */
int dsw_store_heartbeat(struct dsw_store *s, const char *run_id, int64_t token, dsw_store_cb cb,
                        void *arg) DSW_WUR;

/* One lease of a batched refresh. */
struct dsw_store_lease {
    const char *run_id;
    int64_t token;
};
/* status 0: kept[i] is leases[i]'s result (0 refreshed, -ESTALE lost: kill the child, record
 * nothing; or the status the heartbeat_lease failpoint injects), n as given; else the db error
 * for every lease (kept NULL). */
typedef void (*dsw_store_leases_cb)(int status, const int *kept, size_t n, void *arg);
/* dsw_store_heartbeat for up to 1000 leases in one statement (UPDATE .. FROM
 * unnest($1::text[], $2::bigint[]) on run_claims and step_claims): the same fence per row; run
 * and step leases may be mixed. leases is copied. 0 or -EINVAL (n == 0 or > 1000, a NULL
 * run_id). */
int dsw_store_heartbeat_batch(struct dsw_store *s, const struct dsw_store_lease *leases, size_t n,
                              dsw_store_leases_cb cb, void *arg) DSW_WUR;

/* Give a claim up without an outcome (a child was never started: drain, or a dead worker's
 * claim found by the sweeper): the row is deleted where run_id and token match and it is not
 * done, so the run's next message claims it afresh. cb status 0, -ESTALE (not ours any more),
 * or a db error. */
int dsw_store_release(struct dsw_store *s, const char *run_id, int64_t token, dsw_store_cb cb,
                      void *arg) DSW_WUR;

/* Close a dead worker's claim (DONE, outcome "lost") and leave the STARTED run as it is, for a
 * resume: the run's redelivered message or Dagster's run monitoring (resume_run, which reads the
 * claim as a dead worker) resumes it. Fenced like dsw_store_release; same statuses. */
int dsw_store_leave_for_resume(struct dsw_store *s, const char *run_id, int64_t token,
                               dsw_store_cb cb, void *arg) DSW_WUR;

/* One claim the sweeper took over: the new token (claim.token, state CLAIMED), what the row
 * held before (prev_state, prev_worker_id), and the run's status at that time. */
struct dsw_store_swept {
    const char *run_id;
    enum dsw_store_status run_status; /* UNKNOWN when the run row is gone */
    const char *job_name;             /* may be NULL */
    enum dsw_store_claim_state prev_state;
    const char *prev_worker_id;
    struct dsw_store_claim claim;
};
typedef void (*dsw_store_sweep_cb)(int status, const struct dsw_store_swept *items, size_t n,
                                   void *arg);
/* The sweeper: take over at most limit (1..1000) stale, not-done claims in one statement
 * (SELECT .. FOR UPDATE SKIP LOCKED + UPDATE): each is returned to exactly one sweeper even
 * when several run at once. The caller now owns each returned claim and must close it
 * (dsw_store_record_outcome, or hand it to a resume). 0 or -EINVAL. */
int dsw_store_sweep(struct dsw_store *s, int limit, dsw_store_sweep_cb cb, void *arg) DSW_WUR;

/* Unfinished claims per owner, table and state, for `status`: live (heartbeat younger than ttl)
 * and stale counts; run claims first, then step claims, per owner. At most 1000 rows. */
struct dsw_store_summary_row {
    const char *worker_id;
    enum dsw_store_claim_state state;
    int64_t live;
    int64_t stale;
    bool step; /* step claims (step_claims), else run claims */
};
typedef void (*dsw_store_summary_cb)(int status, const struct dsw_store_summary_row *rows, size_t n,
                                     void *arg);
int dsw_store_claims_summary(struct dsw_store *s, dsw_store_summary_cb cb, void *arg) DSW_WUR;

/* ---- writes: every one is one transaction fenced by the token ----------------------------- */

/* The spawn of a child for a claimed run. Strings are copied. */
struct dsw_store_launch {
    const char *run_id;
    int64_t token;
    int child_pid;
    const char *message_id; /* may be NULL */
    int receive_count;
    /* Optional, what the caller read when it loaded the run (dsw_store_load): with all three the
     * launch is first tried as one statement that writes exactly what the transaction below
     * would, guarded by the run row still holding this status, body and job name (locked FOR
     * UPDATE) and by the token; when a guard fails nothing is written and the transaction runs.
     * One round trip instead of eight. */
    const char *job_name;
    const char *seen_status; /* runs.status as loaded */
    const char *seen_body;   /* runs.run_body as loaded */
};
/* Run tags the launch writes, so Dagster's UI shows which worker runs the run. */
#define DSW_STORE_TAG_WORKER_ID  "dagster-sqs-worker/worker_id"
#define DSW_STORE_TAG_MESSAGE_ID "dagster-sqs-worker/message_id"

/* At spawn: claim -> RUNNING with child_pid and a fresh heartbeat, plus the ENGINE_EVENT
 * "[dagster-sqs-worker] Launching run worker on <host> (pid N)." with text metadata worker,
 * message_id, receive_count (+ pg_notify), and the run tags DSW_STORE_TAG_WORKER_ID (this
 * worker's id) and DSW_STORE_TAG_MESSAGE_ID (when there is one) written as Dagster's
 * add_run_tags writes them (run_tags updated or inserted, run_body's tags merged, status from
 * the status column, update_timestamp), all in one transaction. cb status 0, -ESTALE (token
 * lost: nothing written), -ENOENT (no run row: nothing written), or a db error (nothing
 * written). */
int dsw_store_record_launch(struct dsw_store *s, const struct dsw_store_launch *l, dsw_store_cb cb,
                            void *arg) DSW_WUR;

/* What happened to a child. Strings are copied. */
struct dsw_store_exit {
    const char *run_id;
    int64_t token;
    int exit_code;   /* when term_signal == 0 */
    int term_signal; /* the signal that killed it, 0 when it exited */
    int pid;
    double duration_s;
    const char *outcome;        /* stored in run_claims.outcome: "exited", "timeout", "lost"...;
                                   NULL: "exited" or "signaled" */
    const char *cause;          /* message of the PIPELINE_FAILURE written when the run is still not
                                   terminal; NULL: one naming the exit code or signal */
    const char *failure_reason; /* its RunFailureReason (DSW_FAILURE_*); NULL: by outcome (see
                                   dsw_store_record_outcome) */
    const char *job_name; /* optional (runs.pipeline_name as loaded): when given, the record is
                             first tried as one statement for the common case -- the run already
                             terminal by its own run worker, its body holding the launch's tags,
                             the pipeline name unchanged -- writing the claim and the exit event
                             only (what the transaction writes in that case); otherwise nothing
                             is written by it and the transaction runs */
};
/* The result of an outcome write. */
struct dsw_store_record_result {
    enum dsw_store_status before; /* the run's status as the transaction found it */
    enum dsw_store_status after;  /* its status at commit */
    bool changed;                 /* this call wrote the terminal event and status */
    bool already;                 /* the claim was already done with this token (a retry of a
                                     record whose commit was lost): nothing written, status 0 */
};
typedef void (*dsw_store_record_cb)(int status, const struct dsw_store_record_result *res,
                                    void *arg);
/* When the child exits, in one transaction: claim -> DONE (exit_code, term_signal, outcome,
 * finished_at); ENGINE_EVENT "[dagster-sqs-worker] Run worker exited with code C after D s
 * (pid P)." (or "was killed by signal S") with text metadata exit_code, signal, pid, worker,
 * duration_s; and when the run is not terminal: PIPELINE_FAILURE (PIPELINE_CANCELED when it is
 * CANCELING) + runs status/run_body/update_timestamp/end_time, WHERE status is not terminal.
 * The PIPELINE_FAILURE is "[dagster-sqs-worker] This run has been marked as failed: <cause>."
 * with PipelineFailureData{failure_reason} (what current Dagster writes; 1.3 ignores the
 * member, 1.7 reads it) and, unless the reason is UNKNOWN, the run tag dagster/failure_reason
 * in run_tags and in run_body's tags, as Dagster's run storage sets it. The launch's tags are
 * put back into run_body from run_tags (also of a run that ended by itself, whose outcome is
 * kept) when a writer that read the body before the launch committed dropped them.
 * Each event is followed by pg_notify('run_events', run_id || '_' || id). cb status 0 (res),
 * -ESTALE (token lost: nothing written), -ENOENT (no run row), or a db error (nothing
 * written; retry when the db is back). */
int dsw_store_record_exit(struct dsw_store *s, const struct dsw_store_exit *e,
                          dsw_store_record_cb cb, void *arg) DSW_WUR;

/* An outcome without a child (SPEC §4: "run worker lost", "gave up after N deliveries", a
 * CANCELING run nobody runs). Strings are copied. */
struct dsw_store_outcome {
    const char *run_id;
    int64_t token;
    const char *outcome; /* run_claims.outcome: "lost", "gave_up", "canceled"... */
    const char *cause;   /* the PIPELINE_FAILURE message, e.g. "run worker lost" (required) */
    const char *failure_reason; /* DSW_FAILURE_*; NULL: by outcome */
};
/* In one transaction: claim -> DONE with outcome; when the run is not terminal, a
 * PIPELINE_FAILURE with cause + status FAILURE (failure data and tag as for
 * dsw_store_record_exit), or, when the run is CANCELING, a PIPELINE_CANCELED + status CANCELED.
 * Same statuses as dsw_store_record_exit.
 * The reason by outcome, when the caller gives none: a run worker that exited or was killed
 * without recording an outcome ("exited", "signaled", "drained"), and a run whose worker was
 * lost with its daemon ("lost": the sweeper, or a redelivery finding our stale claim) are
 * UNEXPECTED_TERMINATION -- the run worker was interrupted; Dagster's RUN_WORKER_RESTART means
 * that a second run worker was started for a STARTED run, which the claims never let happen.
 * Anything else ("timeout" -- Dagster's max-runtime failure carries no reason either --,
 * "gave_up", "bad_run", "spawn_failed") is UNKNOWN: written in the data, no tag. */
int dsw_store_record_outcome(struct dsw_store *s, const struct dsw_store_outcome *o,
                             dsw_store_record_cb cb, void *arg) DSW_WUR;

/* For `enqueue`: move a NOT_STARTED or QUEUED run to STARTING the way Dagster's launch_run does
 * (PIPELINE_STARTING event + pg_notify + status/run_body/update_timestamp), in one transaction
 * with the run row locked. Not fenced (no claim exists yet). cb status 0 with res (changed false
 * when the run was in any other status: nothing written), -ENOENT, or a db error. */
int dsw_store_mark_starting(struct dsw_store *s, const char *run_id, dsw_store_record_cb cb,
                            void *arg) DSW_WUR;

/* ---- step claims (docs/steps.md §3): one row per (run id, step key, attempt) ---------------
 * Fenced by a token from the same sequence as run claims, aged by the database clock, and
 * refreshed by dsw_store_heartbeat / dsw_store_heartbeat_batch. A step key is 1..255 bytes;
 * attempt >= 1; anything else is -EINVAL. */

struct dsw_store_step_key {
    const char *run_id;
    const char *step_key;
    int attempt;
};
/* The run (status, job name, body, max runtime as dsw_store_load) with the STEP's claim in
 * run->claim (kind "step"; NONE when no row), one statement. Same cb/statuses as dsw_store_load. */
int dsw_store_step_load(struct dsw_store *s, const struct dsw_store_step_key *k,
                        dsw_store_load_cb cb, void *arg) DSW_WUR;
struct dsw_store_step_claim_req {
    struct dsw_store_step_key key;
    const char *message_id; /* may be NULL */
    int receive_count;
};
/* INSERT .. ON CONFLICT DO NOTHING with a token from the fence sequence. cb 0: won (claim
 * CLAIMED with token); -EEXIST: claim describes the row; else a db error (claim NULL). */
int dsw_store_step_claim(struct dsw_store *s, const struct dsw_store_step_claim_req *req,
                         dsw_store_claim_cb cb, void *arg) DSW_WUR;
/* Close a step claim without a child: seen_token != 0: CAS state done + outcome + finished_at
 * where the key and token match, not done and the heartbeat is stale (older than ttl);
 * seen_token == 0: insert a done row (new token, this worker, outcome) ON CONFLICT DO NOTHING.
 * cb 0, -ESTALE (nothing changed), or a db error. req->message_id/receive_count are stored. */
int dsw_store_step_close(struct dsw_store *s, const struct dsw_store_step_claim_req *req,
                         int64_t seen_token, const char *outcome, dsw_store_cb cb,
                         void *arg) DSW_WUR;
/* At spawn: state running, child_pid, heartbeat now, where token matches and not done. cb 0,
 * -ESTALE, or a db error. */
int dsw_store_step_launch(struct dsw_store *s, int64_t token, int child_pid, dsw_store_cb cb,
                          void *arg) DSW_WUR;
struct dsw_store_step_exit {
    int64_t token;
    int exit_code;       /* when term_signal == 0; < 0: no child (stored NULL) */
    int term_signal;     /* 0 when it exited */
    const char *outcome; /* NULL: "exited" or "signaled" */
};
/* The child's end: state done, exit_code, term_signal, outcome, finished_at in one fenced
 * UPDATE (token matches, not done). cb 0, -ESTALE, or a db error. */
int dsw_store_step_exit(struct dsw_store *s, const struct dsw_store_step_exit *x, dsw_store_cb cb,
                        void *arg) DSW_WUR;
/* Give a not-started step claim up (drain before spawn): delete where token and not done. */
int dsw_store_step_release(struct dsw_store *s, int64_t token, dsw_store_cb cb, void *arg) DSW_WUR;
/* Which of tokens (1..1000, copied) belong to not-done step claims whose stop_requested_at is
 * set: cb status 0 with those tokens (borrowed), or a db error. */
typedef void (*dsw_store_stops_cb)(int status, const int64_t *tokens, size_t n, void *arg);
int dsw_store_step_stops(struct dsw_store *s, const int64_t *tokens, size_t n,
                         dsw_store_stops_cb cb, void *arg) DSW_WUR;
/* The sweeper's step part: every not-done step claim whose heartbeat is older than ttl becomes
 * done, outcome "lost", in one statement; cb status 0 with how many. */
typedef void (*dsw_store_count_cb)(int status, int64_t n, void *arg);
int dsw_store_step_sweep(struct dsw_store *s, dsw_store_count_cb cb, void *arg) DSW_WUR;

#endif
