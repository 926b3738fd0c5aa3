/* proc: exit reports, signals, kill escalation, output line/rate caps, the trampoline as the
 * run's supervisor (containment, forwarding, exit statuses, daemon death), the stray reaper,
 * the environment filter. The test binary doubles as the child (`--child MODE`) and as the
 * trampoline (`__exec-child`), as libuv's own tests do; no shell anywhere. */
#include "testutil.h"

#include "dsw/buf.h"
#include "dsw/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static char self[PATH_MAX];

/* ---- the child side ---- */

static void idle(void)
{
    alarm(30); /* a safety net: no test leaves a process behind for long */
    for (;;)
        pause();
}

static int child_flood(long n)
{
    static char buf[1 << 16];
    setvbuf(stdout, buf, _IOFBF, sizeof(buf));
    for (long i = 0; i < n; i++)
        printf("flood %ld ......................................................................"
               "..................\n",
               i);
    return 0;
}

static int child_long(void)
{
    static char x[1 << 20];
    memset(x, 'x', sizeof(x));
    fwrite(x, 1, sizeof(x), stdout);
    printf("\nafter\n");
    fwrite(x, 1, 100, stdout); /* exactly line_max: not truncated */
    printf("\n");
    fwrite(x, 1, 101, stdout);
    printf("\nend\n");
    return 0;
}

static int child_stubborn(void)
{
    signal(SIGTERM, SIG_IGN);
    pid_t g = fork();
    if (g == 0)
        idle(); /* inherits SIG_IGN */
    printf("ready %ld\n", (long)g);
    fflush(stdout);
    idle();
    return 0;
}

static int child_escape(void)
{
    int fds[2];
    char c;
    if (pipe(fds) != 0)
        return 98;
    pid_t g = fork();
    if (g == 0) {
        setsid(); /* leaves the group but keeps our stdout */
        if (write(fds[1], "x", 1) != 1)
            _exit(1);
        idle();
    }
    if (read(fds[0], &c, 1) != 1)
        return 98;
    printf("escaped %ld\n", (long)g);
    return 0;
}

/* A grandchild that setsid()s and double-forks (its middle process exits at once, so the last
 * one is an orphan reparented to the nearest subreaper), then idles. Prints "tree <self> <it>". */
static int child_tree(void)
{
    int fds[2];
    pid_t it = 0;
    if (pipe(fds) != 0)
        return 98;
    pid_t g = fork();
    if (g == 0) {
        setsid();
        pid_t h = fork();
        if (h == 0) {
            pid_t me = getpid();
            if (write(fds[1], &me, sizeof(me)) != sizeof(me))
                _exit(1);
            idle();
        }
        _exit(h > 0 ? 0 : 1);
    }
    if (g < 0 || read(fds[0], &it, sizeof(it)) != sizeof(it))
        return 98;
    waitpid(g, NULL, 0);
    printf("tree %ld %ld\n", (long)getpid(), (long)it);
    fflush(stdout);
    idle();
    return 0;
}

static void on_trap(int sig)
{
    char line[16];
    int n = snprintf(line, sizeof(line), "sig %d\n", sig);
    if (write(1, line, (size_t)n) != n)
        _exit(97);
    if (sig == SIGTERM)
        _exit(40);
}

/* Report each of HUP/INT/QUIT/TERM once per delivery; exit 40 on TERM. */
static int child_traps(void)
{
    static const int sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    for (size_t i = 0; i < DSW_ARRAY_LEN(sigs); i++)
        signal(sigs[i], on_trap);
    printf("ready 1\n");
    fflush(stdout);
    idle();
    return 0;
}

/* Read stdin to EOF; print how many bytes and a checksum of them. */
static int child_stdin(void)
{
    static char buf[1 << 16];
    unsigned long long n = 0, sum = 0;
    ssize_t r;
    while ((r = read(0, buf, sizeof(buf))) > 0)
        for (ssize_t i = 0; i < r; i++, n++)
            sum = sum * 31 + (unsigned char)buf[i];
    printf("got %llu %llx\n", n, sum);
    return r < 0 ? 98 : 0;
}

static int child_main(int argc, char **argv)
{
    const char *mode = argv[0];
    if (!strcmp(mode, "exit"))
        return atoi(argv[1]);
    if (!strcmp(mode, "sigkill"))
        raise(SIGKILL);
    if (!strcmp(mode, "raise")) {
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none); /* SIGQUIT and SIGABRT leave no core file */
        signal(atoi(argv[1]), SIG_DFL);
        raise(atoi(argv[1]));
        return 98;
    }
    if (!strcmp(mode, "tree"))
        return child_tree();
    if (!strcmp(mode, "traps"))
        return child_traps();
    if (!strcmp(mode, "sleep"))
        idle();
    if (!strcmp(mode, "hello")) {
        printf("hello\n");
        fflush(stdout);
        idle();
    }
    if (!strcmp(mode, "echo")) {
        printf("out1\ncrlf\r\n\nout2 no newline");
        fflush(stdout);
        fprintf(stderr, "err1\n");
        return 0;
    }
    if (!strcmp(mode, "env")) {
        extern char **environ;
        for (char **e = environ; *e; e++)
            printf("%s\n", *e);
        return 0;
    }
    if (!strcmp(mode, "ids")) {
        char cwd[PATH_MAX];
        printf("%ld %ld %ld %s\n", (long)getpid(), (long)getpgrp(), (long)getsid(0),
               getcwd(cwd, sizeof(cwd)) ? cwd : "?");
        return 0;
    }
    if (!strcmp(mode, "fds")) {
        int n = 0;
        for (int fd = 3; fd < 1024; fd++)
            n += fcntl(fd, F_GETFD) != -1;
        printf("fds %d\n", n);
        return 0;
    }
    if (!strcmp(mode, "flood"))
        return child_flood(atol(argv[1]));
    if (!strcmp(mode, "long"))
        return child_long();
    if (!strcmp(mode, "stubborn"))
        return child_stubborn();
    if (!strcmp(mode, "escape"))
        return child_escape();
    if (!strcmp(mode, "stdin"))
        return child_stdin();
    if (!strcmp(mode, "handover")) {
        printf("hello\n");
        fflush(stdout);
        child_stdin();
        fflush(stdout);
        idle();
    }
    if (!strcmp(mode, "closein")) {
        close(0);
        printf("ready 1\n");
        fflush(stdout);
        idle();
    }
    return 99;
}

