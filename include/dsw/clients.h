/* clients: the daemon's connections to the outside, built from the configuration on one loop:
 * the HTTP client, AWS credentials, the SQS client, the PostgreSQL session and the store above
 * it. Commands open only what they need and close everything before uv_loop_close. */
#ifndef DSW_CLIENTS_H
#define DSW_CLIENTS_H

#include "dsw/conf.h"
#include "dsw/util.h"

#include <stdbool.h>
#include <uv.h>

struct dsw_http;
struct dsw_aws;
struct dsw_sqs;
struct dsw_db;
struct dsw_store;

enum dsw_clients_need { DSW_CLIENTS_SQS = 1, DSW_CLIENTS_DB = 2 };

struct dsw_clients {
    /* Set by the caller before dsw_clients_open (optional): the db's state and NOTIFY
     * callbacks, with cb_arg. */
    void (*on_db_state)(struct dsw_db *db, bool up, void *arg);
    void (*on_db_notify)(struct dsw_db *db, const char *channel, const char *payload, void *arg);
    void *cb_arg;
    uv_loop_t *loop;
    const struct dsw_conf *conf; /* borrowed */
    char region[64];
    char worker_id[160]; /* hostname:pid:start-unix-time */
    char hostname[64];
    struct dsw_http *http;
    struct dsw_aws *aws;
    struct dsw_sqs *sqs;
    struct dsw_db *db;
    struct dsw_store *store;
    int closing;
    int open_count; /* clients whose close callback has not fired yet */
    void (*close_cb)(void *arg);
    void *close_arg;
};

/* Open what needs (enum dsw_clients_need bits) asks for on loop. c is caller memory that must
 * stay valid until the close callback; only the callback members are read from it. 0, or a negative
 * errno with the reason logged. */
int dsw_clients_open(struct dsw_clients *c, uv_loop_t *loop, const struct dsw_conf *conf,
                     unsigned needs) DSW_WUR;

/* Close every open client; cb(arg) once all are closed (may be NULL). */
typedef void (*dsw_clients_close_cb)(void *arg);
void dsw_clients_close(struct dsw_clients *c, dsw_clients_close_cb cb, void *arg);

#endif
