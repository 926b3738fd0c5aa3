/* worker: the daemon (SPEC §7). Slots without prefetch, the receive loop, the worker-wide
 * timers (batched visibility extension, lease heartbeats, the status poll + LISTEN, the sweeper),
 * signals and the drain; each message is carried through its own pipeline (pipeline.h). Also
 * the one-shot modes `once` and `exec`. */
#ifndef DSW_WORKER_H
#define DSW_WORKER_H

#include "dsw/conf.h"

enum dsw_worker_mode {
    DSW_WORKER_RUN,  /* until SIGTERM/SIGINT */
    DSW_WORKER_ONCE, /* receive at most one message, process it, exit */
    DSW_WORKER_EXEC, /* process one body from a file or stdin ("-"), no queue */
};

/* Run the worker in mode until it ends; returns the process exit code (0 ok, 1 runtime
 * failure, 69 a dependency unreachable at start, 78 configuration). conf is borrowed (the
 * reloadable keys are re-read from conf->path on SIGHUP). exec_path is the body file for
 * DSW_WORKER_EXEC. */
int dsw_worker_main(const struct dsw_conf *conf, enum dsw_worker_mode mode, const char *exec_path);

#endif
