/* conf: one designated-initializer table describes every key (type, default, bounds, help);
 * the file parser, the environment overrides, the printer and check-config all walk it.
 * Precedence: defaults < file < dagster-taskiq/AWS compatibility variables (only for keys the
 * file left unset) < DSW_<SECTION>_<KEY>. */
#include "dsw/conf.h"

#include "dsw/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

enum type { T_STR, T_DUR, T_SIZE, T_INT, T_BOOL, T_CHOICE };

struct key {
    const char *section;
    const char *name;
    enum type type;
    size_t off;
    const char *def;
    int64_t min, max;
    const char *const *choices;
    const char *help;
    bool reloadable;
};

#define OFF(m) offsetof(struct dsw_conf, m)
#define SEC    ((int64_t)1000)
#define MIN    (60 * SEC)
#define HOUR   (60 * MIN)

static const char *const instance_ref_choices[] = {"strip", "forward", NULL};
static const char *const level_choices[] = {"debug", "info", "warn", "error", NULL};
static const char *const format_choices[] = {"text", "json", NULL};

static const struct key keys[] = {
    {.section = "queue",
     .name = "url",
     .type = T_STR,
     .off = OFF(queue.url),
     .help = "SQS queue URL to consume (required). Env: DSW_QUEUE_URL or "
             "DAGSTER_TASKIQ_SQS_QUEUE_URL."},
    {.section = "queue",
     .name = "region",
     .type = T_STR,
     .off = OFF(queue.region),
     .help = "AWS region to sign for; default: from the URL host, AWS_REGION or "
             "AWS_DEFAULT_REGION."},
    {.section = "queue",
     .name = "endpoint",
     .type = T_STR,
     .off = OFF(queue.endpoint),
     .help = "SQS endpoint to POST to (e.g. http://127.0.0.1:4566); default "
             "https://sqs.<region>.amazonaws.com. Env: DAGSTER_TASKIQ_SQS_ENDPOINT_URL."},
    {.section = "queue",
     .name = "wait_time",
     .type = T_DUR,
     .off = OFF(queue.wait_time_ms),
     .def = "20s",
     .min = 0,
     .max = 20 * SEC,
     .help = "Long-poll wait (SQS allows 0-20 s)."},
    {.section = "queue",
     .name = "visibility_timeout",
     .type = T_DUR,
     .off = OFF(queue.visibility_timeout_ms),
     .def = "120s",
     .min = 10 * SEC,
     .max = 12 * HOUR,
     .help = "Visibility set on receive and on every heartbeat extension."},
    {.section = "queue",
     .name = "heartbeat",
     .type = T_DUR,
     .off = OFF(queue.heartbeat_ms),
     .def = "30s",
     .min = 1 * SEC,
     .max = 12 * HOUR,
     .help = "How often running messages' visibility is extended (batched)."},
    {.section = "queue",
     .name = "max_body",
     .type = T_SIZE,
     .off = OFF(queue.max_body),
     .def = "256KiB",
     .min = 1024,
     .max = 1024 * 1024,
     .help = "Messages larger than this are rejected (too_large)."},
    {.section = "queue",
     .name = "quarantine_url",
     .type = T_STR,
     .off = OFF(queue.quarantine_url),
     .help = "Queue that receives rejected messages; unset: rejects are deleted."},

    {.section = "postgres",
     .name = "conninfo",
     .type = T_STR,
     .off = OFF(postgres.conninfo),
     .help = "libpq connection string or URI of the Dagster database, without a password "
             "(use PGPASSWORD, or a password file: PGPASSFILE, else "
             "$CREDENTIALS_DIRECTORY/pgpass, else " DSW_CONF_PGPASS_DEFAULT_PATH ")."},
    {.section = "postgres",
     .name = "connect_timeout",
     .type = T_DUR,
     .off = OFF(postgres.connect_timeout_ms),
     .def = "10s",
     .min = 1 * SEC,
     .max = 10 * MIN,
     .help = "Give up one connection attempt after this long."},
    {.section = "postgres",
     .name = "statement_timeout",
     .type = T_DUR,
     .off = OFF(postgres.statement_timeout_ms),
     .def = "15s",
     .min = 100,
     .max = 10 * MIN,
     .help = "statement_timeout of every session."},

    {.section = "claims",
     .name = "ttl",
     .type = T_DUR,
     .off = OFF(claims.ttl_ms),
     .def = "60s",
     .min = 1 * SEC,
     .max = 24 * HOUR,
     .help = "A claim whose heartbeat is older than this is stale and may be taken over."},
    {.section = "claims",
     .name = "heartbeat",
     .type = T_DUR,
     .off = OFF(claims.heartbeat_ms),
     .def = "10s",
     .min = 100,
     .max = 1 * HOUR,
     .help = "Lease refresh interval."},
    {.section = "claims",
     .name = "sweep",
     .type = T_DUR,
     .off = OFF(claims.sweep_ms),
     .def = "30s",
     .min = 100,
     .max = 1 * HOUR,
     .help = "How often this worker looks for stale claims of dead workers."},

    {.section = "runs",
     .name = "max_concurrent",
     .type = T_INT,
     .off = OFF(runs.max_concurrent),
     .def = "0",
     .min = 0,
     .max = 4096,
     .reloadable = true,
     .help = "Run slots; 0 = number of CPUs. Reloadable with SIGHUP."},
    {.section = "runs",
     .name = "step_slots",
     .type = T_INT,
     .off = OFF(runs.step_slots),
     .def = "0",
     .min = 0,
     .max = 4095,
     .reloadable = true,
     .help = "Slots only steps (execute_step) may take: run workers take at most "
             "max_concurrent - step_slots. Reloadable with SIGHUP."},
    {.section = "runs",
     .name = "command",
     .type = T_STR,
     .off = OFF(runs.command),
     .help = "The dagster executable; default: the run's entry_point, else "
             "<executable_path> -m dagster."},
    {.section = "runs",
     .name = "dagster_home",
     .type = T_STR,
     .off = OFF(runs.dagster_home),
     .help = "DAGSTER_HOME given to the child (required with instance_ref = strip unless "
             "DAGSTER_HOME is passed through)."},
    {.section = "runs",
     .name = "instance_ref",
     .type = T_CHOICE,
     .off = OFF(runs.instance_ref),
     .def = "strip",
     .choices = instance_ref_choices,
     .help = "strip: the child uses DAGSTER_HOME; forward: pass the message's instance_ref."},
    {.section = "runs",
     .name = "env_passthrough",
     .type = T_STR,
     .off = OFF(runs.env_passthrough),
     .def = DSW_CONF_ENV_PASSTHROUGH_DEFAULT,
     .help = "Variables the child inherits (names, or prefixes ending in *)."},
    {.section = "runs",
     .name = "drain_timeout",
     .type = T_DUR,
     .off = OFF(runs.drain_timeout_ms),
     .def = "300s",
     .min = 0,
     .max = 24 * HOUR,
     .help = "On SIGTERM, how long running runs may finish before they are terminated."},
    {.section = "runs",
     .name = "kill_grace",
     .type = T_DUR,
     .off = OFF(runs.kill_grace_ms),
     .def = "30s",
     .min = 0,
     .max = 1 * HOUR,
     .help = "SIGTERM to SIGKILL delay."},
    {.section = "runs",
     .name = "timeout",
     .type = T_DUR,
     .off = OFF(runs.timeout_ms),
     .def = "0",
     .min = 0,
     .max = 30 * 24 * HOUR,
     .help = "Maximum run time (0 = off); the run tag dagster/max_runtime also applies."},
    {.section = "runs",
     .name = "cancel_poll",
     .type = T_DUR,
     .off = OFF(runs.cancel_poll_ms),
     .def = "2s",
     .min = 100,
     .max = 10 * MIN,
     .help = "How often running runs' statuses are polled (LISTEN reacts sooner)."},
    {.section = "runs",
     .name = "max_receives",
     .type = T_INT,
     .off = OFF(runs.max_receives),
     .def = "5",
     .min = 1,
     .max = 1000,
     .help = "Give a run up after this many deliveries."},
    {.section = "runs",
     .name = "requeue_delay",
     .type = T_DUR,
     .off = OFF(runs.requeue_delay_ms),
     .def = "30s",
     .min = 0,
     .max = 12 * HOUR,
     .help = "Visibility given to a message deferred because its run is not launched yet."},
    {.section = "runs",
     .name = "resume",
     .type = T_BOOL,
     .off = OFF(runs.resume),
     .def = "off",
     .help = "Resume (resume_run) a run whose worker was lost instead of failing it."},
    {.section = "runs",
     .name = "max_resumes",
     .type = T_INT,
     .off = OFF(runs.max_resumes),
     .def = "1",
     .min = 0,
     .max = 100,
     .help = "Resume attempts per run."},
    {.section = "runs",
     .name = "strict_run_id",
     .type = T_BOOL,
     .off = OFF(runs.strict_run_id),
     .def = "true",
     .help = "Accept only lowercase UUID run ids; false also allows [A-Za-z0-9_-]{1,64}."},
    {.section = "runs",
     .name = "warm",
     .type = T_INT,
     .off = OFF(runs.warm),
     .def = "0",
     .min = 0,
     .max = 256,
     .help = "Ready warm runners kept (0 = off)."},
    {.section = "runs",
     .name = "python",
     .type = T_STR,
     .off = OFF(runs.python),
     .help = "Python interpreter of the warm runners (required when warm > 0)."},
    {.section = "runs",
     .name = "warm_runner",
     .type = T_STR,
     .off = OFF(runs.warm_runner),
     .help = "The warm runner script (dsw-warm-runner.py); default: beside the binary, in "
             "../libexec/dagster-sqs-worker/ or ../libexec/."},
    {.section = "runs",
     .name = "warm_imports",
     .type = T_STR,
     .off = OFF(runs.warm_imports),
     .def = "dagster dagster_postgres dagster._cli",
     .help = "Modules a warm runner imports."},
    {.section = "runs",
     .name = "warm_entry",
     .type = T_STR,
     .off = OFF(runs.warm_entry),
     .def = "dagster._cli:main",
     .help = "Entry point a warm runner calls."},
    {.section = "runs",
     .name = "warm_max_age",
     .type = T_DUR,
     .off = OFF(runs.warm_max_age_ms),
     .def = "10m",
     .min = 1 * SEC,
     .max = 24 * HOUR,
     .help = "Warm runners are recycled after this."},

    {.section = "http",
     .name = "listen",
     .type = T_STR,
     .off = OFF(http.listen),
     .def = "127.0.0.1:9464",
     .help = "Address of /healthz, /readyz, /metrics; off disables."},

    {.section = "log",
     .name = "level",
     .type = T_CHOICE,
     .off = OFF(log.level),
     .def = "info",
     .choices = level_choices,
     .reloadable = true,
     .help = "debug, info, warn or error. Reloadable with SIGHUP."},
    {.section = "log",
     .name = "format",
     .type = T_CHOICE,
     .off = OFF(log.format),
     .def = "text",
     .choices = format_choices,
     .help = "text (journald-aware) or json (one object per line)."},
};

