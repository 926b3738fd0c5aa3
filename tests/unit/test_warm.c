/* warm: the pool and the runner protocol against real Python (python3) running
 * libexec/dsw-warm-runner.py with tests/support/warm_standin.py in place of Dagster: readiness,
 * hand-over, exit codes, exceptions, runners that die before use or never become ready,
 * recycling by age and by call, cancel and timeout of a warm run, and the request never on a
 * command line. The test binary doubles as the trampoline, as in test_proc. */
#include "testutil.h"

#include "dsw/buf.h"
#include "dsw/metrics.h"
#include "dsw/proc.h"
#include "dsw/warm.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char self[PATH_MAX], runner[PATH_MAX], pypath[PATH_MAX + 16];
static const char *python = "/usr/bin/python3";

/* ---- fixtures ---- */

struct ctx {
    uv_loop_t loop;
    struct dsw_warm *w;
    int closed;
    int old_pid; /* for different_ready */
    const char *env[8];
};

struct run {
    struct dsw_proc *p;
    struct dsw_proc_exit st;
    int exits, closed;
    struct dsw_buf out; /* "O:line" / "E:line" */
};

static void ctx_init(struct ctx *c, struct dsw_warm_opts *o, unsigned n, const char *import_mode)
{
    static char mode[64];
    memset(c, 0, sizeof(*c));
    dsw_metrics_reset();
    assert_int_equal(uv_loop_init(&c->loop), 0);
    snprintf(mode, sizeof(mode), "WARM_STANDIN_IMPORT=%s", import_mode);
    c->env[0] = "PATH=/usr/bin:/bin";
    c->env[1] = pypath;
    c->env[2] = "PYTHONDONTWRITEBYTECODE=1";
    c->env[3] = mode;
    c->env[4] = "DSW_WARM_TEST_ENV=1";
    memset(o, 0, sizeof(*o));
    o->n = n;
    o->python = python;
    o->runner = runner;
    o->imports = "warm_standin json";
    o->entry = "warm_standin:main";
    o->env = c->env;
    o->trampoline = self;
    o->backoff_ms = 50;
    o->backoff_max_ms = 200;
}

static void ctx_start(struct ctx *c, const struct dsw_warm_opts *o)
{
    assert_int_equal(dsw_warm_init(&c->loop, o, &c->w), 0);
}

static void on_pool_closed(void *arg)
{
    ((struct ctx *)arg)->closed++;
}

static int is_pool_closed(void *arg)
{
    return ((struct ctx *)arg)->closed;
}

static void ctx_finish(struct ctx *c)
{
    dsw_warm_close(c->w, on_pool_closed, c);
    assert_true(tu_run_until(&c->loop, is_pool_closed, c, 10000));
    assert_int_equal(c->closed, 1);
    assert_true(dsw_metrics_value(DSW_METRIC_WARM_READY, NULL, NULL) == 0);
    tu_loop_close(&c->loop);
}

static int ready_1(void *arg)
{
    return dsw_warm_ready(((struct ctx *)arg)->w) >= 1;
}

static int ready_2(void *arg)
{
    return dsw_warm_ready(((struct ctx *)arg)->w) >= 2;
}

static int ready_pid(struct ctx *c)
{
    int pid = 0;
    assert_true(tu_run_until(&c->loop, ready_1, c, 20000));
    assert_int_equal(dsw_warm_ready_pids(c->w, &pid, 1), 1);
    return pid;
}

/* The runner itself: the child of the supervisor that dsw_proc_pid names (see trampoline.h). */
static int command_of(int sup)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0, ppid = 0;
    char path[300], buf[512], *rp;
    while (d && !found && (e = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = e->d_name[0] > '0' && e->d_name[0] <= '9' ? fopen(path, "r") : NULL;
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        if ((rp = strrchr(buf, ')')) && sscanf(rp + 1, " %*c %d", &ppid) == 1 && ppid == sup)
            found = atoi(e->d_name);
    }
    if (d)
        closedir(d);
    assert_true(found > 0);
    return found;
}

static double failures(void)
{
    return dsw_metrics_value(DSW_METRIC_WARM_FAILURES, NULL, NULL);
}

/* ---- a taken run ---- */

