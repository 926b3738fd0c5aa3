/* trampoline: between the fork of a run worker and the exec of its command (see trampoline.h).
 * libc only: it is linked into the tiny dsw-exec helper as well as into the daemon. */
#include "dsw/trampoline.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static void close_inherited_fds(void)
{
    if (close_range(3, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max < 0 ? 1024 : max > 65536 ? 65536 : max); fd++)
        close((int)fd);
}

int dsw_trampoline_main(int argc, char **argv)
{
    char *end = NULL;
    if (argc < 4 || strcmp(argv[1], DSW_TRAMPOLINE_ARG) != 0) {
        fprintf(stderr, "dagster-sqs-worker: %s is internal\n", DSW_TRAMPOLINE_ARG);
        return 127;
    }
    errno = 0;
    long ppid = strtol(argv[2], &end, 10);
    if (errno || *end || ppid <= 0) {
        fprintf(stderr, "dagster-sqs-worker: %s: bad parent pid\n", DSW_TRAMPOLINE_ARG);
        return 127;
    }
    /* The signal follows the *thread* that forked us (the daemon's loop thread), and survives
     * the execvp below. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
        fprintf(stderr, "dagster-sqs-worker: prctl: %s\n", strerror(errno));
        return 127;
    }
    /* The daemon may have died before prctl: then we were reparented already. */
    if (getppid() != (pid_t)ppid)
        return 127;
    close_inherited_fds();
    execvp(argv[3], argv + 3);
    int e = errno;
    fprintf(stderr, "dagster-sqs-worker: cannot execute %s: %s\n", argv[3], strerror(e));
    return e == ENOENT || e == ENOTDIR ? 127 : 126;
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
