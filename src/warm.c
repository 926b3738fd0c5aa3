/* warm: up to n ready warm runners on the loop. Each runner is a dsw_proc (stdin on a pipe) in a
 * list, oldest first, with a state; one timer serves every deadline (a runner's readiness, its
 * age, the end of a backoff, the refill after a take). A taken runner leaves the list at once:
 * its dsw_proc then belongs to the caller, adopted with the caller's hooks. */
#include "dsw/warm.h"

#include "dsw/list.h"
#include "dsw/log.h"
#include "dsw/metrics.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RETIRE_GRACE_MS 2000 /* SIGTERM to SIGKILL for runners we retire */
#define LAST_ERR_MAX    200

enum rstate {
    R_STARTING, /* importing */
    R_READY,    /* said the token, waits for a request */
    R_RETIRING, /* we told it to go (age, recycle): its exit is no failure */
    R_FAILED,   /* not ready in time, or found dead: its exit counts as a failure */
    R_GONE,     /* exited; its proc is closing */
};

struct runner {
    struct dsw_list link; /* in pool->runners */
    struct dsw_warm *pool;
    struct dsw_proc *proc;
    enum rstate state;
    int pid, closing;
    uint64_t started;                /* uv_now at spawn */
    char last_err[LAST_ERR_MAX + 1]; /* its last stderr line, for the failure log */
};

struct dsw_warm {
    uv_loop_t *loop;
    uv_timer_t timer;
    unsigned n, nstarting, nready, live; /* live: runner structs not yet freed */
    unsigned limit;                      /* dsw_warm_set_limit: free slots (UINT_MAX: none) */
    char **argv, **env, *cwd, *trampoline, *python;
    int direct;
    size_t line_max;
    unsigned lines_per_sec;
    uint64_t max_age_ms, ready_ms, backoff_ms, backoff_max_ms;
    struct dsw_list runners; /* oldest first */
    unsigned fails;          /* consecutive failures since a runner was last ready */
    uint64_t retry_at;       /* uv_now before which no runner is started (backoff) */
    int closing, timer_closed;
    dsw_warm_close_cb close_cb;
    void *close_arg;
};

#define foreach_runner(r, w)                                                                       \
    for (struct runner *r = dsw_list_entry((w)->runners.next, struct runner, link);                \
         &r->link != &(w)->runners; r = dsw_list_entry(r->link.next, struct runner, link))

static void on_timer(uv_timer_t *t);

/* How many runners to have starting or ready: n, but never more than the free slots. */
static unsigned target(const struct dsw_warm *w)
{
    return DSW_MIN(w->n, w->limit);
}

static void set_gauge(struct dsw_warm *w)
{
    dsw_metrics_set(DSW_METRIC_WARM_READY, (double)w->nready);
}

static void unlink_runner(struct dsw_warm *w, struct runner *r)
{
    dsw_list_remove(&r->link);
    free(r);
    w->live--;
}

static void maybe_finish(struct dsw_warm *w)
{
    if (!w->closing || w->live > 0 || !w->timer_closed)
        return;
    dsw_warm_close_cb cb = w->close_cb;
    void *arg = w->close_arg;
    for (char **v = w->argv; *v; v++)
        free(*v);
    free(w->argv);
    dsw_proc_env_free(w->env);
    free(w->cwd);
    free(w->trampoline);
    free(w->python);
    free(w);
    if (cb)
        cb(arg);
}

/* A runner left the ready/starting set: take it out of the counts. */
static void leave(struct dsw_warm *w, struct runner *r, enum rstate to)
{
    if (r->state == R_STARTING)
        w->nstarting--;
    else if (r->state == R_READY)
        w->nready--;
    r->state = to;
    set_gauge(w);
}

static void failed(struct dsw_warm *w)
{
    dsw_metrics_inc(DSW_METRIC_WARM_FAILURES, NULL, 1);
    unsigned shift = DSW_MIN(w->fails, 16u);
    w->fails++;
    w->retry_at = uv_now(w->loop) + DSW_MIN(w->backoff_ms << shift, w->backoff_max_ms);
}

