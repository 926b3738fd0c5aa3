/* Containment: nothing a run starts outlives the run's supervision. The command is forker
 * (tests/support/prog_forker.c): a child in its group, and a grandchild that setsid()s and
 * double-forks, so part of the tree is in another session, reparented away from the command,
 * and out of reach of any process-group kill. Each case runs with both trampolines: the dsw-exec
 * helper and the daemon's own re-exec (`dagster-sqs-worker __exec-child`).
 * - kill -9 of the parent (no daemon: a bare process that spawns the trampoline): the whole tree
 *   is gone at once;
 * - through proc.c: stop (SIGTERM), escalation to SIGKILL of a tree that ignores SIGTERM, a
 *   timeout, close; and a command that exits (codes) or dies (signals) by itself leaving its
 *   tree behind: the exit report comes only once the whole tree is gone, and carries exactly
 *   the command's own status;
 * - the daemon (services needed): kill -9 of the daemon running the tree, and a drain (SIGTERM)
 *   that ends it; and the daemon as a subreaper (as PID 1 would be) reaps the strays that are
 *   reparented to it (here: what is left when the supervisor itself is SIGKILLed) without
 *   taking the supervisor's exit status from libuv. */
#include "testutil.h"

#include "dsw/proc.h"
#include "dsw/trampoline.h"
#include "dsw/util.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define NPIDS   4 /* W C G I */
#define WAIT_MS 30000

static char helper[PATH_MAX];
static const char *forker, *daemon_bin;

struct tree {
    char *dir, pidfile[PATH_MAX];
    pid_t pids[NPIDS];
};

static void tree_init(struct tree *t)
{
    memset(t, 0, sizeof(*t));
    t->dir = tu_tmpdir();
    snprintf(t->pidfile, sizeof(t->pidfile), "%s/pids", t->dir);
}

static void tree_free(struct tree *t)
{
    tu_rm_rf(t->dir);
    free(t->dir);
}

/* The pid file, once forker has written it (renamed into place: complete or absent). */
static int tree_read(void *arg)
{
    struct tree *t = arg;
    FILE *f = fopen(t->pidfile, "r");
    int p[NPIDS], ok = 0;
    if (f) {
        ok = fscanf(f, "%d %d %d %d", &p[0], &p[1], &p[2], &p[3]) == NPIDS;
        fclose(f);
    }
    for (int i = 0; ok && i < NPIDS; i++)
        t->pids[i] = p[i];
    return ok;
}

static bool tree_read_b(void *arg)
{
    return tree_read(arg);
}

static bool pid_gone(pid_t pid)
{
    errno = 0;
    return kill(pid, 0) != 0 && errno == ESRCH;
}

/* Gone for good: not even a zombie (the supervisor reaps what it kills). */
static bool tree_gone(void *arg)
{
    const struct tree *t = arg;
    for (int i = 0; i < NPIDS; i++)
        if (!pid_gone(t->pids[i]))
            return false;
    return true;
}

static void assert_tree_alive(const struct tree *t)
{
    for (int i = 0; i < NPIDS; i++) {
        assert_true(t->pids[i] > 0);
        if (!tu_pid_alive(t->pids[i]))
            fail_msg("process %d of the tree is not running", (int)t->pids[i]);
    }
    /* The grandchild really left: another session, so no group kill reaches it. */
    assert_true(getsid(t->pids[2]) != getsid(t->pids[0]));
    assert_int_equal(getsid(t->pids[3]), getsid(t->pids[2]));
}

static void assert_tree_gone(const struct tree *t)
{
    for (int i = 0; i < NPIDS; i++)
        if (!pid_gone(t->pids[i]))
            fail_msg("process %d of the tree (%s) is still there", (int)t->pids[i],
                     (const char *[]){"command", "child", "setsid grandchild",
                                      "double-forked orphan"}[i]);
}

