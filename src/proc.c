/* proc: one supervised child per run. uv_spawn (never a shell) of `<trampoline> __exec-child
 * <our pid> argv...` in a new session, so pgid == pid and the leader can never leave its group;
 * the trampoline stays as the run's supervisor (trampoline.h); line-capped, rate-capped reading
 * of stdout/stderr; timeout/terminate escalation; an exit report that fires once, after both
 * pipes are drained. Also the reaper of stray children when we are PID 1 or a subreaper. */
#include "dsw/proc.h"

#include "dsw/log.h"
#include "dsw/trampoline.h"

#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define RBUF_SIZE      (32 * 1024)
#define LINE_MAX_CAP   (1024 * 1024)
#define PROC_HANDLES   6 /* process, kill timer, drop timer, three pipes */
#define RATE_WINDOW_MS 1000

/* PH_KILL: the supervisor was asked to SIGKILL the tree; the timer is the fallback. */
enum phase { PH_RUN, PH_GRACE, PH_KILL, PH_DRAIN };

struct stream {
    uv_pipe_t pipe;
    enum dsw_proc_stream id;
    char *line; /* line_max + 1 bytes */
    size_t len;
    int skipping; /* inside the discarded tail of an overlong line */
    int done;     /* EOF, read error, or drain deadline */
};

struct dsw_proc {
    uv_loop_t *loop;
    uv_process_t proc;
    uv_timer_t kill_timer; /* PH_RUN: timeout; PH_GRACE: SIGKILL; PH_DRAIN: stop waiting for EOF */
    uv_timer_t drop_timer; /* end of the rate window in which lines were dropped */
    struct stream out, err;
    uv_pipe_t in; /* the child's stdin when opts.stdin_pipe (initialised, unused otherwise) */
    enum phase phase;
    size_t line_max;
    unsigned lines_per_sec;
    uint64_t kill_grace_ms, drain_ms, start_ms;
    uint64_t win_start, drop_pending;
    unsigned win_count;
    dsw_proc_line_cb on_line;
    dsw_proc_drop_cb on_drop;
    dsw_proc_exit_cb on_exit;
    void *arg;
    struct dsw_proc_exit st;
    int terminating, exited, reported, closing, handles_closing, open_handles;
    int supervised; /* started through the trampoline, which supervises the tree */
    int kill_asked; /* DSW_TRAMPOLINE_KILL_SIGNAL sent to the supervisor */
    struct dsw_proc *live_prev, *live_next; /* spawned, not reaped yet (see is_tracked) */
    int in_open;                            /* stdin pipe created and not written yet */
    int in_closed;                          /* uv_close called on the stdin pipe */
    dsw_proc_close_cb close_cb;
    void *close_arg;
};

/* Every child spawned here that libuv has not reaped yet, across loops: the stray reaper must
 * never take their exit status. */
static struct dsw_proc *live;

static void live_add(struct dsw_proc *p)
{
    p->live_next = live;
    if (live)
        live->live_prev = p;
    live = p;
}

static void live_remove(struct dsw_proc *p)
{
    if (p->live_prev)
        p->live_prev->live_next = p->live_next;
    else if (live == p)
        live = p->live_next;
    if (p->live_next)
        p->live_next->live_prev = p->live_prev;
    p->live_prev = p->live_next = NULL;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct dsw_proc *p = h->data;
    if (--p->open_handles > 0)
        return;
    dsw_proc_close_cb cb = p->close_cb;
    void *arg = p->close_arg;
    free(p->out.line);
    free(p->err.line);
    free(p);
    if (cb)
        cb(arg);
}

/* EOF for the child; from close_handles too, where a pending write is cancelled. */
static void close_stdin(struct dsw_proc *p)
{
    p->in_open = 0;
    if (p->in_closed)
        return;
    p->in_closed = 1;
    uv_close((uv_handle_t *)&p->in, on_handle_closed);
}