/* ---- the parent side ---- */

struct run {
    struct dsw_proc *p;
    struct dsw_proc_exit st;
    int exits, closed, close_in_exit;
    uint64_t lines_at_exit, delivered, drops;
    struct dsw_buf out; /* "O:line" / "E:line" / "T:line" (truncated) */
    long ready;         /* number after "ready "/"escaped " */
};

static void on_line(struct dsw_proc *p, enum dsw_proc_stream s, const char *line, size_t len,
                    int truncated, void *arg)
{
    struct run *r = arg;
    assert_int_equal(r->exits, 0);
    assert_int_equal(strlen(line), len);
    r->delivered++;
    if (!strncmp(line, "ready ", 6))
        r->ready = atol(line + 6);
    if (!strncmp(line, "escaped ", 8))
        r->ready = atol(line + 8);
    if (r->delivered > 1000)
        return;
    char tag = truncated ? 'T' : s == DSW_PROC_STDOUT ? 'O' : 'E';
    assert_int_equal(dsw_buf_printf(&r->out, "%c:%s\n", tag, line), 0);
}

static void on_drop(struct dsw_proc *p, uint64_t n, void *arg)
{
    struct run *r = arg;
    assert_int_equal(r->exits, 0);
    assert_true(n > 0);
    r->drops += n;
}

static void on_closed(void *arg)
{
    struct run *r = arg;
    assert_int_equal(r->exits, 1); /* the report always comes first */
    r->closed++;
}

static void on_exit_cb(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct run *r = arg;
    assert_ptr_equal(p, r->p);
    assert_true(dsw_proc_exited(p));
    r->exits++;
    r->st = *st;
    r->lines_at_exit = r->delivered;
    if (r->close_in_exit)
        dsw_proc_close(p, on_closed, r);
}

static int is_closed(void *arg)
{
    return ((struct run *)arg)->closed;
}

static int has_ready(void *arg)
{
    return ((struct run *)arg)->ready != 0;
}

/* Spawn on `loop` and run it until the command says it is ready; the supervisor's pid. */
static int spawn_ready(uv_loop_t *loop, struct run *r, const struct dsw_proc_opts *o)
{
    assert_int_equal(dsw_proc_spawn(loop, o, &r->p), 0);
    int pid = dsw_proc_pid(r->p);
    assert_true(tu_run_until(loop, has_ready, r, 10000));
    return pid;
}

static void run_init(struct run *r, struct dsw_proc_opts *o, const char *const *argv)
{
    memset(r, 0, sizeof(*r));
    dsw_buf_init(&r->out, 1 << 20);
    r->close_in_exit = 1;
    memset(o, 0, sizeof(*o));
    o->argv = argv;
    o->trampoline = self;
    o->on_line = on_line;
    o->on_drop = on_drop;
    o->on_exit = on_exit_cb;
    o->arg = r;
}

/* A fresh loop and run_init: the start of a case that drives the loop itself. */
static void run_begin(uv_loop_t *loop, struct run *r, struct dsw_proc_opts *o,
                      const char *const *argv)
{
    assert_int_equal(uv_loop_init(loop), 0);
    run_init(r, o, argv);
}

/* Spawn, wait for the report and the close callback, close the loop. */
static void run_all(uv_loop_t *loop, struct run *r, const struct dsw_proc_opts *o)
{
    assert_int_equal(dsw_proc_spawn(loop, o, &r->p), 0);
    assert_true(dsw_proc_pid(r->p) > 0);
    assert_true(tu_run_until(loop, is_closed, r, 20000));
    assert_int_equal(r->exits, 1);
    assert_int_equal(r->closed, 1);
    assert_int_equal(r->st.pid > 0, 1);
    tu_loop_close(loop);
}

static void run_free(struct run *r)
{
    dsw_buf_free(&r->out);
}

/* One command from spawn to close on a loop of its own (run_init, then run_all). `with` (may
 * be NULL) carries what a case sets: env, cwd, trampoline (NULL there keeps ours), direct and
 * the limits; argv and the callbacks are run_init's. */
static void run_one(struct run *r, const char *const *argv, const struct dsw_proc_opts *with)
{
    uv_loop_t loop;
    struct dsw_proc_opts o;
    run_begin(&loop, r, &o, argv);
    if (with) {
        o.env = with->env;
        o.cwd = with->cwd;
        if (with->trampoline)
            o.trampoline = with->trampoline;
        o.direct = with->direct;
        o.timeout_ms = with->timeout_ms;
        o.kill_grace_ms = with->kill_grace_ms;
        o.line_max = with->line_max;
        o.lines_per_sec = with->lines_per_sec;
        o.drain_ms = with->drain_ms;
    }
    run_all(&loop, r, &o);
}

/* Reap a process that was reparented to us (we are a subreaper); return its wait status. */
static int reap_within(pid_t pid, int ms)
{
    int st = 0;
    for (int i = 0; i < ms / 10; i++) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return st;
        if (w < 0 && errno == ECHILD && kill(pid, 0) != 0 && errno == ESRCH)
            return -1; /* gone, reaped by someone else */
        usleep(10000);
    }
    fail_msg("process %ld still alive after %d ms", (long)pid, ms);
    return 0;
}

static void test_exit_codes(void **state)
{
    static const char *codes[] = {"0", "1", "3"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(codes); i++) {
        struct run r;
        const char *argv[] = {self, "--child", "exit", codes[i], NULL};
        uint64_t t0 = uv_hrtime();
        run_one(&r, argv, NULL);
        uint64_t wall = (uv_hrtime() - t0) / 1000000;
        assert_int_equal(r.st.exit_code, atoi(codes[i]));
        assert_int_equal(r.st.term_signal, 0);
        assert_int_equal(r.st.killed, DSW_PROC_NOT_KILLED);
        assert_int_equal(r.st.sigkilled, 0);
        /* Within what we saw, and at once. */
        assert_true(r.st.duration_ms <= wall + 1);
        assert_true(r.st.duration_ms < tu_slack_ms());
        run_free(&r);
    }
}

static void test_killed_by_signal(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "sigkill", NULL};
    run_one(&r, argv, NULL);
    assert_int_equal(r.st.term_signal, SIGKILL);
    assert_int_equal(r.st.exit_code, -1);
    assert_int_equal(r.st.killed, DSW_PROC_NOT_KILLED);
    run_free(&r);
}

