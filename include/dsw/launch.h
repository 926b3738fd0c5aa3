/* launch: start the run worker of one claimed run (SPEC §5). The command is runs.command, else
 * the stored run's entry point, else `<executable_path> -m dagster`, followed by `api
 * execute_run|resume_run <ExecuteRunArgs JSON>` built from the stored run (the message's
 * instance_ref only with runs.instance_ref = forward); the environment is runs.env_passthrough
 * of ours plus runs.env and DAGSTER_HOME. A run whose interpreter is the warm pool's python is
 * handed to a ready warm runner; otherwise (or when none is ready) it is spawned cold through
 * the trampoline. The timeout is runs.timeout or the run's dagster/max_runtime, the shorter. */
#ifndef DSW_LAUNCH_H
#define DSW_LAUNCH_H

#include "dsw/conf.h"
#include "dsw/proc.h"
#include "dsw/util.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct dsw_warm;
struct dsw_dagster_step;

/* One launch. Everything is borrowed and only read during dsw_launch_start. */
struct dsw_launch {
    const struct dsw_conf *conf;
    const char *run_id;
    const char *body;         /* runs.run_body of the run */
    const char *instance_ref; /* the message's instance_ref JSON, or NULL */
    bool resume;              /* resume_run instead of execute_run */
    /* A step (docs/steps.md): `api execute_step <ExecuteStepArgs JSON>` for its one step key, built
     * from the stored run as for runs; always cold. NULL: a run. */
    const struct dsw_dagster_step *step;
    int64_t max_runtime_ms; /* the run's dagster/max_runtime, 0: none */
    struct dsw_warm *warm;  /* the warm pool, or NULL */
    const char *trampoline; /* as dsw_proc_opts.trampoline */
    /* The supervisor's callbacks and arg (timeout_ms and kill_grace_ms are set here). */
    dsw_proc_line_cb on_line;
    dsw_proc_drop_cb on_drop;
    dsw_proc_exit_cb on_exit;
    void *arg;
};

/* Start the run worker on loop. 0 with *out a running child the caller owns (dsw_proc_close,
 * exactly as after dsw_proc_spawn) and *warm saying whether a warm runner took it; else *out is
 * NULL, no callback fires, and the error is -EBADMSG (the stored run has no usable code
 * origin), -E2BIG (runs.command has too many words), or dsw_proc_spawn's. */
int dsw_launch_start(uv_loop_t *loop, const struct dsw_launch *l, struct dsw_proc **out,
                     bool *warm) DSW_WUR;

/* The run workers' environment (also the warm runners'): *out is a new NULL-terminated array
 * (dsw_proc_env_free). 0, -E2BIG (runs.env_passthrough has too many names) or -EINVAL. */
int dsw_launch_env(const struct dsw_conf *conf, char ***out) DSW_WUR;

/* The warm runner pool of runs.warm (> 0) on loop, in the run workers' environment; the
 * failure is logged with what was missing. 0 with *out, or a negative errno (*out NULL). */
int dsw_launch_warm_init(uv_loop_t *loop, const struct dsw_conf *conf, const char *trampoline,
                         struct dsw_warm **out) DSW_WUR;

#endif
