/* forker: a process tree that tries to outlive its supervisor, for the containment tests.
 *
 *   forker PIDFILE [ACTION]
 *   forker api ...          (as a run worker the daemon starts: PIDFILE from $FORKER_PIDFILE,
 *                            ACTION from $FORKER_ACTION, default sleep)
 *   forker --subreaper PROG ARGS...   become a child subreaper, then exec PROG (the setting
 *                            survives exec: the daemon as a subreaper, as under some inits)
 *
 * It forks a child C (same process group) and, from C, a grandchild G that calls setsid() and
 * double-forks: G forks H, H forks I and exits at once, so I is an orphan in G's new session,
 * reparented to the nearest subreaper (or PID 1). C, G and I idle, with stdio inherited (they
 * hold the supervisor's output pipes too). Once all of them run it writes "W C G I\n" (its own
 * pid first) to PIDFILE (atomically: a temporary file renamed), prints "forker ready W C G I" on
 * stdout, then ACTION:
 *   sleep     idle (default SIGTERM action: W and C die of a SIGTERM to their group)
 *   ignore    every process of the tree ignores SIGTERM; idle
 *   exit:N    W exits N, leaving C, G, I behind
 *   signal:N  W dies of signal N (default action, no core file), leaving C, G, I behind
 * Every process gives up by itself after 120 s (alarm), so a failed test leaks nothing for long;
 * that is far beyond any deadline of the tests that use it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define LIFETIME_S 120

static void idle(void)
{
    alarm(LIFETIME_S);
    for (;;)
        pause();
}

/* Tell W who we are: which of C (0), G (1), I (2), and our pid (one atomic pipe write). */
static void say(int fd, int which)
{
    int msg[2] = {which, (int)getpid()};
    if (write(fd, msg, sizeof(msg)) != sizeof(msg))
        _exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: forker PIDFILE [sleep|ignore|exit:N|signal:N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *pidfile, *action;
    if (argc >= 3 && !strcmp(argv[1], "--subreaper")) {
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
            return 126;
        execv(argv[2], argv + 2);
        fprintf(stderr, "forker: %s: %s\n", argv[2], strerror(errno));
        return 127;
    }
    if (argc >= 2 && !strcmp(argv[1], "api")) {
        pidfile = getenv("FORKER_PIDFILE");
        action = getenv("FORKER_ACTION");
    } else {
        pidfile = argc >= 2 ? argv[1] : NULL;
        action = argc >= 3 ? argv[2] : NULL;
    }
    if (!action || !*action)
        action = "sleep";
    if (!pidfile || !*pidfile)
        usage();
    int code = 0, sig = 0;
    if (!strncmp(action, "exit:", 5))
        code = atoi(action + 5);
    else if (!strncmp(action, "signal:", 7))
        sig = atoi(action + 7);
    else if (strcmp(action, "sleep") && strcmp(action, "ignore"))
        usage();
    if (!strcmp(action, "ignore"))
        signal(SIGTERM, SIG_IGN); /* inherited by the whole tree */
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    pid_t c = fork();
    if (c < 0)
        return 1;
    if (c == 0) {
        pid_t g = fork();
        if (g == 0) {
            setsid();
            pid_t h = fork();
            if (h == 0) {
                if (fork() == 0) {
                    say(fds[1], 2); /* I */
                    idle();
                }
                _exit(0); /* H */
            }
            if (h < 0)
                _exit(1);
            waitpid(h, NULL, 0);
            say(fds[1], 1); /* G */
            idle();
        }
        if (g < 0)
            _exit(1);
        say(fds[1], 0); /* C */
        idle();
    }
    close(fds[1]);
    pid_t pids[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        int msg[2];
        if (read(fds[0], msg, sizeof(msg)) != sizeof(msg) || msg[0] < 0 || msg[0] > 2)
            return 1;
        pids[msg[0]] = (pid_t)msg[1];
    }
    char line[128], tmp[4096];
    int n = snprintf(line, sizeof(line), "%d %d %d %d\n", (int)getpid(), (int)pids[0], (int)pids[1],
                     (int)pids[2]);
    snprintf(tmp, sizeof(tmp), "%s.tmp", pidfile);
    FILE *f = fopen(tmp, "w");
    if (!f || fwrite(line, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0 ||
        rename(tmp, pidfile) != 0) {
        fprintf(stderr, "forker: %s: %s\n", pidfile, strerror(errno));
        return 1;
    }
    printf("forker ready %s", line);
    fflush(stdout);
    if (sig) {
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);
        signal(sig, SIG_DFL);
        raise(sig);
        return 99;
    }
    if (strncmp(action, "exit:", 5) == 0)
        return code;
    idle();
    return 0;
}
