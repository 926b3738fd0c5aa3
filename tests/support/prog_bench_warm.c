/* bench_warm: start latency of a run worker, cold vs warm, with tests/support/warm_standin.py in
 * place of Dagster. Cold: dsw_proc_spawn of `<python> -m warm_standin api execute_run <json>`
 * (what the daemon does, through the trampoline). Warm: dsw_warm_take of a ready runner
 * (libexec/dsw-warm-runner.py). Both timed from the request (spawn / take call) to the exit
 * report, runs one after the other; the warm pool is ready again before each take. Also the
 * RSS of the ready runners. Run by bench/warm_latency.sh; prints figures, asserts nothing.
 *
 *   bench_warm <source dir> [runs=20] [import_ms=0] [ready=2] [python=/usr/bin/python3]
 *
 * import_ms makes the stand-in burn that much CPU while importing, a stand-in for Dagster's
 * import time (~1 s), which cold runs pay and warm runs do not. */
#include "dsw/proc.h"
#include "dsw/warm.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char self[PATH_MAX];

struct one {
    int done;
    struct dsw_proc_exit st;
};

static void on_exit_cb(struct dsw_proc *p, const struct dsw_proc_exit *st, void *arg)
{
    struct one *o = arg;
    o->st = *st;
    dsw_proc_close(p, NULL, NULL);
    o->done = 1;
}

static void run_until(uv_loop_t *loop, const int *flag)
{
    while (!*flag)
        uv_run(loop, UV_RUN_ONCE);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *ms, int n)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += ms[i];
    qsort(ms, (size_t)n, sizeof(*ms), cmp_double);
    printf("%-28s n=%d  median %7.1f ms  mean %7.1f  p90 %7.1f  min %7.1f  max %7.1f\n", what, n,
           ms[n / 2], sum / n, ms[(n * 9) / 10 - (n >= 10)], ms[0], ms[n - 1]);
}

static long rss_kib(int pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static int pool_ready(struct dsw_warm *w, unsigned n)
{
    return dsw_warm_ready(w) >= n;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], DSW_PROC_TRAMPOLINE_ARG))
        return dsw_proc_trampoline_main(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: bench_warm <source dir> [runs] [import_ms] [ready] [python]\n");
        return 2;
    }
    const char *src = argv[1];
    int runs = argc > 2 ? atoi(argv[2]) : 20;
    int import_ms = argc > 3 ? atoi(argv[3]) : 0;
    unsigned ready = argc > 4 ? (unsigned)atoi(argv[4]) : 2;
    const char *python = argc > 5 ? argv[5] : "/usr/bin/python3";
    if (runs < 1 || runs > 1000 || ready < 1 || ready > 64)
        return 2;
    ssize_t sn = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sn <= 0)
        return 1;
    self[sn] = '\0';
    signal(SIGPIPE, SIG_IGN);

    char pypath[PATH_MAX + 32], imp[64], runner[PATH_MAX + 64];
    snprintf(pypath, sizeof(pypath), "PYTHONPATH=%s/tests/support", src);
    snprintf(imp, sizeof(imp), "WARM_STANDIN_IMPORT_MS=%d", import_ms);
    snprintf(runner, sizeof(runner), "%s/libexec/%s", src, DSW_WARM_RUNNER_NAME);
    const char *env[] = {"PATH=/usr/bin:/bin", pypath, imp, "PYTHONDONTWRITEBYTECODE=1", NULL};
    const char *json = "{\"__class__\": \"ExecuteRunArgs\", \"pipeline_run_id\": \"bench\"}";
    double *cold = calloc((size_t)runs, sizeof(double)),
           *warm = calloc((size_t)runs, sizeof(double));
    double *cold1 = calloc((size_t)runs, sizeof(double)),
           *warm1 = calloc((size_t)runs, sizeof(double));
    uv_loop_t loop;
    uv_loop_init(&loop);

    for (int i = 0; i < runs; i++) {
        struct one o = {0};
        struct dsw_proc *p;
        const char *cargv[] = {python, "-m", "warm_standin", "api", "execute_run", json, NULL};
        struct dsw_proc_opts po = {
            .argv = cargv, .env = env, .trampoline = self, .on_exit = on_exit_cb, .arg = &o};
        uint64_t t0 = uv_hrtime();
        if (dsw_proc_spawn(&loop, &po, &p) != 0)
            return 1;
        run_until(&loop, &o.done);
        cold[i] = (double)(uv_hrtime() - t0) / 1e6;
        cold1[i] = (double)o.st.first_line_ms;
        if (o.st.exit_code != 0)
            fprintf(stderr, "cold run %d: exit %d\n", i, o.st.exit_code);
    }

    struct dsw_warm *w;
    struct dsw_warm_opts wo = {.n = ready,
                               .python = python,
                               .runner = runner,
                               .imports = "warm_standin",
                               .entry = "warm_standin:main",
                               .env = env,
                               .trampoline = self};
    if (dsw_warm_init(&loop, &wo, &w) != 0)
        return 1;
    while (!pool_ready(w, ready))
        uv_run(&loop, UV_RUN_ONCE);
    int pids[64];
    size_t np = dsw_warm_ready_pids(w, pids, 64);
    long total = 0;
    for (size_t i = 0; i < np; i++)
        total += rss_kib(pids[i]);

    for (int i = 0; i < runs; i++) {
        struct one o = {0};
        struct dsw_proc *p;
        const char *args[] = {"api", "execute_run", json, NULL};
        struct dsw_proc_hooks h = {.on_exit = on_exit_cb, .arg = &o};
        while (!pool_ready(w, ready))
            uv_run(&loop, UV_RUN_ONCE);
        uint64_t t0 = uv_hrtime();
        if (dsw_warm_take(w, args, &h, &p) != 0)
            return 1;
        run_until(&loop, &o.done);
        warm[i] = (double)(uv_hrtime() - t0) / 1e6;
        warm1[i] = (double)o.st.first_line_ms;
        if (o.st.exit_code != 0)
            fprintf(stderr, "warm run %d: exit %d\n", i, o.st.exit_code);
    }
    dsw_warm_close(w, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);

    printf("stand-in import cost %d ms CPU, %d sequential runs, python %s\n", import_ms, runs,
           python);
    report("cold: request to exit", cold, runs);
    report("warm: request to exit", warm, runs);
    report("cold: request to 1st line", cold1, runs);
    report("warm: request to 1st line", warm1, runs);
    printf("ready runners: %zu, RSS %ld KiB total, %ld KiB each on average\n", np, total,
           np ? total / (long)np : 0);
    free(cold);
    free(warm);
    free(cold1);
    free(warm1);
    return 0;
}
