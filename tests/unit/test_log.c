/* log: level filtering happens before formatting, text and JSON forms, journald prefixes, one
 * line per record, and secret-looking values never printed. */
#include "testutil.h"

#include "dsw/log.h"
#include "dsw/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static FILE *out;

static int setup(void **state)
{
    out = tmpfile();
    return out ? 0 : -1;
}

static int teardown(void **state)
{
    fclose(out);
    unsetenv("JOURNAL_STREAM");
    return 0;
}

/* Everything written since the last call; the log writes to the fd with write(2). */
static char *drain(void)
{
    static char buf[65536];
    int fd = fileno(out);
    off_t end = lseek(fd, 0, SEEK_CUR);
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    assert_int_equal(n, end);
    buf[n] = '\0';
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return buf;
}

static int calls;
static int side_effect(void)
{
    return ++calls;
}

static void test_level_checked_before_formatting(void **state)
{
    dsw_log_setup(DSW_LOG_WARN, DSW_LOG_TEXT, fileno(out));
    calls = 0;
    dsw_log(DSW_LOG_INFO, NULL, "value %d", side_effect());
    dsw_debug("value %d", side_effect());
    assert_int_equal(calls, 0);
    assert_string_equal(drain(), "");
    dsw_warn("value %d", side_effect());
    assert_int_equal(calls, 1);
    char *s = drain();
    assert_non_null(strstr(s, "warn  value 1\n"));
    dsw_log_set_level(DSW_LOG_OFF);
    dsw_error("nothing");
    assert_string_equal(drain(), "");
}

static void test_text_context_and_one_line(void **state)
{
    dsw_log_setup(DSW_LOG_DEBUG, DSW_LOG_TEXT, fileno(out));
    struct dsw_log_ctx ctx = {.event = "child_exit",
                              .run_id = "r-1",
                              .message_id = "m-1",
                              .has_exit_code = 1,
                              .exit_code = 3,
                              .duration_ms = 1500,
                              .err = "boom\nforged line"};
    dsw_log(DSW_LOG_INFO, &ctx, "child said %s", "a\nb");
    char *s = drain();
    /* ISO time, level, message, context as key=value, and exactly one newline. */
    assert_true(strlen(s) > 24 && s[4] == '-' && s[10] == 'T');
    assert_non_null(strstr(s, "info  child said a b event=child_exit run_id=r-1 message_id=m-1 "
                              "exit_code=3 duration_ms=1500 err=boom forged line\n"));
    assert_int_equal(strchr(s, '\n') - s + 1, (long)strlen(s));
}

static void test_json(void **state)
{
    dsw_log_setup(DSW_LOG_INFO, DSW_LOG_JSON, fileno(out));
    dsw_log_set_worker_id("host:1:2");
    struct dsw_log_ctx ctx = {.event = "claim", .run_id = "r\"1", .duration_ms = -1};
    dsw_log(DSW_LOG_ERROR, &ctx, "quote \" backslash \\ tab \t ctl \x01 é");
    char *s = drain();
    assert_int_equal(strchr(s, '\n') - s + 1, (long)strlen(s));
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "quote \" backslash \\ tab \t ctl \x01 é");
    assert_string_equal(json_string_value(json_object_get(j, "run_id")), "r\"1");
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "host:1:2");
    assert_string_equal(json_string_value(json_object_get(j, "event")), "claim");
    assert_null(json_object_get(j, "duration_ms"));
    assert_non_null(json_object_get(j, "ts"));
    json_decref(j);

    /* Invalid UTF-8 (a child's output cut mid-character) still makes valid JSON. */
    dsw_info("cut \xc3 and \xff\xfe and \xed\xa0\x80 and ok \xe2\x82\xac");
    s = drain();
    j = json_loads(s, 0, &e);
    if (!j)
        fail_msg("invalid JSON: %s (%s)", s, e.text);
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "cut \xef\xbf\xbd and \xef\xbf\xbd\xef\xbf\xbd and "
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd and ok \xe2\x82\xac");
    json_decref(j);

    /* A record longer than the line limit is cut but stays valid JSON on one line. */
    char *big = malloc(20000);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    big[5000] = '"';
    dsw_info("%s", big);
    s = drain();
    assert_true(strlen(s) <= DSW_LOG_LINE_MAX + 1);
    j = json_loads(s, 0, &e);
    assert_non_null(j);
    json_decref(j);
    /* Cut inside escapes and multi-byte characters at every offset: always valid JSON. */
    for (int shift = 0; shift < 8; shift++) {
        memset(big, 'x', 19999);
        for (int k = shift; k < 19990; k += 3)
            memcpy(big + k, k % 5 ? "\x01\"\x01" : "\xe2\x82\xac", 3);
        dsw_info("%s", big);
        s = drain();
        assert_true(strlen(s) >= DSW_LOG_LINE_MAX - 8); /* the cut really happened */
        j = json_loads(s, 0, &e);
        if (!j)
            fail_msg("shift %d: invalid JSON (%s)", shift, e.text);
        json_decref(j);
    }
    free(big);
    dsw_log_set_worker_id(NULL);
}

