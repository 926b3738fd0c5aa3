/* heartbeat: three timers over env->slots and the queue and store calls they make. */
#include "dsw/heartbeat.h"

#include "dsw/failpoint.h"
#include "dsw/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SQS_MAX_VIS_S (12 * 3600)
/* A NOTIFY naming a watched run polls within this long: the notifications of that window
 * share one statement. */
#define NOTIFY_COALESCE_MS 100
/* Leases refreshed by one statement. */
#define LEASE_BATCH 500

enum { B_VISIBILITY, B_LEASE, B_POLL, B_COUNT };

struct dsw_heartbeat {
    struct dsw_pipeline_env *env;
    uv_timer_t timers[B_COUNT];
    int open;               /* timers not closed yet */
    int visibility_batches; /* ChangeMessageVisibilityBatch calls in flight */
    int lease_batches;      /* lease refreshes in flight */
    bool polling;           /* a status poll is in flight */
    bool polling_stops;     /* a poll of the steps' stop requests is in flight */
    bool closing;
};

#define foreach_pipeline(p, env)                                                                   \
    for (struct dsw_pipeline *p = dsw_pipeline_next((env), NULL); p;                               \
         p = dsw_pipeline_next((env), p))

static void maybe_free(struct dsw_heartbeat *hb)
{
    if (hb->closing && hb->open == 0 && hb->visibility_batches == 0 && hb->lease_batches == 0 &&
        !hb->polling && !hb->polling_stops)
        free(hb);
}

/* ---- visibility ---------------------------------------------------------------------------- */

static void on_extended(int status, const struct dsw_sqs_entry_result *res, size_t n, void *arg)
{
    struct dsw_heartbeat *hb = arg;
    hb->visibility_batches--;
    if (status)
        dsw_warn("visibility extension failed (%s)", strerror(-status));
    for (size_t i = 0; status == 0 && i < n; i++)
        if (res[i].status)
            dsw_warn("visibility extension of entry %s failed (%s)", res[i].id, res[i].code);
    maybe_free(hb);
}

static void extend_batch(struct dsw_heartbeat *hb, const struct dsw_sqs_entry *e, size_t n)
{
    const struct dsw_pipeline_env *env = hb->env;
    if (n && dsw_sqs_change_visibility_batch(env->cl->sqs, env->conf->queue.url, e, n, on_extended,
                                             hb) == 0)
        hb->visibility_batches++;
}

static void on_visibility_timer(uv_timer_t *t)
{
    struct dsw_heartbeat *hb = t->data;
    struct dsw_sqs_entry e[DSW_SQS_MAX_BATCH];
    char ids[DSW_SQS_MAX_BATCH][8];
    size_t n = 0;
    uint64_t now = dsw_now_ms();
    int vis = (int)DSW_MIN(hb->env->conf->queue.visibility_timeout_ms / 1000, SQS_MAX_VIS_S);
    /* Failpoint visibility_round=fail: the queue heartbeat is blocked (the message comes back
     * while its run is still running; the claim alone must keep a second child from starting). */
    if (DSW_FAILPOINT("visibility_round"))
        return;
    if (hb->visibility_batches > 0) {
        dsw_debug("visibility: %d batch(es) still in flight; skipping this beat",
                  hb->visibility_batches);
        return;
    }
    foreach_pipeline(p, hb->env)
    {
        if (!dsw_pipeline_visibility_entry(p, now, vis, &e[n]))
            continue;
        snprintf(ids[n], sizeof(ids[n]), "e%zu", n);
        e[n].id = ids[n];
        if (++n == DSW_SQS_MAX_BATCH) {
            extend_batch(hb, e, n);
            n = 0;
        }
    }
    extend_batch(hb, e, n);
}

/* ---- leases and status --------------------------------------------------------------------- */

/* The leases of one batch, as sent: answers go to the pipelines still holding them. */
struct lease_batch {
    struct dsw_heartbeat *hb;
    size_t n;
    struct dsw_store_lease l[LEASE_BATCH];
    char ids[LEASE_BATCH][80];
};

static void on_leased(int status, const int *kept, size_t n, void *arg)
{
    struct lease_batch *b = arg;
    struct dsw_heartbeat *hb = b->hb;
    hb->lease_batches--;
    if (status && !hb->closing)
        dsw_warn("lease refresh failed (%s)", strerror(-status));
    for (size_t i = 0; !hb->closing && i < b->n; i++) { /* closing: the slots may be gone */
        foreach_pipeline(p, hb->env)
        {
            const char *id = dsw_pipeline_run_id(p);
            if (id && strcmp(id, b->ids[i]) == 0)
                dsw_pipeline_lease_result(p, b->l[i].token, status ? status : kept[i]);
        }
    }
    free(b);
    maybe_free(hb);
}

static void send_leases(struct dsw_heartbeat *hb, struct lease_batch *b)
{
    int rc = b->n ? dsw_store_heartbeat_batch(hb->env->cl->store, b->l, b->n, on_leased, b) : 0;
    if (b->n && rc == 0) {
        hb->lease_batches++;
        return;
    }
    for (size_t i = 0; i < b->n; i++) /* refused (closing): nothing in flight */
        foreach_pipeline(p, hb->env)
        {
            const char *id = dsw_pipeline_run_id(p);
            if (id && strcmp(id, b->ids[i]) == 0)
                dsw_pipeline_lease_result(p, b->l[i].token, rc);
        }
    free(b);
}

