/* log: one record = one line. Text or JSON; journald priority prefix when stderr is the journal
 * stream; a scrubber masks anything that looks like a secret. Lines go through a bounded buffer:
 * on the loop it drains when the fd is writable (never blocking), elsewhere with a bounded wait;
 * a line that does not fit is dropped and counted. */
#include "dsw/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

enum dsw_log_level dsw_log_threshold = DSW_LOG_INFO;

static enum dsw_log_format log_format = DSW_LOG_TEXT;
static int log_fd = 2;
static int log_journal;
static char log_worker_id[128];

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};
static const int level_prio[] = {7, 6, 4, 3, 3};

static int journal_matches(int fd)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(fd, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* ---- output: the bounded buffer --------------------------------------------------------- */

static struct {
    char buf[DSW_LOG_BUFFER_MAX];
    size_t off, len;          /* pending bytes are buf[off, off + len) */
    uint64_t dropped;         /* lines dropped since start (the metric) */
    uint64_t unreported;      /* dropped since the last "dropped N log lines" line */
    int stalled;              /* the last bounded wait ran out: do not wait again until it drains */
    uv_poll_t *poll;          /* on the loop: writability of log_fd (heap, freed when closed) */
    int polling, saved_flags; /* the fd's flags before libuv made it non-blocking */
} sink;

static void emit_line(enum dsw_log_level level, const struct dsw_log_ctx *ctx, char *msg);

static void out_append(const char *s, size_t n)
{
    if (n > sizeof(sink.buf) - sink.len) {
        sink.dropped++;
        sink.unreported++;
        return;
    }
    if (n > sizeof(sink.buf) - sink.off - sink.len) {
        memmove(sink.buf, sink.buf + sink.off, sink.len);
        sink.off = 0;
    }
    memcpy(sink.buf + sink.off + sink.len, s, n);
    sink.len += n;
}

/* One write of at most PIPE_BUF bytes (a pipe or socket that polled writable takes it without
 * blocking). 1 when something went, 0 when the fd would block or the buffer is empty. */
static int out_write_piece(void)
{
    if (!sink.len)
        return 0;
    ssize_t w;
    do
        w = write(log_fd, sink.buf + sink.off, sink.len < PIPE_BUF ? sink.len : PIPE_BUF);
    while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (w <= 0) { /* EPIPE, EBADF...: nobody will read these */
        sink.off = sink.len = 0;
        return 0;
    }
    sink.off += (size_t)w;
    sink.len -= (size_t)w;
    if (!sink.len) {
        sink.off = 0;
        sink.stalled = 0;
    }
    return 1;
}

/* Once the buffer is empty, say how many lines were lost (one line). */
static void out_report_drops(void)
{
    if (sink.len || !sink.unreported)
        return;
    char msg[96];
    snprintf(msg, sizeof(msg), "dropped %llu log lines (stderr was not writable)",
             (unsigned long long)sink.unreported);
    sink.unreported = 0;
    emit_line(DSW_LOG_WARN, NULL, msg);
}

/* Off the loop (the fd may block): wait at most timeout_ms in all for it to take the buffer. */
static void out_flush_bounded(int timeout_ms)
{
    uint64_t deadline = dsw_now_ms() + (uint64_t)timeout_ms;
    while (sink.len) {
        uint64_t now = dsw_now_ms();
        struct pollfd p = {.fd = log_fd, .events = POLLOUT};
        int left = now < deadline ? (int)(deadline - now) : 0;
        if (poll(&p, 1, left) == 0) {
            sink.stalled = 1;
            return;
        }
        if (!out_write_piece() && sink.len && left == 0)
            return; /* polled ready but would block (EAGAIN) and no time left */
    }
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    (void)events;
    if (status < 0)
        sink.off = sink.len = 0; /* the reader is gone */
    while (out_write_piece())
        ;
    if (!sink.len) {
        uv_poll_stop(h);
        sink.polling = 0;
        out_report_drops();
    }
}

static void out_flush(void)
{
    if (!sink.poll) {
        out_flush_bounded(sink.stalled ? 0 : DSW_LOG_SYNC_WAIT_MS);
        out_report_drops();
        return;
    }
    if (sink.polling)
        return; /* the poll callback writes, in order */
    while (out_write_piece())
        ;
    if (!sink.len)
        out_report_drops();
    else if (uv_poll_start(sink.poll, UV_WRITABLE, on_writable) == 0)
        sink.polling = 1;
    else
        out_flush_bounded(0);
}

int dsw_log_attach(uv_loop_t *loop)
{
    if (sink.poll)
        return -EALREADY;
    sink.saved_flags = fcntl(log_fd, F_GETFL);
    uv_poll_t *p = dsw_xcalloc(1, sizeof(*p));
    int rc = uv_poll_init(loop, p, log_fd);
    if (rc) { /* a regular file or /dev/null: writes to it do not wait for a reader */
        free(p);
        return rc == UV_EPERM ? 0 : rc;
    }
    uv_unref((uv_handle_t *)p); /* never what keeps the loop running */
    sink.poll = p;
    out_flush();
    return 0;
}

static void free_poll(uv_handle_t *h)
{
    free(h);
}

void dsw_log_detach(uv_loop_t *loop)
{
    if (!sink.poll)
        return;
    uv_close((uv_handle_t *)sink.poll, free_poll);
    sink.poll = NULL;
    sink.polling = 0;
    uv_run(loop, UV_RUN_NOWAIT); /* the close callback */
    if (sink.saved_flags >= 0)
        (void)fcntl(log_fd, F_SETFL, sink.saved_flags);
    dsw_log_flush(DSW_LOG_SYNC_WAIT_MS);
}

void dsw_log_flush(int timeout_ms)
{
    if (!sink.poll) {
        out_flush_bounded(timeout_ms);
        out_report_drops();
        out_flush_bounded(timeout_ms);
    }
}

uint64_t dsw_log_dropped(void)
{
    return sink.dropped;
}

void dsw_log_setup(enum dsw_log_level level, enum dsw_log_format format, int fd)
{
    dsw_log_threshold = level;
    log_format = format;
    log_fd = fd;
    log_journal = journal_matches(fd);
    sink.off = sink.len = 0;
    sink.stalled = 0;
}

void dsw_log_set_level(enum dsw_log_level level)
{
    dsw_log_threshold = level;
}

void dsw_log_set_worker_id(const char *worker_id)
{
    dsw_strlcpy(log_worker_id, worker_id ? worker_id : "", sizeof(log_worker_id));
}

int dsw_log_level_parse(const char *s, enum dsw_log_level *out)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum dsw_log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = DSW_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

int dsw_log_format_parse(const char *s, enum dsw_log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = DSW_LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = DSW_LOG_JSON;
    else
        return -EINVAL;
    return 0;
}

const char *dsw_log_level_name(enum dsw_log_level level)
{
    return level_names[level <= DSW_LOG_OFF ? level : DSW_LOG_OFF];
}

/* ---- scrubbing -------------------------------------------------------------------------- */

static const char *const secret_words[] = {"password",      "passwd",     "secret",   "token",
                                           "authorization", "credential", "signature"};

static int is_value_end(char c)
{
    return c == '\0' || isspace((unsigned char)c) || c == '&' || c == ';' || c == ',' || c == '"' ||
           c == '\'' || c == '}' || c == ')';
}

/* After a secret word, skip to its "=", ":" or " " separator and mask the value. */
static char *mask_after_word(char *p)
{
    char *q = p;
    while (isalnum((unsigned char)*q) || *q == '_' || *q == '-')
        q++;
    while (*q == ' ' || *q == '"' || *q == '\'')
        q++;
    if (*q != '=' && *q != ':')
        return q;
    q++;
    while (*q == ' ' || *q == '"' || *q == '\'')
        q++;
    if (is_value_end(*q))
        return q;
    char *w = q;
    *w++ = '*';
    *w++ = '*';
    *w++ = '*';
    char *end = q;
    while (!is_value_end(*end))
        end++;
    if (end < w) /* value shorter than the mask: keep the mask as long as the value */
        w = end;
    memmove(w, end, strlen(end) + 1);
    return w;
}

static void scrub_words(char *s)
{
    for (char *p = s; *p; p++) {
        for (size_t i = 0; i < DSW_ARRAY_LEN(secret_words); i++) {
            size_t n = strlen(secret_words[i]);
            if (strncasecmp(p, secret_words[i], n) == 0) {
                p = mask_after_word(p + n);
                if (!*p)
                    return;
                break;
            }
        }
    }
}

/* scheme://user:password@host -> scheme://user:***@host */
static void scrub_uri_passwords(char *s)
{
    char *p = s;
    while ((p = strstr(p, "://")) != NULL) {
        p += 3;
        char *at = p;
        while (*at && *at != '@' && *at != '/' && !isspace((unsigned char)*at))
            at++;
        if (*at != '@')
            continue;
        char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon || at - colon <= 1)
            continue;
        size_t vlen = (size_t)(at - colon - 1);
        size_t mlen = vlen < 3 ? vlen : 3;
        memset(colon + 1, '*', mlen);
        memmove(colon + 1 + mlen, at, strlen(at) + 1);
        p = colon + 1 + mlen;
    }
}

