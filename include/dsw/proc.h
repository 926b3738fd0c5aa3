/* proc: spawn and supervise one child process (one Dagster run worker). The child is started
 * through the trampoline (trampoline.h: dsw-exec, or a re-exec of our own binary), which leads
 * its own session and process group, stays alive as the run's supervisor and runs the command
 * in a group of its own; it gets only the environment it is given, and its stdout/stderr are
 * read line by line under a per-line and per-second cap. Timeouts and terminate() send SIGTERM
 * (forwarded by the supervisor to the command's group), then, after a grace period, ask the
 * supervisor to SIGKILL the whole tree. Everything runs on the caller's libuv loop; libuv reaps
 * our children (see dsw_proc_reaper_start for the children nobody else reaps).
 *
 * What keeps a run's processes from outliving it (with or without systemd):
 * - the supervisor is a child subreaper: whatever the run orphans, even through setsid() and
 *   double forks, is reparented to it; when the command exits, for any reason, it SIGKILLs and
 *   reaps everything left before it exits itself, so the exit report means the tree is gone;
 * - if the daemon dies (even by SIGKILL) the supervisor learns it at once (PR_SET_PDEATHSIG,
 *   which follows the thread that spawned, so spawn from the loop of the main thread; and
 *   getppid() once a second) and kills the tree the same way;
 * - the command itself dies with the supervisor (PR_SET_PDEATHSIG(SIGKILL)), and a supervisor
 *   that does not end within DSW_PROC_KILL_FALLBACK_MS of a kill request is SIGKILLed with its
 *   children's groups;
 * - direct children (opts.direct) get SIGKILL to their group when they exit, and nothing more. */
#ifndef DSW_PROC_H
#define DSW_PROC_H

#include "dsw/trampoline.h"
#include "dsw/util.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* argv[1] of the hidden trampoline form: `<self> __exec-child <parent-pid> <argv...>`. */
#define DSW_PROC_TRAMPOLINE_ARG DSW_TRAMPOLINE_ARG
/* Trampoline used when dsw_proc_opts.trampoline is NULL: our own binary, even if the file on
 * disk was replaced since we started. */
#define DSW_PROC_TRAMPOLINE_SELF "/proc/self/exe"

#define DSW_PROC_DEFAULT_LINE_MAX      4096
#define DSW_PROC_DEFAULT_LINES_PER_SEC 1000
#define DSW_PROC_DEFAULT_DRAIN_MS      2000
/* After asking the supervisor to kill the tree, how long before we SIGKILL it ourselves. */
#define DSW_PROC_KILL_FALLBACK_MS 2000

struct dsw_proc;

enum dsw_proc_stream { DSW_PROC_STDOUT = 1, DSW_PROC_STDERR = 2 };

/* Why we signalled the child (the first reason wins). */
enum dsw_proc_reason {
    DSW_PROC_NOT_KILLED = 0,
    DSW_PROC_TIMEOUT,   /* opts.timeout_ms expired */
    DSW_PROC_TERMINATE, /* dsw_proc_terminate() (cancel, drain, lost lease...) */
    DSW_PROC_CLOSED,    /* dsw_proc_close() while the child was running */
};

/* What the exit callback reports. */
struct dsw_proc_exit {
    int pid;
    int exit_code;               /* exit status, or -1 when a signal ended the child */
    int term_signal;             /* signal that ended the child, or 0 */
    enum dsw_proc_reason killed; /* DSW_PROC_NOT_KILLED unless we signalled the group */
    int sigkilled;               /* we escalated to SIGKILL */
    uint64_t duration_ms;        /* spawn to exit (pipe draining not included) */
    uint64_t lines;              /* lines read on both streams, delivered or not */
    uint64_t lines_dropped;      /* over the per-second budget */
    uint64_t lines_truncated;    /* longer than line_max */
    /* Milliseconds from spawn (or dsw_proc_adopt) to the first line on either stream, -1 when
     * there was none: how long the command took to say anything (for Dagster, to start). */
    int64_t first_line_ms;
};

/* One line of output without its "\n" (nor a trailing "\r"), NUL-terminated at line[len]; valid
 * only during the call. truncated: the line was longer than line_max and this is its head (the
 * rest was discarded); the consumer should mark it, e.g. with " [truncated]". */
