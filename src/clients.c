/* clients: bring-up and teardown of http, aws, sqs, db and store from the configuration, in
 * dependency order; teardown waits for each close callback, then closes the next layer down. */
#include "dsw/clients.h"

#include "dsw/aws.h"
#include "dsw/db.h"
#include "dsw/http.h"
#include "dsw/log.h"
#include "dsw/sqs.h"
#include "dsw/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int open_sqs(struct dsw_clients *c)
{
    const struct dsw_conf *conf = c->conf;
    char endpoint[512], buf[64];
    const char *region = dsw_conf_region(conf, buf, sizeof(buf));
    if (!region) {
        dsw_error("no AWS region: set queue.region or AWS_REGION");
        return -EINVAL;
    }
    dsw_strlcpy(c->region, region, sizeof(c->region));
    if (conf->queue.endpoint)
        dsw_strlcpy(endpoint, conf->queue.endpoint, sizeof(endpoint));
    else
        snprintf(endpoint, sizeof(endpoint), "https://sqs.%s.amazonaws.com", c->region);
    int rc = dsw_http_init(&c->http, c->loop);
    if (rc) {
        dsw_error("cannot start the HTTP client: %s", strerror(-rc));
        return rc;
    }
    c->open_count++;
    struct dsw_aws_opts ao = {.region = c->region, .service = "sqs"};
    rc = dsw_aws_init(&c->aws, c->loop, c->http, &ao);
    if (rc) {
        dsw_error("cannot set up the AWS credential chain (%s)", strerror(-rc));
        return rc;
    }
    c->open_count++;
    struct dsw_sqs_opts so = {.endpoint = endpoint};
    rc = dsw_sqs_init(&c->sqs, c->loop, c->http, c->aws, &so);
    if (rc) {
        dsw_error("cannot set up the SQS client: %s", strerror(-rc));
        return rc;
    }
    c->open_count++;
    return 0;
}

extern char **environ;

/* libpq reads PGPASSFILE (else ~/.pgpass); the daemon also reads $CREDENTIALS_DIRECTORY/pgpass
 * and the file the README's systemd steps create, for the commands run by hand: name the one
 * dsw_conf_require checked. The children do not inherit it (runs.env_passthrough). */
static void use_pgpass(void)
{
    char buf[4096];
    const char *path =
        dsw_conf_pgpass_path(environ, DSW_CONF_PGPASS_DEFAULT_PATH, buf, sizeof(buf));
    if (path && !getenv("PGPASSFILE") && setenv("PGPASSFILE", path, 1) == 0)
        dsw_debug("postgres: password file %s", path);
}

static int open_db(struct dsw_clients *c)
{
    const struct dsw_conf *conf = c->conf;
    use_pgpass();
    struct dsw_db_opts o = {
        .conninfo = conf->postgres.conninfo,
        .connect_timeout_ms = (uint64_t)conf->postgres.connect_timeout_ms,
        .statement_timeout_ms = (uint64_t)conf->postgres.statement_timeout_ms,
        .application_name = "dagster-sqs-worker",
        .on_state = c->on_db_state,
        .on_notify = c->on_db_notify,
        .arg = c->cb_arg,
    };
    int rc = dsw_db_init(c->loop, &o, &c->db);
    if (rc) {
        dsw_error("cannot set up the PostgreSQL session: %s", strerror(-rc));
        return rc;
    }
    c->open_count++;
    struct dsw_store_opts so = {
        .worker_id = c->worker_id, .hostname = c->hostname, .ttl_ms = conf->claims.ttl_ms};
    rc = dsw_store_new(c->db, &so, &c->store);
    if (rc) {
        dsw_error("cannot set up the store: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

int dsw_clients_open(struct dsw_clients *c, uv_loop_t *loop, const struct dsw_conf *conf,
                     unsigned needs)
{
    void (*on_state)(struct dsw_db *, bool, void *) = c->on_db_state;
    void (*on_notify)(struct dsw_db *, const char *, const char *, void *) = c->on_db_notify;
    void *cb_arg = c->cb_arg;
    memset(c, 0, sizeof(*c));
    c->on_db_state = on_state;
    c->on_db_notify = on_notify;
    c->cb_arg = cb_arg;
    c->loop = loop;
    c->conf = conf;
    if (gethostname(c->hostname, sizeof(c->hostname)) != 0)
        dsw_strlcpy(c->hostname, "unknown", sizeof(c->hostname));
    c->hostname[sizeof(c->hostname) - 1] = '\0';
    snprintf(c->worker_id, sizeof(c->worker_id), "%s:%d:%lld", c->hostname, (int)getpid(),
             (long long)time(NULL));
    int rc = 0;
    if (needs & DSW_CLIENTS_SQS)
        rc = open_sqs(c);
    if (!rc && (needs & DSW_CLIENTS_DB))
        rc = open_db(c);
    return rc;
}

/* ---- teardown: store and db; sqs, then aws, then http ------------------------------ */

static void maybe_done(struct dsw_clients *c)
{
    if (--c->open_count == 0 && c->close_cb) {
        dsw_clients_close_cb cb = c->close_cb;
        c->close_cb = NULL;
        cb(c->close_arg);
    }
}

static void http_closed(void *arg)
{
    struct dsw_clients *c = arg;
    c->http = NULL;
    maybe_done(c);
}

static void aws_closed(void *arg)
{
    struct dsw_clients *c = arg;
    c->aws = NULL;
    if (c->http)
        dsw_http_close(c->http, http_closed, c);
    maybe_done(c);
}

static void close_aws_http(struct dsw_clients *c)
{
    if (c->aws)
        dsw_aws_close(c->aws, aws_closed, c);
    else if (c->http)
        dsw_http_close(c->http, http_closed, c);
}

static void sqs_closed(void *arg)
{
    struct dsw_clients *c = arg;
    c->sqs = NULL;
    close_aws_http(c);
    maybe_done(c);
}

static void db_closed(void *arg)
{
    struct dsw_clients *c = arg;
    c->db = NULL;
    maybe_done(c);
}

void dsw_clients_close(struct dsw_clients *c, dsw_clients_close_cb cb, void *arg)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->close_cb = cb;
    c->close_arg = arg;
    if (c->open_count == 0) {
        c->close_cb = NULL;
        if (cb)
            cb(arg);
        return;
    }
    c->open_count++; /* held until every close below has been started */
    if (c->store) {
        dsw_store_free(c->store);
        c->store = NULL;
    }
    if (c->db)
        dsw_db_close(c->db, db_closed, c);
    if (c->sqs)
        dsw_sqs_close(c->sqs, sqs_closed, c);
    else
        close_aws_http(c);
    maybe_done(c);
}