static void test_journal_prefix(void **state)
{
    struct stat st;
    char js[64];
    assert_int_equal(fstat(fileno(out), &st), 0);
    snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    dsw_log_setup(DSW_LOG_DEBUG, DSW_LOG_TEXT, fileno(out));
    dsw_error("e");
    dsw_warn("w");
    dsw_info("i");
    dsw_debug("d");
    assert_string_equal(drain(), "<3>e\n<4>w\n<6>i\n<7>d\n");
    /* JOURNAL_STREAM naming another file: no prefix. */
    setenv("JOURNAL_STREAM", "1:1", 1);
    dsw_log_setup(DSW_LOG_DEBUG, DSW_LOG_TEXT, fileno(out));
    dsw_info("i");
    assert_null(strstr(drain(), "<6>"));
}

static void test_secrets_scrubbed(void **state)
{
    static const struct {
        const char *in, *secret;
    } cases[] = {
        {"connecting with host=db password=hunter2 user=x", "hunter2"},
        {"uri postgresql://dagster:s3cretpw@db:5432/dagster", "s3cretpw"},
        {"key AKIAIOSFODNN7EXAMPLE used", "IOSFODNN7EXAMPLE"},
        {"temporary ASIAZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZ"},
        {"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "wJalrXUtnFEMI/K7MDENG"},
        {"X-Amz-Security-Token: FQoGZXIvYXdzEJr//////////", "FQoGZXIvYXdzEJr"},
        {"Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x", "AWS4-HMAC"},
        {"{\"password\": \"pw-in-json\"}", "pw-in-json"},
        {"DAGSTER_PG_PASSWORD=topsecret", "topsecret"},
        {"token=abc.def.ghi", "abc.def.ghi"},
    };
    for (int fmt = DSW_LOG_TEXT; fmt <= DSW_LOG_JSON; fmt++) {
        dsw_log_setup(DSW_LOG_DEBUG, (enum dsw_log_format)fmt, fileno(out));
        for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
            struct dsw_log_ctx ctx = {.err = cases[i].in, .duration_ms = -1};
            dsw_log(DSW_LOG_INFO, &ctx, "%s", cases[i].in);
            char *s = drain();
            if (strstr(s, cases[i].secret))
                fail_msg("secret '%s' printed: %s", cases[i].secret, s);
        }
    }
    /* Ordinary text is left alone. */
    char plain[] = "run 0000 finished with exit code 1 after 2.0 s";
    dsw_log_scrub(plain);
    assert_string_equal(plain, "run 0000 finished with exit code 1 after 2.0 s");
}

static void test_parse(void **state)
{
    enum dsw_log_level l;
    enum dsw_log_format f;
    assert_int_equal(dsw_log_level_parse("warning", &l), 0);
    assert_int_equal(l, DSW_LOG_WARN);
    assert_int_equal(dsw_log_level_parse("DEBUG", &l), 0);
    assert_int_equal(l, DSW_LOG_DEBUG);
    assert_int_not_equal(dsw_log_level_parse("loud", &l), 0);
    assert_int_equal(dsw_log_format_parse("json", &f), 0);
    assert_int_equal(f, DSW_LOG_JSON);
    assert_int_not_equal(dsw_log_format_parse("xml", &f), 0);
    assert_string_equal(dsw_log_level_name(DSW_LOG_ERROR), "error");
}