/* ---- value parsing -------------------------------------------------------------------- */

static int parse_int(const char *s, int64_t *out, char **end)
{
    errno = 0;
    long long v = strtoll(s, end, 10);
    if (*end == s || errno == ERANGE)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_scaled(const char *s, int64_t *out, const char *const units[],
                        const int64_t scale[], int64_t bare)
{
    char *end;
    int64_t v;
    if (!isdigit((unsigned char)*s) || parse_int(s, &v, &end))
        return -EINVAL;
    while (*end == ' ')
        end++;
    int64_t mul = -1;
    if (!*end)
        mul = bare;
    for (size_t i = 0; units[i] && mul < 0; i++)
        if (strcmp(end, units[i]) == 0)
            mul = scale[i];
    if (mul < 0 || v > INT64_MAX / mul)
        return -EINVAL;
    *out = v * mul;
    return 0;
}

int dsw_conf_parse_duration(const char *s, int64_t *ms)
{
    static const char *const units[] = {"ms", "s", "m", "h", NULL};
    static const int64_t scale[] = {1, SEC, MIN, HOUR};
    return parse_scaled(s, ms, units, scale, SEC);
}

int dsw_conf_parse_size(const char *s, int64_t *bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", NULL};
    static const int64_t scale[] = {1, 1024, 1024 * 1024};
    return parse_scaled(s, bytes, units, scale, 1);
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "on", "yes", "1"}, *const no[] = {"false", "off",
                                                                                "no", "0"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(yes); i++) {
        if (strcmp(s, yes[i]) == 0 || strcmp(s, no[i]) == 0) {
            *out = strcmp(s, yes[i]) == 0;
            return 0;
        }
    }
    return -EINVAL;
}

