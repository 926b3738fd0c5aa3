/* buf: capped growable buffers; every append checks the hard limit first. */
#include "dsw/buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dsw_buf_init(struct dsw_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

static void reserve(struct dsw_buf *b, size_t need)
{
    if (need + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need + 1)
        cap *= 2;
    b->data = dsw_xrealloc(b->data, cap);
    b->cap = cap;
}

int dsw_buf_append(struct dsw_buf *b, const void *p, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return -E2BIG;
    reserve(b, b->len + n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int dsw_buf_puts(struct dsw_buf *b, const char *s)
{
    return dsw_buf_append(b, s, strlen(s));
}

int dsw_buf_vprintf(struct dsw_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n > b->max || b->len > b->max - (size_t)n)
        return -E2BIG;
    reserve(b, b->len + (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int dsw_buf_printf(struct dsw_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = dsw_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

const char *dsw_buf_str(const struct dsw_buf *b)
{
    return b->data ? b->data : "";
}

void dsw_buf_reset(struct dsw_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void dsw_buf_consume(struct dsw_buf *b, size_t n)
{
    if (n >= b->len) {
        dsw_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *dsw_buf_take(struct dsw_buf *b)
{
    char *p = b->data ? b->data : dsw_xstrdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void dsw_buf_free(struct dsw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
