/* aws: the credential chain (botocore's order: env, web identity, shared files, container,
 * IMDSv2) resolved asynchronously on the loop through dsw_http, refreshed before expiry while
 * the old credentials stay in use, and the CURLOPT_AWS_SIGV4 settings built from them. Small
 * hand parsers for INI files, STS XML and the flat credential JSON keep this module free of
 * jansson. No key, secret or token is ever formatted into a log line. */
#include "dsw/aws.h"

#include "dsw/buf.h"
#include "dsw/log.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum prov { P_ENV, P_WEB, P_SHARED, P_CONTAINER, P_IMDS, P_COUNT };
static const char *const prov_name[P_COUNT] = {"env", "web-identity", "shared-file", "container",
                                               "imds"};

struct waiter {
    dsw_aws_cb cb;
    void *arg;
    struct waiter *next;
};

struct dsw_aws {
    uv_loop_t *loop;
    struct dsw_http *http;
    char region[64];
    char service[32];
    char profile[128];
    char **env;
    int fixed;
    int64_t refresh_before_ms;
    long ptimeout_ms;

    struct dsw_aws_creds cur;
    int have;
    int cur_prov;    /* provider of cur, -1 for none */
    int logged_prov; /* provider named in the last "credentials from" info line, -1 for none */
    unsigned gen;

    int resolving;
    int want_resolve; /* the kick should start a resolution */
    int only_one;     /* refresh: try cur_prov only */
    int prov;         /* provider being tried */
    int step;         /* IMDS: 0 token, 1 role name, 2 credentials */
    char imds_token[256];
    char imds_role[128];
    char hdr[DSW_AWS_TOKEN_MAX + 32]; /* the container Authorization header */
    struct dsw_http_xfer *xfer;
    struct dsw_aws_creds next;

    struct waiter *waiters;
    uv_timer_t kick;    /* defers callbacks and resolution to a fresh loop turn */
    uv_timer_t refresh; /* refresh before expiry, or retry after a failed refresh */
    struct dsw_closer close;
    int nclosing;
};

static void try_provider(struct dsw_aws *a);
static void resolve_done(struct dsw_aws *a, int rc);

/* ---- small helpers --------------------------------------------------------------------- */

static const char *env_get(const struct dsw_aws *a, const char *name)
{
    size_t n = strlen(name);
    char *const *e = a->env ? a->env : environ;
    for (; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return (*e)[n + 1] ? *e + n + 1 : NULL;
    return NULL;
}

static int copy_field(char *dst, size_t n, const char *src, size_t len)
{
    if (len >= n)
        return -EINVAL;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* Whole small file (capped at DSW_AWS_FILE_MAX) into b. */
static int read_small_file(const char *path, struct dsw_buf *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char chunk[4096];
    ssize_t r;
    int rc = 0;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0)
        if ((rc = dsw_buf_append(b, chunk, (size_t)r)) < 0)
            break;
    if (r < 0)
        rc = -errno;
    close(fd);
    return rc;
}

static void trim_end(char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
}

/* ---- pure parsers ---------------------------------------------------------------------- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

/* Trimmed [b, e) of the part of a line. */
static void trim_span(const char **b, const char **e)
{
    while (*b < *e && isspace((unsigned char)**b))
        (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1]))
        (*e)--;
}

static int span_eq(const char *b, const char *e, const char *s)
{
    return (size_t)(e - b) == strlen(s) && memcmp(b, s, (size_t)(e - b)) == 0;
}

static int section_matches(const char *b, const char *e, const char *profile, int config_style)
{
    if (!config_style)
        return span_eq(b, e, profile);
    if (strcmp(profile, "default") == 0 && span_eq(b, e, "default"))
        return 1;
    if (e - b > 8 && memcmp(b, "profile", 7) == 0 && isspace((unsigned char)b[7])) {
        b += 8;
        trim_span(&b, &e);
        return span_eq(b, e, profile);
    }
    return 0;
}

