/* warm: a pool of ready warm runners (runs.warm). A warm runner is `<python> dsw-warm-runner.py
 * --imports ... --entry ...` started through proc exactly like a cold run worker (same
 * trampoline and PDEATHSIG, own process group, environment, working directory), that has
 * imported Dagster ahead of time and waits for one request on its stdin. dsw_warm_take hands a
 * ready runner one run (the request goes over the stdin pipe, never argv) and gives the caller
 * the dsw_proc, from then on supervised exactly like a cold child. The pool refills the slot at
 * once, replaces runners that die or never become ready (with backoff, counted in
 * dsw_warm_runner_failures_total), recycles them after max_age_ms and on dsw_warm_recycle, and
 * keeps dsw_warm_runners_ready up to date.
 *
 * The protocol (see libexec/dsw-warm-runner.py and docs/warm-runners.md): the runner's first
 * stdout line ending in DSW_WARM_READY_TOKEN means ready (stdout is already a captured pipe, and
 * the trampoline closes every descriptor above 2, so no extra fd is needed or would survive);
 * the request is the words after the program name of a cold child's command line ("api",
 * "execute_run"/"resume_run"/"execute_step", the Execute{Run,Step}Args JSON), each
 * NUL-terminated, then EOF.
 *
 * Everything runs on the caller's loop thread; SIGPIPE must be ignored (main does). */
#ifndef DSW_WARM_H
#define DSW_WARM_H

#include "dsw/proc.h"
#include "dsw/util.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define DSW_WARM_READY_TOKEN      "dsw-warm-runner: ready"
#define DSW_WARM_RUNNER_NAME      "dsw-warm-runner.py"
#define DSW_WARM_DEFAULT_IMPORTS  "dagster dagster_postgres dagster._cli"
#define DSW_WARM_DEFAULT_ENTRY    "dagster._cli:main"
#define DSW_WARM_DEFAULT_READY_MS (60 * 1000)
#define DSW_WARM_DEFAULT_BACKOFF  1000
#define DSW_WARM_MAX_BACKOFF      (60 * 1000)
#define DSW_WARM_MAX_REQUEST      (16u * 1024 * 1024)

/* The pool: opaque; created by dsw_warm_init, freed only by dsw_warm_close's callback. */
struct dsw_warm;

/* Options of dsw_warm_init. Zero values take the documented defaults; strings and arrays are
 * copied. */
struct dsw_warm_opts {
    unsigned n;                /* ready runners to keep (runs.warm); 0: the pool stays empty */
    unsigned limit;            /* the first dsw_warm_set_limit (the slots); 0: no limit yet */
    const char *python;        /* interpreter (runs.python); required when n > 0 */
    const char *runner;        /* the runner script; NULL: dsw_warm_runner_path() */
    const char *imports;       /* blank-separated modules; NULL: DSW_WARM_DEFAULT_IMPORTS */
    const char *entry;         /* "module:function"; NULL: DSW_WARM_DEFAULT_ENTRY */
    uint64_t max_age_ms;       /* recycle a runner this long after its start; 0: never */
    uint64_t ready_timeout_ms; /* kill (and count) a runner not ready by then; 0: 60 s */
    uint64_t backoff_ms;       /* first delay after a failure, doubling; 0: 1 s */
    uint64_t backoff_max_ms;   /* 0: 60 s */
    const char *const *env;    /* the runners' environment (as a cold child's; NULL: empty) */
    const char *cwd;           /* working directory, or NULL to keep ours */
    const char *trampoline;    /* as dsw_proc_opts.trampoline (NULL: our own binary) */
    int direct;                /* as dsw_proc_opts.direct: no trampoline (tests, tools only) */
    size_t line_max;           /* as dsw_proc_opts, for the runs too (0: defaults) */
    unsigned lines_per_sec;    /* as dsw_proc_opts, for the runs too (0: defaults) */
};

/* dsw_warm_close finished: every runner is gone, the pool's handles closed, its memory freed. */
typedef void (*dsw_warm_close_cb)(void *arg);

/* Create a pool on loop and start opts->n runners (spawned from the loop, right away). *out is
 * the pool, to be released with dsw_warm_close. Errors (*out is then NULL): -EINVAL (n > 0
 * without python, or an entry without ':'), -ENOENT (no runner script found). A runner that
 * fails to start is not an error here: it is counted and retried with backoff. */