static void close_handles(struct dsw_proc *p)
{
    if (p->handles_closing)
        return;
    p->handles_closing = 1;
    uv_close((uv_handle_t *)&p->proc, on_handle_closed);
    uv_close((uv_handle_t *)&p->kill_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->drop_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->out.pipe, on_handle_closed);
    uv_close((uv_handle_t *)&p->err.pipe, on_handle_closed);
    close_stdin(p);
}

static void signal_group(struct dsw_proc *p, int sig)
{
    /* The leader leads its session so it cannot leave the group; still, try it alone on ESRCH. */
    if (kill(-p->st.pid, sig) == 0 || (errno == ESRCH && kill(p->st.pid, sig) == 0) ||
        errno == ESRCH)
        return;
    dsw_warn("proc: kill(%d, %d): %s", p->st.pid, sig, strerror(errno));
}

static void report_drops(struct dsw_proc *p)
{
    uint64_t n = p->drop_pending;
    if (!n)
        return;
    p->drop_pending = 0;
    if (p->on_drop)
        p->on_drop(p, n, p->arg);
    else
        dsw_warn("proc: child %d: %llu lines dropped over the rate limit", p->st.pid,
                 (unsigned long long)n);
}

static void maybe_report(struct dsw_proc *p)
{
    if (p->reported || !p->exited || !p->out.done || !p->err.done)
        return;
    p->reported = 1;
    uv_timer_stop(&p->kill_timer);
    uv_timer_stop(&p->drop_timer);
    report_drops(p);
    if (p->on_exit)
        p->on_exit(p, &p->st, p->arg);
    if (p->closing)
        close_handles(p);
}

static void on_drop_timer(uv_timer_t *t)
{
    report_drops(t->data);
}

/* Rate check: may this line be delivered now? Counts the drop when not. */
static int within_budget(struct dsw_proc *p)
{
    uint64_t now = uv_now(p->loop);
    if (now - p->win_start >= RATE_WINDOW_MS) {
        p->win_start = now;
        p->win_count = 0;
        uv_timer_stop(&p->drop_timer);
        report_drops(p);
    }
    if (p->win_count < p->lines_per_sec) {
        p->win_count++;
        return 1;
    }
    p->drop_pending++;
    p->st.lines_dropped++;
    if (!uv_is_active((uv_handle_t *)&p->drop_timer))
        uv_timer_start(&p->drop_timer, on_drop_timer, p->win_start + RATE_WINDOW_MS - now, 0);
    return 0;
}

static void emit(struct dsw_proc *p, struct stream *s, int truncated)
{
    size_t len = s->len;
    s->len = 0;
    if (p->st.first_line_ms < 0)
        p->st.first_line_ms = (int64_t)(dsw_now_ms() - p->start_ms);
    p->st.lines++;
    if (truncated)
        p->st.lines_truncated++;
    else if (len > 0 && s->line[len - 1] == '\r')
        len--;
    if (!within_budget(p) || !p->on_line)
        return;
    s->line[len] = '\0';
    p->on_line(p, s->id, s->line, len, truncated, p->arg);
}

/* Split a chunk into lines; a line longer than line_max is delivered once, truncated, and the
 * rest of it up to the next newline is skipped. Memory stays at line_max per stream. */
static void feed(struct dsw_proc *p, struct stream *s, const char *b, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(b, '\n', n);
        size_t seg = nl ? (size_t)(nl - b) : n;
        size_t adv = nl ? seg + 1 : n;
        if (!s->skipping) {
            size_t room = p->line_max - s->len;
            size_t c = DSW_MIN(seg, room);
            memcpy(s->line + s->len, b, c);
            s->len += c;
            if (seg > room) {
                emit(p, s, 1);
                s->skipping = 1;
            } else if (nl) {
                emit(p, s, 0);
            }
        }
        if (nl)
            s->skipping = 0;
        b += adv;
        n -= adv;
    }
}