/* Schedule the timer for the earliest deadline. */
static void arm(struct dsw_warm *w)
{
    uint64_t now = uv_now(w->loop), next = UINT64_MAX;
    if (w->closing)
        return;
    foreach_runner(r, w)
    {
        if (r->state == R_STARTING)
            next = DSW_MIN(next, r->started + w->ready_ms);
        else if (r->state == R_READY && w->max_age_ms)
            next = DSW_MIN(next, r->started + w->max_age_ms);
    }
    if (w->nstarting + w->nready < target(w))
        next = DSW_MIN(next, w->retry_at);
    if (next == UINT64_MAX)
        uv_timer_stop(&w->timer);
    else
        uv_timer_start(&w->timer, on_timer, next > now ? next - now : 0, 0);
}

static void on_runner_closed(void *arg)
{
    struct runner *r = arg;
    struct dsw_warm *w = r->pool;
    unlink_runner(w, r);
    maybe_finish(w);
}

static void close_runner(struct runner *r)
{
    if (r->closing)
        return;
    r->closing = 1;
    dsw_proc_close(r->proc, on_runner_closed, r);
}

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Output before the hand-over: the ready token, else import noise (debug). */
static void on_runner_line(struct dsw_proc *p, enum dsw_proc_stream s, const char *line, size_t len,
                           int truncated, void *arg)
{
    struct runner *r = arg;
    struct dsw_warm *w = r->pool;
    if (s == DSW_PROC_STDOUT && r->state == R_STARTING && !truncated &&
        ends_with(line, len, DSW_WARM_READY_TOKEN)) {
        w->nstarting--;
        w->nready++;
        r->state = R_READY;
        w->fails = 0;
        w->retry_at = 0;
        set_gauge(w);
        dsw_debug("warm: runner %d ready in %llu ms", r->pid,
                  (unsigned long long)(uv_now(w->loop) - r->started));
        arm(w);
        return;
    }
    if (s == DSW_PROC_STDERR)
        dsw_strlcpy(r->last_err, line, sizeof(r->last_err));
    dsw_debug("warm: runner %d: %s", r->pid, line);
}

static void on_runner_exit(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct runner *r = arg;
    struct dsw_warm *w = r->pool;
    /* R_FAILED was counted when it was found out; R_RETIRING is no failure. */
    int bad = r->state == R_STARTING || r->state == R_READY;
    leave(w, r, R_GONE);
    if (bad && !w->closing) {
        failed(w);
        dsw_warn("warm: runner %d %s %d before it was used%s%s; next start in %llu ms", st->pid,
                 st->term_signal ? "killed by signal" : "exited with code",
                 st->term_signal ? st->term_signal : st->exit_code, r->last_err[0] ? ": " : "",
                 r->last_err, (unsigned long long)(w->retry_at - uv_now(w->loop)));
    }
    close_runner(r);
    arm(w);
}

static int spawn_one(struct dsw_warm *w)
{
    struct runner *r = dsw_xcalloc(1, sizeof(*r));
    r->pool = w;
    struct dsw_proc_opts o = {
        .argv = (const char *const *)w->argv,
        .env = (const char *const *)w->env,
        .cwd = w->cwd,
        .trampoline = w->trampoline,
        .direct = w->direct,
        .kill_grace_ms = RETIRE_GRACE_MS,
        .line_max = w->line_max,
        .lines_per_sec = w->lines_per_sec,
        .on_line = on_runner_line,
        .on_exit = on_runner_exit,
        .arg = r,
        .stdin_pipe = 1,
    };
    int rc = dsw_proc_spawn(w->loop, &o, &r->proc);
    if (rc != 0) {
        free(r);
        failed(w);
        dsw_warn("warm: cannot start a runner (%s); next try in %llu ms", uv_strerror(rc),
                 (unsigned long long)(w->retry_at - uv_now(w->loop)));
        return rc;
    }
    r->pid = dsw_proc_pid(r->proc);
    r->started = uv_now(w->loop);
    dsw_list_push_back(&w->runners, &r->link);
    w->live++;
    w->nstarting++;
    return 0;
}

static void refill(struct dsw_warm *w)
{
    while (!w->closing && w->nstarting + w->nready < target(w) && uv_now(w->loop) >= w->retry_at)
        if (spawn_one(w) != 0)
            break;
}