static void fmt_err(char *err, const char *where, const struct key *k, const char *fmt, ...)
    DSW_PRINTF(4, 5);
static void fmt_err(char *err, const char *where, const struct key *k, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (k)
        snprintf(err, DSW_CONF_ERR_MAX, "%s: %s.%s: %s", where, k->section, k->name, reason);
    else
        snprintf(err, DSW_CONF_ERR_MAX, "%s: %s", where, reason);
}

static void fmt_bound(enum type t, int64_t n, char *out, size_t len)
{
    struct unit {
        int64_t div;
        const char *unit;
    };
    static const struct unit dur[] = {{3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}},
                             size[] = {
                                 {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}, {1, ""}};
    if (t == T_DUR || t == T_SIZE) {
        const struct unit *u = t == T_DUR ? dur : size;
        for (size_t i = 0; i < 4; i++) {
            if (n % u[i].div == 0 && (n != 0 || u[i].div == (t == T_DUR ? 1000 : 1))) {
                snprintf(out, len, "%lld%s", (long long)(n / u[i].div), u[i].unit);
                return;
            }
        }
    }
    snprintf(out, len, "%lld", (long long)n);
}

static const char *unit_hint(enum type t)
{
    return t == T_DUR    ? " (a duration like 500ms, 30s, 5m, 1h)"
           : t == T_SIZE ? " (a size like 512, 64KiB, 1MiB)"
                         : "";
}

/* Store text as the value of key k in c. where names the source for errors. */
static int set_value(struct dsw_conf *c, const struct key *k, const char *v, const char *where,
                     char *err)
{
    char *field = (char *)c + k->off;
    int64_t n = 0;
    switch (k->type) {
    case T_STR:
        free(*(char **)field);
        *(char **)field = *v ? dsw_xstrdup(v) : NULL;
        return 0;
    case T_BOOL:
        if (parse_bool(v, (bool *)field)) {
            fmt_err(err, where, k, "'%s' is not a boolean (true/false, on/off)", v);
            return -EINVAL;
        }
        return 0;
    case T_CHOICE:
        for (int64_t i = 0; k->choices[i]; i++) {
            if (strcmp(v, k->choices[i]) == 0) {
                *(int64_t *)field = i;
                return 0;
            }
        }
        fmt_err(err, where, k, "'%s' is not one of the allowed values", v);
        return -EINVAL;
    case T_DUR:
    case T_SIZE:
    case T_INT: {
        char *end;
        int bad = k->type == T_DUR    ? dsw_conf_parse_duration(v, &n)
                  : k->type == T_SIZE ? dsw_conf_parse_size(v, &n)
                                      : (parse_int(v, &n, &end) || *end);
        if (bad) {
            fmt_err(err, where, k, "'%s' is not valid%s", v, unit_hint(k->type));
            return -EINVAL;
        }
        if (n < k->min || n > k->max) {
            char lo[32], hi[32];
            fmt_bound(k->type, k->min, lo, sizeof(lo));
            fmt_bound(k->type, k->max, hi, sizeof(hi));
            fmt_err(err, where, k, "'%s' is out of range (%s..%s)", v, lo, hi);
            return -EINVAL;
        }
        *(int64_t *)field = n;
        return 0;
    }
    }
    return -EINVAL;
}