static void stream_finish(struct dsw_proc *p, struct stream *s)
{
    if (s->done)
        return;
    s->done = 1;
    uv_read_stop((uv_stream_t *)&s->pipe);
    if (s->len > 0 && !s->skipping)
        emit(p, s, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    /* One buffer serves every pipe of every child (the loop is the process's only thread):
     * libuv calls alloc, read() and the read callback in a row, and on_read copies what it
     * keeps. 32 KiB once instead of per run. */
    static char rbuf[RBUF_SIZE];
    (void)h;
    buf->base = rbuf;
    buf->len = RBUF_SIZE;
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    struct stream *s = (struct stream *)((char *)h - offsetof(struct stream, pipe));
    struct dsw_proc *p = h->data;
    if (nread > 0) {
        feed(p, s, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    if (nread != UV_EOF)
        dsw_warn("proc: child %d: read: %s", p->st.pid, uv_strerror((int)nread));
    stream_finish(p, s);
    maybe_report(p);
}

static void on_kill_timer(uv_timer_t *t);

/* SIGKILL the run. Through the trampoline: ask the supervisor, which SIGKILLs the whole tree
 * (also what left the group), reaps it and dies of the worker's SIGKILL; SIGKILL to the group
 * only if it does not end within DSW_PROC_KILL_FALLBACK_MS (it is stopped, say). */
static void kill_now(struct dsw_proc *p)
{
    uv_timer_stop(&p->kill_timer);
    p->st.sigkilled = 1;
    if (!p->supervised) {
        signal_group(p, SIGKILL);
        return;
    }
    if (kill(p->st.pid, DSW_TRAMPOLINE_KILL_SIGNAL) != 0) {
        if (errno != ESRCH)
            dsw_warn("proc: kill(%d, %d): %s", p->st.pid, DSW_TRAMPOLINE_KILL_SIGNAL,
                     strerror(errno));
        signal_group(p, SIGKILL);
        return;
    }
    p->kill_asked = 1;
    p->phase = PH_KILL;
    uv_timer_start(&p->kill_timer, on_kill_timer, DSW_PROC_KILL_FALLBACK_MS, 0);
}

static void on_kill_timer(uv_timer_t *t)
{
    struct dsw_proc *p = t->data;
    switch (p->phase) {
    case PH_RUN:
        dsw_proc_terminate(p, DSW_PROC_TIMEOUT);
        break;
    case PH_GRACE:
        kill_now(p);
        break;
    case PH_KILL:
        /* Not reaped yet, so its pid and its children's are still theirs. */
        dsw_warn("proc: child %d still runs %d ms after the kill request; SIGKILL to it and "
                 "its children",
                 p->st.pid, DSW_PROC_KILL_FALLBACK_MS);
        dsw_trampoline_signal_children(p->st.pid, SIGKILL, 1);
        signal_group(p, SIGKILL);
        break;
    case PH_DRAIN:
        /* Something outside the group still holds a pipe: stop waiting for it. */
        dsw_warn("proc: child %d exited but its output pipes stay open; closing them", p->st.pid);
        stream_finish(p, &p->out);
        stream_finish(p, &p->err);
        maybe_report(p);
        break;
    }
}

static void on_proc_exit(uv_process_t *h, int64_t status, int sig)
{
    struct dsw_proc *p = h->data;
    p->exited = 1;
    live_remove(p);
    /* The supervisor died of our kill request itself: it came before the supervisor blocked the
     * signal (just after its exec), so before any worker existed. We did SIGKILL the run. */
    if (p->kill_asked && sig == DSW_TRAMPOLINE_KILL_SIGNAL)
        sig = SIGKILL;
    p->st.exit_code = sig ? -1 : (int)status;
    p->st.term_signal = sig;
    p->st.duration_ms = dsw_now_ms() - p->start_ms;
    uv_timer_stop(&p->kill_timer);
    /* Nothing of the run's group outlives the run (its leader, now reaped, kept the id until
     * here, so the group can only hold the run's own leftovers). Through the trampoline the
     * supervisor has already killed and reaped its whole tree; this is for direct children. */
    if (kill(-p->st.pid, SIGKILL) != 0 && errno != ESRCH)
        dsw_warn("proc: kill(-%d): %s", p->st.pid, strerror(errno));
    p->phase = PH_DRAIN;
    uv_timer_start(&p->kill_timer, on_kill_timer, p->drain_ms, 0);
    maybe_report(p);
}

void dsw_proc_terminate(struct dsw_proc *p, enum dsw_proc_reason reason)
{
    if (p->exited)
        return;
    if (p->st.killed == DSW_PROC_NOT_KILLED)
        p->st.killed = reason;
    if (p->terminating || p->st.sigkilled)
        return;
    p->terminating = 1;
    signal_group(p, SIGTERM);
    if (p->kill_grace_ms == 0) {
        kill_now(p);
        return;
    }
    p->phase = PH_GRACE;
    uv_timer_start(&p->kill_timer, on_kill_timer, p->kill_grace_ms, 0);
}

void dsw_proc_close(struct dsw_proc *p, dsw_proc_close_cb cb, void *arg)
{
    p->closing = 1;
    p->close_cb = cb;
    p->close_arg = arg;
    if (p->reported) {
        close_handles(p);
        return;
    }
    if (!p->exited) {
        if (p->st.killed == DSW_PROC_NOT_KILLED)
            p->st.killed = DSW_PROC_CLOSED;
        if (!p->st.sigkilled)
            kill_now(p);
    }
    /* The exit report follows from the loop, then close_handles. */
}

struct wreq {
    uv_write_t req;
    struct dsw_proc *p;
    char data[];
};

static void on_stdin_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct dsw_proc *p = w->p;
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        dsw_warn("proc: child %d: stdin: %s", p->st.pid, uv_strerror(status));
    close_stdin(p); /* no-op when close_handles got there first */
}

int dsw_proc_stdin_write(struct dsw_proc *p, const void *data, size_t len)
{
    if (!p->in_open)
        return -EBADF;
    p->in_open = 0;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = len ? uv_try_write((uv_stream_t *)&p->in, &b, 1) : 0;
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0 || (size_t)n == len) {
        close_stdin(p);
        return n < 0 ? n : 0;
    }
    /* More than the pipe holds: queue the rest; the pipe closes when it is written. */
    struct wreq *w = dsw_xmalloc(sizeof(*w) + len - (size_t)n);
    w->p = p;
    memcpy(w->data, (const char *)data + n, len - (size_t)n);
    b = uv_buf_init(w->data, (unsigned)(len - (size_t)n));
    int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, on_stdin_written);
    if (rc != 0) {
        free(w);
        close_stdin(p);
        return rc;
    }
    return 0;
}