typedef void (*dsw_proc_line_cb)(struct dsw_proc *p, enum dsw_proc_stream stream, const char *line,
                                 size_t len, int truncated, void *arg);
/* n lines were dropped over the budget since the last report. Fires at most once a second while
 * the child floods, and once more just before the exit callback. */
typedef void (*dsw_proc_drop_cb)(struct dsw_proc *p, uint64_t n, void *arg);
/* The child exited and both pipes are drained (every line was delivered first). Fires exactly
 * once per successful spawn; st is valid only during the call. dsw_proc_close may be called
 * from here. */
typedef void (*dsw_proc_exit_cb)(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg);
/* Every handle is closed and the object freed; p must not be used any more. */
typedef void (*dsw_proc_close_cb)(void *arg);

struct dsw_proc_opts {
    /* Program and arguments, NULL-terminated; argv[0] is searched in the child's PATH
     * (execvp). */
    const char *const *argv;
    /* Complete environment of the child ("NAME=value", NULL-terminated; see
     * dsw_proc_env_build). NULL means an empty environment, never our own. */
    const char *const *env;
    const char *cwd; /* working directory, or NULL to keep ours */
    /* Executable that understands DSW_PROC_TRAMPOLINE_ARG (the daemon itself); NULL means
     * DSW_PROC_TRAMPOLINE_SELF. */
    const char *trampoline;
    /* Exec argv directly without the trampoline (no supervisor, no PDEATHSIG): for tools and
     * tests only. */
    int direct;
    uint64_t timeout_ms;    /* 0: no timeout; else DSW_PROC_TIMEOUT escalation after this */
    uint64_t kill_grace_ms; /* SIGTERM to SIGKILL delay; 0: SIGKILL at once */
    size_t line_max;        /* 0: DSW_PROC_DEFAULT_LINE_MAX */
    unsigned lines_per_sec; /* budget for both streams together; 0: default */
    /* After the child exits, how long to wait for the pipes to reach EOF (a process that
     * escaped the group may hold them) before closing them; 0: DSW_PROC_DEFAULT_DRAIN_MS. */
    uint64_t drain_ms;
    dsw_proc_line_cb on_line; /* may be NULL: lines are counted and discarded */
    dsw_proc_drop_cb on_drop; /* may be NULL: a warning is logged instead */
    dsw_proc_exit_cb on_exit; /* may be NULL */
    void *arg;                /* passed to every callback */
    /* stdin is a pipe from us (see dsw_proc_stdin_write) instead of /dev/null. The process must
     * ignore SIGPIPE (main does), or a write to a child that closed its end would kill us. */
    int stdin_pipe;
};

/* The supervisor part of dsw_proc_opts, for dsw_proc_adopt. */
struct dsw_proc_hooks {
    uint64_t timeout_ms;    /* 0: no timeout; else counted from dsw_proc_adopt */
    uint64_t kill_grace_ms; /* SIGTERM to SIGKILL delay; 0: SIGKILL at once */
    dsw_proc_line_cb on_line;
    dsw_proc_drop_cb on_drop;
    dsw_proc_exit_cb on_exit;
    void *arg;
};

/* Spawn the trampoline (the run's supervisor) in a new session/process group (pgid == pid),
 * which runs opts->argv in a process group of its own, with stdin on /dev/null (or a pipe,
 * opts->stdin_pipe) and stdout/stderr on pipes, on loop. opts and its strings are only read during
 * the call. On success *out is a live object that the caller must eventually pass to dsw_proc_close
 * (after or before the exit callback). Errors: -EINVAL (no argv), or uv_spawn's (-ENOENT,
 * -EACCES... for the trampoline); *out is then NULL, no callback fires, and the internal handles
 * are freed on a later loop turn. A command that cannot be executed is reported by the exit
 * callback as exit code 127 (126 when not executable), with the reason on stderr. */
int dsw_proc_spawn(uv_loop_t *loop, const struct dsw_proc_opts *opts,
                   struct dsw_proc **out) DSW_WUR;

/* Write len bytes to the child's stdin, then close it (the child reads them and EOF): the way to
 * hand a child data that must not appear on its command line. data is copied when it cannot be
 * written at once (more than the pipe holds); nothing else may be written afterwards. Returns 0
 * when everything was written or queued (a later write error is logged; the child then sees a
 * short read and its exit says the rest), -EBADF without opts.stdin_pipe or after a first call,
 * -EPIPE when the child has closed its end (it died: nothing was written; its exit callback
 * follows), or another negative errno from the write. The pipe is closed in every case. */