static int profile_kv(struct dsw_aws_creds *out, const char *k, const char *ke, const char *v,
                      const char *ve)
{
    size_t n = (size_t)(ve - v);
    if (span_eq(k, ke, "aws_access_key_id"))
        return copy_field(out->key_id, sizeof(out->key_id), v, n);
    if (span_eq(k, ke, "aws_secret_access_key"))
        return copy_field(out->secret, sizeof(out->secret), v, n);
    if (span_eq(k, ke, "aws_session_token") || span_eq(k, ke, "aws_security_token"))
        return copy_field(out->token, sizeof(out->token), v, n);
    return 0;
}

int dsw_aws_parse_profile(const char *text, size_t len, const char *profile, int config_style,
                          struct dsw_aws_creds *out)
{
    const char *p = text, *end = text + len;
    int in = 0, found = 0, rc;
    memset(out, 0, sizeof(*out));
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end, *b = p;
        int indented = p < le && (*p == ' ' || *p == '\t');
        p = nl ? nl + 1 : end;
        trim_span(&b, &le);
        if (b == le || *b == '#' || *b == ';' || indented)
            continue; /* indented lines are nested sub-sections (config "s3 =" blocks) */
        if (*b == '[') {
            const char *close = memchr(b, ']', (size_t)(le - b));
            if (!close)
                return -EINVAL;
            const char *sb = b + 1, *se = close;
            trim_span(&sb, &se);
            in = section_matches(sb, se, profile, config_style);
            found |= in;
            continue;
        }
        const char *eq = memchr(b, '=', (size_t)(le - b));
        if (!in || !eq)
            continue;
        const char *kb = b, *ke = eq, *vb = eq + 1, *ve = le;
        trim_span(&kb, &ke);
        trim_span(&vb, &ve);
        if ((rc = profile_kv(out, kb, ke, vb, ve)) < 0)
            return rc;
    }
    if (!found || !out->key_id[0])
        return -ENOENT;
    return out->secret[0] ? 0 : -EINVAL;
}

static int xml_decode(const char *p, const char *end, char *out, size_t n)
{
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    size_t o = 0;
    while (p < end) {
        char c = *p++;
        if (c == '&') {
            size_t i;
            for (i = 0; i < DSW_ARRAY_LEN(ents); i++) {
                size_t el = strlen(ents[i].ent) - 1;
                if ((size_t)(end - p) >= el && memcmp(p, ents[i].ent + 1, el) == 0) {
                    c = ents[i].c;
                    p += el;
                    break;
                }
            }
        }
        if (o + 1 >= n)
            return -E2BIG;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

int dsw_aws_xml_text(const char *xml, size_t len, const char *tag, char *out, size_t n)
{
    char open[80], close[80];
    if (snprintf(open, sizeof(open), "<%s>", tag) >= (int)sizeof(open))
        return -EINVAL;
    snprintf(close, sizeof(close), "</%s>", tag);
    const char *end = xml + len;
    const char *b = memmem(xml, len, open, strlen(open));
    if (!b)
        return -ENOENT;
    b += strlen(open);
    const char *e = memmem(b, (size_t)(end - b), close, strlen(close));
    if (!e)
        return -ENOENT;
    trim_span(&b, &e);
    return xml_decode(b, e, out, n);
}

int dsw_aws_parse_time(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int consumed = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6)
        return -EINVAL;
    const char *p = s + consumed;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    if (!(strcmp(p, "Z") == 0 || strcmp(p, "+00:00") == 0 || strcmp(p, "UTC") == 0 || !*p))
        return -EINVAL;
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return -EINVAL;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (int64_t)timegm(&tm);
    return 0;
}

/* The string value of "key" in a flat JSON object (escapes \" \\ \/ \n \t decoded; \u
 * rejected: credential values are ASCII). 0, -ENOENT, -EINVAL. */
static int json_str(const char *body, size_t len, const char *key, char *out, size_t n)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\"", key);
    const char *end = body + len;
    const char *p = memmem(body, len, pat, strlen(pat));
    if (!p)
        return -ENOENT;
    p = skip_ws(p + strlen(pat), end);
    while (p < end && isspace((unsigned char)*p))
        p++;
    if (p >= end || *p++ != ':')
        return -EINVAL;
    while (p < end && isspace((unsigned char)*p))
        p++;
    if (p >= end || *p++ != '"')
        return -EINVAL;
    size_t o = 0;
    while (p < end && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            if (p >= end)
                return -EINVAL;
            c = *p++;
            if (c == 'n')
                c = '\n';
            else if (c == 't')
                c = '\t';
            else if (c != '"' && c != '\\' && c != '/')
                return -EINVAL;
        }
        if (o + 1 >= n)
            return -EINVAL;
        out[o++] = c;
    }
    if (p >= end)
        return -EINVAL;
    out[o] = '\0';
    return 0;
}

