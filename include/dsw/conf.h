/* conf: the configuration, parsed from a `key = value` file with [sections] and then from the
 * environment (DSW_<SECTION>_<KEY>, plus the dagster-taskiq and AWS variables SPEC §8 names),
 * through one table of keys with types, defaults, bounds and help. The result is immutable for
 * the daemon's life, except the reloadable keys (log.level, runs.max_concurrent,
 * runs.step_slots) on SIGHUP. */
#ifndef DSW_CONF_H
#define DSW_CONF_H

#include "dsw/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSW_CONF_DEFAULT_PATH "/etc/dagster-sqs-worker/worker.conf"
/* The password file used when neither PGPASSFILE nor $CREDENTIALS_DIRECTORY/pgpass is there
 * (the one the README's systemd steps create, for db-init, status and enqueue run by hand). */
#define DSW_CONF_PGPASS_DEFAULT_PATH "/etc/dagster-sqs-worker/pgpass"
#define DSW_CONF_FILE_MAX            (1024 * 1024)
#define DSW_CONF_ERR_MAX             512
/* runs.env_passthrough's default: the one definition of what a run worker inherits. */
#define DSW_CONF_ENV_PASSTHROUGH_DEFAULT "PATH HOME LANG LC_* TZ DAGSTER_* PYTHON*"
/* Caps, checked at load (a configuration error beyond them, never a silent cut): */
#define DSW_CONF_PASSTHROUGH_MAX   64 /* names or prefixes in runs.env_passthrough */
#define DSW_CONF_COMMAND_WORDS_MAX 32 /* words in runs.command */

enum dsw_instance_ref_mode { DSW_INSTANCE_REF_STRIP, DSW_INSTANCE_REF_FORWARD };

/* One runs.env.<NAME> = value assignment for the child's environment. */
struct dsw_conf_env {
    char *name;
    char *value;
};

/* Durations are milliseconds, sizes bytes. Strings are heap copies, NULL when unset. */
struct dsw_conf {
    struct {
        char *url;
        char *region;
        char *endpoint;
        int64_t wait_time_ms;
        int64_t visibility_timeout_ms;
        int64_t heartbeat_ms;
        int64_t max_body;
        char *quarantine_url;
    } queue;
    struct {
        char *conninfo;
        int64_t connect_timeout_ms;
        int64_t statement_timeout_ms;
    } postgres;
    struct {
        int64_t ttl_ms;
        int64_t heartbeat_ms;
        int64_t sweep_ms;
    } claims;
    struct {
        int64_t max_concurrent;
        int64_t step_slots; /* of max_concurrent, kept for steps: runs take the rest */
        char *command;
        char *dagster_home;
        int64_t instance_ref; /* enum dsw_instance_ref_mode */
        char *env_passthrough;
        struct dsw_conf_env *env;
        size_t nenv;
        int64_t drain_timeout_ms;
        int64_t kill_grace_ms;
        int64_t timeout_ms;
        int64_t cancel_poll_ms;
        int64_t max_receives;
        int64_t requeue_delay_ms;
        bool resume;
        int64_t max_resumes;
        bool strict_run_id;
        int64_t warm;
        char *python;
        char *warm_runner; /* NULL: found beside the binary (dsw_warm_runner_path) */
        char *warm_imports;
        char *warm_entry;
        int64_t warm_max_age_ms;
    } runs;
    struct {
        char *listen;
    } http;
    struct {
        int64_t level;  /* enum dsw_log_level */
        int64_t format; /* enum dsw_log_format */
    } log;
    char *path; /* the file it was read from, NULL when from the environment only */
    /* What was accepted but looks wrong (a DSW_* variable that names no key), one line each
     * ("env:NAME: reason"), for the caller to log once logging is set up. */
    char **warnings;
    size_t nwarnings;
};

/* Fill c with every default. */
void dsw_conf_defaults(struct dsw_conf *c);

/* Parse the file at path (NULL: no file, defaults + environment only) and then apply the
 * environment envp (NULL-terminated "NAME=value" array). Validates every key and the
 * cross-key rules (required queue.url, heartbeat < visibility, ...).
 * Returns 0, or -EINVAL (bad content), -EPERM (file readable by group/others), -ENOENT /
 * other errno (cannot read); err receives "file:line: key: reason". On error *c is freed. */
int dsw_conf_load(struct dsw_conf *c, const char *path, char *const envp[],
                  char err[DSW_CONF_ERR_MAX]) DSW_WUR;

/* What a command needs from the configuration, checked by dsw_conf_require. */
enum dsw_conf_need {
    DSW_CONF_NEED_QUEUE = 1, /* queue.url and a region to sign for */
    DSW_CONF_NEED_DB = 2,    /* postgres.conninfo; any password file private */
    DSW_CONF_NEED_RUNS = 4,  /* what a child needs: DAGSTER_HOME with instance_ref = strip */
};

/* Check that c has what the needs (enum dsw_conf_need bits) require; envp is the daemon's
 * environment. 0, or -EINVAL / -EPERM with "source: key: reason" in err. */
int dsw_conf_require(const struct dsw_conf *c, unsigned needs, char *const envp[],
                     char err[DSW_CONF_ERR_MAX]) DSW_WUR;

/* A file holding a secret (password file) must not be readable by group or others:
 * 0, -EPERM with a reason in err, or -errno when it cannot be inspected. */
int dsw_conf_check_private(const char *path, char err[DSW_CONF_ERR_MAX]) DSW_WUR;

/* The password file libpq should read, from envp: PGPASSFILE, else $CREDENTIALS_DIRECTORY/pgpass
 * when it exists, else fallback (normally DSW_CONF_PGPASS_DEFAULT_PATH) when it exists, else
 * NULL. Borrowed from envp or written into buf. */
const char *dsw_conf_pgpass_path(char *const envp[], const char *fallback, char *buf, size_t n);

/* Parse "30s", "500ms", "2m", "1h" (a bare number is seconds) into milliseconds. */
int dsw_conf_parse_duration(const char *s, int64_t *ms) DSW_WUR;
/* Parse "256KiB", "1MiB", "512" (bytes) into bytes. */
int dsw_conf_parse_size(const char *s, int64_t *bytes) DSW_WUR;

/* Visit every key's effective value as text (secrets shown as "(set)"); for check-config. */
typedef void (*dsw_conf_visit_cb)(const char *section, const char *key, const char *value,
                                  void *arg);
void dsw_conf_visit(const struct dsw_conf *c, dsw_conf_visit_cb cb, void *arg);

/* The region to sign for: queue.region, else parsed from queue.url / endpoint host
 * (sqs.<region>.amazonaws.com), else NULL. Borrowed from c or static storage; no allocation. */
const char *dsw_conf_region(const struct dsw_conf *c, char *buf, size_t n);

void dsw_conf_free(struct dsw_conf *c);

#endif
