/* failpoint: parse DSW_FAILPOINTS once and fire the armed action when a named point is hit.
 * Test builds only; the daemon's release build has no trace of it. */
#include "dsw/failpoint.h"

#ifdef DSW_FAILPOINTS

#include "dsw/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_POINTS 16

enum action { A_ABORT, A_KILL, A_SLEEP, A_FAIL };

struct point {
    char name[32];
    enum action action;
    long arg;   /* sleep ms */
    long nth;   /* fire only at this hit (0: any) */
    long every; /* fire every N-th hit (0: every hit) */
    long hits;
    long fired;
};

static struct point points[MAX_POINTS];
static int npoints = -1; /* -1: not read yet */

static int parse_one(char *item, struct point *p)
{
    char *eq = strchr(item, '=');
    if (!eq || eq == item || (size_t)(eq - item) >= sizeof(p->name))
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    memcpy(p->name, item, (size_t)(eq - item));
    char *act = eq + 1, *mod = strpbrk(act, "@%");
    if (mod) {
        char *end;
        long n = strtol(mod + 1, &end, 10);
        if (*end || end == mod + 1 || n < 1)
            return -EINVAL;
        if (*mod == '@')
            p->nth = n;
        else
            p->every = n;
        *mod = '\0';
    }
    if (strcmp(act, "abort") == 0)
        p->action = A_ABORT;
    else if (strcmp(act, "kill") == 0)
        p->action = A_KILL;
    else if (strcmp(act, "fail") == 0)
        p->action = A_FAIL;
    else if (strncmp(act, "sleep:", 6) == 0) {
        char *end;
        p->action = A_SLEEP;
        p->arg = strtol(act + 6, &end, 10);
        if (*end || end == act + 6 || p->arg < 0)
            return -EINVAL;
    } else
        return -EINVAL;
    return 0;
}

int dsw_failpoint_setup(const char *spec)
{
    npoints = 0;
    if (!spec || !*spec)
        return 0;
    char *copy = dsw_xstrdup(spec), *save = NULL;
    int rc = 0;
    for (char *it = strtok_r(copy, ",", &save); it && !rc; it = strtok_r(NULL, ",", &save)) {
        if (npoints == MAX_POINTS)
            rc = -EINVAL;
        else
            rc = parse_one(it, &points[npoints++]);
    }
    free(copy);
    if (rc)
        npoints = 0;
    return rc;
}

static void read_env_once(void)
{
    if (npoints < 0 && dsw_failpoint_setup(getenv("DSW_FAILPOINTS")))
        dsw_error("DSW_FAILPOINTS is malformed; no failpoint armed");
}

long dsw_failpoint_fired(const char *name)
{
    read_env_once();
    long n = 0;
    for (int i = 0; i < npoints; i++)
        if (strcmp(points[i].name, name) == 0)
            n += points[i].fired;
    return n;
}

int dsw_failpoint_hit(const char *name)
{
    read_env_once();
    for (int i = 0; i < npoints; i++) {
        struct point *p = &points[i];
        if (strcmp(p->name, name) != 0)
            continue;
        p->hits++;
        if ((p->nth && p->hits != p->nth) || (p->every && p->hits % p->every))
            return 0;
        p->fired++;
        dsw_warn("failpoint %s fired (hit %ld)", name, p->hits);
        switch (p->action) {
        case A_ABORT:
            abort();
        case A_KILL:
            kill(getpid(), SIGKILL);
            pause();
            return 0;
        case A_SLEEP: {
            struct timespec ts = {p->arg / 1000, (p->arg % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
            return 0;
        }
        case A_FAIL:
            return -EIO;
        }
    }
    return 0;
}

#else
typedef int dsw_failpoint_unused;
#endif