static void test_lines_before_exit(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "echo", NULL};
    run_one(&r, argv, NULL);
    assert_int_equal(r.st.exit_code, 0);
    assert_int_equal(r.lines_at_exit, 5);
    assert_int_equal(r.st.lines, 5);
    const char *s = dsw_buf_str(&r.out);
    assert_non_null(strstr(s, "O:out1\nO:crlf\nO:\n"));
    assert_non_null(strstr(s, "O:out2 no newline\n"));
    assert_non_null(strstr(s, "E:err1\n"));
    run_free(&r);
}

static void test_long_lines(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "long", NULL};
    char x100[101], expect[512];
    memset(x100, 'x', 100);
    x100[100] = '\0';
    snprintf(expect, sizeof(expect), "T:%s\nO:after\nO:%s\nT:%s\nO:end\n", x100, x100, x100);
    run_one(&r, argv, &(struct dsw_proc_opts){.line_max = 100});
    assert_string_equal(dsw_buf_str(&r.out), expect);
    assert_int_equal(r.st.lines_truncated, 2);
    assert_int_equal(r.st.lines, 5);
    run_free(&r);
}

static long rss_kib(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &pages, &res), 2);
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

struct ticker {
    uint64_t last_ns, max_gap_ns, ticks;
};

static void on_tick(uv_timer_t *t)
{
    struct ticker *k = t->data;
    uint64_t now = uv_hrtime();
    if (now - k->last_ns > k->max_gap_ns)
        k->max_gap_ns = now - k->last_ns;
    k->last_ns = now;
    k->ticks++;
}

static void test_flood(void **state)
{
    uv_loop_t loop;
    uv_timer_t tick;
    struct ticker k = {0};
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "flood", "200000", NULL};
    long rss0 = rss_kib();
    run_begin(&loop, &r, &o, argv);
    o.lines_per_sec = 100;
    uv_timer_init(&loop, &tick);
    tick.data = &k;
    k.last_ns = uv_hrtime();
    uv_timer_start(&tick, on_tick, 10, 10);
    assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
    assert_true(tu_run_until(&loop, is_closed, &r, 60000));
    uv_close((uv_handle_t *)&tick, NULL);
    tu_loop_close(&loop);
    long grown = rss_kib() - rss0;
    assert_int_equal(r.st.exit_code, 0);
    assert_int_equal(r.st.lines, 200000);
    assert_int_equal(r.st.lines_dropped + r.delivered, 200000);
    assert_int_equal(r.drops, r.st.lines_dropped);
    assert_true(r.delivered >= 100);
    assert_true(r.delivered <= 100 * (r.st.duration_ms / 1000 + 2));
    /* ~20 MB went through the pipe; none of it may stay with us. */
    assert_true(grown < 8 * 1024);
    assert_true(k.ticks > 0);
    assert_true(k.max_gap_ns < 1000 * 1000000ULL);
    run_free(&r);
}

static void test_timeout(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "sleep", NULL};
    run_one(&r, argv, &(struct dsw_proc_opts){.timeout_ms = 200, .kill_grace_ms = 10000});
    assert_int_equal(r.st.term_signal, SIGTERM);
    assert_int_equal(r.st.killed, DSW_PROC_TIMEOUT);
    assert_int_equal(r.st.sigkilled, 0);
    assert_true(r.st.duration_ms >= 190 && r.st.duration_ms < 200 + tu_slack_ms());
    assert_true(r.st.duration_ms < 10000); /* not after the grace */
    run_free(&r);
}

/* Gone for good: not even a zombie of ours (the supervisor reaps what it kills). */
static void assert_gone(pid_t pid)
{
    errno = 0;
    if (kill(pid, 0) == 0 || errno != ESRCH)
        fail_msg("process %ld still exists", (long)pid);
}

/* Ignores SIGTERM and leaves a grandchild: the escalation must SIGKILL the whole tree, and the
 * report comes only once all of it is gone. */
static void escalate(uint64_t timeout_ms, enum dsw_proc_reason want)
{
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "stubborn", NULL};
    run_begin(&loop, &r, &o, argv);
    o.timeout_ms = timeout_ms;
    o.kill_grace_ms = 300;
    int pgid = spawn_ready(&loop, &r, &o);
    assert_true(r.ready > 0);
    /* In the command's group (not the supervisor's), in the supervisor's session. */
    pid_t group = getpgid((pid_t)r.ready);
    assert_true(group > 0 && group != pgid);
    assert_int_equal(getsid((pid_t)r.ready), pgid);
    if (want == DSW_PROC_TERMINATE) {
        dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
        dsw_proc_terminate(r.p, DSW_PROC_TIMEOUT); /* neither restarts the grace nor the reason */
    }
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    assert_int_equal(r.st.term_signal, SIGKILL);
    assert_int_equal(r.st.killed, want);
    assert_int_equal(r.st.sigkilled, 1);
    assert_true(r.st.duration_ms >= 290);
    assert_gone((pid_t)r.ready);
    assert_gone(-group);
    assert_gone(-pgid);
    run_free(&r);
}

static void test_terminate_escalates(void **state)
{
    escalate(0, DSW_PROC_TERMINATE);
}

static void test_timeout_escalates(void **state)
{
    /* Long enough for a sanitized child on a loaded machine to say it is ready first. */
    escalate(3000, DSW_PROC_TIMEOUT);
}

static void test_close_while_running(void **state)
{
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "stubborn", NULL};
    run_begin(&loop, &r, &o, argv);
    r.close_in_exit = 0;
    o.kill_grace_ms = 60000;
    int pgid = spawn_ready(&loop, &r, &o);
    dsw_proc_close(r.p, on_closed, &r);
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    assert_int_equal(r.exits, 1);
    assert_int_equal(r.st.term_signal, SIGKILL);
    assert_int_equal(r.st.killed, DSW_PROC_CLOSED);
    assert_true(r.st.duration_ms < tu_slack_ms()); /* not the 60 s grace */
    assert_gone((pid_t)r.ready);
    assert_gone(-pgid);
    run_free(&r);
}

/* A grandchild that left the group holds stdout: the report still comes after drain_ms. Only a
 * direct child can leave one behind (through the trampoline, see test_escape_contained). */