static void run_line(struct dsw_proc *p, enum dsw_proc_stream s, const char *line, size_t len,
                     int truncated, void *arg)
{
    struct run *r = arg;
    assert_int_equal(r->exits, 0);
    assert_int_equal(dsw_buf_printf(&r->out, "%c:%s\n", s == DSW_PROC_STDOUT ? 'O' : 'E', line), 0);
}

static void run_closed(void *arg)
{
    ((struct run *)arg)->closed++;
}

static void run_exit(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct run *r = arg;
    assert_ptr_equal(p, r->p);
    r->exits++;
    r->st = *st;
    dsw_proc_close(p, run_closed, r);
}

static int run_done(void *arg)
{
    return ((struct run *)arg)->closed;
}

static int run_sleeping(void *arg)
{
    return strstr(dsw_buf_str(&((struct run *)arg)->out), "O:sleeping ") != NULL;
}

static struct dsw_proc_hooks hooks_for(struct run *r)
{
    memset(r, 0, sizeof(*r));
    dsw_buf_init(&r->out, 1 << 20);
    return (struct dsw_proc_hooks){
        .kill_grace_ms = 5000, .on_line = run_line, .on_exit = run_exit, .arg = r};
}

static int take(struct ctx *c, struct run *r, const struct dsw_proc_hooks *h, const char *cmd,
                const char *json)
{
    const char *args[] = {"api", cmd, json, NULL};
    return dsw_warm_take(c->w, args, h, &r->p);
}

/* Take a ready runner for json and run it to the end. */
static void take_and_wait(struct ctx *c, struct run *r, const char *json)
{
    struct dsw_proc_hooks h = hooks_for(r);
    ready_pid(c);
    assert_int_equal(take(c, r, &h, "execute_run", json), 0);
    assert_non_null(r->p);
    assert_true(tu_run_until(&c->loop, run_done, r, 20000));
    assert_int_equal(r->exits, 1);
}

/* ---- tests ---- */

static int different_ready(void *arg)
{
    struct ctx *c = arg;
    int pid = 0;
    return dsw_warm_ready_pids(c->w, &pid, 1) == 1 && pid != c->old_pid;
}

static void test_handover(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    struct run r;
    char want[128];
    ctx_init(&c, &o, 1, "ok");
    ctx_start(&c, &o);
    int pid = ready_pid(&c), cmd = command_of(pid);
    assert_true(dsw_metrics_value(DSW_METRIC_WARM_READY, NULL, NULL) == 1);
    take_and_wait(&c, &r, "{\"pipeline_run_id\": \"run-1\"}");
    assert_int_equal(r.st.pid, pid);
    assert_int_equal(r.st.exit_code, 0);
    assert_int_equal(r.st.killed, DSW_PROC_NOT_KILLED);
    assert_true(r.st.first_line_ms >= 0 && r.st.first_line_ms < 5000);
    assert_int_equal(r.st.lines, 2); /* the runner's ready line went to the pool */
    snprintf(want, sizeof(want), "O:standin execute_run run-1 %d\nE:standin done\n", cmd);
    assert_string_equal(dsw_buf_str(&r.out), want);
    dsw_buf_free(&r.out);
    /* The slot is refilled with a new runner. */
    c.old_pid = pid;
    assert_true(tu_run_until(&c.loop, different_ready, &c, 20000));
    /* resume_run is the other command word. */
    struct dsw_proc_hooks h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "resume_run", "{\"pipeline_run_id\": \"run-2\"}"), 0);
    assert_true(tu_run_until(&c.loop, run_done, &r, 20000));
    assert_non_null(strstr(dsw_buf_str(&r.out), "O:standin resume_run run-2 "));
    dsw_buf_free(&r.out);
    /* And execute_step, a step's (docs/steps.md §2), on the next runner. */
    c.old_pid = r.st.pid;
    assert_true(tu_run_until(&c.loop, different_ready, &c, 20000));
    h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "execute_step", "{\"pipeline_run_id\": \"run-3\"}"), 0);
    assert_true(tu_run_until(&c.loop, run_done, &r, 20000));
    assert_int_equal(r.st.exit_code, 0);
    assert_non_null(strstr(dsw_buf_str(&r.out), "O:standin execute_step run-3 "));
    dsw_buf_free(&r.out);
    assert_true(failures() == 0);
    ctx_finish(&c);
}

