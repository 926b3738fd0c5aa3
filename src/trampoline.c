/* trampoline: the run worker's supervisor (see trampoline.h). libc only: it is linked into the
 * tiny dsw-exec helper as well as into the daemon. No allocation, no handler: every signal it
 * cares about is blocked and taken with sigtimedwait. */
#include "dsw/trampoline.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PREFIX "dagster-sqs-worker: "

struct sup {
    pid_t self, daemon, worker;
    int status;      /* the worker's wait status, once worker_done */
    int worker_done; /* reaped */
    int killing;     /* the whole tree is being SIGKILLed */
    int left;        /* processes reaped after the worker: what it left behind */
};

static void close_inherited_fds(void)
{
    if (close_range(3, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max < 0 ? 1024 : max > 65536 ? 65536 : max); fd++)
        close((int)fd);
}

/* The signals the supervisor takes with sigtimedwait. */
static void wait_set(sigset_t *s)
{
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    sigemptyset(s);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaddset(s, sigs[i]);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Parent pid from /proc/<name>/stat ("pid (comm) S ppid ..."; comm may hold ')' and spaces). */
static pid_t ppid_of(int proc, const char *name)
{
    char path[32], buf[512];
    if ((size_t)snprintf(path, sizeof(path), "%s/stat", name) >= sizeof(path))
        return -1;
    int fd = openat(proc, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2] || p[3] != ' ')
        return -1;
    return (pid_t)strtol(p + 4, NULL, 10);
}

int dsw_trampoline_signal_children(pid_t parent, int sig, int groups)
{
    _Alignas(struct dirent64) char buf[4096];
    int proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0)
        return -1;
    int found = 0;
    ssize_t n;
    while ((n = getdents64(proc, buf, sizeof(buf))) > 0) {
        for (ssize_t off = 0; off < n;) {
            const struct dirent64 *d = (const struct dirent64 *)(void *)(buf + off);
            off += d->d_reclen;
            if (d->d_name[0] < '1' || d->d_name[0] > '9')
                continue;
            char *end = NULL;
            long pid = strtol(d->d_name, &end, 10);
            if (*end || ppid_of(proc, d->d_name) != parent)
                continue;
            /* A child of `parent` cannot be reaped (so its pid reused) by anyone but parent. */
            found++;
            if (groups && getpgid((pid_t)pid) == (pid_t)pid)
                kill((pid_t)-pid, sig);
            kill((pid_t)pid, sig);
        }
    }
    close(proc);
    return n < 0 && found == 0 ? -1 : found;
}

/* SIGKILL the worker and its group now; what left the group (reparented to us) is killed by
 * cleanup() as soon as the worker is reaped, by one /proc scan or more. */
static void kill_tree(struct sup *s)
{
    if (s->killing)
        return;
    s->killing = 1;
    kill(-s->worker, SIGKILL);
    kill(s->worker, SIGKILL);
}

/* Reap every child that has exited. The worker's group is SIGKILLed while the worker's zombie
 * still holds the group's id (so it cannot name anybody else's group yet). Returns 0 when we
 * have no child left at all, 1 when some still run. */
static int reap(struct sup *s)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
            return errno == ECHILD ? 0 : 1;
        if (si.si_pid == 0)
            return 1;
        if (si.si_pid == s->worker && !s->worker_done) {
            kill(-s->worker, SIGKILL);
            if (waitpid(s->worker, &s->status, 0) == s->worker)
                s->worker_done = 1;
            continue;
        }
        waitpid(si.si_pid, NULL, 0);
        if (s->worker_done)
            s->left++;
    }
}

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};

/* To the run worker alone, as Kubernetes and Docker deliver a stop to a container's PID 1:
 * Dagster's run worker handles SIGTERM by interrupting its steps itself (STEP_FAILURE /
 * PIPELINE_CANCELED as it decides); signalling its step processes at the same moment makes them
 * die under it and turns a cancel into a FAILURE. The rest of the tree is killed when the worker
 * exits, or by the escalation after runs.kill_grace. */
static void forward(struct sup *s, int sig)
{
    if (!s->killing)
        kill(s->worker, sig);
}

static void forward_pending(struct sup *s)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        sigaddset(&set, forwarded[i]);
    const struct timespec zero = {0, 0};
    int sig;
    while ((sig = sigtimedwait(&set, NULL, &zero)) > 0)
        forward(s, sig);
}

static void supervise(struct sup *s)
{
    sigset_t set;
    wait_set(&set);
    const struct timespec tick = {1, 0};
    while (!s->worker_done) {
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &tick);
        switch (sig) {
        case SIGTERM:
        case SIGINT:
        case SIGHUP:
        case SIGQUIT:
            forward(s, sig);
            break;
        case DSW_TRAMPOLINE_KILL_SIGNAL:
        case SIGUSR2: /* PR_SET_PDEATHSIG: the daemon died */
            /* A SIGTERM the daemon sent first goes first (sigtimedwait gives the lowest signal
             * number first): a command that dies of it is reported as before. */
            forward_pending(s);
            kill_tree(s);
            break;
        default: /* SIGCHLD, or the tick */
            break;
        }
        if (getppid() != s->daemon)
            kill_tree(s);
        reap(s);
    }
}