/* AWS access key ids: AKIA/ASIA + 16 upper-case alphanumerics. */
static void scrub_aws_keys(char *s)
{
    for (char *p = s; *p; p++) {
        if ((strncmp(p, "AKIA", 4) && strncmp(p, "ASIA", 4)) ||
            (p > s && isalnum((unsigned char)p[-1])))
            continue;
        int n = 0;
        while (n < 16 && (isupper((unsigned char)p[4 + n]) || isdigit((unsigned char)p[4 + n])))
            n++;
        if (n == 16)
            memset(p + 4, '*', 16);
    }
}

void dsw_log_scrub(char *s)
{
    scrub_uri_passwords(s);
    scrub_aws_keys(s);
    scrub_words(s);
}

/* ---- formatting ------------------------------------------------------------------------- */

struct line {
    char buf[DSW_LOG_LINE_MAX + 64];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    size_t room = DSW_LOG_LINE_MAX - l->len;
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    size_t n = *p < 0xc2 ? 0 : *p < 0xe0 ? 2 : *p < 0xf0 ? 3 : *p < 0xf5 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if ((n == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f))) ||
        (n == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f))))
        return 0;
    return n;
}

static void put_json_str(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x80) {
            /* A child's output may be cut mid-character or be binary: keep the line JSON. */
            size_t n = utf8_len(p);
            if (n) {
                put(l, (const char *)p, n);
                p += n - 1;
            } else
                put(l, "\\ufffd", 6);
            continue;
        }
        char esc[7] = {'\\', (char)*p, 0};
        if (*p == '"' || *p == '\\')
            put(l, esc, 2);
        else if (*p == '\n')
            put(l, "\\n", 2);
        else if (*p == '\t')
            put(l, "\\t", 2);
        else if (*p < 0x20 || *p == 0x7f) {
            char u[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            put(l, u, 6);
        } else
            put(l, (const char *)p, 1);
    }
    put(l, "\"", 1);
}