/* dsw_warm_set_limit: never more runners than the free slots. */
static void test_limit(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    struct run r;
    ctx_init(&c, &o, 2, "ok");
    ctx_start(&c, &o);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    /* Lowering the limit retires nobody. */
    dsw_warm_set_limit(c.w, 1);
    assert_int_equal(dsw_warm_ready(c.w), 2);
    /* A take is not refilled: one ready left, which is the limit. By the run's end a refill
     * would have started (it is spawned on the loop turn after the take). */
    take_and_wait(&c, &r, "{\"pipeline_run_id\": \"run-1\"}");
    assert_int_equal(r.st.exit_code, 0);
    dsw_buf_free(&r.out);
    assert_int_equal(dsw_warm_ready(c.w), 1);
    assert_int_equal(dsw_warm_starting(c.w), 0);
    /* Nor at 0 slots free. */
    dsw_warm_set_limit(c.w, 0);
    take_and_wait(&c, &r, "{\"pipeline_run_id\": \"run-2\"}");
    dsw_buf_free(&r.out);
    assert_int_equal(dsw_warm_ready(c.w) + dsw_warm_starting(c.w), 0);
    /* Slots free again: refilled up to n. */
    dsw_warm_set_limit(c.w, 5);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    assert_true(failures() == 0);
    ctx_finish(&c);
}

static void test_exit_codes(void **state)
{
    static const struct {
        const char *json;
        int code;
        const char *err; /* a stderr line that must be there */
    } cases[] = {
        {"{\"standin\": \"ok\"}", 0, "E:standin done\n"},
        {"{\"standin\": \"exit\", \"code\": 0}", 0, NULL},
        {"{\"standin\": \"exit\", \"code\": 1}", 1, NULL},
        {"{\"standin\": \"exit\", \"code\": 3}", 3, NULL},
        {"{\"standin\": \"exit_none\"}", 0, NULL},
        {"{\"standin\": \"exit_str\"}", 1, "E:standin: exit with a message\n"},
        {"{\"standin\": \"raise\"}", 1, "E:RuntimeError: standin boom\n"},
        {"{\"standin\": \"quiet\"}", 0, NULL},
        {"not json", 1, "E:json.decoder.JSONDecodeError: "},
    };
    struct ctx c;
    struct dsw_warm_opts o;
    ctx_init(&c, &o, 2, "ok");
    ctx_start(&c, &o);
    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
        struct run r;
        take_and_wait(&c, &r, cases[i].json);
        if (r.st.exit_code != cases[i].code || r.st.term_signal)
            fail_msg("%s: exit %d signal %d, output:\n%s", cases[i].json, r.st.exit_code,
                     r.st.term_signal, dsw_buf_str(&r.out));
        if (cases[i].err && !strstr(dsw_buf_str(&r.out), cases[i].err))
            fail_msg("%s: no \"%s\" in:\n%s", cases[i].json, cases[i].err, dsw_buf_str(&r.out));
        if (i == 7) /* quiet: the run said nothing */
            assert_int_equal(r.st.first_line_ms, -1);
        dsw_buf_free(&r.out);
    }
    assert_true(failures() == 0);
    ctx_finish(&c);
}

/* The process is dead (a zombie: its descriptors are closed) but not reaped yet. */
static void wait_zombie(int pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && rp[2] == 'Z')
            return;
        usleep(10000);
    }
    fail_msg("pid %d did not die", pid);
}

static int failed_once_and_ready(void *arg)
{
    return failures() >= 1 && ready_1(arg);
}

