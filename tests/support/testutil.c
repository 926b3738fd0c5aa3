/* Helpers shared by the cmocka tests; see testutil.h. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: run the suite through scripts/test.sh, which starts the "
                 "services",
                 name);
    return v;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return p;
}

char *tu_vector_path(const char *name)
{
    const char *dir = getenv("DSW_VECTORS");
    char *p = NULL;
    if (!dir)
        dir = "../shared/vectors";
    assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

char *tu_tmpdir(void)
{
    char tmpl[] = "/tmp/dsw-test-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return strdup(tmpl);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

void tu_rm_rf(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tu_write_file(const char *path, const char *text, int mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, (mode_t)mode), 0);
    close(fd);
}

static void on_timer(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

int tu_run_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, uint64_t timeout_ms)
{
    int expired = 0, ok;
    uv_timer_t timer;
    uv_timer_init(loop, &timer);
    timer.data = &expired;
    uv_timer_start(&timer, on_timer, timeout_ms, 0);
    while (!(ok = cond(arg)) && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        fprintf(stderr, "tu_loop_close: handle of type %s left open\n",
                uv_handle_type_name(uv_handle_get_type(h)));
        (*(int *)arg)++;
        uv_close(h, NULL);
    }
}

void tu_loop_close(uv_loop_t *loop)
{
    int open_handles = 0;
    uv_run(loop, UV_RUN_NOWAIT);
    uv_walk(loop, close_walk, &open_handles);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(open_handles, 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

int tu_run(char *const argv[], const char *in, char **out)
{
    int inpipe[2], outpipe[2];
    assert_int_equal(pipe(inpipe), 0);
    assert_int_equal(pipe(outpipe), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(inpipe[0], 0);
        dup2(outpipe[1], 1);
        dup2(outpipe[1], 2);
        close(inpipe[1]);
        close(outpipe[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(inpipe[0]);
    close(outpipe[1]);
    if (in) {
        size_t n = strlen(in);
        assert_int_equal(write(inpipe[1], in, n), (ssize_t)n);
    }
    close(inpipe[1]);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(outpipe[0], buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(outpipe[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
