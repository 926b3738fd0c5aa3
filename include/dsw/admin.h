/* admin: the one-shot commands (db-init, enqueue, status, check-config --connect). Each runs
 * its own loop with only the clients it needs, under a deadline, and returns an exit code:
 * 0 ok, 1 runtime failure, 69 a dependency unreachable, 78 configuration. */
#ifndef DSW_ADMIN_H
#define DSW_ADMIN_H

#include "dsw/conf.h"

/* Create or upgrade the dagster_sqs_worker schema. */
int dsw_admin_db_init(const struct dsw_conf *conf);
/* Reach PostgreSQL (and check the schema) and the queue; print what was found. */
int dsw_admin_check_connect(const struct dsw_conf *conf);
/* Move run_id to STARTING if it is NOT_STARTED/QUEUED and send an execute_job envelope for
 * it; prints the new message id. */
int dsw_admin_enqueue(const struct dsw_conf *conf, const char *run_id);
/* Queue depth and unfinished claims per worker. */
int dsw_admin_status(const struct dsw_conf *conf);

#endif