/* Stop a runner we no longer want (R_RETIRING) or that failed (R_FAILED: counted now). */
static void retire(struct dsw_warm *w, struct runner *r, enum rstate to)
{
    leave(w, r, to);
    if (to == R_FAILED)
        failed(w);
    dsw_proc_terminate(r->proc, DSW_PROC_TERMINATE);
}

static void on_timer(uv_timer_t *t)
{
    struct dsw_warm *w = t->data;
    uint64_t now = uv_now(w->loop);
    foreach_runner(r, w)
    {
        if (r->state == R_STARTING && now >= r->started + w->ready_ms) {
            retire(w, r, R_FAILED);
            dsw_warn("warm: runner %d not ready after %llu ms: killed; next start in %llu ms%s%s",
                     r->pid, (unsigned long long)w->ready_ms,
                     (unsigned long long)(w->retry_at - now), r->last_err[0] ? "; it said: " : "",
                     r->last_err);
        } else if (r->state == R_READY && w->max_age_ms && now >= r->started + w->max_age_ms) {
            dsw_debug("warm: runner %d recycled (max age)", r->pid);
            retire(w, r, R_RETIRING);
        }
    }
    refill(w);
    arm(w);
}

/* ---- the API ------------------------------------------------------------------------------ */

static char **strv_dup(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = dsw_xcalloc(n + 1, sizeof(*out));
    for (size_t i = 0; i < n; i++)
        out[i] = dsw_xstrdup(v[i]);
    return out;
}

static char *dup_or_null(const char *s)
{
    return s ? dsw_xstrdup(s) : NULL;
}

/* Where the runner is looked for, relative to our binary's directory, in order: an install
 * (libexec/dagster-sqs-worker/), a build directory inside the source tree (build/ beside
 * libexec/), and any build directory (CMake copies the runner next to the binary). The one list
 * both the search and the messages use. */
static const char *const runner_rel[] = {"/../libexec/dagster-sqs-worker/" DSW_WARM_RUNNER_NAME,
                                         "/../libexec/" DSW_WARM_RUNNER_NAME,
                                         "/" DSW_WARM_RUNNER_NAME};

/* Our binary's directory, or "" when /proc/self/exe cannot be read. */
static void exe_dir(char *dir, size_t n)
{
    ssize_t len = readlink("/proc/self/exe", dir, n - 1);
    dir[len > 0 ? len : 0] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
}

int dsw_warm_runner_path(char **out)
{
    char exe[PATH_MAX];
    *out = NULL;
    exe_dir(exe, sizeof(exe));
    if (!exe[0])
        return -ENOENT;
    for (size_t i = 0; i < DSW_ARRAY_LEN(runner_rel); i++) {
        char *cand = dsw_xasprintf("%s%s", exe, runner_rel[i]);
        *out = realpath(cand, NULL);
        free(cand);
        if (*out && access(*out, R_OK) == 0)
            return 0;
        free(*out);
        *out = NULL;
    }
    return -ENOENT;
}

void dsw_warm_runner_places(char *buf, size_t n)
{
    char exe[PATH_MAX];
    size_t used = 0;
    exe_dir(exe, sizeof(exe));
    buf[0] = '\0';
    for (size_t i = 0; i < DSW_ARRAY_LEN(runner_rel) && used < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == DSW_ARRAY_LEN(runner_rel) ? " and " : ", ";
        int k = snprintf(buf + used, n - used, "%s%s%s", sep, exe[0] ? exe : "<binary dir>",
                         runner_rel[i]);
        if (k < 0)
            break;
        used += (size_t)k;
    }
}

/* An interpreter as execvp finds it: a path with a '/' as is, else the first executable match in
 * $PATH. 0 with the file in found, or -errno of the (last) candidate. */
static int find_program(const char *prog, char *found, size_t n)
{
    if (strchr(prog, '/')) {
        dsw_strlcpy(found, prog, n);
        return access(prog, X_OK) == 0 ? 0 : -errno;
    }
    const char *path = getenv("PATH");
    int rc = -ENOENT;
    for (const char *p = path ? path : "/usr/bin:/bin"; p;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        snprintf(found, n, "%.*s/%s", (int)len, len ? p : ".", prog);
        if (access(found, X_OK) == 0)
            return 0;
        if (errno != ENOENT)
            rc = -errno;
        p = colon ? colon + 1 : NULL;
    }
    snprintf(found, n, "%s", prog);
    return rc;
}