int dsw_proc_adopt(struct dsw_proc *p, const struct dsw_proc_hooks *h)
{
    if (p->closing || p->terminating || p->st.killed != DSW_PROC_NOT_KILLED)
        return -EBUSY;
    if (p->exited)
        return -ESRCH;
    p->on_line = h->on_line;
    p->on_drop = h->on_drop;
    p->on_exit = h->on_exit;
    p->arg = h->arg;
    p->kill_grace_ms = h->kill_grace_ms;
    p->start_ms = dsw_now_ms();
    p->win_start = uv_now(p->loop);
    p->win_count = 0;
    p->drop_pending = 0; /* the previous supervisor's lines */
    uv_timer_stop(&p->drop_timer);
    p->st.lines = p->st.lines_dropped = p->st.lines_truncated = 0;
    p->st.first_line_ms = -1;
    uv_timer_stop(&p->kill_timer);
    if (h->timeout_ms)
        uv_timer_start(&p->kill_timer, on_kill_timer, h->timeout_ms, 0);
    return 0;
}

int dsw_proc_pid(const struct dsw_proc *p)
{
    return p->st.pid;
}

int dsw_proc_exited(const struct dsw_proc *p)
{
    return p->reported;
}

static void stream_init(struct dsw_proc *p, struct stream *s, enum dsw_proc_stream id)
{
    s->id = id;
    s->line = dsw_xmalloc(p->line_max + 1);
    uv_pipe_init(p->loop, &s->pipe, 0);
    s->pipe.data = p; /* every handle's data is p (see on_handle_closed) */
}

