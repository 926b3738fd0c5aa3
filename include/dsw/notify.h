/* notify: the sd_notify protocol written by hand (one AF_UNIX datagram per state change to
 * $NOTIFY_SOCKET, a leading '@' meaning the abstract namespace) and a loop watchdog that sends
 * WATCHDOG=1 only while the libuv loop keeps turning. Everything is a no-op returning 0 when
 * NOTIFY_SOCKET is unset, so the daemon behaves the same outside systemd. */
#ifndef DSW_NOTIFY_H
#define DSW_NOTIFY_H

#include "dsw/util.h"

#include <stdint.h>
#include <uv.h>

/* Whether $NOTIFY_SOCKET is set to something usable (a path or an @abstract name that fits in
 * sockaddr_un). */
int dsw_notify_enabled(void);

/* Send one datagram holding state (e.g. "READY=1" or "STATUS=x\nREADY=1") to $NOTIFY_SOCKET.
 * state is borrowed. Returns 0 (also when NOTIFY_SOCKET is unset), -EINVAL when NOTIFY_SOCKET is
 * malformed or too long, or the negative errno of socket/sendto. Never blocks. */
int dsw_notify_send(const char *state) DSW_WUR;

/* The usual messages. READY=1 once the daemon serves; STOPPING=1 when the drain starts;
 * WATCHDOG=1 is normally sent by struct dsw_watchdog. Same returns as dsw_notify_send. */
int dsw_notify_ready(void) DSW_WUR;
int dsw_notify_stopping(void) DSW_WUR;
int dsw_notify_watchdog(void) DSW_WUR;
/* STATUS=<text>: one line shown by systemctl status; newlines in the formatted text are replaced
 * by spaces and it is cut at 200 bytes. */
int dsw_notify_status(const char *fmt, ...) DSW_PRINTF(1, 2) DSW_WUR;
/* EXTEND_TIMEOUT_USEC=<usec>: ask the service manager for usec more from now (while draining,
 * send it again before the previous extension runs out). */
int dsw_notify_extend_timeout(uint64_t usec) DSW_WUR;

/* The watchdog ping interval in milliseconds: half of $WATCHDOG_USEC, or 0 when there is no
 * watchdog for this process (WATCHDOG_USEC unset, malformed or 0, WATCHDOG_PID set to another
 * pid, or NOTIFY_SOCKET unset). Never below 1 ms when a watchdog is on. */
uint64_t dsw_notify_watchdog_interval_ms(void);

/* ---- the loop watchdog ---------------------------------------------------------------- */

/* Opaque; created by dsw_watchdog_init, freed only by dsw_watchdog_close's callback. Holds a
 * uv_timer_t (the ping) and a uv_check_t (counts loop iterations): the timer sends WATCHDOG=1
 * only when the loop has gone through at least one full iteration (I/O poll included) since the
 * previous ping. A loop stuck in a callback cannot run the timer at all, so systemd sees the
 * pings stop and restarts the daemon after WatchdogSec.
 *
 * Failpoint (builds with DSW_FAILPOINTS only, on by default in CMake): when
 * DSW_FAILPOINT_WEDGE_MS=N is set in the environment, a one-shot timer armed by
 * dsw_watchdog_init fires after DSW_FAILPOINT_WEDGE_AFTER_MS (default 1000) and busy-waits N ms
 * inside its callback, wedging the loop; it works whether or not a watchdog is configured. */
struct dsw_watchdog;

struct dsw_watchdog_stats {
    uint64_t pings;       /* WATCHDOG=1 datagrams sent (whatever sendto returned) */
    uint64_t skipped;     /* timer ticks that found no loop iteration since the previous ping */
    uint64_t send_errors; /* pings whose sendto failed */
    uint64_t ticks;       /* loop iterations seen */
    uint64_t wedge_start_ns, wedge_end_ns; /* failpoint window (dsw_now_ns), 0 if none ran */
};

typedef void (*dsw_watchdog_close_cb)(void *arg);

/* Create the watchdog on loop. interval_ms 0 means dsw_notify_watchdog_interval_ms(); when that
 * is 0 too the watchdog is created inactive (no timer runs, nothing is sent; closing it still
 * works). The handles are referenced: the loop does not end while the watchdog is open. Sends
 * nothing itself until the first interval elapses. Returns 0 or a negative errno from libuv;
 * *out is NULL on error. */
int dsw_watchdog_init(struct dsw_watchdog **out, uv_loop_t *loop, uint64_t interval_ms) DSW_WUR;

/* The ping interval in use (0 = inactive). */
uint64_t dsw_watchdog_interval_ms(const struct dsw_watchdog *w);

/* Counters for tests and logs; filled into *out. */
void dsw_watchdog_stats(const struct dsw_watchdog *w, struct dsw_watchdog_stats *out);

/* Stop pinging and close the handles; cb(arg) fires from the loop once they are closed, after
 * which w is freed. cb may be NULL. Sends nothing (STOPPING=1 is the caller's). */
void dsw_watchdog_close(struct dsw_watchdog *w, dsw_watchdog_close_cb cb, void *arg);

#endif
