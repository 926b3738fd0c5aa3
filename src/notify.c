/* notify: sd_notify by hand (systemd's sd_notify(3) wire format: one AF_UNIX datagram of
 * newline-separated KEY=VALUE pairs) and the loop watchdog: a uv_check_t counts loop iterations,
 * a uv_timer_t pings WATCHDOG=1 only if the count moved since its last ping. */
#include "dsw/notify.h"

#include "dsw/failpoint.h"
#include "dsw/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define STATUS_MAX 200

/* Fill *sa from $NOTIFY_SOCKET; returns the address length, 0 when unset, -EINVAL when bad. */
static int notify_addr(struct sockaddr_un *sa)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n < 2 || n >= sizeof(sa->sun_path))
        return -EINVAL;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, n);
    if (path[0] == '@')
        sa->sun_path[0] = '\0'; /* abstract: the name is exactly n bytes, no trailing NUL */
    return (int)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
}

int dsw_notify_enabled(void)
{
    struct sockaddr_un sa;
    return notify_addr(&sa) > 0;
}

int dsw_notify_send(const char *state)
{
    struct sockaddr_un sa;
    int len = notify_addr(&sa);
    if (len <= 0) {
        static int warned;
        if (len < 0 && !warned++)
            dsw_warn("notify: NOTIFY_SOCKET is not an absolute path or @name; not notifying");
        return len;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    size_t n = strlen(state);
    if (sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa, (socklen_t)len) != (ssize_t)n)
        rc = -errno;
    close(fd);
    if (rc < 0)
        dsw_debug("notify: sendto NOTIFY_SOCKET: %s", strerror(-rc));
    return rc;
}

int dsw_notify_ready(void)
{
    return dsw_notify_send("READY=1");
}

int dsw_notify_stopping(void)
{
    return dsw_notify_send("STOPPING=1");
}

int dsw_notify_watchdog(void)
{
    return dsw_notify_send("WATCHDOG=1");
}

int dsw_notify_status(const char *fmt, ...)
{
    char msg[sizeof("STATUS=") + STATUS_MAX] = "STATUS=";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 7, STATUS_MAX + 1, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return dsw_notify_send(msg);
}

int dsw_notify_extend_timeout(uint64_t usec)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "EXTEND_TIMEOUT_USEC=%" PRIu64, usec);
    return dsw_notify_send(msg);
}

/* A decimal without sign, spaces or trailing junk; -EINVAL otherwise. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

uint64_t dsw_notify_watchdog_interval_ms(void)
{
    uint64_t usec, pid;
    if (!dsw_notify_enabled() || parse_u64(getenv("WATCHDOG_USEC"), &usec) < 0 || usec == 0)
        return 0;
    const char *p = getenv("WATCHDOG_PID");
    if (p && *p && (parse_u64(p, &pid) < 0 || pid != (uint64_t)getpid()))
        return 0; /* the watchdog is meant for another process (e.g. our parent) */
    return DSW_MAX(usec / 2000, 1);
}

/* ---- the loop watchdog ---------------------------------------------------------------- */

struct dsw_watchdog {
    uv_timer_t timer;
    uv_check_t check;
    uint64_t interval_ms;
    uint64_t pinged_at_tick;
    uint64_t pinged_at_ms;
    struct dsw_watchdog_stats st;
    int nclosing;
    struct dsw_closer close;
};

static void on_check(uv_check_t *c)
{
    struct dsw_watchdog *w = c->data;
    w->st.ticks++;
}

/* "watchdog_wedge=sleep:MS@N" blocks the loop right after the N-th ping (test builds). */
static void wedge_failpoint(struct dsw_watchdog *w)
{
    long fired = DSW_FAILPOINT_FIRED("watchdog_wedge");
    uint64_t start = dsw_now_ns();
    (void)DSW_FAILPOINT("watchdog_wedge");
    if (DSW_FAILPOINT_FIRED("watchdog_wedge") > fired) {
        w->st.wedge_start_ns = start;
        w->st.wedge_end_ns = dsw_now_ns();
    }
}

static void on_ping(uv_timer_t *t)
{
    struct dsw_watchdog *w = t->data;
    if (w->st.ticks == w->pinged_at_tick) {
        w->st.skipped++;
        dsw_warn("watchdog: no full loop iteration since the last ping %" PRIu64
                 " ms ago (a stall?); skipping this ping",
                 uv_now(t->loop) - w->pinged_at_ms);
        return;
    }
    w->pinged_at_tick = w->st.ticks;
    w->pinged_at_ms = uv_now(t->loop);
    w->st.pings++;
    if (dsw_notify_watchdog() < 0)
        w->st.send_errors++; /* logged at debug by dsw_notify_send; the next ping retries */
    wedge_failpoint(w);
}

int dsw_watchdog_init(struct dsw_watchdog **out, uv_loop_t *loop, uint64_t interval_ms)
{
    struct dsw_watchdog *w = dsw_xcalloc(1, sizeof(*w));
    *out = NULL;
    w->interval_ms = interval_ms ? interval_ms : dsw_notify_watchdog_interval_ms();
    /* uv_timer_init and uv_check_init cannot fail on Linux; nothing to unwind. */
    uv_timer_init(loop, &w->timer);
    uv_check_init(loop, &w->check);
    w->timer.data = w->check.data = w;
    if (w->interval_ms) {
        uv_check_start(&w->check, on_check);
        uv_timer_start(&w->timer, on_ping, w->interval_ms, w->interval_ms);
        dsw_info("watchdog: pinging every %" PRIu64 " ms while the loop runs", w->interval_ms);
    }
    *out = w;
    return 0;
}

uint64_t dsw_watchdog_interval_ms(const struct dsw_watchdog *w)
{
    return w->interval_ms;
}

void dsw_watchdog_stats(const struct dsw_watchdog *w, struct dsw_watchdog_stats *out)
{
    *out = w->st;
}

static void on_closed(uv_handle_t *h)
{
    struct dsw_watchdog *w = h->data;
    if (--w->nclosing > 0)
        return;
    dsw_closer_done(&w->close, w);
}

void dsw_watchdog_close(struct dsw_watchdog *w, dsw_watchdog_close_cb cb, void *arg)
{
    if (dsw_closer_start(&w->close, cb, arg))
        return;
    w->nclosing = 2;
    uv_close((uv_handle_t *)&w->timer, on_closed);
    uv_close((uv_handle_t *)&w->check, on_closed);
}