/* Reap a process reparented to us (we are a subreaper): its wait status, or fail. */
static int reap(pid_t pid, uint64_t timeout_ms)
{
    uint64_t end = dsw_now_ms() + timeout_ms;
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return st;
        if (w < 0)
            fail_msg("waitpid(%d): %s", (int)pid, strerror(errno));
        if (dsw_now_ms() >= end)
            fail_msg("process %d did not end", (int)pid);
        usleep(10000);
    }
}

static const char *tramp_name(const char *tramp)
{
    return tramp == helper ? "dsw-exec" : "daemon re-exec";
}

/* ---- (a) kill -9 of the parent, no daemon ---- */

static void parent_killed(const char *tramp)
{
    struct tree t;
    int fds[2];
    tree_init(&t);
    assert_int_equal(pipe(fds), 0);
    pid_t parent = fork();
    assert_true(parent >= 0);
    if (parent == 0) {
        /* What uv_spawn does for the daemon: a new session, then the trampoline form. It dies
         * with the test, whatever happens to the test. */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        alarm(120);
        close(fds[0]);
        pid_t sup = fork();
        if (sup == 0) {
            char ppid[24];
            snprintf(ppid, sizeof(ppid), "%d", (int)getppid());
            setsid();
            execl(tramp, tramp, DSW_TRAMPOLINE_ARG, ppid, forker, t.pidfile, "ignore",
                  (char *)NULL);
            _exit(127);
        }
        if (write(fds[1], &sup, sizeof(sup)) != sizeof(sup))
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    pid_t sup = 0;
    assert_int_equal(read(fds[0], &sup, sizeof(sup)), sizeof(sup));
    close(fds[0]);
    assert_true(tu_wait(tree_read_b, &t, WAIT_MS));
    assert_tree_alive(&t);
    assert_true(tu_pid_alive(sup));
    uint64_t t0 = dsw_now_ms();
    assert_int_equal(kill(parent, SIGKILL), 0);
    int st = 0;
    assert_int_equal(waitpid(parent, &st, 0), parent);
    assert_true(tu_wait(tree_gone, &t, WAIT_MS));
    uint64_t ms = dsw_now_ms() - t0;
    st = reap(sup, WAIT_MS); /* reparented to us */
    fprintf(stderr, "contain (%s): whole tree gone %llu ms after kill -9 of its parent\n",
            tramp_name(tramp), (unsigned long long)ms);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_true(ms < tu_slack_ms()); /* at once: nothing waits here */
    tree_free(&t);
}

static void test_parent_kill9(void **state)
{
    parent_killed(helper);
    parent_killed(daemon_bin);
}

/* ---- (b)-(d) through proc.c ---- */

enum how { H_NONE, H_TERMINATE, H_TIMEOUT, H_CLOSE };

struct prun {
    struct dsw_proc *p;
    struct dsw_proc_exit st;
    int exits, closed, close_called;
    struct tree *t;
};

static void on_closed(void *arg)
{
    ((struct prun *)arg)->closed = 1;
}

static void on_exit_cb(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct prun *r = arg;
    r->exits++;
    r->st = *st;
    /* The report means the whole tree is gone already. */
    assert_tree_gone(r->t);
    if (!r->close_called) {
        r->close_called = 1;
        dsw_proc_close(p, on_closed, r);
    }
}

static int is_closed(void *arg)
{
    return ((struct prun *)arg)->closed;
}

static struct dsw_proc_exit via_proc(const char *tramp, const char *action, enum how how,
                                     uint64_t grace_ms)
{
    uv_loop_t loop;
    struct tree t;
    struct prun r = {0};
    tree_init(&t);
    r.t = &t;
    const char *argv[] = {forker, t.pidfile, action, NULL};
    struct dsw_proc_opts o = {.argv = argv,
                              .trampoline = tramp,
                              .kill_grace_ms = grace_ms,
                              .drain_ms = 20000, /* EOF must come from the tree's death */
                              .on_exit = on_exit_cb,
                              .arg = &r};
    if (how == H_TIMEOUT)
        o.timeout_ms = 1500;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(dsw_proc_spawn(&loop, &o, &r.p), 0);
    assert_true(tu_run_until(&loop, tree_read, &t, WAIT_MS));
    if (!strcmp(action, "sleep") || !strcmp(action, "ignore")) /* the others end by themselves */
        assert_tree_alive(&t);
    if (how == H_TERMINATE)
        dsw_proc_terminate(r.p, DSW_PROC_TERMINATE);
    if (how == H_CLOSE) {
        r.close_called = 1;
        dsw_proc_close(r.p, on_closed, &r);
    }
    assert_true(tu_run_until(&loop, is_closed, &r, WAIT_MS));
    tu_loop_close(&loop);
    assert_int_equal(r.exits, 1);
    assert_tree_gone(&t);
    fprintf(stderr, "contain (%s): %s%s: exit %d signal %d after %llu ms\n", tramp_name(tramp),
            action,
            how == H_TERMINATE ? " + terminate"
            : how == H_TIMEOUT ? " + timeout"
            : how == H_CLOSE   ? " + close"
                               : "",
            r.st.exit_code, r.st.term_signal, (unsigned long long)r.st.duration_ms);
    tree_free(&t);
    return r.st;
}

/* (b) Stop: SIGTERM reaches the command and its group (they die of it); the grandchildren in
 * their own session are killed by the supervisor when the command exits. */
static void test_stop(void **state)
{
    const char *tramps[] = {helper, daemon_bin};
    for (size_t i = 0; i < DSW_ARRAY_LEN(tramps); i++) {
        struct dsw_proc_exit st = via_proc(tramps[i], "sleep", H_TERMINATE, 20000);
        assert_int_equal(st.exit_code, -1);
        assert_int_equal(st.term_signal, SIGTERM);
        assert_int_equal(st.killed, DSW_PROC_TERMINATE);
        assert_int_equal(st.sigkilled, 0);
        assert_true(st.duration_ms < tu_slack_ms() && st.duration_ms < 20000); /* not the grace */
    }
}

/* (c) A tree that ignores SIGTERM: after kill_grace the escalation kills all of it. */
static void test_escalation(void **state)
{
    const char *tramps[] = {helper, daemon_bin};
    for (size_t i = 0; i < DSW_ARRAY_LEN(tramps); i++) {
        struct dsw_proc_exit st = via_proc(tramps[i], "ignore", H_TERMINATE, 300);
        assert_int_equal(st.term_signal, SIGKILL);
        assert_int_equal(st.killed, DSW_PROC_TERMINATE);
        assert_int_equal(st.sigkilled, 1);
        assert_true(st.duration_ms >= 290);
        st = via_proc(tramps[i], "ignore", H_TIMEOUT, 300);
        assert_int_equal(st.term_signal, SIGKILL);
        assert_int_equal(st.killed, DSW_PROC_TIMEOUT);
        assert_int_equal(st.sigkilled, 1);
        st = via_proc(tramps[i], "ignore", H_CLOSE, 60000);
        assert_int_equal(st.term_signal, SIGKILL);
        assert_int_equal(st.killed, DSW_PROC_CLOSED);
        assert_true(st.duration_ms < tu_slack_ms()); /* not the 60 s grace */
    }
}

/* (d) The command ends by itself and leaves its tree: its status is what the daemon sees. */
static void test_statuses(void **state)
{
    static const struct {
        const char *action;
        int code, sig;
    } cases[] = {
        {"exit:0", 0, 0},          {"exit:1", 1, 0},           {"exit:3", 3, 0},
        {"exit:126", 126, 0},      {"signal:15", -1, SIGTERM}, {"signal:9", -1, SIGKILL},
        {"signal:6", -1, SIGABRT}, {"signal:3", -1, SIGQUIT},  {"signal:10", -1, SIGUSR1},
    };
    const char *tramps[] = {helper, daemon_bin};
    for (size_t k = 0; k < DSW_ARRAY_LEN(tramps); k++) {
        for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
            struct dsw_proc_exit st = via_proc(tramps[k], cases[i].action, H_NONE, 1000);
            if (st.exit_code != cases[i].code || st.term_signal != cases[i].sig)
                fail_msg("%s (%s): exit %d signal %d", cases[i].action, tramp_name(tramps[k]),
                         st.exit_code, st.term_signal);
            assert_int_equal(st.killed, DSW_PROC_NOT_KILLED);
            assert_int_equal(st.sigkilled, 0);
        }
    }
}