static const struct key *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

void dsw_conf_defaults(struct dsw_conf *c)
{
    char err[DSW_CONF_ERR_MAX];
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++)
        if (keys[i].def && set_value(c, &keys[i], keys[i].def, "default", err))
            abort(); /* a bad default is a programming error caught by the unit tests */
}

/* runs.env.<NAME>: names as the shell allows them. */
static int valid_env_name(const char *s)
{
    if (!*s || isdigit((unsigned char)*s))
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

static void set_env(struct dsw_conf *c, const char *name, const char *value)
{
    for (size_t i = 0; i < c->runs.nenv; i++) {
        if (strcmp(c->runs.env[i].name, name) == 0) {
            free(c->runs.env[i].value);
            c->runs.env[i].value = dsw_xstrdup(value);
            return;
        }
    }
    c->runs.env = dsw_xrealloc(c->runs.env, (c->runs.nenv + 1) * sizeof(*c->runs.env));
    c->runs.env[c->runs.nenv].name = dsw_xstrdup(name);
    c->runs.env[c->runs.nenv].value = dsw_xstrdup(value);
    c->runs.nenv++;
}

/* ---- the file ---------------------------------------------------------------------------- */

struct parser {
    struct dsw_conf *c;
    const char *path;
    int line;
    char section[32];
    unsigned char seen[DSW_ARRAY_LEN(keys)];
    char **env_seen;
    size_t nenv_seen;
    char *err;
};

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* A value: bare (a " #" starts a comment) or double-quoted with \" and \\ escapes. */
static int unquote(char *v, char **out)
{
    if (*v != '"') {
        for (char *p = v; *p; p++) {
            if (*p == '#' && p > v && isspace((unsigned char)p[-1])) {
                *p = '\0';
                break;
            }
        }
        *out = trim(v);
        return 0;
    }
    char *w = v, *r = v + 1;
    for (; *r && *r != '"'; r++) {
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
            r++;
        *w++ = *r;
    }
    if (*r != '"')
        return -EINVAL;
    r = trim(r + 1);
    if (*r && *r != '#')
        return -EINVAL;
    *w = '\0';
    *out = v;
    return 0;
}

static int parse_env_assignment(struct parser *p, const char *name, const char *value,
                                const char *where)
{
    if (!valid_env_name(name)) {
        snprintf(p->err, DSW_CONF_ERR_MAX, "%s: runs.env.%s: not a valid variable name", where,
                 name);
        return -EINVAL;
    }
    for (size_t i = 0; i < p->nenv_seen; i++) {
        if (strcmp(p->env_seen[i], name) == 0) {
            snprintf(p->err, DSW_CONF_ERR_MAX, "%s: runs.env.%s: set twice", where, name);
            return -EINVAL;
        }
    }
    p->env_seen = dsw_xrealloc(p->env_seen, (p->nenv_seen + 1) * sizeof(char *));
    p->env_seen[p->nenv_seen++] = dsw_xstrdup(name);
    set_env(p->c, name, value);
    return 0;
}

/* "[section]": s starts with '['. */
static int parse_section(struct parser *p, char *s, const char *where)
{
    char *e = strchr(s, ']');
    if (!e || *trim(e + 1) || e - s - 1 <= 0 || (size_t)(e - s - 1) >= sizeof(p->section)) {
        fmt_err(p->err, where, NULL, "malformed section header");
        return -EINVAL;
    }
    *e = '\0';
    dsw_strlcpy(p->section, trim(s + 1), sizeof(p->section));
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].section, p->section) == 0)
            return 0;
    fmt_err(p->err, where, NULL, "unknown section [%s]", p->section);
    return -EINVAL;
}