static struct dsw_proc *proc_new(uv_loop_t *loop, const struct dsw_proc_opts *o)
{
    struct dsw_proc *p = dsw_xcalloc(1, sizeof(*p));
    p->loop = loop;
    p->line_max =
        o->line_max ? DSW_MIN(o->line_max, (size_t)LINE_MAX_CAP) : DSW_PROC_DEFAULT_LINE_MAX;
    p->lines_per_sec = o->lines_per_sec ? o->lines_per_sec : DSW_PROC_DEFAULT_LINES_PER_SEC;
    p->kill_grace_ms = o->kill_grace_ms;
    p->drain_ms = o->drain_ms ? o->drain_ms : DSW_PROC_DEFAULT_DRAIN_MS;
    p->on_line = o->on_line;
    p->on_drop = o->on_drop;
    p->on_exit = o->on_exit;
    p->arg = o->arg;
    p->st.first_line_ms = -1;
    p->open_handles = PROC_HANDLES;
    uv_pipe_init(loop, &p->in, 0);
    p->in.data = p;
    p->proc.data = p;
    uv_timer_init(loop, &p->kill_timer);
    p->kill_timer.data = p;
    uv_timer_init(loop, &p->drop_timer);
    p->drop_timer.data = p;
    stream_init(p, &p->out, DSW_PROC_STDOUT);
    stream_init(p, &p->err, DSW_PROC_STDERR);
    return p;
}

/* The argv handed to uv_spawn: the trampoline form unless direct. Strings stay borrowed: they
 * are only read until uv_spawn returns. */
static char **spawn_args(const struct dsw_proc_opts *o, char *ppid)
{
    size_t n = 0, k = 0;
    while (o->argv[n])
        n++;
    char **args = dsw_xcalloc(n + 4, sizeof(*args));
    if (!o->direct) {
        args[k++] = (char *)(o->trampoline ? o->trampoline : DSW_PROC_TRAMPOLINE_SELF);
        args[k++] = DSW_PROC_TRAMPOLINE_ARG;
        args[k++] = ppid;
    }
    for (size_t i = 0; i < n; i++)
        args[k++] = (char *)o->argv[i];
    return args;
}

/* The child runs: supervise it (live list, timeout) and read its output. */
static void spawned(struct dsw_proc *p, const struct dsw_proc_opts *o)
{
    p->st.pid = uv_process_get_pid(&p->proc);
    p->supervised = !o->direct;
    live_add(p);
    p->in_open = o->stdin_pipe;
    if (o->timeout_ms)
        uv_timer_start(&p->kill_timer, on_kill_timer, o->timeout_ms, 0);
    struct stream *ss[2] = {&p->out, &p->err};
    for (int i = 0; i < 2; i++) {
        int rc = uv_read_start((uv_stream_t *)&ss[i]->pipe, on_alloc, on_read);
        if (rc != 0) {
            dsw_warn("proc: child %d: read start: %s", p->st.pid, uv_strerror(rc));
            ss[i]->done = 1;
        }
    }
}

int dsw_proc_spawn(uv_loop_t *loop, const struct dsw_proc_opts *o, struct dsw_proc **out)
{
    static char *empty_env[] = {NULL};
    char ppid[24];
    *out = NULL;
    if (!o->argv || !o->argv[0] || !o->argv[0][0])
        return -EINVAL;
    struct dsw_proc *p = proc_new(loop, o);
    snprintf(ppid, sizeof(ppid), "%ld", (long)getpid());
    char **args = spawn_args(o, ppid);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&p->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&p->err.pipe},
    };
    if (o->stdin_pipe) {
        stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
        stdio[0].data.stream = (uv_stream_t *)&p->in;
    }
    uv_process_options_t uo = {
        .exit_cb = on_proc_exit,
        .file = args[0],
        .args = args,
        .env = o->env ? (char **)o->env : empty_env,
        .cwd = o->cwd,
        /* setsid(): pgid == pid before exec (uv_spawn waits for the exec), no controlling tty,
         * so a terminal's ^C reaches only the daemon, which decides how runs end. */
        .flags = UV_PROCESS_DETACHED,
        .stdio_count = 3,
        .stdio = stdio,
    };
    p->start_ms = dsw_now_ms();
    p->win_start = uv_now(loop);
    int rc = uv_spawn(loop, &p->proc, &uo);
    free(args);
    if (rc != 0) {
        p->reported = 1; /* no callback for a spawn that failed */
        close_handles(p);
        return rc;
    }
    spawned(p, o);
    *out = p;
    return 0;
}

