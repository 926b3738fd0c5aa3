/* log: levelled one-line records on stderr, as text (with a <N> syslog prefix under journald)
 * or as JSON objects. The level is checked before any argument is formatted. Every line passes a
 * scrubber that masks secret-looking values (passwords, AWS keys, tokens, URI passwords), but
 * callers must still never pass a message body, a password or a key. */
#ifndef DSW_LOG_H
#define DSW_LOG_H

#include "dsw/util.h"

enum dsw_log_level { DSW_LOG_DEBUG, DSW_LOG_INFO, DSW_LOG_WARN, DSW_LOG_ERROR, DSW_LOG_OFF };
enum dsw_log_format { DSW_LOG_TEXT, DSW_LOG_JSON };

/* Optional structured context for a record; any member may be NULL / unset. */
struct dsw_log_ctx {
    const char *event; /* short machine name: "claim", "child_exit", ... */
    const char *run_id;
    const char *message_id;
    const char *err; /* error text from a library (already free of secrets) */
    int has_exit_code;
    int exit_code;
    long long duration_ms; /* < 0: none */
};

#define DSW_LOG_LINE_MAX 8192

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
