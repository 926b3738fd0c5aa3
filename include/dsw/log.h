/* log: levelled one-line records on stderr, as text (with a <N> syslog prefix under journald)
 * or as JSON objects. The level is checked before any argument is formatted. Every line passes a
 * scrubber that masks secret-looking values (passwords, AWS keys, tokens, URI passwords), but
 * callers must still never pass a message body, a password or a key.
 * Output never stalls the loop: lines go through a buffer of DSW_LOG_BUFFER_MAX bytes, written
 * when the fd is writable once dsw_log_attach put it on the loop, and with a bounded wait
 * (DSW_LOG_SYNC_WAIT_MS, then none while the fd stays full) before that. A line that does not
 * fit is dropped and counted (dsw_log_dropped, the metric dsw_log_dropped_total); once the
 * buffer drains, one line says how many were lost. Loop thread only. */
#ifndef DSW_LOG_H
#define DSW_LOG_H

#include "dsw/util.h"

#include <stdint.h>

struct uv_loop_s; /* uv_loop_t, without uv.h here */

enum dsw_log_level { DSW_LOG_DEBUG, DSW_LOG_INFO, DSW_LOG_WARN, DSW_LOG_ERROR, DSW_LOG_OFF };
enum dsw_log_format { DSW_LOG_TEXT, DSW_LOG_JSON };

/* Optional structured context for a record; any member may be NULL / unset. */
struct dsw_log_ctx {
    const char *event; /* short machine name: "claim", "child_exit", ... */
    const char *run_id;
    const char *message_id;
    const char *step_key; /* a step's key (STEPS: execute_step), NULL for runs */
    const char *err;      /* error text from a library (already free of secrets) */
    int has_exit_code;
    int exit_code;
    long long duration_ms; /* < 0: none */
};

#define DSW_LOG_LINE_MAX     8192
#define DSW_LOG_BUFFER_MAX   (128u * 1024) /* bytes of lines waiting for the fd */
#define DSW_LOG_SYNC_WAIT_MS 1000          /* the longest wait for the fd off the loop */

extern enum dsw_log_level dsw_log_threshold;

/* Configure: minimum level, format, output fd (2 normally). journald is detected through
 * JOURNAL_STREAM matching fd's device:inode, as systemd documents. */
void dsw_log_setup(enum dsw_log_level level, enum dsw_log_format format, int fd);
void dsw_log_set_level(enum dsw_log_level level);
/* Remember the worker id added to JSON records (copied). */
void dsw_log_set_worker_id(const char *worker_id);
/* Parse "debug|info|warn|warning|error|off"; -EINVAL otherwise. */
int dsw_log_level_parse(const char *s, enum dsw_log_level *out) DSW_WUR;
int dsw_log_format_parse(const char *s, enum dsw_log_format *out) DSW_WUR;
const char *dsw_log_level_name(enum dsw_log_level level);

/* Format and write one record; prefer the macros, which skip formatting below the level. */
void dsw_log_emit(enum dsw_log_level level, const struct dsw_log_ctx *ctx, const char *fmt, ...)
    DSW_PRINTF(3, 4);

/* Write through loop from now on: a uv_poll on the fd (which libuv makes non-blocking), kept
 * unreferenced so it never keeps the loop alive. 0 also when the fd cannot be polled (a regular
 * file: writes to it do not wait for a reader); -EALREADY when attached; a libuv error. */
int dsw_log_attach(struct uv_loop_s *loop) DSW_WUR;
/* Before uv_loop_close: close the poll handle (runs loop once for its close callback), give the
 * fd its flags back and flush what is pending with the bounded wait. No-op when not attached. */
void dsw_log_detach(struct uv_loop_s *loop);
/* Off the loop: write what is pending, waiting at most timeout_ms for the fd. */
void dsw_log_flush(int timeout_ms);
/* Lines dropped since start because the buffer was full. */
uint64_t dsw_log_dropped(void);

/* Mask secret-looking values in s, in place (never makes it longer). Exposed for tests. */
void dsw_log_scrub(char *s);

#define dsw_log(level, ctx, ...)                                                                   \
    do {                                                                                           \
        if ((level) >= dsw_log_threshold)                                                          \
            dsw_log_emit((level), (ctx), __VA_ARGS__);                                             \
    } while (0)
#define dsw_debug(...) dsw_log(DSW_LOG_DEBUG, NULL, __VA_ARGS__)
#define dsw_info(...)  dsw_log(DSW_LOG_INFO, NULL, __VA_ARGS__)
#define dsw_warn(...)  dsw_log(DSW_LOG_WARN, NULL, __VA_ARGS__)
#define dsw_error(...) dsw_log(DSW_LOG_ERROR, NULL, __VA_ARGS__)

#endif