/* The worker is gone: nothing it started may outlive it. */
static void cleanup(struct sup *s)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    const struct timespec step = {0, 50 * 1000000};
    const struct timespec zero = {0, 0};
    uint64_t deadline = now_ms() + DSW_TRAMPOLINE_REAP_MS;
    /* Take the pending SIGCHLD before each reap: an exit after it makes a new one, so the wait
     * below cannot miss it (exits coalesce into one pending SIGCHLD). */
    for (;;) {
        sigtimedwait(&chld, NULL, &zero);
        if (!reap(s))
            break;
        int n = dsw_trampoline_signal_children(s->self, SIGKILL, 1);
        if (n < 0 || now_ms() > deadline) {
            fprintf(stderr, PREFIX "%s; giving up on what the run worker left running\n",
                    n < 0 ? "cannot read /proc" : "processes survive SIGKILL");
            return;
        }
        sigtimedwait(&chld, NULL, &step);
    }
    if (s->left > 0 && !s->killing)
        fprintf(stderr, PREFIX "killed %d process(es) the run worker left running\n", s->left);
}

/* End as the worker ended. A terminating signal is raised again, with its default action and no
 * core dump of ours, so the daemon sees the same status. */
static int finish(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (!WIFSIGNALED(status))
        return 126;
    int sig = WTERMSIG(status);
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    raise(sig);
    sigprocmask(SIG_UNBLOCK, &one, NULL);
    return 128 + sig; /* not reached for a signal whose default action terminates */
}

/* In the forked child: become the run worker. */
static void exec_worker(char **argv, pid_t parent, const sigset_t *mask)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent)
        _exit(127);
    setpgid(0, 0);
    sigprocmask(SIG_SETMASK, mask, NULL);
    execvp(argv[0], argv);
    int e = errno;
    fprintf(stderr, PREFIX "cannot execute %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
}

/* Our stdin and stdout go to /dev/null: only the worker's copies reach the daemon's pipes. */
static void release_stdio(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        close(0);
        close(1);
        return;
    }
    dup2(fd, 0);
    dup2(fd, 1);
    if (fd > 1)
        close(fd);
}

int dsw_trampoline_main(int argc, char **argv)
{
    char *end = NULL;
    if (argc < 4 || strcmp(argv[1], DSW_TRAMPOLINE_ARG) != 0) {
        fprintf(stderr, PREFIX "%s is internal\n", DSW_TRAMPOLINE_ARG);
        return 127;
    }
    errno = 0;
    long ppid = strtol(argv[2], &end, 10);
    if (errno || *end || ppid <= 0) {
        fprintf(stderr, PREFIX "%s: bad parent pid\n", DSW_TRAMPOLINE_ARG);
        return 127;
    }
    sigset_t block, old;
    wait_set(&block);
    sigaddset(&block, SIGPIPE); /* a write to a dead daemon's stderr pipe fails, no more */
    sigprocmask(SIG_BLOCK, &block, &old);
    /* The signal follows the *thread* that forked us (the daemon's loop thread). */
    if (prctl(PR_SET_PDEATHSIG, SIGUSR2, 0, 0, 0) != 0) {
        fprintf(stderr, PREFIX "prctl: %s\n", strerror(errno));
        return 127;
    }
    /* The daemon may have died before prctl: then we were reparented already. */
    if (getppid() != (pid_t)ppid)
        return 127;
    close_inherited_fds();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        fprintf(stderr, PREFIX "prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
        return 126;
    }
    struct sup s = {.self = getpid(), .daemon = (pid_t)ppid};
    s.worker = fork();
    if (s.worker < 0) {
        fprintf(stderr, PREFIX "cannot fork the run worker: %s\n", strerror(errno));
        return 126;
    }
    if (s.worker == 0)
        exec_worker(argv + 3, s.self, &old);
    /* Also here, so that the group exists before we signal it, whoever runs first. */
    setpgid(s.worker, s.worker);
    /* The command's arguments are the worker's business: ps, pgrep -f and pkill -f find them
     * once, in the worker; we show `<us> __exec-child <daemon pid> <command name>`. */
    for (int i = 4; i < argc; i++)
        memset(argv[i], 0, strlen(argv[i]));
    release_stdio();
    supervise(&s);
    cleanup(&s);
    return finish(s.status);
}

const char *dsw_trampoline_helper(void)
{
    static char path[PATH_MAX];
    static const char *const rel[] = {"/" DSW_TRAMPOLINE_HELPER,
                                      "/../libexec/dagster-sqs-worker/" DSW_TRAMPOLINE_HELPER};
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return NULL;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        if ((size_t)snprintf(path, sizeof(path), "%s%s", self, rel[i]) < sizeof(path) &&
            access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}