static int parse_line(struct parser *p, char *line)
{
    char where[300];
    snprintf(where, sizeof(where), "%s:%d", p->path, p->line);
    char *s = trim(line);
    if (!*s || *s == '#' || *s == ';')
        return 0;
    if (*s == '[')
        return parse_section(p, s, where);
    char *eq = strchr(s, '=');
    if (!eq) {
        fmt_err(p->err, where, NULL, "expected 'key = value'");
        return -EINVAL;
    }
    *eq = '\0';
    char *name = trim(s), *value;
    if (!p->section[0]) {
        snprintf(p->err, DSW_CONF_ERR_MAX, "%s: %s: key outside of a [section]", where, name);
        return -EINVAL;
    }
    char *raw = eq + 1;
    while (isspace((unsigned char)*raw))
        raw++;
    if (unquote(raw, &value)) {
        snprintf(p->err, DSW_CONF_ERR_MAX, "%s: %s.%s: unterminated or malformed quoted value",
                 where, p->section, name);
        return -EINVAL;
    }
    if (strcmp(p->section, "runs") == 0 && strncmp(name, "env.", 4) == 0)
        return parse_env_assignment(p, name + 4, value, where);
    const struct key *k = find_key(p->section, name);
    if (!k) {
        snprintf(p->err, DSW_CONF_ERR_MAX, "%s: %s.%s: unknown key", where, p->section, name);
        return -EINVAL;
    }
    size_t idx = (size_t)(k - keys);
    if (p->seen[idx]++) {
        fmt_err(p->err, where, k, "set twice");
        return -EINVAL;
    }
    return set_value(p->c, k, value, where, p->err);
}

static int check_mode(const char *path, const struct stat *st, mode_t forbidden, const char *what,
                      char *err)
{
    if (!(st->st_mode & forbidden))
        return 0;
    snprintf(err, DSW_CONF_ERR_MAX, "%s: %s (mode %04o); chmod %s it", path, what,
             (unsigned)(st->st_mode & 07777), forbidden & 044 ? "go-rwx" : "go-w");
    return -EPERM;
}

int dsw_conf_check_private(const char *path, char err[DSW_CONF_ERR_MAX])
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        snprintf(err, DSW_CONF_ERR_MAX, "%s: %s", path, strerror(e));
        return -e;
    }
    return check_mode(path, &st, S_IRWXG | S_IRWXO,
                      "holds a secret but is accessible by group "
                      "or others",
                      err);
}

static int read_file(const char *path, char **out, struct stat *st, char *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, st) != 0) {
        int e = errno;
        snprintf(err, DSW_CONF_ERR_MAX, "%s: cannot read: %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        return -e;
    }
    if (!S_ISREG(st->st_mode) || st->st_size > DSW_CONF_FILE_MAX) {
        snprintf(err, DSW_CONF_ERR_MAX, "%s: not a regular file of at most 1 MiB", path);
        close(fd);
        return -EINVAL;
    }
    char *buf = dsw_xmalloc((size_t)st->st_size + 1);
    ssize_t n = read(fd, buf, (size_t)st->st_size);
    close(fd);
    if (n < 0 || n != st->st_size) {
        snprintf(err, DSW_CONF_ERR_MAX, "%s: short read", path);
        free(buf);
        return -EIO;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', (size_t)n)) {
        snprintf(err, DSW_CONF_ERR_MAX, "%s: contains a NUL byte", path);
        free(buf);
        return -EINVAL;
    }
    *out = buf;
    return 0;
}

static int parse_file(struct parser *p)
{
    char *text = NULL;
    struct stat st;
    int rc = read_file(p->path, &text, &st, p->err);
    if (rc)
        return rc;
    /* Anyone who can write the config chooses the command the daemon runs. */
    rc = check_mode(p->path, &st, S_IWGRP | S_IWOTH, "is writable by group or others", p->err);
    char *save = NULL;
    for (char *line = text; !rc && line; line = save) {
        save = strchr(line, '\n');
        if (save)
            *save++ = '\0';
        p->line++;
        rc = parse_line(p, line);
    }
    /* Values given to the child may be secrets (e.g. DAGSTER_PG_PASSWORD). */
    if (!rc && p->c->runs.nenv)
        rc = check_mode(p->path, &st, S_IRWXG | S_IRWXO,
                        "has runs.env values but is readable by group or others", p->err);
    free(text);
    return rc;
}

/* ---- the environment --------------------------------------------------------------------- */

static const char *env_get(char *const envp[], const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i] + n + 1;
    return NULL;
}

static void env_name(const struct key *k, char *out, size_t n)
{
    snprintf(out, n, "DSW_%s_%s", k->section, k->name);
    for (char *q = out; *q; q++)
        *q = (char)toupper((unsigned char)*q);
}

static int apply_compat(struct parser *p, char *const envp[])
{
    static const struct {
        const char *var, *section, *name;
    } compat[] = {
        {"DAGSTER_TASKIQ_SQS_QUEUE_URL", "queue", "url"},
        {"DAGSTER_TASKIQ_SQS_ENDPOINT_URL", "queue", "endpoint"},
        {"AWS_DEFAULT_REGION", "queue", "region"},
        {"AWS_REGION", "queue", "region"}, /* botocore: AWS_REGION wins over the default */
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(compat); i++) {
        const char *v = env_get(envp, compat[i].var);
        const struct key *k = find_key(compat[i].section, compat[i].name);
        if (!v || !*v || p->seen[k - keys])
            continue;
        char where[80];
        snprintf(where, sizeof(where), "env:%s", compat[i].var);
        int rc = set_value(p->c, k, v, where, p->err);
        if (rc)
            return rc;
    }
    return 0;
}