int dsw_warm_init(uv_loop_t *loop, const struct dsw_warm_opts *opts, struct dsw_warm **out) DSW_WUR;

/* Nonzero when a run whose code origin names executable_path (its interpreter,
 * pipeline_code_origin.repository_origin.executable_path) may take a warm runner: it is exactly
 * the pool's python (no symlink resolution: two virtualenvs share a binary but not their
 * packages). NULL pool or path: 0. */
int dsw_warm_python_matches(const struct dsw_warm *pool, const char *executable_path);

/* Hand a ready runner the request args (the words after the program name of a cold child's
 * argv: {"api", "execute_run", "resume_run" or "execute_step", <the Args JSON>, NULL}; only read
 * during the call) and give it to the caller: *out is then a running dsw_proc supervised by hooks
 * (dsw_proc_adopt: callbacks, timeout and grace from now, exit report counted from now) that the
 * caller owns and must dsw_proc_close, exactly like one from dsw_proc_spawn; the pool forgets it
 * and starts a replacement on the next loop turn. A runner found dead on the way is counted,
 * replaced, and the next ready one is tried. Errors (*out is then NULL, no callback fires):
 * -EAGAIN when no runner is ready (the caller spawns cold), -EINVAL (no args, or a request over
 * DSW_WARM_MAX_REQUEST), -ESHUTDOWN after dsw_warm_close. */
int dsw_warm_take(struct dsw_warm *pool, const char *const *args,
                  const struct dsw_proc_hooks *hooks, struct dsw_proc **out) DSW_WUR;

/* Retire every runner now (SIGTERM to its group, SIGKILL after a grace) and start new ones at
 * once, so that a code or environment change reaches the next runs (SIGHUP). Runners already
 * taken are not affected. Resets the failure backoff. */
void dsw_warm_recycle(struct dsw_warm *pool);

/* Keep at most limit runners starting or ready (the worker's free slots): a runner beyond them
 * could not be taken before a slot frees, and starting it would spend CPU beside the runs that
 * hold the slots. Lowering it retires nobody; raising it refills on the next loop turn. Until
 * the first call there is no limit (opts->n runners). */
void dsw_warm_set_limit(struct dsw_warm *pool, unsigned limit);

/* Runners ready to be taken now, and runners still importing. */
unsigned dsw_warm_ready(const struct dsw_warm *pool);
unsigned dsw_warm_starting(const struct dsw_warm *pool);

/* Copy the pids of up to max ready runners into pids (oldest first); returns how many. For
 * status output, tests and the bench (their RSS). */
size_t dsw_warm_ready_pids(const struct dsw_warm *pool, int *pids, size_t max);

/* Stop the pool: SIGKILL every runner's group (not the taken ones, which belong to their
 * callers), close the handles; cb (may be NULL) fires from the loop when all of that is done and
 * the pool freed. Call exactly once; dsw_warm_take returns -ESHUTDOWN afterwards. */
void dsw_warm_close(struct dsw_warm *pool, dsw_warm_close_cb cb, void *arg);

/* Where the runner script is installed: in <bindir>/../libexec/dagster-sqs-worker/ (an install),
 * <bindir>/../libexec/ (a build directory in the source tree) or beside the binary (any build
 * directory: CMake copies it there), <bindir> resolved from /proc/self/exe. *out is a new
 * string (caller frees). Errors: -ENOENT when none exists. */
int dsw_warm_runner_path(char **out) DSW_WUR;

/* The places dsw_warm_runner_path looks, as absolute paths ("A, B and C"), for messages. */
void dsw_warm_runner_places(char *buf, size_t n);

/* Check a warm setup before it starts (check-config, the daemon's start): python (runs.python)
 * is an executable file, found as execvp would (in $PATH when it has no '/'); the runner
 * (runs.warm_runner; NULL: dsw_warm_runner_path) is a readable file. 0, or a negative errno
 * with "key: what is wrong" naming the path(s) in err. */
int dsw_warm_check(const char *python, const char *runner, char *err, size_t n) DSW_WUR;

/* Why dsw_warm_init failed with rc, for its log line: what dsw_warm_check finds wrong with
 * python and runner (naming the paths), else strerror. Returns buf. */
const char *dsw_warm_strerror(int rc, const char *python, const char *runner, char *buf, size_t n);

#endif