static void test_killed_before_use(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    ctx_init(&c, &o, 1, "ok");
    ctx_start(&c, &o);
    int pid = ready_pid(&c);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_true(tu_run_until(&c.loop, failed_once_and_ready, &c, 20000));
    assert_true(failures() == 1);
    int pid2 = ready_pid(&c);
    assert_true(pid2 != pid);

    /* Found dead at hand-over, before the loop saw it exit: the next ready one takes the run,
     * the dead one is counted. */
    ctx_finish(&c);
    ctx_init(&c, &o, 2, "ok");
    ctx_start(&c, &o);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    int pids[2];
    assert_int_equal(dsw_warm_ready_pids(c.w, pids, 2), 2);
    /* The runner itself (its supervisor follows it). */
    assert_int_equal(kill(command_of(pids[0]), SIGKILL), 0);
    wait_zombie(pids[0]);
    struct run r;
    struct dsw_proc_hooks h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "execute_run", "{\"standin\": \"exit\", \"code\": 4}"), 0);
    assert_int_equal(dsw_proc_pid(r.p), pids[1]);
    assert_true(tu_run_until(&c.loop, run_done, &r, 20000));
    assert_int_equal(r.st.exit_code, 4);
    assert_true(failures() == 1);
    dsw_buf_free(&r.out);

    /* Only a dead one: -EAGAIN, the caller goes cold. */
    ready_pid(&c);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    assert_int_equal(dsw_warm_ready_pids(c.w, pids, 2), 2);
    assert_int_equal(kill(command_of(pids[0]), SIGKILL), 0);
    assert_int_equal(kill(command_of(pids[1]), SIGKILL), 0);
    wait_zombie(pids[0]);
    wait_zombie(pids[1]);
    h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "execute_run", "{}"), -EAGAIN);
    assert_null(r.p);
    assert_int_equal(r.exits, 0);
    dsw_buf_free(&r.out);
    ctx_finish(&c);
    assert_true(failures() == 3);
}

static int failed_twice(void *arg)
{
    return failures() >= 2;
}

static void test_never_ready(void **state)
{
    static const char *modes[] = {"hang", "fail"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(modes); i++) {
        struct ctx c;
        struct dsw_warm_opts o;
        struct run r;
        ctx_init(&c, &o, 1, modes[i]);
        o.ready_timeout_ms = 300;
        ctx_start(&c, &o);
        uint64_t t0 = uv_hrtime();
        assert_true(tu_run_until(&c.loop, failed_twice, &c, 20000));
        uint64_t ms = (uv_hrtime() - t0) / 1000000;
        assert_int_equal(dsw_warm_ready(c.w), 0);
        /* hang: two ready timeouts and a backoff; fail: at least the backoff. */
        assert_true(ms >= (i == 0 ? 600 : 50));
        struct dsw_proc_hooks h = hooks_for(&r);
        assert_int_equal(take(&c, &r, &h, "execute_run", "{}"), -EAGAIN);
        dsw_buf_free(&r.out);
        ctx_finish(&c);
    }
}

static void test_recycle_by_age(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    ctx_init(&c, &o, 1, "ok");
    o.max_age_ms = 700;
    ctx_start(&c, &o);
    int pid = ready_pid(&c);
    uint64_t t0 = uv_hrtime();
    c.old_pid = pid;
    assert_true(tu_run_until(&c.loop, different_ready, &c, 20000));
    assert_true((uv_hrtime() - t0) / 1000000 >= 300);
    errno = 0;
    assert_true(kill(pid, 0) == -1 && errno == ESRCH);
    assert_true(failures() == 0);
    ctx_finish(&c);
}

static void test_recycle_call(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    int old[2], now[2];
    ctx_init(&c, &o, 2, "ok");
    ctx_start(&c, &o);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    assert_int_equal(dsw_warm_ready_pids(c.w, old, 2), 2);
    dsw_warm_recycle(c.w);
    assert_int_equal(dsw_warm_ready(c.w), 0);
    assert_true(dsw_metrics_value(DSW_METRIC_WARM_READY, NULL, NULL) == 0);
    assert_true(tu_run_until(&c.loop, ready_2, &c, 20000));
    assert_int_equal(dsw_warm_ready_pids(c.w, now, 2), 2);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            assert_true(now[i] != old[j]);
    for (int i = 0; i < 2; i++) {
        errno = 0;
        assert_true(kill(old[i], 0) == -1 && errno == ESRCH);
    }
    assert_true(failures() == 0);
    ctx_finish(&c);
    for (int i = 0; i < 2; i++) {
        errno = 0;
        assert_true(kill(-now[i], 0) == -1 && errno == ESRCH);
    }
}

