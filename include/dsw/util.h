/* util: allocation that aborts on out-of-memory, time, small string helpers.
 * Everything here is libc only; every other module may use it. */
#ifndef DSW_UTIL_H
#define DSW_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define DSW_WUR          __attribute__((warn_unused_result))
#define DSW_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define DSW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DSW_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define DSW_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* Allocators: never return NULL; print a line and abort() when memory runs out. */
void *dsw_xmalloc(size_t n);
void *dsw_xcalloc(size_t count, size_t n);
void *dsw_xrealloc(void *p, size_t n);
char *dsw_xstrdup(const char *s);
char *dsw_xstrndup(const char *s, size_t n);
/* printf into a new heap string (caller frees). */
char *dsw_xasprintf(const char *fmt, ...) DSW_PRINTF(1, 2);

/* Monotonic clock in milliseconds / nanoseconds (CLOCK_MONOTONIC). */
uint64_t dsw_now_ms(void);
uint64_t dsw_now_ns(void);
/* Wall clock as unix seconds with sub-second precision. */
double dsw_wall_time(void);

/* Copy src into dst of size n, always NUL-terminated; returns strlen(src). */
size_t dsw_strlcpy(char *dst, const char *src, size_t n);
/* Constant-time-free string equality that treats NULL as "". */
int dsw_streq(const char *a, const char *b);

/* The close idiom of an object with an asynchronous x_close(x, cb, arg): whether it started,
 * and what to call once the object is gone. Embed one, zeroed. */
struct dsw_closer {
    int started;
    void (*cb)(void *arg);
    void *arg;
};
/* The start of x_close(): 0 the first time (cb and arg kept), -EALREADY on a later call. */
int dsw_closer_start(struct dsw_closer *c, void (*cb)(void *arg), void *arg) DSW_WUR;
/* The end: free(obj) (the object holding c), then call its callback, if any. */
void dsw_closer_done(struct dsw_closer *c, void *obj);

/* First 12 hex digits of SHA-256(data): a short fingerprint that is safe to log in place of a
 * message body. out must hold 13 bytes. */
void dsw_short_hash(const void *data, size_t len, char out[13]);

#endif