static void test_drain_cap(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "escape", NULL};
    uint64_t t0 = uv_hrtime();
    run_one(&r, argv, &(struct dsw_proc_opts){.direct = 1, .drain_ms = 200});
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.st.exit_code, 0);
    assert_true(ms >= 190);
    assert_true(r.ready > 0);
    assert_int_equal(kill((pid_t)r.ready, SIGKILL), 0);
    reap_within((pid_t)r.ready, 5000);
    run_free(&r);
}

/* Through the trampoline the same escaped grandchild (setsid, holding stdout) is killed and
 * reaped by the supervisor as soon as the command exits: no drain wait, nothing left. */
static void test_escape_contained(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "escape", NULL};
    uint64_t t0 = uv_hrtime();
    run_one(&r, argv, &(struct dsw_proc_opts){.drain_ms = 10000});
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.st.exit_code, 0);
    assert_true(r.ready > 0);
    assert_true(ms < tu_slack_ms() && ms < 10000); /* not after the 10 s drain */
    assert_gone((pid_t)r.ready);
    assert_non_null(strstr(dsw_buf_str(&r.out), "E:dagster-sqs-worker: killed 1 process(es)"));
    run_free(&r);
}

static void test_group_and_cwd(void **state)
{
    struct run r;
    const char *argv[] = {self, "--child", "ids", NULL};
    char *dir = tu_tmpdir();
    char want[PATH_MAX * 2];
    run_one(&r, argv, &(struct dsw_proc_opts){.cwd = dir});
    /* The command leads a group of its own in the supervisor's session (sid == our child). */
    long pid = 0, pgrp = 0, sid = 0;
    assert_int_equal(sscanf(dsw_buf_str(&r.out), "O:%ld %ld %ld", &pid, &pgrp, &sid), 3);
    assert_true(pid != r.st.pid);
    snprintf(want, sizeof(want), "O:%ld %ld %d %s\n", pid, pid, r.st.pid, dir);
    assert_string_equal(dsw_buf_str(&r.out), want);
    tu_rm_rf(dir);
    free(dir);
    run_free(&r);
}

/* A descriptor opened without O_CLOEXEC does not reach the command. */
static void test_no_inherited_fds(void **state)
{
    for (int direct = 0; direct < 2; direct++) {
        struct run r;
        const char *argv[] = {self, "--child", "fds", NULL};
        int leak = dup(0);
        assert_true(leak >= 0);
        run_one(&r, argv, &(struct dsw_proc_opts){.direct = direct});
        close(leak);
        if (direct)
            assert_string_not_equal(dsw_buf_str(&r.out), "O:fds 0\n");
        else
            assert_string_equal(dsw_buf_str(&r.out), "O:fds 0\n");
        run_free(&r);
    }
}

static void test_exec_failures(void **state)
{
    struct run r;
    const char *argv[] = {"/nonexistent/dagster", "api", NULL};
    run_one(&r, argv, NULL);
    assert_int_equal(r.st.exit_code, 127);
    assert_non_null(strstr(dsw_buf_str(&r.out), "E:dagster-sqs-worker: cannot execute"));
    run_free(&r);

    /* A trampoline that cannot be executed fails the spawn itself; no callback, no leak. */
    uv_loop_t loop;
    struct dsw_proc_opts o;
    run_begin(&loop, &r, &o, argv);
    o.trampoline = "/nonexistent/trampoline";
    struct dsw_proc *p = (struct dsw_proc *)&r;
    assert_int_equal(dsw_proc_spawn(&loop, &o, &p), -ENOENT);
    assert_null(p);
    const char *none[] = {NULL};
    o.argv = none;
    assert_int_equal(dsw_proc_spawn(&loop, &o, &p), -EINVAL);
    tu_loop_close(&loop);
    assert_int_equal(r.exits, 0);
    run_free(&r);
}

/* The trampoline refuses to exec when its parent is not the one it was told about (the daemon
 * died between fork and prctl). */
static void test_trampoline_parent_check(void **state)
{
    struct run r;
    const char *argv[] = {self, DSW_PROC_TRAMPOLINE_ARG, "1", self, "--child", "echo", NULL};
    run_one(&r, argv, &(struct dsw_proc_opts){.direct = 1});
    assert_int_equal(r.st.exit_code, 127);
    assert_string_equal(dsw_buf_str(&r.out), "");
    run_free(&r);
}

/* In the forked "daemon": tell the test the pids of the supervisor, the command and its escaped
 * grandchild once the command runs. */
static void mid_line(struct dsw_proc *p, enum dsw_proc_stream s, const char *line, size_t len,
                     int truncated, void *arg)
{
    long w = 0, g = 0;
    if (sscanf(line, "tree %ld %ld", &w, &g) != 2)
        return;
    int pids[3] = {dsw_proc_pid(p), (int)w, (int)g};
    if (write(*(int *)arg, pids, sizeof(pids)) != sizeof(pids))
        _exit(1);
}

/* kill -9 of a daemon-like parent (its own loop, spawning through the trampoline): the
 * supervisor learns it (PR_SET_PDEATHSIG) and SIGKILLs the whole tree, the command and the
 * grandchild that setsid() and double-forked, reaps it, and dies of the same SIGKILL. */
static void test_trampoline_pdeathsig(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t mid = fork();
    assert_true(mid >= 0);
    if (mid == 0) {
        uv_loop_t loop;
        struct dsw_proc *p;
        const char *argv[] = {self, "--child", "tree", NULL};
        struct dsw_proc_opts o = {
            .argv = argv, .trampoline = self, .on_line = mid_line, .arg = &fds[1]};
        close(fds[0]);
        if (uv_loop_init(&loop) || dsw_proc_spawn(&loop, &o, &p))
            _exit(1);
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(2);
    }
    close(fds[1]);
    int pids[3] = {0}, st = 0;
    assert_int_equal(read(fds[0], pids, sizeof(pids)), sizeof(pids));
    close(fds[0]);
    for (int i = 0; i < 3; i++) {
        assert_true(pids[i] > 0);
        assert_int_equal(kill(pids[i], 0), 0);
    }
    assert_int_equal(kill(mid, SIGKILL), 0);
    assert_int_equal(waitpid(mid, &st, 0), mid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    /* The supervisor was reparented to us (we are a subreaper). */
    st = reap_within(pids[0], 5000);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
        fail_msg("supervisor status %#x", st);
    assert_gone(pids[1]);
    assert_gone(pids[2]);
}

/* The default trampoline, /proc/self/exe. Under valgrind that names valgrind itself. */
static void test_default_trampoline(void **state)
{
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload"))
        return;
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "exit", "7", NULL};
    run_begin(&loop, &r, &o, argv);
    o.trampoline = NULL;
    run_all(&loop, &r, &o);
    assert_int_equal(r.st.exit_code, 7);
    run_free(&r);
}

