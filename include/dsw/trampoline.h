/* trampoline: the few lines that run between the fork of a run worker and the exec of its
 * command: PR_SET_PDEATHSIG(SIGKILL), a check that the daemon is still the parent, closing
 * inherited descriptors, execvp. libc only, so that the tiny helper program `dsw-exec`
 * (libexec/dsw-exec.c) can be the trampoline instead of a re-exec of the whole daemon, whose
 * dynamic libraries cost tens of milliseconds per run to load. */
#ifndef DSW_TRAMPOLINE_H
#define DSW_TRAMPOLINE_H

/* argv[1] of the trampoline form: `<trampoline> __exec-child <parent-pid> <argv...>`. */
#define DSW_TRAMPOLINE_ARG "__exec-child"
/* The helper program's file name, installed next to the daemon or in
 * <prefix>/libexec/dagster-sqs-worker/. */
#define DSW_TRAMPOLINE_HELPER "dsw-exec"

/* argv = {self, DSW_TRAMPOLINE_ARG, parent-pid, cmd...}. Sets PR_SET_PDEATHSIG(SIGKILL), exits
 * 127 when the parent is already gone, closes every descriptor above 2, then execvp(cmd).
 * Returns only on failure: 127 (not found, bad usage) or 126 (other exec errors). */
int dsw_trampoline_main(int argc, char **argv);

/* Path of the dsw-exec helper that belongs to the running binary (next to it, as in a build
 * tree, or in ../libexec/dagster-sqs-worker/), or NULL when there is none (the caller then
 * re-execs itself). Static storage. */
const char *dsw_trampoline_helper(void);

#endif
