/* libFuzzer target for the message decoder. Each input is decoded as a body (strict, and lax
 * with the S3 attribute), as a kombu envelope (base64 of the input) and as the inner Celery body
 * (the input wrapped in a kombu envelope), so one corpus reaches every layer. Crashes, leaks and
 * broken invariants of the result (abort) are findings. */
#include "dsw/msg.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

static char *b64(const uint8_t *s, size_t n, size_t *outlen)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    check(out != NULL);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    *outlen = (size_t)(o - out);
    return out;
}

/* Decode and check what the header promises about the result. */
static void decode(const void *body, size_t len, int strict, int s3)
{
    static const struct dsw_msg_attr attr = {"s3_extended_message", "String", "True"};
    struct dsw_msg_opts o = {.strict_run_id = strict, .max_body = DSW_MSG_MAX_BODY};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;
    int rc;

    if (s3) {
        o.attrs = &attr;
        o.nattrs = 1;
    }
    rc = dsw_msg_decode(body, len, &o, &req, &rej);
    if (rc == 0) {
        check(rej.reason == DSW_MSG_OK);
        check(dsw_msg_run_id_valid(req.run_id, strict));
        check(req.kind == DSW_MSG_EXECUTE || req.kind == DSW_MSG_RESUME ||
              req.kind == DSW_MSG_STEP);
        if (req.kind == DSW_MSG_STEP)
            check(dsw_msg_step_key_valid(req.step_key) && req.step_attempt >= 1 &&
                  req.step_attempt <= DSW_MSG_STEP_PREVIOUS_MAX + 1);
        else
            check(!req.step_key[0] && !req.step_known_state && !req.step_retry_mode);
        check(!req.step_known_state || req.step_known_state[0] == '{');
        check(req.form <= DSW_MSG_FORM_CELERY);
        check(!req.instance_ref || req.instance_ref[0] == '{');
        check(!s3); /* with the attribute nothing is accepted (pointer bodies come later) */
        dsw_msg_request_clear(&req);
        return;
    }
    check(rc == -EBADMSG);
    check((rej.reason > DSW_MSG_OK && rej.reason <= DSW_MSG_S3_POINTER_UNSUPPORTED) ||
          rej.reason == DSW_MSG_UNSUPPORTED_COMPRESSION);
    check(rej.detail[0] != '\0' && strlen(rej.detail) < sizeof(rej.detail));
    for (const char *p = rej.detail; *p; p++)
        check(*p >= 0x20 && *p < 0x7f);
    check(req.run_id[0] == '\0' && req.instance_ref == NULL);
}

/* The input as the [args, kwargs, embed] body of a kombu envelope; zlib: as its compressed
 * body (headers.compression application/x-gzip), so inflate sees arbitrary streams. */
static void decode_as_celery_body(const uint8_t *data, size_t size, int zlib)
{
    static const char fmt[] =
        "{\"body\": \"%s\", \"content-encoding\": \"utf-8\", \"content-type\": "
        "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"execute_job\", "
        "\"id\": \"5d3f6a0e-1c2b-4f7e-9a8b-0c1d2e3f4a5b\"%s}, \"properties\": "
        "{\"body_encoding\": \"base64\", \"delivery_tag\": \"t\"}}";
    static const char zhdr[] = ", \"compression\": \"application/x-gzip\"";
    size_t inner_len, env_len, out_len, cap;
    char *inner = b64(data, size, &inner_len);
    char *env = malloc(cap = sizeof(fmt) + sizeof(zhdr) + inner_len), *out;

    check(env != NULL);
    env_len = (size_t)snprintf(env, cap, fmt, inner, zlib ? zhdr : "");
    out = b64((const uint8_t *)env, env_len, &out_len);
    decode(out, out_len, 1, 0);
    free(out);
    free(env);
    free(inner);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n;
    char *enc;

    if (size > DSW_MSG_MAX_BODY / 2)
        return 0;
    decode(data, size, 1, 0);
    decode(data, size, 0, size & 1); /* lax run ids, or the S3 attribute */
    if (size > 0 && data[0] == '{') {
        enc = b64(data, size, &n); /* the input as a kombu envelope */
        decode(enc, n, 0, 0);
        free(enc);
    }
    if (size > 0 && data[0] == '[')
        decode_as_celery_body(data, size, 0);
    if (size > 0 && data[0] == 0x78) /* a zlib header's first byte (deflate, 32 KiB window) */
        decode_as_celery_body(data, size, 1);
    return 0;
}