static void test_env_build(void **state)
{
    const char *base[] = {"PATH=/bin",
                          "HOME=/root",
                          "LANG=C",
                          "LANGUAGE=en",
                          "LC_ALL=C.UTF-8",
                          "TZ=UTC",
                          "DAGSTER_HOME=/old",
                          "PYTHONPATH=/p",
                          "AWS_SECRET_ACCESS_KEY=s",
                          "AWS_ACCESS_KEY_ID=k",
                          "PATHX=1",
                          "NOEQUALS",
                          "=weird",
                          NULL};
    const char *set[] = {"DAGSTER_HOME=/srv/dh", "FOO=1", "FOO=2", "DAGSTER_PG_PASSWORD=pw", NULL};
    const char *want[] = {
        "PATH=/bin",     "HOME=/root",           "LANG=C", "LC_ALL=C.UTF-8",         "TZ=UTC",
        "PYTHONPATH=/p", "DAGSTER_HOME=/srv/dh", "FOO=2",  "DAGSTER_PG_PASSWORD=pw", NULL};
    char **env = NULL;
    const char *dflt[] = {"PATH", "HOME", "LANG", "LC_*", "TZ", "DAGSTER_*", "PYTHON*", NULL};
    assert_int_equal(dsw_proc_env_build(base, dflt, set, &env), 0);
    size_t i = 0;
    for (; env[i]; i++) {
        assert_non_null(want[i]);
        assert_string_equal(env[i], want[i]);
    }
    assert_null(want[i]);
    dsw_proc_env_free(env);

    const char *allow[] = {"AWS_*", "TZ", NULL};
    assert_int_equal(dsw_proc_env_build(base, allow, NULL, &env), 0);
    assert_string_equal(env[0], "TZ=UTC");
    assert_string_equal(env[1], "AWS_SECRET_ACCESS_KEY=s");
    assert_string_equal(env[2], "AWS_ACCESS_KEY_ID=k");
    assert_null(env[3]);
    dsw_proc_env_free(env);

    assert_int_equal(dsw_proc_env_build(NULL, NULL, NULL, &env), 0);
    assert_null(env[0]);
    dsw_proc_env_free(env);

    const char *bad1[] = {"NOVALUE", NULL};
    const char *bad2[] = {"=x", NULL};
    env = (char **)base;
    assert_int_equal(dsw_proc_env_build(base, NULL, bad1, &env), -EINVAL);
    assert_null(env);
    assert_int_equal(dsw_proc_env_build(base, NULL, bad2, &env), -EINVAL);
    dsw_proc_env_free(NULL);
}

/* The child sees exactly the environment it is given; NULL means an empty one. */
static void test_env_child(void **state)
{
    const char *env[] = {"PATH=/usr/bin:/bin", "DAGSTER_HOME=/srv/dh", NULL};
    for (int empty = 0; empty < 2; empty++) {
        struct run r;
        const char *argv[] = {self, "--child", "env", NULL};
        run_one(&r, argv, &(struct dsw_proc_opts){.env = empty ? NULL : env});
        assert_int_equal(r.st.exit_code, 0);
        assert_string_equal(dsw_buf_str(&r.out),
                            empty ? "" : "O:PATH=/usr/bin:/bin\nO:DAGSTER_HOME=/srv/dh\n");
        run_free(&r);
    }
}

static unsigned long long checksum(const char *b, size_t n)
{
    unsigned long long sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = sum * 31 + (unsigned char)b[i];
    return sum;
}

/* Data on stdin, then EOF: small (written at once) and larger than the pipe holds (queued). */
static void test_stdin_pipe(void **state)
{
    size_t sizes[] = {11, 4 << 20};
    char *data = malloc(sizes[1]);
    for (size_t i = 0; i < sizes[1]; i++)
        data[i] = (char)(i * 7 + i / 3);
    memcpy(data, "hello\0world", 11);
    for (size_t i = 0; i < DSW_ARRAY_LEN(sizes); i++) {
        uv_loop_t loop;
        struct run r;
        struct dsw_proc_opts o;
        const char *argv[] = {self, "--child", "stdin", NULL};
        char want[64];
        run_begin(&loop, &r, &o, argv);
        o.stdin_pipe = 1;
        assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
        assert_int_equal(dsw_proc_stdin_write(r.p, data, sizes[i]), 0);
        assert_int_equal(dsw_proc_stdin_write(r.p, "x", 1), -EBADF);
        assert_true(tu_run_until(&loop, is_closed, &r, 20000));
        tu_loop_close(&loop);
        snprintf(want, sizeof(want), "O:got %zu %llx\n", sizes[i], checksum(data, sizes[i]));
        assert_string_equal(dsw_buf_str(&r.out), want);
        assert_int_equal(r.st.exit_code, 0);
        run_free(&r);
    }
    free(data);
}

/* Without stdin_pipe the child reads EOF from /dev/null and writing is refused; a child that
 * closed its stdin gives -EPIPE (SIGPIPE is ignored, as in the daemon). */
static void test_stdin_errors(void **state)
{
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "stdin", NULL};
    run_begin(&loop, &r, &o, argv);
    assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
    assert_int_equal(dsw_proc_stdin_write(r.p, "x", 1), -EBADF);
    assert_true(tu_run_until(&loop, is_closed, &r, 20000));
    tu_loop_close(&loop);
    assert_string_equal(dsw_buf_str(&r.out), "O:got 0 0\n");
    run_free(&r);

    const char *argv2[] = {self, "--child", "closein", NULL};
    run_begin(&loop, &r, &o, argv2);
    o.stdin_pipe = 1;
    spawn_ready(&loop, &r, &o);
    assert_int_equal(dsw_proc_stdin_write(r.p, "x", 1), -EPIPE);
    assert_int_equal(dsw_proc_stdin_write(r.p, "x", 1), -EBADF);
    dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    assert_int_equal(r.st.term_signal, SIGTERM);
    run_free(&r);
}