static void test_cancel_and_timeout(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    ctx_init(&c, &o, 1, "ok");
    ctx_start(&c, &o);
    for (int timeout = 0; timeout < 2; timeout++) {
        struct run r;
        struct dsw_proc_hooks h = hooks_for(&r);
        h.timeout_ms = timeout ? 500 : 0;
        ready_pid(&c);
        assert_int_equal(take(&c, &r, &h, "execute_run", "{\"standin\": \"sleep\"}"), 0);
        assert_true(tu_run_until(&c.loop, run_sleeping, &r, 20000));
        if (!timeout)
            dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
        assert_true(tu_run_until(&c.loop, run_done, &r, 20000));
        assert_int_equal(r.st.term_signal, SIGTERM);
        assert_int_equal(r.st.killed, timeout ? DSW_PROC_TIMEOUT : DSW_PROC_TERMINATE);
        assert_int_equal(r.st.sigkilled, 0);
        if (timeout)
            assert_true(r.st.duration_ms >= 490 && r.st.duration_ms < 5000);
        dsw_buf_free(&r.out);
    }
    assert_true(failures() == 0);
    ctx_finish(&c);
}

/* Does any process's command line contain needle? Also finds the runner's, as a control. */
static int cmdline_has(const char *needle, int *runner_seen)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;
    assert_non_null(d);
    while ((e = readdir(d))) {
        char path[300], buf[1 << 16];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++)
            if (!buf[i])
                buf[i] = ' ';
        buf[n] = '\0';
        found |= strstr(buf, needle) != NULL;
        *runner_seen |= strstr(buf, DSW_WARM_RUNNER_NAME " --imports warm_standin") != NULL;
    }
    closedir(d);
    return found;
}

/* The request reaches the run, never a command line; the runner has the environment, group and
 * stdin of a cold child. */
static void test_request_not_on_cmdline(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    struct run r;
    const char *json =
        "{\"__class__\": \"ExecuteRunArgs\", \"pipeline_run_id\": \"secret-7f3a9c\", "
        "\"standin\": \"sleep\"}";
    ctx_init(&c, &o, 1, "ok");
    ctx_start(&c, &o);
    int pid = ready_pid(&c), seen = 0;
    struct dsw_proc_hooks h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "execute_run", json), 0);
    assert_true(tu_run_until(&c.loop, run_sleeping, &r, 20000));
    assert_non_null(strstr(dsw_buf_str(&r.out), "O:standin execute_run secret-7f3a9c "));
    assert_false(cmdline_has("secret-7f3a9c", &seen));
    assert_true(seen);
    assert_int_equal(getpgid(pid), pid);
    assert_int_equal(getsid(pid), pid);
    char path[64], link[PATH_MAX], env[4096];
    snprintf(path, sizeof(path), "/proc/%d/environ", pid);
    FILE *f = fopen(path, "r"); /* a /proc file has no size: tu_read_file would read nothing */
    assert_non_null(f);
    size_t n = fread(env, 1, sizeof(env), f), k = 0;
    fclose(f);
    for (size_t i = 0; i < n; i += strlen(env + i) + 1, k++)
        assert_string_equal(env + i, c.env[k]);
    assert_null(c.env[k]);
    snprintf(path, sizeof(path), "/proc/%d/fd/0", pid);
    ssize_t ln = readlink(path, link, sizeof(link) - 1);
    assert_true(ln > 0);
    link[ln] = '\0';
    assert_string_equal(link, "/dev/null");
    dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
    assert_true(tu_run_until(&c.loop, run_done, &r, 20000));
    dsw_buf_free(&r.out);
    ctx_finish(&c);
}