static void add_warning(struct dsw_conf *c, const char *fmt, ...) DSW_PRINTF(2, 3);
static void add_warning(struct dsw_conf *c, const char *fmt, ...)
{
    char line[DSW_CONF_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->warnings = dsw_xrealloc(c->warnings, (c->nwarnings + 1) * sizeof(*c->warnings));
    c->warnings[c->nwarnings++] = dsw_xstrdup(line);
}

/* Edit distance with adjacent transpositions (optimal string alignment), capped at cap + 1:
 * how far a misspelt variable name is from a real one. */
static size_t name_distance(const char *a, const char *b, size_t cap)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 95 || lb > 95 || (la > lb ? la - lb : lb - la) > cap)
        return cap + 1;
    size_t d[96][96];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            v = DSW_MIN(v, d[i - 1][j] + 1);
            v = DSW_MIN(v, d[i][j - 1] + 1);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                v = DSW_MIN(v, d[i - 2][j - 2] + 1);
            d[i][j] = v;
        }
    }
    return DSW_MIN(d[la][lb], cap + 1);
}

/* DSW_* variables that are ours but no key: the fault-injection and trampoline knobs of test
 * builds. DSW_RUNS_ENV_<NAME> is runs.env. */
static int env_is_other(const char *name)
{
    static const char *const names[] = {"DSW_FAILPOINTS", "DSW_TRAMPOLINE"};
    static const char prefix[] = "DSW_RUNS_ENV_";
    for (size_t i = 0; i < DSW_ARRAY_LEN(names); i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return strncmp(name, prefix, sizeof(prefix) - 1) == 0 && name[sizeof(prefix) - 1];
}

/* A DSW_* variable that names no key is most likely a misspelt one, which would otherwise be
 * ignored in silence. Warned about when it looks like a key: DSW_<a section>_..., or within a
 * small edit distance of a key's name (DSW_QEUE_URL). Other DSW_* names (a test harness's
 * DSW_BIN, DSW_SOURCE_DIR, ...) are left alone. */
static void warn_unknown_env(struct dsw_conf *c, char *const envp[])
{
    enum { NEAR = 3, FAR_SECTION = 2 };
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *eq = strchr(envp[i], '=');
        size_t len = eq ? (size_t)(eq - envp[i]) : strlen(envp[i]);
        if (strncmp(envp[i], "DSW_", 4) || len >= 96)
            continue;
        char name[96], known[96], best[96] = "";
        memcpy(name, envp[i], len);
        name[len] = '\0';
        if (env_is_other(name))
            continue;
        size_t best_d = NEAR + 1;
        int is_key = 0, in_section = 0;
        for (size_t k = 0; k < DSW_ARRAY_LEN(keys) && !is_key; k++) {
            env_name(&keys[k], known, sizeof(known));
            is_key = strcmp(name, known) == 0;
            size_t slen = strlen(keys[k].section);
            if (strncasecmp(name + 4, keys[k].section, slen) == 0 && name[4 + slen] == '_')
                in_section = 1;
            size_t d = name_distance(name, known, NEAR);
            if (d < best_d) {
                best_d = d;
                dsw_strlcpy(best, known, sizeof(best));
            }
        }
        if (is_key || (!in_section && best_d > FAR_SECTION))
            continue;
        if (best[0])
            add_warning(c, "env:%s: not a configuration variable, ignored; did you mean %s?", name,
                        best);
        else
            add_warning(c, "env:%s: not a configuration variable, ignored", name);
    }
}

static int apply_env(struct parser *p, char *const envp[])
{
    int rc = apply_compat(p, envp);
    for (size_t i = 0; !rc && i < DSW_ARRAY_LEN(keys); i++) {
        char name[96], where[100];
        env_name(&keys[i], name, sizeof(name));
        const char *v = env_get(envp, name);
        snprintf(where, sizeof(where), "env:%s", name);
        if (v)
            rc = set_value(p->c, &keys[i], v, where, p->err);
    }
    static const char prefix[] = "DSW_RUNS_ENV_";
    for (size_t i = 0; !rc && envp && envp[i]; i++) {
        if (strncmp(envp[i], prefix, sizeof(prefix) - 1))
            continue;
        const char *eq = strchr(envp[i], '=');
        char *name = dsw_xstrndup(envp[i] + sizeof(prefix) - 1,
                                  (size_t)(eq - envp[i]) - (sizeof(prefix) - 1));
        if (!valid_env_name(name)) {
            snprintf(p->err, DSW_CONF_ERR_MAX, "env:%.*s: runs.env.%s: not a valid variable name",
                     (int)(eq - envp[i]), envp[i], name);
            rc = -EINVAL;
        } else
            set_env(p->c, name, eq + 1);
        free(name);
    }
    if (!rc)
        warn_unknown_env(p->c, envp);
    return rc;
}

/* ---- cross-key rules ------------------------------------------------------------------- */

/* Words of s split on blanks (and commas for lists). */
static size_t count_words(const char *s, const char *seps)
{
    size_t n = 0;
    for (const char *p = s ? s : ""; *p;) {
        p += strspn(p, seps);
        if (*p)
            n++;
        p += strcspn(p, seps);
    }
    return n;
}