/* Every running child's lease, LEASE_BATCH to a statement. */
static void on_lease_timer(uv_timer_t *t)
{
    struct dsw_heartbeat *hb = t->data;
    struct lease_batch *b = NULL;
    foreach_pipeline(p, hb->env)
    {
        int64_t token;
        const char *id = dsw_pipeline_run_id(p);
        if (!id || strlen(id) >= sizeof(b->ids[0]) || !dsw_pipeline_lease(p, &token))
            continue;
        if (!b) {
            b = dsw_xcalloc(1, sizeof(*b));
            b->hb = hb;
        }
        dsw_strlcpy(b->ids[b->n], id, sizeof(b->ids[0]));
        b->l[b->n] = (struct dsw_store_lease){.run_id = b->ids[b->n], .token = token};
        if (++b->n == LEASE_BATCH) {
            send_leases(hb, b);
            b = NULL;
        }
    }
    if (b)
        send_leases(hb, b);
}

static void on_polled(int status, const struct dsw_store_status_row *rows, size_t n, void *arg)
{
    struct dsw_heartbeat *hb = arg;
    hb->polling = false;
    for (size_t i = 0; status == 0 && !hb->closing && i < n; i++) {
        foreach_pipeline(p, hb->env)
        {
            const char *id = dsw_pipeline_run_id(p);
            if (id && strcmp(id, rows[i].run_id) == 0)
                dsw_pipeline_status(p, &rows[i]);
        }
    }
    maybe_free(hb);
}

static void on_stops(int status, const int64_t *tokens, size_t n, void *arg)
{
    struct dsw_heartbeat *hb = arg;
    hb->polling_stops = false;
    for (size_t i = 0; status == 0 && !hb->closing && i < n; i++) {
        foreach_pipeline(p, hb->env)
        {
            int64_t token;
            if (dsw_pipeline_step_token(p, &token) && token == tokens[i])
                dsw_pipeline_stop(p);
        }
    }
    maybe_free(hb);
}

/* The stop requests of every step a child is executing, in one statement (none without
 * steps). */
static void poll_stops(struct dsw_heartbeat *hb)
{
    int64_t tokens[1000];
    size_t n = 0;
    if (hb->polling_stops)
        return;
    foreach_pipeline(p, hb->env)
    {
        if (n < DSW_ARRAY_LEN(tokens) && dsw_pipeline_step_token(p, &tokens[n]))
            n++;
    }
    if (n && dsw_store_step_stops(hb->env->cl->store, tokens, n, on_stops, hb) == 0)
        hb->polling_stops = true;
}

/* The status of every run a child is executing, in one statement. */
static void on_poll_timer(uv_timer_t *t)
{
    struct dsw_heartbeat *hb = t->data;
    const char *ids[1000];
    size_t n = 0;
    poll_stops(hb);
    if (hb->polling)
        return;
    foreach_pipeline(p, hb->env)
    {
        if (n < DSW_ARRAY_LEN(ids) && dsw_pipeline_watching(p))
            ids[n++] = dsw_pipeline_run_id(p);
    }
    if (n && dsw_store_poll_status(hb->env->cl->store, ids, n, on_polled, hb) == 0)
        hb->polling = true;
}

void dsw_heartbeat_notify(struct dsw_heartbeat *hb, const char *payload)
{
    if (hb->closing)
        return;
    foreach_pipeline(p, hb->env)
    {
        const char *id = dsw_pipeline_run_id(p);
        size_t n = id ? strlen(id) : 0;
        if (n && dsw_pipeline_watching(p) && strncmp(payload, id, n) == 0 && payload[n] == '_') {
            /* A burst of events (a run worker's own, ours, several runs') makes one poll. */
            if (uv_timer_get_due_in(&hb->timers[B_POLL]) > NOTIFY_COALESCE_MS)
                uv_timer_start(&hb->timers[B_POLL], on_poll_timer, NOTIFY_COALESCE_MS,
                               (uint64_t)hb->env->conf->runs.cancel_poll_ms);
            return;
        }
    }
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static void on_timer_closed(uv_handle_t *h)
{
    struct dsw_heartbeat *hb = h->data;
    hb->open--;
    maybe_free(hb);
}

int dsw_heartbeat_start(struct dsw_pipeline_env *env, bool visibility, struct dsw_heartbeat **out)
{
    const struct dsw_conf *c = env->conf;
    const struct {
        uv_timer_cb cb;
        int64_t every_ms;
    } beats[B_COUNT] = {[B_VISIBILITY] = {on_visibility_timer, c->queue.heartbeat_ms},
                        [B_LEASE] = {on_lease_timer, c->claims.heartbeat_ms},
                        [B_POLL] = {on_poll_timer, c->runs.cancel_poll_ms}};
    struct dsw_heartbeat *hb = dsw_xcalloc(1, sizeof(*hb));
    hb->env = env;
    int rc = 0;
    for (int i = 0; i < B_COUNT && rc == 0; i++) {
        rc = uv_timer_init(env->loop, &hb->timers[i]);
        if (rc)
            break;
        hb->timers[i].data = hb;
        hb->open++;
        if (i != B_VISIBILITY || visibility)
            rc = uv_timer_start(&hb->timers[i], beats[i].cb, (uint64_t)beats[i].every_ms,
                                (uint64_t)beats[i].every_ms);
    }
    *out = hb;
    if (rc) {
        dsw_error("cannot start the heartbeats: %s", uv_strerror(rc));
        dsw_heartbeat_close(hb);
        *out = NULL;
    }
    return rc;
}

void dsw_heartbeat_close(struct dsw_heartbeat *hb)
{
    hb->closing = true;
    int open = hb->open;
    for (int i = 0; i < open; i++)
        uv_close((uv_handle_t *)&hb->timers[i], on_timer_closed);
    if (open == 0)
        maybe_free(hb);
}
