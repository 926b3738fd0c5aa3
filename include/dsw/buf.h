/* buf: a growable byte buffer with a hard size limit (curl's dynbuf idea). Anything read from
 * outside the process goes through one of these so that its size is always capped. */
#ifndef DSW_BUF_H
#define DSW_BUF_H

#include "dsw/util.h"

#include <stdarg.h>
#include <stddef.h>

struct dsw_buf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    size_t max; /* hard limit on len */
};

/* Start empty with a limit of max bytes. No allocation happens until the first append. */
void dsw_buf_init(struct dsw_buf *b, size_t max);
/* Append n bytes; -E2BIG (and the buffer unchanged) when the result would exceed max. */
int dsw_buf_append(struct dsw_buf *b, const void *p, size_t n) DSW_WUR;
int dsw_buf_puts(struct dsw_buf *b, const char *s) DSW_WUR;
int dsw_buf_printf(struct dsw_buf *b, const char *fmt, ...) DSW_PRINTF(2, 3) DSW_WUR;
int dsw_buf_vprintf(struct dsw_buf *b, const char *fmt, va_list ap) DSW_PRINTF(2, 0) DSW_WUR;
/* The contents as a C string ("" when empty); valid until the next modification. */
const char *dsw_buf_str(const struct dsw_buf *b);
/* Drop the contents, keep the memory. */
void dsw_buf_reset(struct dsw_buf *b);
/* Drop n bytes from the front. */
void dsw_buf_consume(struct dsw_buf *b, size_t n);
/* Hand the heap string to the caller (who frees it); the buffer is empty afterwards. */
char *dsw_buf_take(struct dsw_buf *b);
void dsw_buf_free(struct dsw_buf *b);

#endif