static void iso_time(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Control characters in text lines would let a value forge a second line. */
static void flatten(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20)
            *s = ' ';
}

static void text_kv(struct line *l, const char *k, const char *v)
{
    if (!v)
        return;
    char tmp[512];
    dsw_strlcpy(tmp, v, sizeof(tmp));
    flatten(tmp);
    puts_(l, " ");
    puts_(l, k);
    puts_(l, "=");
    puts_(l, tmp);
}

static void format_text(struct line *l, enum dsw_log_level level, const struct dsw_log_ctx *c,
                        char *msg)
{
    char pre[64];
    if (log_journal)
        snprintf(pre, sizeof(pre), "<%d>", level_prio[level]);
    else {
        char ts[40];
        iso_time(ts, sizeof(ts));
        snprintf(pre, sizeof(pre), "%s %-5s ", ts, level_names[level]);
    }
    puts_(l, pre);
    flatten(msg);
    puts_(l, msg);
    if (!c)
        return;
    text_kv(l, "event", c->event);
    text_kv(l, "run_id", c->run_id);
    text_kv(l, "message_id", c->message_id);
    text_kv(l, "step_key", c->step_key);
    char num[32];
    if (c->has_exit_code) {
        snprintf(num, sizeof(num), "%d", c->exit_code);
        text_kv(l, "exit_code", num);
    }
    if (c->duration_ms >= 0) {
        snprintf(num, sizeof(num), "%lld", c->duration_ms);
        text_kv(l, "duration_ms", num);
    }
    text_kv(l, "err", c->err);
}