static int said_hello(void *arg)
{
    return strstr(dsw_buf_str(&((struct run *)arg)->out), "O:hello\n") != NULL;
}

/* A second supervisor takes over: its callbacks, its timeout, counters from the hand-over. */
static void test_adopt(void **state)
{
    uv_loop_t loop;
    struct run a, b;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "handover", NULL};
    run_begin(&loop, &b, &o, argv);
    run_init(&a, &o, argv);
    a.close_in_exit = 0;
    o.stdin_pipe = 1;
    o.timeout_ms = 15000; /* replaced by the adopter's */
    assert_int_equal(dsw_proc_spawn(&loop, &o, &a.p), 0);
    assert_true(tu_run_until(&loop, said_hello, &a, 10000));
    struct dsw_proc_hooks h = {.timeout_ms = 1000,
                               .kill_grace_ms = 5000,
                               .on_line = on_line,
                               .on_drop = on_drop,
                               .on_exit = on_exit_cb,
                               .arg = &b};
    b.p = a.p;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(dsw_proc_adopt(a.p, &h), 0);
    assert_int_equal(dsw_proc_stdin_write(a.p, "abc", 3), 0);
    assert_true(tu_run_until(&loop, is_closed, &b, 10000));
    tu_loop_close(&loop);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_string_equal(dsw_buf_str(&a.out), "O:hello\n");
    assert_int_equal(a.exits, 0);
    char want[64];
    snprintf(want, sizeof(want), "O:got 3 %llx\n", checksum("abc", 3));
    assert_string_equal(dsw_buf_str(&b.out), want);
    assert_int_equal(b.st.killed, DSW_PROC_TIMEOUT);
    assert_int_equal(b.st.term_signal, SIGTERM);
    assert_int_equal(b.st.lines, 1);
    assert_true(b.st.first_line_ms >= 0 && b.st.first_line_ms < 1000);
    assert_true(b.st.duration_ms >= 990 && b.st.duration_ms <= ms + 1);
    /* the adopter's 1 s timeout, not the 15 s one it replaced */
    assert_true(ms >= 990 && ms < 1000 + tu_slack_ms() && ms < 15000);
    run_free(&a);
    run_free(&b);
}

static int reaped(void *arg)
{
    return kill(dsw_proc_pid(arg), 0) != 0;
}

/* Adoption is refused after terminate (-EBUSY) and once the child is gone (-ESRCH). */
static void test_adopt_refused(void **state)
{
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    struct dsw_proc_hooks h = {.on_exit = on_exit_cb};
    const char *argv[] = {self, "--child", "stubborn", NULL};
    run_begin(&loop, &r, &o, argv);
    spawn_ready(&loop, &r, &o);
    h.arg = &r;
    dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
    assert_int_equal(dsw_proc_adopt(r.p, &h), -EBUSY);
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    reap_within((pid_t)r.ready, 5000);
    run_free(&r);

    /* A grandchild that left the group holds stdout: the child is reaped, the report waits
     * (direct: through the trampoline nothing is left to hold it). */
    const char *argv2[] = {self, "--child", "escape", NULL};
    run_begin(&loop, &r, &o, argv2);
    o.direct = 1;
    o.drain_ms = 60000;
    spawn_ready(&loop, &r, &o);
    assert_true(tu_run_until(&loop, reaped, r.p, 10000));
    assert_int_equal(dsw_proc_adopt(r.p, &h), -ESRCH);
    assert_int_equal(r.exits, 0);
    assert_int_equal(kill((pid_t)r.ready, SIGKILL), 0);
    reap_within((pid_t)r.ready, 5000);
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    assert_int_equal(r.st.exit_code, 0);
    run_free(&r);
}

static void test_first_line_ms(void **state)
{
    for (int quiet = 0; quiet < 2; quiet++) {
        struct run r;
        const char *argv[] = {self, "--child", quiet ? "exit" : "echo", "0", NULL};
        run_one(&r, argv, NULL);
        if (quiet)
            assert_int_equal(r.st.first_line_ms, -1);
        else
            assert_true(r.st.first_line_ms >= 0 &&
                        (uint64_t)r.st.first_line_ms <= r.st.duration_ms + 5);
        run_free(&r);
    }
}

/* ---- the supervisor: statuses and signals ---- */

/* What the command ended with is what the daemon sees, through the supervisor and direct:
 * exit codes, and terminating signals (also those that dump core, and SIGUSR1, the signal the
 * daemon uses to ask for a tree kill, when the command dies of it on its own). */
static void test_statuses_preserved(void **state)
{
    static const struct {
        const char *mode, *arg;
        int code, sig;
    } cases[] = {
        {"exit", "0", 0, 0},
        {"exit", "1", 1, 0},
        {"exit", "3", 3, 0},
        {"exit", "126", 126, 0},
        {"exit", "255", 255, 0},
        {"raise", "15", -1, SIGTERM},
        {"raise", "2", -1, SIGINT},
        {"raise", "3", -1, SIGQUIT},
        {"raise", "6", -1, SIGABRT},
        {"raise", "10", -1, SIGUSR1},
        {"raise", "12", -1, SIGUSR2},
        {"raise", "1", -1, SIGHUP},
        {"sigkill", NULL, -1, SIGKILL},
    };
    assert_int_equal(SIGUSR1, 10);
    assert_int_equal(SIGUSR2, 12);
    for (int direct = 0; direct < 2; direct++) {
        for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
            struct run r;
            const char *argv[] = {self, "--child", cases[i].mode, cases[i].arg, NULL};
            run_one(&r, argv, &(struct dsw_proc_opts){.direct = direct});
            if (r.st.exit_code != cases[i].code || r.st.term_signal != cases[i].sig)
                fail_msg("%s %s (direct %d): exit %d signal %d", cases[i].mode,
                         cases[i].arg ? cases[i].arg : "", direct, r.st.exit_code,
                         r.st.term_signal);
            assert_int_equal(r.st.killed, DSW_PROC_NOT_KILLED);
            run_free(&r);
        }
    }
}

static int count_lines(const char *s, const char *line)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, line)) != NULL; p += strlen(line))
        n++;
    return n;
}

struct want_line {
    struct run *r;
    const char *line;
};

static int has_line(void *arg)
{
    struct want_line *w = arg;
    return strstr(dsw_buf_str(&w->r->out), w->line) != NULL;
}

