/* launch: the run worker's command line, environment and start, warm or cold (SPEC §5). The
 * stored run body is parsed once per launch; every string built here is freed on one ladder,
 * whatever step fails. */
#include "dsw/launch.h"

#include "dsw/dagster.h"
#include "dsw/log.h"
#include "dsw/warm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* dsw_conf_load refuses more; the run's own entry point is capped here. */
#define MAX_COMMAND_WORDS DSW_CONF_COMMAND_WORDS_MAX
#define MAX_ALLOW_NAMES   DSW_CONF_PASSTHROUGH_MAX

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* The program part of the command: runs.command split on blanks, else the run's entry point,
 * else <exe> -m dagster. *out has room for the three api words and the NULL. */
static int command_words(const struct dsw_conf *conf, char **entry, const char *exe, char ***out)
{
    char **argv = dsw_xcalloc(MAX_COMMAND_WORDS + 4, sizeof(char *));
    size_t n = 0;
    int rc = 0;
    if (conf->runs.command) {
        char *copy = dsw_xstrdup(conf->runs.command), *save = NULL;
        for (char *t = strtok_r(copy, " \t", &save); t && !rc; t = strtok_r(NULL, " \t", &save))
            if (n < MAX_COMMAND_WORDS)
                argv[n++] = dsw_xstrdup(t);
            else
                rc = -E2BIG;
        free(copy);
    } else if (entry && entry[0]) {
        for (size_t i = 0; entry[i] && !rc; i++)
            if (n < MAX_COMMAND_WORDS)
                argv[n++] = dsw_xstrdup(entry[i]);
            else
                rc = -E2BIG;
    } else {
        argv[n++] = dsw_xstrdup(exe ? exe : "python3");
        argv[n++] = dsw_xstrdup("-m");
        argv[n++] = dsw_xstrdup("dagster");
    }
    if (rc) {
        free_strv(argv);
        argv = NULL;
    }
    *out = argv;
    return rc;
}

int dsw_launch_env(const struct dsw_conf *conf, char ***out)
{
    char *copy = dsw_xstrdup(conf->runs.env_passthrough ? conf->runs.env_passthrough : "");
    const char *allow[MAX_ALLOW_NAMES + 1];
    size_t na = 0;
    char *save = NULL;
    int rc = 0;
    *out = NULL;
    for (char *t = strtok_r(copy, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save)) {
        if (na == MAX_ALLOW_NAMES) {
            dsw_error("runs.env_passthrough: more than %d names", MAX_ALLOW_NAMES);
            rc = -E2BIG;
            goto out;
        }
        allow[na++] = t;
    }
    allow[na] = NULL;
    char **set = dsw_xcalloc(conf->runs.nenv + 2, sizeof(char *));
    size_t ns = 0;
    for (size_t i = 0; i < conf->runs.nenv; i++)
        set[ns++] = dsw_xasprintf("%s=%s", conf->runs.env[i].name, conf->runs.env[i].value);
    if (conf->runs.dagster_home)
        set[ns++] = dsw_xasprintf("DAGSTER_HOME=%s", conf->runs.dagster_home);
    rc = dsw_proc_env_build((const char *const *)environ, allow, (const char *const *)set, out);
    free_strv(set);
out:
    free(copy);
    return rc;
}

static uint64_t run_timeout(const struct dsw_launch *l)
{
    uint64_t timeout = (uint64_t)l->conf->runs.timeout_ms;
    if (l->max_runtime_ms > 0 && (timeout == 0 || (uint64_t)l->max_runtime_ms < timeout))
        timeout = (uint64_t)l->max_runtime_ms;
    return timeout;
}

/* The `dagster api` command of the launch. */
static const char *api_command(const struct dsw_launch *l)
{
    return l->step ? "execute_step" : l->resume ? "resume_run" : "execute_run";
}

/* Hand the run or step to a ready warm runner: 0, or -EAGAIN (none ready or it failed: go
 * cold). */