/* ---- environment ---- */

static size_t name_len(const char *e)
{
    const char *eq = strchr(e, '=');
    return eq ? (size_t)(eq - e) : 0;
}

static int allowed(const char *e, size_t n, const char *const *allow)
{
    for (; *allow; allow++) {
        size_t pl = strlen(*allow);
        if (pl > 0 && (*allow)[pl - 1] == '*') {
            if (n >= pl - 1 && memcmp(e, *allow, pl - 1) == 0)
                return 1;
        } else if (pl == n && memcmp(e, *allow, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Does list (from index from on) hold an entry named like e? */
static int named_in(const char *e, size_t n, const char *const *list, size_t from)
{
    if (!list)
        return 0;
    for (size_t i = from; list[i]; i++)
        if (name_len(list[i]) == n && memcmp(list[i], e, n) == 0)
            return 1;
    return 0;
}

int dsw_proc_env_build(const char *const *base, const char *const *allow, const char *const *set,
                       char ***out)
{
    size_t nb = 0, ns = 0, k = 0;
    *out = NULL;
    for (; set && set[ns]; ns++)
        if (name_len(set[ns]) == 0)
            return -EINVAL;
    while (base && base[nb])
        nb++;
    static const char *const none[] = {NULL};
    if (!allow)
        allow = none;
    char **env = dsw_xcalloc(nb + ns + 1, sizeof(*env));
    for (size_t i = 0; i < nb; i++) {
        size_t n = name_len(base[i]);
        if (n > 0 && allowed(base[i], n, allow) && !named_in(base[i], n, set, 0))
            env[k++] = dsw_xstrdup(base[i]);
    }
    for (size_t i = 0; i < ns; i++)
        if (!named_in(set[i], name_len(set[i]), set, i + 1))
            env[k++] = dsw_xstrdup(set[i]);
    *out = env;
    return 0;
}

void dsw_proc_env_free(char **env)
{
    if (!env)
        return;
    for (char **e = env; *e; e++)
        free(*e);
    free(env);
}

/* ---- strays: PID 1's duty ------------------------------------------------------------------ */

/* Orphans are reparented to us when we are PID 1 (a container) or a subreaper; nobody else
 * reaps them. libuv reaps only its own children, each with waitpid(its pid), from its own
 * SIGCHLD handle, and aborts the loop's bookkeeping for one whose status someone else took. So
 * we peek (WNOWAIT) at the first exited child, reap it by pid only when it is nobody's we know,
 * and stop at the first one that libuv will reap: the kernel's order may put strays behind it,
 * so we look again on the next loop turn, once libuv's handler (same turn, before or after
 * ours) has taken it. */

struct reaper {
    uv_loop_t *loop;
    uv_signal_t sig;
    uv_timer_t retry;
    unsigned deferred; /* consecutive sweeps that stopped at a child of libuv's */
    int open;          /* handles not closed yet */
};

static struct reaper *reaper;
static uint64_t strays_reaped;

struct find_pid {
    int pid, found;
};

static void find_process(uv_handle_t *h, void *arg)
{
    struct find_pid *f = arg;
    if (h->type == UV_PROCESS && uv_is_active(h) &&
        uv_process_get_pid((const uv_process_t *)h) == f->pid)
        f->found = 1;
}

/* Will libuv reap pid? Ours (any loop) until their exit callback, and any active process handle
 * of loop (a uv_spawn outside this module). */
static int is_tracked(uv_loop_t *loop, int pid)
{
    for (const struct dsw_proc *q = live; q; q = q->live_next)
        if (q->st.pid == pid)
            return 1;
    struct find_pid f = {pid, 0};
    if (loop)
        uv_walk(loop, find_process, &f);
    return f.found;
}

int dsw_proc_reap_strays(uv_loop_t *loop, int *deferred)
{
    int n = 0;
    if (deferred)
        *deferred = 0;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
            break; /* ECHILD: no child at all; 0: none has exited */
        if (is_tracked(loop, si.si_pid)) {
            if (deferred)
                *deferred = 1;
            break;
        }
        int st = 0;
        if (waitpid(si.si_pid, &st, WNOHANG) != si.si_pid)
            break;
        n++;
        strays_reaped++;
        if (WIFSIGNALED(st))
            dsw_debug("reaped stray process %d (signal %d)", (int)si.si_pid, WTERMSIG(st));
        else
            dsw_debug("reaped stray process %d (exit %d)", (int)si.si_pid, WEXITSTATUS(st));
    }
    return n;
}

uint64_t dsw_proc_strays_reaped(void)
{
    return strays_reaped;
}

static void on_reaper_retry(uv_timer_t *t);

static void reaper_sweep(struct reaper *r, int from_timer)
{
    int deferred = 0;
    dsw_proc_reap_strays(r->loop, &deferred);
    if (!deferred) {
        r->deferred = 0;
        uv_timer_stop(&r->retry);
        return;
    }
    /* From the signal: next turn. From the timer: libuv's child is still a zombie, so its
     * SIGCHLD is on the way (and brings us back); a slow poll only in case it never comes. */
    r->deferred++;
    uint64_t ms = !from_timer ? 0 : r->deferred < 20 ? 50 : 1000;
    uv_timer_start(&r->retry, on_reaper_retry, ms, 0);
}

static void on_reaper_signal(uv_signal_t *s, int signum)
{
    reaper_sweep(s->data, 0);
}

static void on_reaper_retry(uv_timer_t *t)
{
    reaper_sweep(t->data, 1);
}

static void on_reaper_closed(uv_handle_t *h)
{
    struct reaper *r = h->data;
    if (--r->open == 0)
        free(r);
}

int dsw_proc_reaper_start(uv_loop_t *loop, int force)
{
    int sub = 0;
    if (reaper)
        return -EALREADY;
    if (!force && getpid() != 1 &&
        (prctl(PR_GET_CHILD_SUBREAPER, (unsigned long)&sub, 0, 0, 0) != 0 || !sub))
        return 0;
    struct reaper *r = dsw_xcalloc(1, sizeof(*r));
    r->loop = loop;
    r->open = 2;
    uv_signal_init(loop, &r->sig);
    r->sig.data = r;
    uv_timer_init(loop, &r->retry);
    r->retry.data = r;
    int rc = uv_signal_start(&r->sig, on_reaper_signal, SIGCHLD);
    if (rc) {
        uv_close((uv_handle_t *)&r->sig, on_reaper_closed);
        uv_close((uv_handle_t *)&r->retry, on_reaper_closed);
        return rc;
    }
    reaper = r;
    if (!force)
        dsw_info("%s: reaping stray child processes",
                 getpid() == 1 ? "running as PID 1" : "child subreaper");
    reaper_sweep(r, 0); /* what was left before we started */
    return 1;
}

void dsw_proc_reaper_stop(void)
{
    struct reaper *r = reaper;
    if (!r)
        return;
    reaper = NULL;
    uv_close((uv_handle_t *)&r->sig, on_reaper_closed);
    uv_close((uv_handle_t *)&r->retry, on_reaper_closed);
}

/* ---- trampoline: see trampoline.c --------------------------------------------------------- */

int dsw_proc_trampoline_main(int argc, char **argv)
{
    return dsw_trampoline_main(argc, argv);
}