/* ---- (e) the daemon ---- */

TU_WORKER_FIXTURE(true)

/* A small /proc file ("" when it cannot be read). */
static void read_proc(pid_t pid, const char *what, char *buf, size_t n)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, what);
    FILE *f = fopen(path, "r");
    size_t r = f ? fread(buf, 1, n - 1, f) : 0;
    buf[r] = '\0';
    if (f)
        fclose(f);
}

static pid_t ppid_of(pid_t pid)
{
    char buf[512], *p;
    int ppid = 0;
    read_proc(pid, "stat", buf, sizeof(buf));
    if ((p = strrchr(buf, ')')) != NULL)
        sscanf(p + 1, " %*c %d", &ppid);
    return (pid_t)ppid;
}

static char *comm_of(pid_t pid)
{
    char buf[64];
    read_proc(pid, "comm", buf, sizeof(buf));
    buf[strcspn(buf, "\n")] = '\0';
    return strdup(buf);
}

static bool pid_gone_b(void *arg)
{
    return !tu_pid_alive(*(pid_t *)arg);
}

/* Start the daemon (as a subreaper when subreaper) on one run whose command is forker; return
 * the supervisor's pid. */
static struct tu_daemon *daemon_with_tree(struct tree *t, const char *action, char id[37],
                                          pid_t *sup, bool subreaper)
{
    tree_init(t);
    tu_run_new(id, "STARTING", NULL);
    tu_env_set(&env, "DSW_RUNS_COMMAND", "%s", forker);
    tu_env_set(&env, "DSW_RUNS_ENV_FORKER_PIDFILE", "%s", t->pidfile);
    tu_env_set(&env, "DSW_RUNS_ENV_FORKER_ACTION", "%s", action);
    tu_send_run(&q, id, NULL, 0);
    struct tu_daemon *d;
    if (subreaper)
        d = tu_spawn(
            &env, (char *const[]){(char *)forker, "--subreaper", (char *)daemon_bin, "run", NULL});
    else
        d = tu_daemon_start(&env, (const char *const[]){"run", NULL});
    assert_true(tu_wait(tree_read_b, t, WAIT_MS));
    assert_tree_alive(t);
    /* The command's parent is the supervisor, the daemon's dsw-exec found beside it. */
    *sup = ppid_of(t->pids[0]);
    assert_true(*sup > 0);
    assert_true(tu_eq_free(comm_of(*sup), "dsw-exec"));
    return d;
}