static int validate_caps(const struct dsw_conf *c, const char *where, char *err)
{
    if (count_words(c->runs.env_passthrough, " \t,") > DSW_CONF_PASSTHROUGH_MAX) {
        fmt_err(err, where, find_key("runs", "env_passthrough"), "has more than %d names",
                DSW_CONF_PASSTHROUGH_MAX);
        return -EINVAL;
    }
    if (count_words(c->runs.command, " \t") > DSW_CONF_COMMAND_WORDS_MAX) {
        fmt_err(err, where, find_key("runs", "command"), "has more than %d words",
                DSW_CONF_COMMAND_WORDS_MAX);
        return -EINVAL;
    }
    return 0;
}

static int validate(struct dsw_conf *c, const char *where, char *err)
{
    if (validate_caps(c, where, err))
        return -EINVAL;
    if (c->queue.heartbeat_ms >= c->queue.visibility_timeout_ms) {
        fmt_err(err, where, find_key("queue", "heartbeat"),
                "must be shorter than queue.visibility_timeout");
        return -EINVAL;
    }
    if (c->claims.heartbeat_ms * 2 > c->claims.ttl_ms) {
        fmt_err(err, where, find_key("claims", "heartbeat"), "must be at most half of claims.ttl");
        return -EINVAL;
    }
    if (c->postgres.conninfo &&
        (strstr(c->postgres.conninfo, "password") || strstr(c->postgres.conninfo, "PASSWORD"))) {
        fmt_err(err, where, find_key("postgres", "conninfo"),
                "must not hold a password; use PGPASSWORD or a password file (PGPASSFILE, "
                "$CREDENTIALS_DIRECTORY/pgpass or " DSW_CONF_PGPASS_DEFAULT_PATH ")");
        return -EINVAL;
    }
    if (c->postgres.conninfo && strstr(c->postgres.conninfo, "://")) {
        const char *at = strchr(c->postgres.conninfo, '@');
        const char *colon = strchr(strstr(c->postgres.conninfo, "://") + 3, ':');
        if (at && colon && colon < at) {
            fmt_err(err, where, find_key("postgres", "conninfo"),
                    "must not hold a password in the URI; use PGPASSWORD or a password file "
                    "(PGPASSFILE, $CREDENTIALS_DIRECTORY/pgpass or " DSW_CONF_PGPASS_DEFAULT_PATH
                    ")");
            return -EINVAL;
        }
    }
    if (c->runs.warm > 0 && !c->runs.python) {
        fmt_err(err, where, find_key("runs", "python"), "is required when runs.warm > 0");
        return -EINVAL;
    }
    if (c->http.listen && strcmp(c->http.listen, "off") && !strrchr(c->http.listen, ':')) {
        fmt_err(err, where, find_key("http", "listen"), "expected HOST:PORT or off");
        return -EINVAL;
    }
    if (c->runs.max_concurrent == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->runs.max_concurrent = n > 0 ? n : 1;
    }
    if (c->runs.step_slots >= c->runs.max_concurrent) {
        fmt_err(err, where, find_key("runs", "step_slots"),
                "must be below runs.max_concurrent (run workers need a slot)");
        return -EINVAL;
    }
    return 0;
}

static int env_allowed(const char *patterns, const char *name)
{
    char *copy = dsw_xstrdup(patterns ? patterns : ""), *save = NULL;
    int ok = 0;
    for (char *t = strtok_r(copy, " \t,", &save); t && !ok; t = strtok_r(NULL, " \t,", &save)) {
        size_t n = strlen(t);
        ok = t[n - 1] == '*' ? strncmp(name, t, n - 1) == 0 : strcmp(name, t) == 0;
    }
    free(copy);
    return ok;
}

const char *dsw_conf_pgpass_path(char *const envp[], const char *fallback, char *buf, size_t n)
{
    const char *passfile = env_get(envp, "PGPASSFILE"),
               *creds = env_get(envp, "CREDENTIALS_DIRECTORY");
    if (passfile && *passfile)
        return passfile;
    if (creds && *creds) {
        snprintf(buf, n, "%s/pgpass", creds);
        if (access(buf, F_OK) == 0)
            return buf;
    }
    if (fallback && access(fallback, F_OK) == 0) {
        dsw_strlcpy(buf, fallback, n);
        return buf;
    }
    return NULL;
}

static int require_pgpass(char *const envp[], char *err)
{
    char path[4096];
    const char *passfile =
        dsw_conf_pgpass_path(envp, DSW_CONF_PGPASS_DEFAULT_PATH, path, sizeof(path));
    if (!passfile || access(passfile, F_OK) != 0)
        return 0;
    /* systemd's credential directory is already private; the file itself must be too. */
    return dsw_conf_check_private(passfile, err);
}