int dsw_aws_parse_json_creds(const char *body, size_t len, struct dsw_aws_creds *out)
{
    char code[64], exp[64];
    memset(out, 0, sizeof(*out));
    if (json_str(body, len, "Code", code, sizeof(code)) == 0 && strcmp(code, "Success") != 0)
        return -EINVAL;
    if (json_str(body, len, "AccessKeyId", out->key_id, sizeof(out->key_id)) < 0 ||
        json_str(body, len, "SecretAccessKey", out->secret, sizeof(out->secret)) < 0)
        return -EINVAL;
    int rc = json_str(body, len, "Token", out->token, sizeof(out->token));
    if (rc == -EINVAL)
        return rc;
    if (json_str(body, len, "Expiration", exp, sizeof(exp)) == 0 &&
        dsw_aws_parse_time(exp, &out->expires) < 0)
        return -EINVAL;
    return out->key_id[0] && out->secret[0] ? 0 : -EINVAL;
}

/* ---- providers ------------------------------------------------------------------------- */

static int prov_env(struct dsw_aws *a)
{
    const char *k = env_get(a, "AWS_ACCESS_KEY_ID"), *s = env_get(a, "AWS_SECRET_ACCESS_KEY");
    const char *t = env_get(a, "AWS_SESSION_TOKEN");
    if (!t)
        t = env_get(a, "AWS_SECURITY_TOKEN");
    if (!k && !s)
        return -ENOENT;
    if (!k || !s) {
        dsw_error("aws: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together");
        return -EINVAL;
    }
    memset(&a->next, 0, sizeof(a->next));
    if (copy_field(a->next.key_id, sizeof(a->next.key_id), k, strlen(k)) < 0 ||
        copy_field(a->next.secret, sizeof(a->next.secret), s, strlen(s)) < 0 ||
        (t && copy_field(a->next.token, sizeof(a->next.token), t, strlen(t)) < 0))
        return -EINVAL;
    return 0;
}

static int shared_file(struct dsw_aws *a, const char *var, const char *dflt, int config_style)
{
    const char *path = env_get(a, var), *home = env_get(a, "HOME");
    char buf[4096];
    struct dsw_buf b;
    if (!path) {
        if (!home)
            return -ENOENT;
        snprintf(buf, sizeof(buf), "%s/%s", home, dflt);
        path = buf;
    }
    dsw_buf_init(&b, DSW_AWS_FILE_MAX);
    int rc = read_small_file(path, &b);
    if (rc == 0)
        rc = dsw_aws_parse_profile(dsw_buf_str(&b), b.len, a->profile, config_style, &a->next);
    else if (rc != -ENOENT)
        dsw_warn("aws: cannot read %s: %s", path, strerror(-rc));
    if (rc == -EINVAL)
        dsw_error("aws: %s: profile %s is incomplete or malformed", path, a->profile);
    dsw_buf_free(&b);
    return rc == -E2BIG ? -EINVAL : rc;
}