static void test_daemon_kill9(void **state)
{
    struct tree t;
    char id[37];
    pid_t sup = 0;
    struct tu_daemon *d = daemon_with_tree(&t, "ignore", id, &sup, false);
    uint64_t t0 = dsw_now_ms();
    tu_daemon_signal(d, SIGKILL);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 128 + SIGKILL);
    assert_true(tu_wait(tree_gone, &t, WAIT_MS));
    uint64_t ms = dsw_now_ms() - t0;
    assert_true(tu_wait(pid_gone_b, &sup, WAIT_MS));
    fprintf(stderr, "contain (daemon): whole tree gone %llu ms after kill -9 of the daemon\n",
            (unsigned long long)ms);
    assert_true(ms < tu_slack_ms());                        /* at once: nothing waits here */
    if (waitpid(sup, NULL, WNOHANG) < 0 && errno != ECHILD) /* reparented to us, or not */
        fail_msg("waitpid: %s", strerror(errno));
    tree_free(&t);
}

static void test_daemon_drain(void **state)
{
    struct tree t;
    char id[37];
    pid_t sup = 0;
    tu_env_set(&env, "DSW_RUNS_DRAIN_TIMEOUT", "1s");
    tu_env_set(&env, "DSW_RUNS_KILL_GRACE", "500ms");
    struct tu_daemon *d = daemon_with_tree(&t, "ignore", id, &sup, false);
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
    assert_tree_gone(&t);
    assert_true(tu_run_event_has(id, "killed by signal 9"));
    tree_free(&t);
}