/* SIGHUP/SIGINT/SIGQUIT/SIGTERM sent to the supervisor's group (what the daemon signals) reach
 * the command exactly once each; terminate's SIGTERM ends it with its own exit code. */
static void test_signals_forwarded(void **state)
{
    uv_loop_t loop;
    struct run r;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "traps", NULL};
    run_begin(&loop, &r, &o, argv);
    o.kill_grace_ms = 10000;
    int t = spawn_ready(&loop, &r, &o);
    static const struct {
        int sig;
        const char *line;
    } sigs[] = {{SIGHUP, "O:sig 1\n"}, {SIGINT, "O:sig 2\n"}, {SIGQUIT, "O:sig 3\n"}};
    for (size_t i = 0; i < DSW_ARRAY_LEN(sigs); i++) {
        assert_int_equal(kill(-t, sigs[i].sig), 0);
        struct want_line w = {&r, sigs[i].line};
        assert_true(tu_run_until(&loop, has_line, &w, 10000));
    }
    dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
    assert_true(tu_run_until(&loop, is_closed, &r, 10000));
    tu_loop_close(&loop);
    const char *out = dsw_buf_str(&r.out);
    assert_int_equal(count_lines(out, "O:sig 1\n"), 1);
    assert_int_equal(count_lines(out, "O:sig 2\n"), 1);
    assert_int_equal(count_lines(out, "O:sig 3\n"), 1);
    assert_int_equal(count_lines(out, "O:sig 15\n"), 1);
    assert_int_equal(r.st.exit_code, 40);
    assert_int_equal(r.st.killed, DSW_PROC_TERMINATE);
    assert_int_equal(r.st.sigkilled, 0);
    run_free(&r);
}

/* A kill request that reaches the supervisor before it could block signals (right after
 * spawn) is still reported as SIGKILL, and nothing is left. */
static void test_close_at_once(void **state)
{
    for (int i = 0; i < 5; i++) {
        uv_loop_t loop;
        struct run r;
        struct dsw_proc_opts o;
        const char *argv[] = {self, "--child", "tree", NULL};
        run_begin(&loop, &r, &o, argv);
        r.close_in_exit = 0;
        assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
        int pgid = dsw_proc_pid(r.p);
        dsw_proc_close(r.p, on_closed, &r);
        assert_true(tu_run_until(&loop, is_closed, &r, 10000));
        tu_loop_close(&loop);
        assert_int_equal(r.st.term_signal, SIGKILL);
        assert_int_equal(r.st.killed, DSW_PROC_CLOSED);
        assert_gone(-pgid);
        run_free(&r);
    }
}

struct tree_run {
    struct run r;
    long w, g;
};

static void on_tree_line(struct dsw_proc *p, enum dsw_proc_stream s, const char *line, size_t len,
                         int truncated, void *arg)
{
    struct tree_run *t = arg;
    sscanf(line, "tree %ld %ld", &t->w, &t->g);
}

static int tree_ready(void *arg)
{
    return ((struct tree_run *)arg)->g != 0;
}

/* A supervisor that cannot act on the kill request (stopped) is SIGKILLed after
 * DSW_PROC_KILL_FALLBACK_MS with its children (the command's group, the adopted orphan). */
static void test_stopped_supervisor(void **state)
{
    uv_loop_t loop;
    struct tree_run t;
    struct dsw_proc_opts o;
    const char *argv[] = {self, "--child", "tree", NULL};
    run_begin(&loop, &t.r, &o, argv);
    t.w = t.g = 0;
    t.r.close_in_exit = 0;
    o.on_line = on_tree_line;
    o.arg = &t;
    o.on_exit = NULL;
    assert_int_equal(dsw_proc_spawn(&loop, &o, &t.r.p), 0);
    pid_t sup = dsw_proc_pid(t.r.p);
    assert_true(tu_run_until(&loop, tree_ready, &t, 10000));
    assert_int_equal(kill(sup, SIGSTOP), 0);
    uint64_t t0 = uv_hrtime();
    dsw_proc_close(t.r.p, on_closed, &t.r);
    t.r.exits = 1; /* no exit callback here: on_closed checks that the report came first */
    assert_true(tu_run_until(&loop, is_closed, &t.r, 20000));
    tu_loop_close(&loop);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= DSW_PROC_KILL_FALLBACK_MS - 10);
    assert_true(ms < DSW_PROC_KILL_FALLBACK_MS + tu_slack_ms());
    /* Their supervisor is gone, so they come back to us, the subreaper, killed. */
    int st = reap_within((pid_t)t.w, 5000);
    assert_true(st == -1 || (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL));
    st = reap_within((pid_t)t.g, 5000);
    assert_true(st == -1 || (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL));
    assert_gone(sup);
    run_free(&t.r);
}

/* ---- the stray reaper ---- */

static void wait_zombie(pid_t pid)
{
    for (int i = 0; i < 1000; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT), 0);
        if (si.si_pid == pid)
            return;
        usleep(10000);
    }
    fail_msg("process %ld did not exit", (long)pid);
}

static int is_zombie_of_ours(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid;
}

static pid_t fork_exit(int code)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(code);
    return pid;
}

static int stray_gone(void *arg)
{
    return !is_zombie_of_ours(*(pid_t *)arg);
}

/* A sweep never takes the status of a child libuv will reap, whichever comes first in the
 * kernel's list: a stray before it is reaped, one behind it waits for the next turn. */
static void test_reaper_never_steals(void **state)
{
    for (int stray_first = 0; stray_first < 2; stray_first++) {
        uv_loop_t loop;
        struct run r;
        struct dsw_proc_opts o;
        const char *argv[] = {self, "--child", "exit", "5", NULL};
        pid_t stray = 0;
        int deferred = 0;
        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(dsw_proc_reaper_start(&loop, 1), 1);
        assert_int_equal(dsw_proc_reaper_start(&loop, 1), -EALREADY);
        uint64_t before = dsw_proc_strays_reaped();
        run_init(&r, &o, argv);
        o.direct = 1;
        if (stray_first)
            stray = fork_exit(9);
        assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
        if (!stray_first)
            stray = fork_exit(9);
        /* Both are zombies now, and libuv has not run. */
        wait_zombie(dsw_proc_pid(r.p));
        wait_zombie(stray);
        int n = dsw_proc_reap_strays(&loop, &deferred);
        assert_int_equal(deferred, 1);
        assert_int_equal(n, stray_first);
        assert_true(is_zombie_of_ours(dsw_proc_pid(r.p)));
        assert_int_equal(is_zombie_of_ours(stray), !stray_first);
        assert_true(tu_run_until(&loop, is_closed, &r, 10000));
        assert_int_equal(r.st.exit_code, 5);
        assert_true(tu_run_until(&loop, stray_gone, &stray, 10000));
        assert_int_equal(dsw_proc_strays_reaped() - before, 1);
        dsw_proc_reaper_stop();
        dsw_proc_reaper_stop();
        tu_loop_close(&loop);
        run_free(&r);
    }
}