static void test_options_and_off(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    struct dsw_warm *w = (struct dsw_warm *)&c;
    ctx_init(&c, &o, 1, "ok");
    o.python = NULL;
    assert_int_equal(dsw_warm_init(&c.loop, &o, &w), -EINVAL);
    assert_null(w);
    o.python = python;
    o.entry = "no_colon";
    assert_int_equal(dsw_warm_init(&c.loop, &o, &w), -EINVAL);
    o.entry = "warm_standin:main";
    o.runner = "/nonexistent/dsw-warm-runner.py";
    assert_int_equal(dsw_warm_init(&c.loop, &o, &w), -ENOENT);
    /* Off: nothing starts, take says -EAGAIN, no interpreter matches. */
    o.n = 0;
    o.python = NULL;
    ctx_start(&c, &o);
    struct run r;
    struct dsw_proc_hooks h = hooks_for(&r);
    assert_int_equal(take(&c, &r, &h, "execute_run", "{}"), -EAGAIN);
    assert_int_equal(dsw_warm_python_matches(c.w, python), 0);
    ctx_finish(&c);
    /* On: exact interpreter only; no args is an error; take after close is refused. */
    ctx_init(&c, &o, 1, "ok");
    ctx_start(&c, &o);
    assert_int_equal(dsw_warm_python_matches(c.w, python), 1);
    assert_int_equal(dsw_warm_python_matches(c.w, "/usr/bin/python3.11"), 0);
    assert_int_equal(dsw_warm_python_matches(c.w, NULL), 0);
    assert_int_equal(dsw_warm_python_matches(NULL, python), 0);
    const char *none[] = {NULL};
    assert_int_equal(dsw_warm_take(c.w, none, &h, &r.p), -EINVAL);
    dsw_warm_close(c.w, on_pool_closed, &c);
    assert_int_equal(take(&c, &r, &h, "execute_run", "{}"), -ESHUTDOWN);
    assert_true(tu_run_until(&c.loop, is_pool_closed, &c, 10000));
    tu_loop_close(&c.loop);
    dsw_buf_free(&r.out);
}

/* Closing a pool whose runners are still importing leaves nothing behind. */
static void test_close_while_starting(void **state)
{
    struct ctx c;
    struct dsw_warm_opts o;
    ctx_init(&c, &o, 3, "hang");
    ctx_start(&c, &o);
    uv_run(&c.loop, UV_RUN_NOWAIT);
    ctx_finish(&c);
    assert_true(failures() == 0);
}

static void test_runner_path(void **state)
{
    char *p = NULL;
    /* A build in the source tree finds ../libexec; a build anywhere finds the copy CMake puts
     * beside the binary: either way there is a readable runner. */
    int rc = dsw_warm_runner_path(&p);
    assert_int_equal(rc, 0);
    assert_non_null(p);
    assert_true(strstr(p, "/libexec/") != NULL ||
                strstr(p, "/" DSW_WARM_RUNNER_NAME) ==
                    p + strlen(p) - strlen("/" DSW_WARM_RUNNER_NAME));
    assert_int_equal(access(p, R_OK), 0);
    free(p);
}

/* The places in messages are the places searched: absolute, in order, and the runner found is
 * one of them. */
static void test_runner_places(void **state)
{
    char places[3 * PATH_MAX], exe[PATH_MAX], want[PATH_MAX + 64], *p = NULL;
    dsw_warm_runner_places(places, sizeof(places));
    dsw_strlcpy(exe, self, sizeof(exe));
    *strrchr(exe, '/') = '\0';
    const char *const rel[] = {"/../libexec/dagster-sqs-worker/" DSW_WARM_RUNNER_NAME,
                               "/../libexec/" DSW_WARM_RUNNER_NAME, "/" DSW_WARM_RUNNER_NAME};
    const char *at = places;
    for (size_t i = 0; i < 3; i++) {
        snprintf(want, sizeof(want), "%s%s%s", i == 0 ? "" : i == 2 ? " and " : ", ", exe, rel[i]);
        if (strncmp(at, want, strlen(want)) != 0)
            fail_msg("'%s' lacks '%s' at '%s'", places, want, at);
        at += strlen(want);
    }
    assert_string_equal(at, "");
    assert_int_equal(dsw_warm_runner_path(&p), 0);
    int found = 0;
    for (size_t i = 0; i < 3; i++) {
        snprintf(want, sizeof(want), "%s%s", exe, rel[i]);
        char *real = realpath(want, NULL);
        found |= real && strcmp(real, p) == 0;
        free(real);
    }
    assert_true(found);
    free(p);
    /* A short buffer is cut, never overrun. */
    char small[16];
    memset(small, 'x', sizeof(small));
    dsw_warm_runner_places(small, 10);
    assert_int_equal(strlen(small), 9);
    assert_int_equal(small[15], 'x');
}