static int take_warm(const struct dsw_launch *l, const char *json, struct dsw_proc **out)
{
    const char *args[] = {"api", api_command(l), json, NULL};
    struct dsw_proc_hooks h = {.timeout_ms = run_timeout(l),
                               .kill_grace_ms = (uint64_t)l->conf->runs.kill_grace_ms,
                               .on_line = l->on_line,
                               .on_drop = l->on_drop,
                               .on_exit = l->on_exit,
                               .arg = l->arg};
    int rc = dsw_warm_take(l->warm, args, &h, out);
    if (rc && rc != -EAGAIN) {
        struct dsw_log_ctx ctx = {.event = "warm_failed", .run_id = l->run_id, .duration_ms = -1};
        dsw_log(DSW_LOG_WARN, &ctx, "warm hand-over failed (%s); starting cold", strerror(-rc));
    }
    return rc ? -EAGAIN : 0;
}

static int spawn_cold(uv_loop_t *loop, const struct dsw_launch *l, char **entry, const char *exe,
                      const char *json, struct dsw_proc **out)
{
    char **argv = NULL, **env = NULL;
    int rc = command_words(l->conf, entry, exe, &argv);
    if (rc)
        goto out;
    size_t n = 0;
    while (argv[n])
        n++;
    argv[n++] = dsw_xstrdup("api");
    argv[n++] = dsw_xstrdup(api_command(l));
    argv[n++] = dsw_xstrdup(json);
    rc = dsw_launch_env(l->conf, &env);
    if (rc)
        goto out;
    struct dsw_proc_opts o = {
        .argv = (const char *const *)argv,
        .env = (const char *const *)env,
        .trampoline = l->trampoline,
        .timeout_ms = run_timeout(l),
        .kill_grace_ms = (uint64_t)l->conf->runs.kill_grace_ms,
        .on_line = l->on_line,
        .on_drop = l->on_drop,
        .on_exit = l->on_exit,
        .arg = l->arg,
    };
    rc = dsw_proc_spawn(loop, &o, out);
out:
    free_strv(argv);
    dsw_proc_env_free(env);
    return rc;
}

int dsw_launch_start(uv_loop_t *loop, const struct dsw_launch *l, struct dsw_proc **out, bool *warm)
{
    char *origin = NULL, *json = NULL, *exe = NULL, **entry = NULL;
    const char *iref =
        l->conf->runs.instance_ref == DSW_INSTANCE_REF_FORWARD ? l->instance_ref : NULL;
    *out = NULL;
    *warm = false;
    int rc = dsw_dagster_body_origin(l->body, &origin, &entry, &exe);
    if (!rc && l->step)
        rc = dsw_dagster_step_args(l->run_id, origin, iref, l->step, &json);
    else if (!rc)
        rc = dsw_dagster_run_args(l->run_id, origin, iref, l->resume, &json);
    if (rc) {
        rc = -EBADMSG;
        goto out;
    }
    if (l->warm && dsw_warm_python_matches(l->warm, exe) && take_warm(l, json, out) == 0) {
        *warm = true;
        goto out;
    }
    rc = spawn_cold(loop, l, entry, exe, json, out);
out:
    free(origin);
    free(json);
    free(exe);
    free_strv(entry);
    return rc;
}

int dsw_launch_warm_init(uv_loop_t *loop, const struct dsw_conf *c, const char *trampoline,
                         struct dsw_warm **out)
{
    char **env = NULL;
    char why[8192];
    int rc = dsw_launch_env(c, &env);
    struct dsw_warm_opts wo = {.n = (unsigned)c->runs.warm,
                               .limit = (unsigned)c->runs.max_concurrent, /* all slots free */
                               .python = c->runs.python,
                               .runner = c->runs.warm_runner,
                               .imports = c->runs.warm_imports,
                               .entry = c->runs.warm_entry,
                               .max_age_ms = (uint64_t)c->runs.warm_max_age_ms,
                               .env = (const char *const *)env,
                               .trampoline = trampoline};
    *out = NULL;
    if (!rc)
        rc = dsw_warm_init(loop, &wo, out);
    dsw_proc_env_free(env);
    if (rc)
        dsw_error("cannot start the warm runner pool: %s",
                  dsw_warm_strerror(rc, c->runs.python, c->runs.warm_runner, why, sizeof(why)));
    else
        dsw_info("keeping %u warm runner(s) ready, at most one per free slot (%s)",
                 DSW_MIN(wo.n, wo.limit), c->runs.python);
    return rc;
}
