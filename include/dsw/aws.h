/* aws: credentials and SigV4 settings for dsw_http. The credential chain follows botocore:
 * environment, web identity (STS AssumeRoleWithWebIdentity), shared credentials / config files
 * with profiles, container endpoint (ECS/EKS pod identity), EC2 IMDSv2. Temporary credentials
 * are refreshed on the loop before they expire while requests keep using the current ones.
 * Secrets never reach a log line. */
#ifndef DSW_AWS_H
#define DSW_AWS_H

#include "dsw/http.h"
#include "dsw/util.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct dsw_aws; /* opaque: created by dsw_aws_init, freed by dsw_aws_close's callback */

#define DSW_AWS_KEY_MAX    256
#define DSW_AWS_SECRET_MAX 256
#define DSW_AWS_TOKEN_MAX  4096
#define DSW_AWS_FILE_MAX   (64 * 1024) /* credentials/config/token files are capped at this */

/* A credential set. expires is unix seconds, 0 = never. source names the provider ("env",
 * "shared-file", "web-identity", "container", "imds", "static"). */
struct dsw_aws_creds {
    char key_id[DSW_AWS_KEY_MAX];
    char secret[DSW_AWS_SECRET_MAX];
    char token[DSW_AWS_TOKEN_MAX]; /* "" when none */
    int64_t expires;
    const char *source;
};

/* Options. Strings are copied by dsw_aws_init. env: a NULL-terminated "NAME=value" array read
 * instead of the process environment (NULL = environ); it supplies every AWS_* variable, also
 * the test overrides AWS_EC2_METADATA_SERVICE_ENDPOINT (IMDS base URL, default
 * http://169.254.169.254), AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_ENDPOINT_URL_STS. */
struct dsw_aws_opts {
    const char *region;                /* required: the signing region */
    const char *service;               /* NULL = "sqs" */
    const struct dsw_aws_creds *fixed; /* non-NULL: use these, no chain, no refresh */
    char *const *env;
    const char *profile;       /* NULL = $AWS_PROFILE, else "default" */
    int64_t refresh_before_ms; /* refresh this long before expiry; 0 = 10-15 min (jittered) */
    long provider_timeout_ms;  /* per HTTP call to IMDS / container; 0 = 1000 */
};

/* Signing material for one request, filled by dsw_aws_sign: point a dsw_http_req's sign at
 * .sign and add .token_header (when non-empty) to its headers. Valid until the next refresh
 * completes: use it at once. */
struct dsw_aws_signing {
    struct dsw_http_sign sign;
    char provider[128];
    char token_header[DSW_AWS_TOKEN_MAX + 32]; /* "X-Amz-Security-Token: ..." or "" */
};

/* Credential resolution finished: 0, or -ENOKEY (no provider had credentials), -EACCES (a
 * provider refused), -ECANCELED (dsw_aws_close or dsw_aws_wait_cancel), other -errno. */
typedef void (*dsw_aws_cb)(int status, void *arg);
typedef void (*dsw_aws_close_cb)(void *arg);

/* Create on loop, using http (borrowed; must outlive it) for the providers that need HTTP.
 * Nothing is resolved until dsw_aws_wait / dsw_aws_refresh. 0 or -EINVAL (no region). */
int dsw_aws_init(struct dsw_aws **out, uv_loop_t *loop, struct dsw_http *http,
                 const struct dsw_aws_opts *opts) DSW_WUR;

/* The current credentials, or NULL when none are resolved yet (or they have expired). */
const struct dsw_aws_creds *dsw_aws_creds(const struct dsw_aws *a);

/* Fill s to sign a request with the current credentials: 0, or -EAGAIN when there are none yet
 * (call dsw_aws_wait first). */
int dsw_aws_sign(const struct dsw_aws *a, struct dsw_aws_signing *s) DSW_WUR;

/* cb fires once credentials are available (resolving the chain if it has not run; at once, on
 * the next loop turn, when they already are) or resolution failed. Never from inside this call. */
void dsw_aws_wait(struct dsw_aws *a, dsw_aws_cb cb, void *arg);

/* Cancel waits registered with exactly this cb and arg: they fire now with -ECANCELED. */
void dsw_aws_wait_cancel(struct dsw_aws *a, dsw_aws_cb cb, void *arg);

/* Force a refresh (after an auth error): re-run the provider that gave the current credentials
 * (the whole chain when none did); concurrent calls share one refresh. cb as for dsw_aws_wait.
 * Fixed credentials "refresh" to themselves. */
void dsw_aws_refresh(struct dsw_aws *a, dsw_aws_cb cb, void *arg);

/* Number of successful resolutions so far (first one plus refreshes); for tests and metrics. */
unsigned dsw_aws_generation(const struct dsw_aws *a);

/* Cancel waits (-ECANCELED), provider requests and the refresh timer; cb(arg) after every
 * handle is closed and a is freed. cb may be NULL. */
void dsw_aws_close(struct dsw_aws *a, dsw_aws_close_cb cb, void *arg);

/* ---- pure helpers (exposed for tests) ------------------------------------------------- */

/* Read profile from an INI text (credentials file when config_style = 0: section [name];
 * config file when 1: [profile name], or [default]). Fills key_id, secret, token (from
 * aws_session_token or aws_security_token). 0, -ENOENT (no such profile or no key in it),
 * -EINVAL (malformed: key without secret, value too long). */
int dsw_aws_parse_profile(const char *text, size_t len, const char *profile, int config_style,
                          struct dsw_aws_creds *out) DSW_WUR;

/* The text of the first <tag>...</tag> in xml (entities &amp; &lt; &gt; &quot; &apos;
 * decoded) into out (size n). 0, -ENOENT, -E2BIG. */
int dsw_aws_xml_text(const char *xml, size_t len, const char *tag, char *out, size_t n) DSW_WUR;

/* Parse an ISO-8601 UTC time ("2026-01-02T03:04:05Z", fractions and "+00:00" accepted) into
 * unix seconds. 0 or -EINVAL. */
int dsw_aws_parse_time(const char *s, int64_t *out) DSW_WUR;

/* Parse a container / IMDS credential JSON ({"AccessKeyId", "SecretAccessKey", "Token",
 * "Expiration"}; IMDS also "Code": "Success"). 0 or -EINVAL. */
int dsw_aws_parse_json_creds(const char *body, size_t len, struct dsw_aws_creds *out) DSW_WUR;

#endif