int dsw_proc_stdin_write(struct dsw_proc *p, const void *data, size_t len) DSW_WUR;

/* Hand a running child over to a new supervisor (a warm runner becoming a run worker): from now
 * on every callback goes to h's with h->arg, the timeout restarts from now with h->timeout_ms,
 * the grace period becomes h->kill_grace_ms, and what the exit callback reports (duration,
 * line counts, first_line_ms) is counted from now. Lines already delivered stay with the old
 * supervisor. Returns 0, -ESRCH when the child has exited already (its exit, not yet reported,
 * still goes to the old callbacks) or -EBUSY once terminate or close was called; p is then
 * unchanged. h is only read during the call. */
int dsw_proc_adopt(struct dsw_proc *p, const struct dsw_proc_hooks *h) DSW_WUR;

/* Pid of the child (the supervisor; the command itself with opts.direct), which is also its
 * process group id. */
int dsw_proc_pid(const struct dsw_proc *p);

/* Nonzero once the exit callback has fired. */
int dsw_proc_exited(const struct dsw_proc *p);

/* SIGTERM to the child's group now (the supervisor forwards it to the command's group), then
 * after opts.kill_grace_ms (at once when it is 0) SIGKILL to the whole tree (see kill_now). reason
 * is reported by the exit callback unless an earlier reason was recorded. Idempotent: a second call
 * never restarts the grace period. No-op after the child exited. */
void dsw_proc_terminate(struct dsw_proc *p, enum dsw_proc_reason reason);

/* Release p. If the child still runs, SIGKILL its tree (reason DSW_PROC_CLOSED); the exit
 * callback still fires (once) before cb. Then every handle is closed and p is freed; cb (may be
 * NULL) fires from the loop afterwards. Call exactly once; safe from any proc callback. */
void dsw_proc_close(struct dsw_proc *p, dsw_proc_close_cb cb, void *arg);

/* Build a child environment: the entries of base ("NAME=value", NULL-terminated, e.g. environ;
 * may be NULL) whose NAME matches a pattern of allow (exact names, or a prefix ending in '*';
 * NULL: none; the default list is conf's DSW_CONF_ENV_PASSTHROUGH_DEFAULT), then the assignments of
 * set (NULL-terminated, may be NULL), which replace entries with the same name (the last one wins).
 * Base entries without '=' are skipped. *out is a new NULL-terminated array (free with
 * dsw_proc_env_free). Errors: -EINVAL when an assignment has no '=' or an empty name (*out is then
 * NULL). */
int dsw_proc_env_build(const char *const *base, const char *const *allow, const char *const *set,
                       char ***out) DSW_WUR;
void dsw_proc_env_free(char **env);

/* Body of the hidden trampoline: argv = {self, DSW_PROC_TRAMPOLINE_ARG, parent-pid, cmd...};
 * dsw_trampoline_main (trampoline.h): supervises cmd and ends as cmd ended. main() returns
 * what it returns. Must run before any other initialisation of the program. */
int dsw_proc_trampoline_main(int argc, char **argv);

/* ---- strays ----
 * When we are PID 1 (a container without an init) or a child subreaper, orphaned processes are
 * reparented to us and only we can reap them. dsw_proc_reaper_start watches SIGCHLD on loop
 * (beside libuv's own handler) and reaps every exited child that is not one libuv will reap
 * (our dsw_proc children on any loop, and any active uv_process_t of loop), so that no status
 * is ever taken from libuv. Returns 1 when reaping, 0 when not needed (neither PID 1 nor a
 * subreaper; force reaps anyway, for tests), -EALREADY when already started, or uv's error.
 * dsw_proc_reaper_stop closes its handles (on the loop's next turn); safe when not started. */
int dsw_proc_reaper_start(uv_loop_t *loop, int force);
void dsw_proc_reaper_stop(void);
/* One sweep, as the SIGCHLD handle does: reap exited children that are nobody's, stop at the
 * first one libuv will reap (*deferred = 1, may be NULL). Returns how many were reaped. */
int dsw_proc_reap_strays(uv_loop_t *loop, int *deferred);
/* Strays reaped by this process so far. */
uint64_t dsw_proc_strays_reaped(void);

#endif