int dsw_warm_check(const char *python, const char *runner, char *err, size_t n)
{
    char found[PATH_MAX];
    struct stat st;
    err[0] = '\0';
    if (!python || !python[0]) {
        snprintf(err, n, "runs.python: is required when runs.warm > 0");
        return -EINVAL;
    }
    int rc = find_program(python, found, sizeof(found));
    if (rc == 0 && (stat(found, &st) != 0 || !S_ISREG(st.st_mode)))
        rc = -EACCES;
    if (rc) {
        snprintf(err, n, "runs.python: %s %s (%s)", python,
                 strchr(python, '/') ? "is not an executable file" : "is not found in $PATH",
                 strerror(-rc));
        return rc;
    }
    if (runner) {
        if (access(runner, R_OK) != 0 || stat(runner, &st) != 0)
            rc = -errno;
        else if (!S_ISREG(st.st_mode))
            rc = -EISDIR;
        if (rc) {
            snprintf(err, n, "runs.warm_runner: %s is not a readable file (%s)", runner,
                     strerror(-rc));
            return rc;
        }
        return 0;
    }
    char *p = NULL;
    if (dsw_warm_runner_path(&p) != 0) {
        char places[3 * PATH_MAX];
        dsw_warm_runner_places(places, sizeof(places));
        snprintf(err, n,
                 "runs.warm: the warm runner %s is not found (looked for %s); set "
                 "runs.warm_runner",
                 DSW_WARM_RUNNER_NAME, places);
        return -ENOENT;
    }
    free(p);
    return 0;
}

const char *dsw_warm_strerror(int rc, const char *python, const char *runner, char *buf, size_t n)
{
    if (dsw_warm_check(python, runner, buf, n) != 0)
        return buf;
    snprintf(buf, n, "%s", strerror(-rc));
    return buf;
}

/* [python, runner, --imports, imports, --entry, entry]: nothing secret, so argv is fine. */
static int build_argv(struct dsw_warm *w, const struct dsw_warm_opts *o)
{
    char *runner = NULL;
    const char *entry = o->entry ? o->entry : DSW_WARM_DEFAULT_ENTRY;
    if (o->n > 0 && (!o->python || !o->python[0] || !strchr(entry, ':')))
        return -EINVAL;
    if (o->runner)
        runner = dsw_xstrdup(o->runner);
    else if (o->n > 0 && dsw_warm_runner_path(&runner) != 0)
        return -ENOENT;
    if (o->n > 0 && access(runner, R_OK) != 0) {
        free(runner);
        return -ENOENT;
    }
    const char *v[] = {o->python ? o->python : "python3",
                       runner ? runner : DSW_WARM_RUNNER_NAME,
                       "--imports",
                       o->imports ? o->imports : DSW_WARM_DEFAULT_IMPORTS,
                       "--entry",
                       entry,
                       NULL};
    w->argv = strv_dup(v);
    free(runner);
    return 0;
}

int dsw_warm_init(uv_loop_t *loop, const struct dsw_warm_opts *o, struct dsw_warm **out)
{
    *out = NULL;
    struct dsw_warm *w = dsw_xcalloc(1, sizeof(*w));
    dsw_list_init(&w->runners);
    int rc = build_argv(w, o);
    if (rc != 0) {
        free(w);
        return rc;
    }
    w->loop = loop;
    w->n = o->n;
    w->limit = o->limit ? o->limit : UINT_MAX;
    w->env = strv_dup(o->env);
    w->cwd = dup_or_null(o->cwd);
    w->trampoline = dup_or_null(o->trampoline);
    w->python = dup_or_null(o->python);
    w->direct = o->direct;
    w->line_max = o->line_max;
    w->lines_per_sec = o->lines_per_sec;
    w->max_age_ms = o->max_age_ms;
    w->ready_ms = o->ready_timeout_ms ? o->ready_timeout_ms : DSW_WARM_DEFAULT_READY_MS;
    w->backoff_ms = o->backoff_ms ? o->backoff_ms : DSW_WARM_DEFAULT_BACKOFF;
    w->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : DSW_WARM_MAX_BACKOFF;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    set_gauge(w);
    refill(w);
    arm(w);
    *out = w;
    return 0;
}

