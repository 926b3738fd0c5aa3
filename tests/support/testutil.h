/* Helpers shared by the cmocka tests: environment of the services scripts/test.sh started,
 * vector files, and running a libuv loop until a condition holds (never a bare sleep). */
#ifndef DSW_TESTUTIL_H
#define DSW_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <uv.h>

/* The value of an environment variable the harness must set; fails the test (never skips)
 * when it is missing, naming the variable. */
const char *tu_need_env(const char *name);
/* Whole file into a NUL-terminated heap buffer (caller frees); fails the test when unreadable. */
char *tu_read_file(const char *path, size_t *len);
/* Path of a file in ../shared/vectors (caller frees). */
char *tu_vector_path(const char *name);
/* A fresh temporary directory (caller frees the path, and removes it with tu_rm_rf). */
char *tu_tmpdir(void);
void tu_rm_rf(const char *path);
/* Write a file with the given mode. */
void tu_write_file(const char *path, const char *text, int mode);

/* Run loop until cond(arg) returns non-zero or timeout_ms passes; returns cond's last value. */
int tu_run_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, uint64_t timeout_ms);
/* Close every handle still open, run the loop dry and assert uv_loop_close() == 0. */
void tu_loop_close(uv_loop_t *loop);

/* Run argv (no shell) with stdin from in (may be NULL), capture stdout+stderr into *out (caller
 * frees); returns the exit status (or 128+signal). */
int tu_run(char *const argv[], const char *in, char **out);

#endif