static int prov_shared(struct dsw_aws *a)
{
    int rc = shared_file(a, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", 0);
    if (rc != -ENOENT && rc != -EACCES)
        return rc;
    return shared_file(a, "AWS_CONFIG_FILE", ".aws/config", 1);
}

static void on_provider_reply(int err, const struct dsw_http_resp *r, void *arg);

static int start_get(struct dsw_aws *a, const char *method, const char *url, const char *hdr,
                     const void *body, size_t body_len, long timeout_ms)
{
    struct dsw_http_req req = {.method = method,
                               .url = url,
                               .timeout_ms = timeout_ms,
                               .connect_timeout_ms = timeout_ms,
                               .max_body = 64 * 1024,
                               .body = body,
                               .body_len = body_len};
    req.headers[0] = hdr;
    if (body)
        req.headers[hdr ? 1 : 0] = "Content-Type: application/x-www-form-urlencoded";
    int rc = dsw_http_request(a->http, &req, on_provider_reply, a, &a->xfer);
    return rc < 0 ? rc : 1;
}

/* 1 when the request is in flight, -ENOENT when not configured, other <0 on error. */
static int prov_web(struct dsw_aws *a)
{
    const char *file = env_get(a, "AWS_WEB_IDENTITY_TOKEN_FILE");
    const char *role = env_get(a, "AWS_ROLE_ARN"), *sess = env_get(a, "AWS_ROLE_SESSION_NAME");
    const char *ep = env_get(a, "AWS_ENDPOINT_URL_STS");
    if (!file || !role)
        return -ENOENT;
    struct dsw_buf tok, body;
    dsw_buf_init(&tok, DSW_AWS_FILE_MAX);
    dsw_buf_init(&body, 3 * DSW_AWS_FILE_MAX + 4096);
    int rc = read_small_file(file, &tok);
    char url[512];
    char sessbuf[64];
    if (rc < 0) {
        dsw_error("aws: cannot read AWS_WEB_IDENTITY_TOKEN_FILE %s: %s", file, strerror(-rc));
        goto out;
    }
    trim_end(tok.data ? tok.data : (char *)"");
    if (!sess) {
        snprintf(sessbuf, sizeof(sessbuf), "dagster-sqs-worker-%lld", (long long)time(NULL));
        sess = sessbuf;
    }
    char *e_role = curl_easy_escape(NULL, role, 0), *e_sess = curl_easy_escape(NULL, sess, 0);
    char *e_tok = curl_easy_escape(NULL, dsw_buf_str(&tok), 0);
    rc = dsw_buf_printf(&body,
                        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=%s"
                        "&RoleSessionName=%s&WebIdentityToken=%s",
                        e_role, e_sess, e_tok);
    curl_free(e_role);
    curl_free(e_sess);
    curl_free(e_tok);
    if (rc < 0)
        goto out;
    if (ep)
        snprintf(url, sizeof(url), "%s", ep);
    else
        snprintf(url, sizeof(url), "https://sts.%s.amazonaws.com/", a->region);
    rc = start_get(a, "POST", url, NULL, body.data, body.len, 10000);
out:
    dsw_buf_free(&tok);
    dsw_buf_free(&body);
    return rc;
}

/* botocore allows a full URI only to loopback (or https, or the EKS/ECS link-local hosts). */
static int full_uri_allowed(const char *u)
{
    static const char *const ok[] = {
        "http://127.",           "http://localhost",      "http://[::1]", "http://169.254.170.2",
        "http://169.254.170.23", "http://[fd00:ec2::23]", "https://"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(ok); i++)
        if (strncmp(u, ok[i], strlen(ok[i])) == 0)
            return 1;
    return 0;
}

static int prov_container(struct dsw_aws *a)
{
    const char *rel = env_get(a, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *full = env_get(a, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    const char *tfile = env_get(a, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    const char *tok = env_get(a, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    char url[1024];
    char *hdr = a->hdr;
    struct dsw_buf tb;

    if (rel)
        snprintf(url, sizeof(url), "http://169.254.170.2%s", rel);
    else if (full && full_uri_allowed(full))
        snprintf(url, sizeof(url), "%s", full);
    else if (full) {
        dsw_error("aws: AWS_CONTAINER_CREDENTIALS_FULL_URI must be https or a loopback address");
        return -EINVAL;
    } else
        return -ENOENT;
    hdr[0] = '\0';
    dsw_buf_init(&tb, DSW_AWS_TOKEN_MAX - 1);
    if (tfile) {
        int rc = read_small_file(tfile, &tb);
        if (rc < 0) {
            dsw_error("aws: cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: %s", tfile,
                      strerror(-rc));
            dsw_buf_free(&tb);
            return rc;
        }
        trim_end(tb.data ? tb.data : (char *)"");
        tok = dsw_buf_str(&tb);
    }
    if (tok && *tok) {
        if (strpbrk(tok, "\r\n")) {
            dsw_buf_free(&tb);
            return -EINVAL;
        }
        snprintf(hdr, sizeof(a->hdr), "Authorization: %s", tok);
    }
    dsw_buf_free(&tb);
    return start_get(a, "GET", url, hdr[0] ? hdr : NULL, NULL, 0, a->ptimeout_ms);
}

static void imds_base(const struct dsw_aws *a, char *out, size_t n)
{
    const char *ep = env_get(a, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    snprintf(out, n, "%s", ep ? ep : "http://169.254.169.254");
    size_t l = strlen(out);
    while (l && out[l - 1] == '/')
        out[--l] = '\0';
}

static int prov_imds(struct dsw_aws *a)
{
    const char *dis = env_get(a, "AWS_EC2_METADATA_DISABLED");
    char base[512], url[1024], hdr[320];
    if (dis && strcasecmp(dis, "true") == 0)
        return -ENOENT;
    imds_base(a, base, sizeof(base));
    switch (a->step) {
    case 0:
        snprintf(url, sizeof(url), "%s/latest/api/token", base);
        return start_get(a, "PUT", url, "X-aws-ec2-metadata-token-ttl-seconds: 21600", "", 0,
                         a->ptimeout_ms);
    case 1:
        snprintf(url, sizeof(url), "%s/latest/meta-data/iam/security-credentials/", base);
        break;
    default:
        snprintf(url, sizeof(url), "%s/latest/meta-data/iam/security-credentials/%s", base,
                 a->imds_role);
    }
    snprintf(hdr, sizeof(hdr), "X-aws-ec2-metadata-token: %s", a->imds_token);
    return start_get(a, "GET", url, hdr, NULL, 0, a->ptimeout_ms);
}

static int web_reply(struct dsw_aws *a, const struct dsw_http_resp *r)
{
    struct dsw_aws_creds *c = &a->next;
    char code[128], exp[64];
    memset(c, 0, sizeof(*c));
    if (r->status != 200) {
        if (dsw_aws_xml_text(r->body, r->len, "Code", code, sizeof(code)) < 0)
            snprintf(code, sizeof(code), "HTTP %ld", r->status);
        dsw_error("aws: STS AssumeRoleWithWebIdentity failed: %s", code);
        return r->status >= 500 ? -EIO : -EACCES;
    }
    if (dsw_aws_xml_text(r->body, r->len, "AccessKeyId", c->key_id, sizeof(c->key_id)) < 0 ||
        dsw_aws_xml_text(r->body, r->len, "SecretAccessKey", c->secret, sizeof(c->secret)) < 0 ||
        dsw_aws_xml_text(r->body, r->len, "SessionToken", c->token, sizeof(c->token)) < 0 ||
        dsw_aws_xml_text(r->body, r->len, "Expiration", exp, sizeof(exp)) < 0 ||
        dsw_aws_parse_time(exp, &c->expires) < 0) {
        dsw_error("aws: STS AssumeRoleWithWebIdentity: malformed reply");
        return -EBADMSG;
    }
    return 0;
}

/* IMDS: returns 1 when the next step is in flight, 0 with credentials, <0 on error. */
static int imds_reply(struct dsw_aws *a, const struct dsw_http_resp *r)
{
    if (r->status != 200) {
        dsw_warn("aws: IMDS %s: HTTP %ld", a->step == 0 ? "token" : "credentials", r->status);
        return -EACCES;
    }
    if (a->step == 0 && copy_field(a->imds_token, sizeof(a->imds_token), r->body, r->len) < 0)
        return -EBADMSG;
    if (a->step == 1) {
        size_t n = strcspn(r->body, "\r\n");
        if (n == 0 || copy_field(a->imds_role, sizeof(a->imds_role), r->body, n) < 0 ||
            strpbrk(a->imds_role, "/?#% "))
            return -EBADMSG;
    }
    if (a->step == 2)
        return dsw_aws_parse_json_creds(r->body, r->len, &a->next) < 0 ? -EBADMSG : 0;
    a->step++;
    return prov_imds(a);
}

static void on_provider_reply(int err, const struct dsw_http_resp *r, void *arg)
{
    struct dsw_aws *a = arg;
    a->xfer = NULL;
    if (a->close.started)
        return;
    int rc = err;
    if (err < 0) {
        dsw_warn("aws: %s provider did not answer: %s", prov_name[a->prov], strerror(-err));
    } else if (a->prov == P_WEB) {
        rc = web_reply(a, r);
    } else if (a->prov == P_IMDS) {
        rc = imds_reply(a, r);
        if (rc == 1)
            return;
    } else if (r->status != 200) {
        dsw_error("aws: container credentials endpoint: HTTP %ld", r->status);
        rc = -EACCES;
    } else if (dsw_aws_parse_json_creds(r->body, r->len, &a->next) < 0) {
        dsw_error("aws: container credentials endpoint: malformed reply");
        rc = -EBADMSG;
    }
    /* A link-local endpoint that does not answer is "not there": fall through, as botocore
     * does for IMDS. A refusal or a bad reply is an error. */
    if (rc < 0 && err < 0 && !a->only_one && (a->prov == P_CONTAINER || a->prov == P_IMDS)) {
        a->prov++;
        try_provider(a);
        return;
    }
    resolve_done(a, rc);
}

/* ---- resolution ------------------------------------------------------------------------ */

static void try_provider(struct dsw_aws *a)
{
    static int (*const provider[P_COUNT])(struct dsw_aws *) = {
        [P_ENV] = prov_env,       [P_WEB] = prov_web,
        [P_SHARED] = prov_shared, [P_CONTAINER] = prov_container,
        [P_IMDS] = prov_imds,
    };
    for (; a->prov < P_COUNT; a->prov++) {
        a->step = 0;
        int rc = provider[a->prov](a);
        if (rc == 1)
            return; /* on_provider_reply continues */
        if (rc != -ENOENT || a->only_one) {
            resolve_done(a, rc == -ENOENT ? -ENOKEY : rc);
            return;
        }
    }
    resolve_done(a, -ENOKEY);
}

static void flush_waiters(struct dsw_aws *a, int rc)
{
    struct waiter *w = a->waiters;
    a->waiters = NULL;
    while (w) {
        struct waiter *n = w->next;
        w->cb(rc, w->arg);
        free(w);
        w = n;
    }
}

static void on_refresh_timer(uv_timer_t *t);

static void schedule_refresh(struct dsw_aws *a, int64_t delay_ms)
{
    uv_timer_start(&a->refresh, on_refresh_timer, (uint64_t)DSW_MAX(delay_ms, 1000), 0);
}

static void schedule_expiry(struct dsw_aws *a)
{
    if (!a->cur.expires)
        return;
    int64_t remaining = a->cur.expires * 1000 - (int64_t)(dsw_wall_time() * 1000);
    int64_t before = a->refresh_before_ms;
    if (!before)
        before = 10 * 60 * 1000 + rand() % (5 * 60 * 1000);
    int64_t delay = remaining - before;
    if (delay < remaining / 2)
        delay = remaining / 2;
    schedule_refresh(a, delay);
}

/* Our own words for the outcomes (strerror's "Permission denied" reads like a local file). */
static const char *why(int rc)
{
    switch (rc) {
    case -ENOKEY:
        return "no provider had credentials";
    case -EACCES:
        return "refused";
    case -EINVAL:
        return "misconfigured";
    case -EBADMSG:
        return "malformed reply";
    default:
        return strerror(-rc);
    }
}

static void resolve_done(struct dsw_aws *a, int rc)
{
    a->resolving = 0;
    if (rc == 0) {
        a->next.source = a->prov < P_COUNT ? prov_name[a->prov] : "static";
        a->cur = a->next;
        a->have = 1;
        a->cur_prov = a->prov;
        a->gen++;
        /* Said once per source: a refresh from the same provider is no news. */
        enum dsw_log_level level = a->cur_prov == a->logged_prov ? DSW_LOG_DEBUG : DSW_LOG_INFO;
        a->logged_prov = a->cur_prov;
        if (a->cur.expires)
            dsw_log(level, NULL, "aws: credentials from %s (temporary, expire in %llds)",
                    a->cur.source, (long long)(a->cur.expires - (int64_t)time(NULL)));
        else
            dsw_log(level, NULL, "aws: credentials from %s", a->cur.source);
        schedule_expiry(a);
    } else if (a->have && dsw_aws_creds(a)) {
        dsw_warn("aws: refreshing credentials from %s failed (%s); keeping the current ones",
                 prov_name[a->cur_prov], why(rc));
        schedule_refresh(a, 30000);
    } else {
        dsw_error("aws: no credentials (%s)", why(rc));
    }
    memset(&a->next, 0, sizeof(a->next));
    a->imds_token[0] = '\0';
    flush_waiters(a, rc);
}

static void start_resolve(struct dsw_aws *a)
{
    a->want_resolve = 0;
    if (a->resolving)
        return;
    if (a->fixed) {
        a->gen++;
        flush_waiters(a, 0);
        return;
    }
    a->resolving = 1;
    a->only_one = a->have && a->cur_prov >= 0;
    a->prov = a->only_one ? a->cur_prov : 0;
    try_provider(a);
}

static void on_kick(uv_timer_t *t)
{
    struct dsw_aws *a = t->data;
    if (a->want_resolve)
        start_resolve(a);
    else if (!a->resolving && dsw_aws_creds(a))
        flush_waiters(a, 0);
    else if (!a->resolving)
        start_resolve(a);
}

static void on_refresh_timer(uv_timer_t *t)
{
    struct dsw_aws *a = t->data;
    start_resolve(a);
}

/* ---- public ---------------------------------------------------------------------------- */

static char **copy_env(char *const *env)
{
    size_t n = 0;
    while (env[n])
        n++;
    char **out = dsw_xcalloc(n + 1, sizeof(*out));
    for (size_t i = 0; i < n; i++)
        out[i] = dsw_xstrdup(env[i]);
    return out;
}

int dsw_aws_init(struct dsw_aws **out, uv_loop_t *loop, struct dsw_http *http,
                 const struct dsw_aws_opts *o)
{
    if (!o->region || !*o->region || strlen(o->region) >= 64 ||
        (o->service && strlen(o->service) >= 32))
        return -EINVAL;
    struct dsw_aws *a = dsw_xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->http = http;
    dsw_strlcpy(a->region, o->region, sizeof(a->region));
    dsw_strlcpy(a->service, o->service ? o->service : "sqs", sizeof(a->service));
    a->env = o->env ? copy_env(o->env) : NULL;
    const char *prof = o->profile ? o->profile : env_get(a, "AWS_PROFILE");
    dsw_strlcpy(a->profile, prof ? prof : "default", sizeof(a->profile));
    a->refresh_before_ms = o->refresh_before_ms;
    a->ptimeout_ms = o->provider_timeout_ms ? o->provider_timeout_ms : 1000;
    a->cur_prov = -1;
    a->logged_prov = -1;
    if (o->fixed) {
        a->fixed = 1;
        a->cur = *o->fixed;
        a->cur.source = "static";
        a->have = 1;
        a->gen = 1;
    }
    uv_timer_init(loop, &a->kick);
    uv_timer_init(loop, &a->refresh);
    a->kick.data = a->refresh.data = a;
    *out = a;
    return 0;
}

const struct dsw_aws_creds *dsw_aws_creds(const struct dsw_aws *a)
{
    if (!a->have)
        return NULL;
    if (a->cur.expires && a->cur.expires <= (int64_t)time(NULL))
        return NULL;
    return &a->cur;
}

int dsw_aws_sign(const struct dsw_aws *a, struct dsw_aws_signing *s)
{
    const struct dsw_aws_creds *c = dsw_aws_creds(a);
    if (!c)
        return -EAGAIN;
    snprintf(s->provider, sizeof(s->provider), "aws:amz:%s:%s", a->region, a->service);
    s->sign.provider = s->provider;
    s->sign.user = c->key_id;
    s->sign.password = c->secret;
    s->token_header[0] = '\0';
    if (c->token[0])
        snprintf(s->token_header, sizeof(s->token_header), "X-Amz-Security-Token: %s", c->token);
    return 0;
}

static void add_waiter(struct dsw_aws *a, dsw_aws_cb cb, void *arg)
{
    struct waiter *w = dsw_xcalloc(1, sizeof(*w)), **pp = &a->waiters;
    w->cb = cb;
    w->arg = arg;
    while (*pp)
        pp = &(*pp)->next;
    *pp = w;
}

void dsw_aws_wait(struct dsw_aws *a, dsw_aws_cb cb, void *arg)
{
    if (a->close.started) {
        add_waiter(a, cb, arg); /* flushed with -ECANCELED by the close path */
        return;
    }
    add_waiter(a, cb, arg);
    uv_timer_start(&a->kick, on_kick, 0, 0);
}

void dsw_aws_wait_cancel(struct dsw_aws *a, dsw_aws_cb cb, void *arg)
{
    struct waiter **pp = &a->waiters;
    while (*pp) {
        struct waiter *w = *pp;
        if (w->cb == cb && w->arg == arg) {
            *pp = w->next;
            cb(-ECANCELED, arg);
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

void dsw_aws_refresh(struct dsw_aws *a, dsw_aws_cb cb, void *arg)
{
    add_waiter(a, cb, arg);
    if (a->close.started)
        return;
    a->want_resolve = 1;
    uv_timer_start(&a->kick, on_kick, 0, 0);
}

unsigned dsw_aws_generation(const struct dsw_aws *a)
{
    return a->gen;
}

static void on_closed(uv_handle_t *h)
{
    struct dsw_aws *a = h->data;
    if (--a->nclosing)
        return;
    flush_waiters(a, -ECANCELED); /* waits registered after dsw_aws_close */
    if (a->env) {
        for (char **e = a->env; *e; e++)
            free(*e);
        free(a->env);
    }
    explicit_bzero(&a->cur, sizeof(a->cur));
    explicit_bzero(a->hdr, sizeof(a->hdr));
    dsw_closer_done(&a->close, a);
}

void dsw_aws_close(struct dsw_aws *a, dsw_aws_close_cb cb, void *arg)
{
    if (dsw_closer_start(&a->close, cb, arg))
        return;
    if (a->xfer)
        dsw_http_cancel(a->http, a->xfer);
    flush_waiters(a, -ECANCELED);
    a->nclosing = 2;
    uv_close((uv_handle_t *)&a->kick, on_closed);
    uv_close((uv_handle_t *)&a->refresh, on_closed);
}
