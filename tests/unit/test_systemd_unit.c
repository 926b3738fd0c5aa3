/* systemd/: the unit passes `systemd-analyze verify` without a single message, its offline
 * security exposure is at most 2.0, it carries the settings SPEC §7 relies on, and the sysusers
 * and tmpfiles snippets apply. Everything runs against a scratch root (no PID 1 systemd needed:
 * verify checks that ExecStart= exists, so the root holds stub executables and a copy of the
 * distribution's unit directory for the targets we order against). A missing systemd-analyze
 * fails the test: install the `systemd` package. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define UNIT "dagster-sqs-worker.service"

static char *tool(const char *name)
{
    const char *dirs[] = {"/usr/bin", "/bin", "/usr/sbin", "/sbin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char *p = NULL;
        assert_true(asprintf(&p, "%s/%s", dirs[i], name) > 0);
        if (access(p, X_OK) == 0)
            return p;
        free(p);
    }
    fail_msg("%s not found: install the systemd package (apt-get install systemd)", name);
    return NULL;
}

static char *src_path(const char *rel)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", tu_need_env("DSW_SOURCE_DIR"), rel) > 0);
    return p;
}

static char *join(const char *a, const char *b)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", a, b) > 0);
    return p;
}

static void mkdirs(const char *root, const char *rel)
{
    char *p = join(root, rel);
    for (char *s = p + strlen(root) + 1;; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = '\0';
            assert_true(mkdir(p, 0755) == 0 || errno == EEXIST);
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
}

static void copy(const char *from, const char *to)
{
    char *out = NULL;
    char *argv[] = {"/bin/cp", "-a", (char *)from, (char *)to, NULL};
    if (tu_run(argv, NULL, &out) != 0)
        fail_msg("cp %s %s: %s", from, to, out);
    free(out);
}

/* A scratch root: stub executables for every Exec*= path, the distribution's units, ours. */
static char *make_root(void)
{
    char *root = tu_tmpdir();
    const char *dirs[] = {
        "usr/bin",           "bin", "usr/lib/systemd", "etc/systemd/system", "usr/lib/sysusers.d",
        "usr/lib/tmpfiles.d"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        mkdirs(root, dirs[i]);
    const char *stubs[] = {"usr/bin/dagster-sqs-worker", "bin/kill"};
    for (size_t i = 0; i < sizeof(stubs) / sizeof(stubs[0]); i++) {
        char *p = join(root, stubs[i]);
        tu_write_file(p, "#!/bin/sh\nexit 0\n", 0755);
        free(p);
    }
    char *to = join(root, "usr/lib/systemd");
    copy("/usr/lib/systemd/system", to);
    free(to);
    struct {
        const char *src, *dst;
    } files[] = {
        {"systemd/" UNIT, "etc/systemd/system/" UNIT},
        {"systemd/dagster-sqs-worker.sysusers", "usr/lib/sysusers.d/dagster-sqs-worker.conf"},
        {"systemd/dagster-sqs-worker.tmpfiles", "usr/lib/tmpfiles.d/dagster-sqs-worker.conf"},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *s = src_path(files[i].src), *d = join(root, files[i].dst);
        copy(s, d);
        free(s);
        free(d);
    }
    return root;
}

static void test_verify_clean(void **state)
{
    char *sa = tool("systemd-analyze"), *root = make_root(), *rootopt = NULL, *out = NULL;
    assert_true(asprintf(&rootopt, "--root=%s", root) > 0);
    char *argv[] = {sa, "verify", "--man=no", rootopt, UNIT, NULL};
    int rc = tu_run(argv, NULL, &out);
    print_message("systemd-analyze verify: exit %d, output \"%s\"\n", rc, out);
    /* verify exits 0 even for unknown keys; only an empty output is clean. */
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
    free(out);
    free(rootopt);
    tu_rm_rf(root);
    free(root);
    free(sa);
}

static void test_security_exposure(void **state)
{
    char *sa = tool("systemd-analyze"), *unit = src_path("systemd/" UNIT), *out = NULL;
    char *argv[] = {sa, "security", "--offline=true", "--threshold=20", unit, NULL};
    int rc = tu_run(argv, NULL, &out);
    const char *tag = "Overall exposure level for " UNIT ": ";
    const char *at = strstr(out, tag);
    if (!at)
        fail_msg("no exposure level in: %s", out);
    char *end;
    double exposure = strtod(at + strlen(tag), &end);
    assert_true(end > at + strlen(tag));
    print_message("exposure %.1f (exit %d)\n", exposure, rc);
    if (rc != 0 || exposure > 2.0)
        fail_msg("exposure %.1f over 2.0 (exit %d):\n%s", exposure, rc, out);
    free(out);
    free(unit);
    free(sa);
}

/* The settings the daemon's behaviour depends on (SPEC §7) are present, verbatim. */
static void test_required_settings(void **state)
{
    char *unit = src_path("systemd/" UNIT);
    char *text = tu_read_file(unit, NULL);
    const char *lines[] = {
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/dagster-sqs-worker -c /etc/dagster-sqs-worker/worker.conf run",
        "WatchdogSec=30s",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "OOMPolicy=continue",
        "TimeoutStopSec=360s",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "LoadCredential=pgpass:/etc/dagster-sqs-worker/pgpass",
        "Environment=PGPASSFILE=%d/pgpass",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "UMask=0077",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        char *want = NULL;
        assert_true(asprintf(&want, "\n%s\n", lines[i]) > 0);
        if (!strstr(text, want))
            fail_msg("%s lacks the line %s", unit, lines[i]);
        free(want);
    }
    free(text);
    free(unit);
}

/* sysusers creates the user the unit runs as; tmpfiles makes the config directory group-only. */
static void test_sysusers_tmpfiles(void **state)
{
    char *su = tool("systemd-sysusers"), *tf = tool("systemd-tmpfiles");
    char *root = make_root(), *rootopt = NULL, *out = NULL;
    assert_true(asprintf(&rootopt, "--root=%s", root) > 0);
    char *etc = join(root, "etc");
    copy("/etc/passwd", etc);
    copy("/etc/group", etc);
    char *argv1[] = {su, rootopt, "dagster-sqs-worker.conf", NULL};
    int rc = tu_run(argv1, NULL, &out);
    if (rc != 0)
        fail_msg("systemd-sysusers: %s", out);
    free(out);
    char *passwd_path = join(root, "etc/passwd");
    char *passwd = tu_read_file(passwd_path, NULL);
    assert_non_null(strstr(passwd, "\ndagster-sqs-worker:x:"));
    assert_non_null(strstr(passwd, ":/var/lib/dagster-sqs-worker:/usr/sbin/nologin\n"));
    if (geteuid() != 0) { /* tmpfiles chowns to root: only root can apply it */
        print_message("not root: systemd-tmpfiles --create not tried\n");
        goto out;
    }
    char *argv2[] = {tf, rootopt, "--create", "dagster-sqs-worker.conf", NULL};
    rc = tu_run(argv2, NULL, &out);
    if (rc != 0)
        fail_msg("systemd-tmpfiles: %s", out);
    free(out);
    char *confdir = join(root, "etc/dagster-sqs-worker");
    struct stat st;
    assert_int_equal(stat(confdir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0750);
    assert_int_equal(st.st_uid, 0);
    assert_true(st.st_gid != 0);
    free(confdir);
out:
    free(passwd);
    free(passwd_path);
    free(etc);
    free(rootopt);
    tu_rm_rf(root);
    free(root);
    free(su);
    free(tf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_clean),
        cmocka_unit_test(test_security_exposure),
        cmocka_unit_test(test_required_settings),
        cmocka_unit_test(test_sysusers_tmpfiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