int dsw_conf_require(const struct dsw_conf *c, unsigned needs, char *const envp[],
                     char err[DSW_CONF_ERR_MAX])
{
    const char *where = c->path ? c->path : "env";
    char region[64];
    err[0] = '\0';
    if ((needs & DSW_CONF_NEED_QUEUE) && !c->queue.url) {
        fmt_err(err, where, find_key("queue", "url"), "is required (or DSW_QUEUE_URL)");
        return -EINVAL;
    }
    if ((needs & DSW_CONF_NEED_QUEUE) && !dsw_conf_region(c, region, sizeof(region))) {
        fmt_err(err, where, find_key("queue", "region"),
                "cannot be derived from the queue URL; set it, or AWS_REGION");
        return -EINVAL;
    }
    if ((needs & DSW_CONF_NEED_DB) && !c->postgres.conninfo) {
        fmt_err(err, where, find_key("postgres", "conninfo"),
                "is required (or DSW_POSTGRES_CONNINFO)");
        return -EINVAL;
    }
    if ((needs & DSW_CONF_NEED_DB) && require_pgpass(envp, err))
        return -EPERM;
    if ((needs & DSW_CONF_NEED_RUNS) && c->runs.instance_ref == DSW_INSTANCE_REF_STRIP &&
        !c->runs.dagster_home &&
        !(env_get(envp, "DAGSTER_HOME") && env_allowed(c->runs.env_passthrough, "DAGSTER_HOME"))) {
        fmt_err(err, where, find_key("runs", "dagster_home"),
                "is required with runs.instance_ref = strip (the child finds its instance "
                "through DAGSTER_HOME); set it, or pass DAGSTER_HOME through");
        return -EINVAL;
    }
    return 0;
}

int dsw_conf_load(struct dsw_conf *c, const char *path, char *const envp[],
                  char err[DSW_CONF_ERR_MAX])
{
    struct parser p = {.c = c, .path = path, .err = err};
    err[0] = '\0';
    dsw_conf_defaults(c);
    int rc = path ? parse_file(&p) : 0;
    if (!rc)
        rc = apply_env(&p, envp);
    if (!rc)
        rc = validate(c, path ? path : "env", err);
    if (!rc && path)
        c->path = dsw_xstrdup(path);
    for (size_t i = 0; i < p.nenv_seen; i++)
        free(p.env_seen[i]);
    free(p.env_seen);
    if (rc)
        dsw_conf_free(c);
    return rc;
}

/* ---- printing ---------------------------------------------------------------------------- */

static void value_text(const struct dsw_conf *c, const struct key *k, char *out, size_t n)
{
    const char *field = (const char *)c + k->off;
    int64_t v = k->type == T_STR || k->type == T_BOOL ? 0 : *(const int64_t *)field;
    switch (k->type) {
    case T_STR:
        snprintf(out, n, "%s", *(char *const *)field ? *(char *const *)field : "");
        break;
    case T_BOOL:
        snprintf(out, n, "%s", *(const bool *)field ? "true" : "false");
        break;
    case T_CHOICE:
        snprintf(out, n, "%s", k->choices[v]);
        break;
    case T_DUR:
        if (v % SEC)
            snprintf(out, n, "%lldms", (long long)v);
        else
            snprintf(out, n, "%llds", (long long)(v / SEC));
        break;
    case T_SIZE:
        if (v % 1024)
            snprintf(out, n, "%lld", (long long)v);
        else
            snprintf(out, n, "%lldKiB", (long long)(v / 1024));
        break;
    case T_INT:
        snprintf(out, n, "%lld", (long long)v);
        break;
    }
}

void dsw_conf_visit(const struct dsw_conf *c, dsw_conf_visit_cb cb, void *arg)
{
    char v[1024];
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++) {
        value_text(c, &keys[i], v, sizeof(v));
        cb(keys[i].section, keys[i].name, v, arg);
    }
    for (size_t i = 0; i < c->runs.nenv; i++) {
        snprintf(v, sizeof(v), "env.%s", c->runs.env[i].name);
        cb("runs", v, "(set)", arg);
    }
}

const char *dsw_conf_region(const struct dsw_conf *c, char *buf, size_t n)
{
    if (c->queue.region)
        return c->queue.region;
    const char *urls[] = {c->queue.endpoint, c->queue.url};
    for (size_t i = 0; i < DSW_ARRAY_LEN(urls); i++) {
        const char *u = urls[i] ? strstr(urls[i], "://sqs.") : NULL;
        if (!u)
            continue;
        u += 7;
        const char *dot = strchr(u, '.');
        if (dot && strncmp(dot, ".amazonaws.com", 14) == 0 && (size_t)(dot - u) < n) {
            memcpy(buf, u, (size_t)(dot - u));
            buf[dot - u] = '\0';
            return buf;
        }
    }
    return NULL;
}

void dsw_conf_free(struct dsw_conf *c)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(keys); i++) {
        if (keys[i].type == T_STR) {
            char **f = (char **)((char *)c + keys[i].off);
            free(*f);
            *f = NULL;
        }
    }
    for (size_t i = 0; i < c->runs.nenv; i++) {
        free(c->runs.env[i].name);
        free(c->runs.env[i].value);
    }
    free(c->runs.env);
    c->runs.env = NULL;
    c->runs.nenv = 0;
    for (size_t i = 0; i < c->nwarnings; i++)
        free(c->warnings[i]);
    free(c->warnings);
    c->warnings = NULL;
    c->nwarnings = 0;
    free(c->path);
    c->path = NULL;
}