static void test_check(void **state)
{
    char err[2 * PATH_MAX];
    assert_int_equal(dsw_warm_check(python, runner, err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(dsw_warm_check("python3", NULL, err, sizeof(err)), 0); /* in $PATH; found */
    assert_int_equal(dsw_warm_check(NULL, runner, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "runs.python: is required when runs.warm > 0");
    assert_int_equal(dsw_warm_check("/no/such/python", runner, err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "runs.python: /no/such/python is not an executable file (No such "
                             "file or directory)");
    /* Not executable, and a directory, are no interpreters either. */
    char *dir = tu_tmpdir(), plain[PATH_MAX];
    snprintf(plain, sizeof(plain), "%s/python", dir);
    tu_write_file(plain, "#!/bin/sh\n", 0644);
    assert_int_equal(dsw_warm_check(plain, runner, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "is not an executable file"));
    tu_rm_rf(dir);
    free(dir);
    assert_int_equal(dsw_warm_check("/tmp", runner, err, sizeof(err)), -EACCES);
    assert_int_equal(dsw_warm_check("no-such-python-xyz", runner, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "no-such-python-xyz is not found in $PATH"));
    assert_int_equal(dsw_warm_check(python, "/no/such/runner.py", err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "runs.warm_runner: /no/such/runner.py is not a readable file (No "
                             "such file or directory)");
    assert_int_equal(dsw_warm_check(python, "/tmp", err, sizeof(err)), -EISDIR);
}

/* dsw_warm_init with an explicit runner that is not there: -ENOENT, and the message names the
 * path (the daemon logs it). */
static void test_init_names_missing_runner(void **state)
{
    uv_loop_t loop;
    struct dsw_warm *w = (struct dsw_warm *)1;
    char why[2 * PATH_MAX];
    struct dsw_warm_opts o = {.n = 1, .python = python, .runner = "/no/such/runner.py"};
    assert_int_equal(uv_loop_init(&loop), 0);
    int rc = dsw_warm_init(&loop, &o, &w);
    assert_int_equal(rc, -ENOENT);
    assert_null(w);
    assert_string_equal(dsw_warm_strerror(rc, o.python, o.runner, why, sizeof(why)),
                        "runs.warm_runner: /no/such/runner.py is not a readable file (No such "
                        "file or directory)");
    /* Nothing wrong with the setup: the errno's text. */
    assert_string_equal(dsw_warm_strerror(-EMFILE, python, runner, why, sizeof(why)),
                        strerror(EMFILE));
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], DSW_PROC_TRAMPOLINE_ARG))
        return dsw_proc_trampoline_main(argc, argv);
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return 1;
    self[n] = '\0';
    const char *src = getenv("DSW_SOURCE_DIR");
    if (src) {
        snprintf(runner, sizeof(runner), "%s/libexec/%s", src, DSW_WARM_RUNNER_NAME);
    } else {
        char *p = NULL;
        if (dsw_warm_runner_path(&p) != 0) {
            fprintf(stderr, "test_warm: set DSW_SOURCE_DIR (the runner script is not found)\n");
            return 1;
        }
        dsw_strlcpy(runner, p, sizeof(runner));
        free(p);
    }
    /* <src>/libexec/dsw-warm-runner.py -> <src>/tests/support */
    snprintf(pypath, sizeof(pypath), "PYTHONPATH=%s", runner);
    *strrchr(pypath, '/') = '\0';
    *strrchr(pypath, '/') = '\0';
    dsw_strlcpy(pypath + strlen(pypath), "/tests/support", sizeof(pypath) - strlen(pypath));
    if (getenv("DSW_TEST_PYTHON"))
        python = getenv("DSW_TEST_PYTHON");
    signal(SIGPIPE, SIG_IGN); /* as the daemon does */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handover),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_killed_before_use),
        cmocka_unit_test(test_never_ready),
        cmocka_unit_test(test_recycle_by_age),
        cmocka_unit_test(test_recycle_call),
        cmocka_unit_test(test_cancel_and_timeout),
        cmocka_unit_test(test_request_not_on_cmdline),
        cmocka_unit_test(test_options_and_off),
        cmocka_unit_test(test_close_while_starting),
        cmocka_unit_test(test_runner_path),
        cmocka_unit_test(test_runner_places),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_init_names_missing_runner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