struct storm {
    struct run runs[6];
    pid_t strays[12];
    int nstrays;
};

static int storm_done(void *arg)
{
    struct storm *s = arg;
    for (size_t i = 0; i < DSW_ARRAY_LEN(s->runs); i++)
        if (!s->runs[i].closed)
            return 0;
    for (int i = 0; i < s->nstrays; i++)
        if (is_zombie_of_ours(s->strays[i]))
            return 0;
    return 1;
}

struct reaped_count {
    uint64_t want;
};

static int reaped_at_least(void *arg)
{
    return dsw_proc_strays_reaped() >= ((struct reaped_count *)arg)->want;
}

/* Through SIGCHLD: tracked children (through the trampoline and direct) and strays (our own
 * untracked children, and orphans reparented to us) end together, many times; every tracked
 * exit reaches its callback with its own status and every stray is reaped. */
static void test_reaper_storm(void **state)
{
    static const char *codes[] = {"0", "1", "3", "7", "0", "2"};
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(dsw_proc_reaper_start(&loop, 1), 1);
    uint64_t before = dsw_proc_strays_reaped();
    int strays = 0;
    for (int round = 0; round < 20; round++) {
        struct storm s;
        memset(&s, 0, sizeof(s));
        const char *argv[DSW_ARRAY_LEN(codes)][5];
        for (size_t i = 0; i < DSW_ARRAY_LEN(codes); i++) {
            struct dsw_proc_opts o;
            const char *a[] = {self, "--child", "exit", codes[i], NULL};
            memcpy(argv[i], a, sizeof(a));
            run_init(&s.runs[i], &o, argv[i]);
            o.direct = (int)(i % 2);
            assert_int_equal(dsw_proc_spawn(&loop, &o, &s.runs[i].p), 0);
            s.strays[s.nstrays++] = fork_exit((int)i);
            /* An orphan: its parent exits at once, so it is reparented to us. */
            pid_t mid = fork();
            assert_true(mid >= 0);
            if (mid == 0) {
                if (fork() == 0) {
                    usleep(1000);
                    _exit(4);
                }
                _exit(0);
            }
            s.strays[s.nstrays++] = mid;
            strays += 3;
        }
        assert_true(tu_run_until(&loop, storm_done, &s, 20000));
        for (size_t i = 0; i < DSW_ARRAY_LEN(codes); i++) {
            assert_int_equal(s.runs[i].exits, 1);
            assert_int_equal(s.runs[i].st.exit_code, atoi(codes[i]));
            run_free(&s.runs[i]);
        }
    }
    /* The orphans are not in our list: wait until the count says they were reaped too. */
    struct reaped_count c = {before + (uint64_t)strays};
    assert_true(tu_run_until(&loop, reaped_at_least, &c, 20000));
    assert_int_equal(dsw_proc_strays_reaped() - before, strays);
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    int rc = waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT);
    assert_true(rc == -1 || si.si_pid == 0); /* no zombie of ours left */
    dsw_proc_reaper_stop();
    tu_loop_close(&loop);
}

/* Not PID 1 and not a subreaper: nothing to do; a subreaper: reaping. In a child of ours, which
 * does not inherit our subreaper flag. */
static void test_reaper_when_needed(void **state)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uv_loop_t loop;
        if (uv_loop_init(&loop) || dsw_proc_reaper_start(&loop, 0) != 0)
            _exit(1);
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 || dsw_proc_reaper_start(&loop, 0) != 1)
            _exit(2);
        /* A stray left before the start is reaped by the first sweep. */
        dsw_proc_reaper_stop();
        pid_t z = fork();
        if (z == 0)
            _exit(0);
        while (!is_zombie_of_ours(z))
            usleep(1000);
        if (dsw_proc_reaper_start(&loop, 0) != 1 || is_zombie_of_ours(z))
            _exit(3);
        dsw_proc_reaper_stop();
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(uv_loop_close(&loop) == 0 ? 0 : 4);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], DSW_PROC_TRAMPOLINE_ARG))
        return dsw_proc_trampoline_main(argc, argv);
    if (argc > 2 && !strcmp(argv[1], "--child"))
        return child_main(argc - 2, argv + 2);
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return 1;
    self[n] = '\0';
    /* Orphaned grandchildren come back to us, so tests can reap them and see how they died. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        return 1;
    signal(SIGPIPE, SIG_IGN); /* as the daemon does: a dead child's pipe gives EPIPE */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_killed_by_signal),
        cmocka_unit_test(test_lines_before_exit),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_flood),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_terminate_escalates),
        cmocka_unit_test(test_timeout_escalates),
        cmocka_unit_test(test_close_while_running),
        cmocka_unit_test(test_drain_cap),
        cmocka_unit_test(test_escape_contained),
        cmocka_unit_test(test_group_and_cwd),
        cmocka_unit_test(test_no_inherited_fds),
        cmocka_unit_test(test_exec_failures),
        cmocka_unit_test(test_trampoline_parent_check),
        cmocka_unit_test(test_trampoline_pdeathsig),
        cmocka_unit_test(test_default_trampoline),
        cmocka_unit_test(test_env_build),
        cmocka_unit_test(test_env_child),
        cmocka_unit_test(test_stdin_pipe),
        cmocka_unit_test(test_stdin_errors),
        cmocka_unit_test(test_adopt),
        cmocka_unit_test(test_adopt_refused),
        cmocka_unit_test(test_first_line_ms),
        cmocka_unit_test(test_statuses_preserved),
        cmocka_unit_test(test_signals_forwarded),
        cmocka_unit_test(test_close_at_once),
        cmocka_unit_test(test_stopped_supervisor),
        cmocka_unit_test(test_reaper_never_steals),
        cmocka_unit_test(test_reaper_storm),
        cmocka_unit_test(test_reaper_when_needed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