static bool zombie_or_gone(pid_t pid)
{
    char buf[512], *p;
    read_proc(pid, "stat", buf, sizeof(buf));
    return !(p = strrchr(buf, ')')) || p[1] != ' ' || p[2] == 'Z';
}

static bool strays_zombie_or_gone(void *arg)
{
    const struct tree *t = arg;
    for (int i = 1; i < NPIDS; i++)
        if (!zombie_or_gone(t->pids[i]))
            return false;
    return true;
}

static bool killed9_recorded(void *arg)
{
    return tu_run_event_has(arg, "Run worker was killed by signal 9");
}

static void test_daemon_reaps_strays(void **state)
{
    struct tree t;
    char id[37];
    pid_t sup = 0;
    struct tu_daemon *d = daemon_with_tree(&t, "ignore", id, &sup, true);
    assert_true(tu_daemon_log_has(d, "child subreaper: reaping stray child processes"));
    /* The supervisor dies without its cleanup: the command dies with it (PR_SET_PDEATHSIG),
     * the rest of the tree is reparented to the nearest subreaper, the daemon. */
    pid_t dpid = ppid_of(sup);
    assert_true(dpid > 0);
    assert_int_equal(kill(sup, SIGKILL), 0);
    assert_true(tu_wait(pid_gone_b, &t.pids[0], WAIT_MS));
    assert_int_equal(ppid_of(t.pids[3]), dpid); /* the orphan the supervisor had adopted */
    /* libuv still got the supervisor's status: the run's exit is recorded as SIGKILL. */
    assert_true(tu_wait(killed9_recorded, id, WAIT_MS));
    /* The strays end; the daemon, their parent now, reaps them: no zombie left. */
    for (int i = 1; i < NPIDS; i++)
        assert_int_equal(kill(t.pids[i], SIGKILL), 0);
    assert_true(tu_wait(strays_zombie_or_gone, &t, WAIT_MS));
    assert_true(tu_wait(tree_gone, &t, WAIT_MS));
    tu_daemon_signal(d, SIGTERM);
    assert_int_equal(tu_daemon_wait(d, WAIT_MS), 0);
    tree_free(&t);
}

int main(void)
{
    const char *bin = tu_need_env("DSW_BINARY_DIR");
    snprintf(helper, sizeof(helper), "%s/%s", bin, DSW_TRAMPOLINE_HELPER);
    forker = tu_need_env("DSW_SUPPORT_forker");
    daemon_bin = tu_need_env("DSW_BIN");
    /* What the tests kill is reparented to us, so that we can reap it and see how it ended. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest local[] = {
        cmocka_unit_test(test_parent_kill9),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_escalation),
        cmocka_unit_test(test_statuses),
    };
    const struct CMUnitTest daemon[] = {
        cmocka_unit_test_setup_teardown(test_daemon_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_reaps_strays, setup, teardown),
    };
    int failed = cmocka_run_group_tests_name("contain", local, NULL, NULL);
    return failed + cmocka_run_group_tests_name("contain_daemon", daemon, NULL, NULL);
}