static void json_kv(struct line *l, const char *k, const char *v)
{
    if (!v || !*v)
        return;
    puts_(l, ", ");
    put_json_str(l, k);
    puts_(l, ": ");
    put_json_str(l, v);
}

static void format_json(struct line *l, enum dsw_log_level level, const struct dsw_log_ctx *c,
                        const char *msg)
{
    char ts[40], num[64];
    iso_time(ts, sizeof(ts));
    puts_(l, "{\"ts\": ");
    put_json_str(l, ts);
    json_kv(l, "level", level_names[level]);
    json_kv(l, "msg", msg);
    json_kv(l, "worker_id", log_worker_id);
    if (c) {
        json_kv(l, "event", c->event);
        json_kv(l, "run_id", c->run_id);
        json_kv(l, "message_id", c->message_id);
        json_kv(l, "step_key", c->step_key);
        if (c->has_exit_code) {
            snprintf(num, sizeof(num), ", \"exit_code\": %d", c->exit_code);
            puts_(l, num);
        }
        if (c->duration_ms >= 0) {
            snprintf(num, sizeof(num), ", \"duration_ms\": %lld", c->duration_ms);
            puts_(l, num);
        }
        json_kv(l, "err", c->err);
    }
    /* A line cut at the limit must still be valid JSON: close it whatever happened. */
    if (l->len >= DSW_LOG_LINE_MAX - 1) {
        l->len = DSW_LOG_LINE_MAX - 1;
        /* Drop a partial escape (\uXXXX is 6 bytes) and a partial UTF-8 character. */
        for (size_t k = 1; k <= 6 && k <= l->len; k++) {
            if (l->buf[l->len - k] == '\\') {
                l->len -= k;
                break;
            }
        }
        size_t bs = 0;
        while (bs < l->len && l->buf[l->len - 1 - bs] == '\\')
            bs++;
        l->len -= bs % 2;
        while (l->len && (unsigned char)l->buf[l->len - 1] >= 0x80)
            l->len--;
        memcpy(l->buf + l->len, "\"}", 2);
        l->len += 2;
        return;
    }
    puts_(l, "}");
}

/* Format one record (msg is scrubbed and may be altered) and queue it. */
static void emit_line(enum dsw_log_level level, const struct dsw_log_ctx *ctx, char *msg)
{
    struct dsw_log_ctx c = {.duration_ms = -1};
    if (ctx)
        c = *ctx;
    char err[512];
    if (c.err) {
        dsw_strlcpy(err, c.err, sizeof(err));
        dsw_log_scrub(err);
        c.err = err;
    }
    dsw_log_scrub(msg);
    static struct line l;
    l.len = 0;
    if (log_format == DSW_LOG_JSON)
        format_json(&l, level, ctx ? &c : NULL, msg);
    else
        format_text(&l, level, ctx ? &c : NULL, msg);
    l.buf[l.len++] = '\n';
    out_append(l.buf, l.len);
    out_flush();
}

void dsw_log_emit(enum dsw_log_level level, const struct dsw_log_ctx *ctx, const char *fmt, ...)
{
    if (level < dsw_log_threshold || level >= DSW_LOG_OFF)
        return;
    char msg[DSW_LOG_LINE_MAX / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    emit_line(level, ctx, msg);
}
