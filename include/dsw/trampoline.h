/* trampoline: the run worker's supervisor, the process between the daemon and the command it
 * runs. libc only, so that the tiny helper program `dsw-exec` (libexec/dsw-exec.c) can be the
 * trampoline instead of a re-exec of the whole daemon, whose dynamic libraries cost tens of
 * milliseconds per run to load; the re-exec (`<daemon> __exec-child ...`) runs the same code.
 *
 * `T = <trampoline> __exec-child <daemon pid> cmd...`, spawned by the daemon as the leader of a
 * new session (pgid == sid == T), stays alive for the whole run as a tiny supervisor:
 * - it is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever the run starts and orphans, even
 *   through setsid() and double forks, is reparented to T, never to PID 1;
 * - it forks the command W into a process group of its own (pgid W, in T's session), with
 *   PR_SET_PDEATHSIG(SIGKILL) towards T, the daemon's signal mask, no descriptor above 2;
 * - SIGTERM, SIGINT, SIGHUP, SIGQUIT sent to T are forwarded to W's group (what the daemon's
 *   kill(-T, SIGTERM) reaches: exactly one copy per process, as when W led the group itself);
 * - SIGUSR1 (the daemon's escalation) and the daemon's death (PR_SET_PDEATHSIG(SIGUSR2) and a
 *   once-a-second getppid() check) mean: SIGKILL the whole tree now;
 * - when W exits, for any reason, everything left of the tree is SIGKILLed: W's group, then, as
 *   long as T has children, each process whose parent is T (found in /proc), and every one of
 *   them is reaped; then T exits with W's exit status, or dies of W's terminating signal (no
 *   core dump of its own), so the daemon records exactly what W did;
 * - T holds no pipe the daemon reads except stderr (stdin and stdout are /dev/null in T, so a
 *   command that closes its stdin gives the daemon EPIPE); stderr carries T's few messages.
 * Nothing of the run survives T, except what T cannot kill (another user's setuid process) and a
 * process still stuck after DSW_TRAMPOLINE_REAP_MS of cleanup (then T gives up and exits). */
#ifndef DSW_TRAMPOLINE_H
#define DSW_TRAMPOLINE_H

#include <signal.h>
#include <sys/types.h>

/* argv[1] of the trampoline form: `<trampoline> __exec-child <parent-pid> <argv...>`. */
#define DSW_TRAMPOLINE_ARG "__exec-child"
/* The helper program's file name, installed next to the daemon or in
 * <prefix>/libexec/dagster-sqs-worker/. */
#define DSW_TRAMPOLINE_HELPER "dsw-exec"
/* The signal that asks a trampoline to SIGKILL its whole tree at once. */
#define DSW_TRAMPOLINE_KILL_SIGNAL SIGUSR1
/* How long a trampoline keeps killing and reaping what its command left before it gives up. */
#define DSW_TRAMPOLINE_REAP_MS 10000

/* argv = {self, DSW_TRAMPOLINE_ARG, parent-pid, cmd...}. Exits 127 when the parent is already
 * gone (or bad usage), else supervises cmd as described above and ends as cmd ended: cmd's exit
 * code (127 when it cannot be found, 126 when it cannot be executed; 126 when T cannot fork) or
 * cmd's terminating signal. Returns only an exit code; may not return at all (signal). */
int dsw_trampoline_main(int argc, char **argv);

/* Send sig to every process whose parent is `parent` (found by reading /proc/<pid>/stat), and
 * also to its process group when it leads one and groups is nonzero. Returns how many processes
 * were found, or -1 when /proc cannot be read. No allocation. */
int dsw_trampoline_signal_children(pid_t parent, int sig, int groups);

/* Path of the dsw-exec helper that belongs to the running binary (next to it, as in a build
 * tree, or in ../libexec/dagster-sqs-worker/), or NULL when there is none (the caller then
 * re-execs itself). Static storage. */
const char *dsw_trampoline_helper(void);

#endif