int dsw_warm_python_matches(const struct dsw_warm *w, const char *executable_path)
{
    return w && w->n > 0 && w->python && executable_path && !strcmp(w->python, executable_path);
}

/* The request: every word NUL-terminated. NULL when it would exceed the cap. */
static char *build_request(const char *const *args, size_t *len)
{
    size_t n = 0;
    for (size_t i = 0; args[i]; i++) {
        n += strlen(args[i]) + 1;
        if (n > DSW_WARM_MAX_REQUEST)
            return NULL;
    }
    char *req = dsw_xmalloc(n), *p = req;
    for (size_t i = 0; args[i]; i++) {
        size_t k = strlen(args[i]) + 1;
        memcpy(p, args[i], k);
        p += k;
    }
    *len = n;
    return req;
}

int dsw_warm_take(struct dsw_warm *w, const char *const *args, const struct dsw_proc_hooks *h,
                  struct dsw_proc **out)
{
    size_t len = 0;
    *out = NULL;
    if (w->closing)
        return -ESHUTDOWN;
    if (!args || !args[0])
        return -EINVAL;
    if (w->nready == 0)
        return -EAGAIN;
    char *req = build_request(args, &len);
    if (!req)
        return -EINVAL;
    struct runner *r = NULL;
    foreach_runner(c, w)
    {
        if (c->state != R_READY)
            continue;
        int rc = dsw_proc_stdin_write(c->proc, req, len);
        if (rc == 0)
            rc = dsw_proc_adopt(c->proc, h);
        if (rc == 0) {
            r = c;
            break;
        }
        /* Died since it said ready (its exit is on the way): count it, try the next one. */
        dsw_warn("warm: runner %d died before it was used (%s)", c->pid, uv_strerror(rc));
        retire(w, c, R_FAILED);
    }
    free(req);
    if (r) {
        *out = r->proc;
        dsw_debug("warm: runner %d took a run", r->pid);
        leave(w, r, R_GONE);
        unlink_runner(w, r);
    }
    /* Refill on the next loop turn, not inside the caller's spawn path. */
    uv_timer_start(&w->timer, on_timer, 0, 0);
    return r ? 0 : -EAGAIN;
}

void dsw_warm_recycle(struct dsw_warm *w)
{
    if (w->closing)
        return;
    foreach_runner(r, w) if (r->state == R_STARTING || r->state == R_READY)
        retire(w, r, R_RETIRING);
    dsw_info("warm: runners recycled");
    w->fails = 0;
    w->retry_at = 0;
    refill(w);
    arm(w);
}

void dsw_warm_set_limit(struct dsw_warm *w, unsigned limit)
{
    unsigned before = target(w);
    w->limit = limit;
    /* More wanted: refill on the next loop turn, as after a take. Fewer: nobody is retired. */
    if (!w->closing && target(w) > before)
        uv_timer_start(&w->timer, on_timer, 0, 0);
}

unsigned dsw_warm_ready(const struct dsw_warm *w)
{
    return w->nready;
}

unsigned dsw_warm_starting(const struct dsw_warm *w)
{
    return w->nstarting;
}

size_t dsw_warm_ready_pids(const struct dsw_warm *w, int *pids, size_t max)
{
    size_t k = 0;
    foreach_runner(r, w) if (r->state == R_READY && k < max) pids[k++] = r->pid;
    return k;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct dsw_warm *w = h->data;
    w->timer_closed = 1;
    maybe_finish(w);
}

void dsw_warm_close(struct dsw_warm *w, dsw_warm_close_cb cb, void *arg)
{
    w->closing = 1;
    w->close_cb = cb;
    w->close_arg = arg;
    foreach_runner(r, w) close_runner(r);
    uv_close((uv_handle_t *)&w->timer, on_timer_closed);
    dsw_metrics_set(DSW_METRIC_WARM_READY, 0);
}