/* Everything readable now from fd appended to acc (capped); whether needle is in it. */
static int read_for(int fd, char *acc, size_t cap, size_t *len, const char *needle)
{
    ssize_t n;
    while ((n = read(fd, acc + *len, cap - 1 - *len)) > 0) {
        *len += (size_t)n;
        acc[*len] = '\0';
        if (strstr(acc, needle))
            return 1;
        if (*len > cap / 2) { /* keep the tail: the needle comes last */
            memmove(acc, acc + *len - 256, 256);
            *len = 256;
        }
    }
    acc[*len] = '\0';
    return strstr(acc, needle) != NULL;
}

struct reader {
    int fd;
    char want[64], acc[65536];
    size_t len;
};

static int reader_saw(void *arg)
{
    struct reader *r = arg;
    return read_for(r->fd, r->acc, sizeof(r->acc), &r->len, r->want);
}

static uint64_t fill_until_dropped(uint64_t before)
{
    char big[1024];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (int i = 0; i < 1000 && dsw_log_dropped() == before; i++)
        dsw_info("line %d %s", i, big);
    return dsw_log_dropped() - before;
}

static int rendered_drops(uint64_t *n)
{
    struct dsw_buf b;
    dsw_buf_init(&b, DSW_METRICS_RENDER_MAX);
    assert_int_equal(dsw_metrics_render(&b), 0);
    const char *p = strstr(b.data, "\ndsw_log_dropped_total ");
    int found = p && sscanf(p, "\ndsw_log_dropped_total %llu", (unsigned long long *)n) == 1;
    dsw_buf_free(&b);
    return found;
}

/* On the loop, a stalled stderr never blocks a caller: lines are buffered, then dropped and
 * counted (the metric too); once the reader reads, the buffer drains by itself and one line
 * says how many were lost. */
static void test_stalled_fd_on_loop_drops_and_reports(void **state)
{
    int fds[2];
    tu_full_pipe(fds);
    dsw_log_setup(DSW_LOG_INFO, DSW_LOG_TEXT, fds[1]);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(dsw_log_attach(&loop), 0);
    uint64_t before = dsw_log_dropped();
    uint64_t dropped = fill_until_dropped(before);
    assert_true(dropped > 0);
    assert_int_equal(fill_until_dropped(before + dropped), 1); /* still full: dropped too */
    dropped++;
    uint64_t metric = 0;
    assert_true(rendered_drops(&metric));
    assert_int_equal(metric, dsw_log_dropped());
    struct reader r = {.fd = fds[0]};
    snprintf(r.want, sizeof(r.want), "dropped %llu log lines", (unsigned long long)dropped);
    int seen = tu_run_until(&loop, reader_saw, &r, 10000);
    assert_true(seen);
    dsw_log_detach(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(fds[0]);
    close(fds[1]);
}

/* Off the loop (before it exists, at exit) the wait for a full fd is bounded: the first line
 * waits DSW_LOG_SYNC_WAIT_MS, later ones not at all while it stays full; a flush once the
 * reader reads writes everything and the count of what was lost. */
static void test_stalled_fd_off_loop_is_bounded(void **state)
{
    int fds[2];
    tu_full_pipe(fds);
    dsw_log_setup(DSW_LOG_INFO, DSW_LOG_TEXT, fds[1]);
    uint64_t before = dsw_log_dropped();
    uint64_t dropped = fill_until_dropped(before); /* returns: nothing blocks */
    assert_true(dropped > 0);
    struct reader r = {.fd = fds[0]};
    snprintf(r.want, sizeof(r.want), "dropped %llu log lines", (unsigned long long)dropped);
    int seen = 0;
    for (int i = 0; i < 1000 && !seen; i++) {
        seen = reader_saw(&r);
        dsw_log_flush(10);
    }
    assert_true(seen);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_checked_before_formatting),
        cmocka_unit_test(test_text_context_and_one_line),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_journal_prefix),
        cmocka_unit_test(test_secrets_scrubbed),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_stalled_fd_on_loop_drops_and_reports),
        cmocka_unit_test(test_stalled_fd_off_loop_is_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
