/* main: the command line (SPEC §9): global options, one command, and the exit codes
 * 0 ok, 1 runtime failure, 64 usage, 69 a dependency unreachable, 78 configuration. */
#include "dsw/admin.h"
#include "dsw/conf.h"
#include "dsw/log.h"
#include "dsw/proc.h"
#include "dsw/worker.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 64, EXIT_UNAVAILABLE = 69, EXIT_CONFIG = 78 };

struct cli {
    const char *config;
    const char *log_level;
    const char *log_format;
    const char *command;
    int argc; /* the command's own arguments */
    char **argv;
    int connect;
};

static const char usage_text[] =
    "usage: dagster-sqs-worker [-c FILE] [--log-level L] [--log-format text|json] COMMAND\n"
    "\n"
    "Executes Dagster runs delivered through an SQS-compatible queue.\n"
    "\n"
    "commands:\n"
    "  run                 the daemon, in the foreground (default command)\n"
    "  check-config        validate the configuration; --connect also reaches Postgres and\n"
    "                      the queue\n"
    "  db-init             create or upgrade the claims schema in the Dagster database\n"
    "  once                receive and process at most one message, then exit\n"
    "  exec FILE|-         process one message body from a file or stdin, no queue involved\n"
    "  enqueue RUN_ID      send an execute_job message for an existing run\n"
    "  status              queue depth, in-flight and stale claims, per worker\n"
    "\n"
    "options:\n"
    "  -c, --config FILE   configuration file (default " DSW_CONF_DEFAULT_PATH " if it exists,\n"
    "                      else the environment alone: DSW_<SECTION>_<KEY>)\n"
    "      --log-level L   debug, info, warn or error (overrides log.level)\n"
    "      --log-format F  text or json (overrides log.format)\n"
    "  -V, --version       print the version and exit\n"
    "  -h, --help          print this help and exit\n"
    "\n"
    "exit codes: 0 ok, 1 runtime failure, 64 usage, 69 dependency unreachable, 78 config\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "dagster-sqs-worker: %s '%s'\nTry 'dagster-sqs-worker --help'.\n", what, arg);
    return EXIT_USAGE;
}

static int parse_cli(int argc, char **argv, struct cli *cli)
{
    enum { OPT_LEVEL = 256, OPT_FORMAT, OPT_CONNECT };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, OPT_LEVEL},
        {"log-format", required_argument, NULL, OPT_FORMAT},
        {"connect", no_argument, NULL, OPT_CONNECT},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli->config = optarg;
            break;
        case OPT_LEVEL:
            cli->log_level = optarg;
            break;
        case OPT_FORMAT:
            cli->log_format = optarg;
            break;
        case OPT_CONNECT:
            cli->connect = 1;
            break;
        case 'V':
            printf("dagster-sqs-worker %s\n", DSW_VERSION);
            exit(EXIT_OK);
        case 'h':
            fputs(usage_text, stdout);
            exit(EXIT_OK);
        default:
            return EXIT_USAGE;
        }
    }
    cli->command = optind < argc ? argv[optind++] : "run";
    /* getopt permuted the options first: what is left is the command and its arguments. */
    cli->argv = dsw_xcalloc((size_t)(argc - optind) + 1, sizeof(char *));
    for (; optind < argc; optind++)
        cli->argv[cli->argc++] = argv[optind];
    if (cli->connect && strcmp(cli->command, "check-config"))
        return usage_error("--connect goes with check-config, not", cli->command);
    return 0;
}

static int load_conf(const struct cli *cli, struct dsw_conf *conf)
{
    char err[DSW_CONF_ERR_MAX];
    const char *path = cli->config;
    if (!path && access(DSW_CONF_DEFAULT_PATH, F_OK) == 0)
        path = DSW_CONF_DEFAULT_PATH;
    if (dsw_conf_load(conf, path, environ, err)) {
        fprintf(stderr, "dagster-sqs-worker: %s\n", err);
        return EXIT_CONFIG;
    }
    enum dsw_log_level level = (enum dsw_log_level)conf->log.level;
    enum dsw_log_format format = (enum dsw_log_format)conf->log.format;
    if (cli->log_level && dsw_log_level_parse(cli->log_level, &level)) {
        dsw_conf_free(conf);
        return usage_error("bad --log-level", cli->log_level);
    }
    if (cli->log_format && dsw_log_format_parse(cli->log_format, &format)) {
        dsw_conf_free(conf);
        return usage_error("bad --log-format", cli->log_format);
    }
    conf->log.level = level;
    conf->log.format = format;
    dsw_log_setup(level, format, 2);
    return 0;
}

static int require(const struct dsw_conf *conf, unsigned needs)
{
    char err[DSW_CONF_ERR_MAX];
    int rc = dsw_conf_require(conf, needs, environ, err);
    if (rc)
        fprintf(stderr, "dagster-sqs-worker: %s\n", err);
    return rc ? EXIT_CONFIG : 0;
}

static void print_key(const char *section, const char *key, const char *value, void *arg)
{
    const char **last = arg;
    if (!*last || strcmp(*last, section)) {
        printf("%s[%s]\n", *last ? "\n" : "", section);
        *last = section;
    }
    printf("%s = %s\n", key, value);
}

static int cmd_check_config(const struct cli *cli, const struct dsw_conf *conf)
{
    int rc = require(conf, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS);
    if (rc)
        return rc;
    if (cli->connect)
        return dsw_admin_check_connect(conf);
    const char *last = NULL;
    dsw_conf_visit(conf, print_key, &last);
    fprintf(stderr, "dagster-sqs-worker: configuration %s is valid\n",
            conf->path ? conf->path : "(environment)");
    return EXIT_OK;
}

/* The commands after check-config: what each needs from the configuration (checked first,
 * exit 78), and its body. */
static const struct command {
    const char *name;
    unsigned needs;
} commands_needs[] = {
    {"db-init", DSW_CONF_NEED_DB},
    {"exec", DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS},
    {"enqueue", DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB},
    {"status", DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB},
    {"once", DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS},
    {"run", DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS},
};

static int dispatch(const struct cli *cli, const struct dsw_conf *conf)
{
    const char *c = cli->command;
    if (strcmp(c, "check-config") == 0)
        return cmd_check_config(cli, conf);
    for (size_t i = 0; i < DSW_ARRAY_LEN(commands_needs); i++) {
        if (strcmp(c, commands_needs[i].name) == 0) {
            int rc = require(conf, commands_needs[i].needs);
            if (rc)
                return rc;
            break;
        }
    }
    if (strcmp(c, "db-init") == 0)
        return dsw_admin_db_init(conf);
    if (strcmp(c, "exec") == 0)
        return dsw_worker_main(conf, DSW_WORKER_EXEC, cli->argv[0]);
    if (strcmp(c, "enqueue") == 0)
        return dsw_admin_enqueue(conf, cli->argv[0]);
    if (strcmp(c, "status") == 0)
        return dsw_admin_status(conf);
    if (strcmp(c, "once") == 0)
        return dsw_worker_main(conf, DSW_WORKER_ONCE, NULL);
    return dsw_worker_main(conf, DSW_WORKER_RUN, NULL);
}

int main(int argc, char **argv)
{
    /* The child trampoline (PR_SET_PDEATHSIG, then exec) runs before anything else. */
    if (argc > 1 && strcmp(argv[1], DSW_PROC_TRAMPOLINE_ARG) == 0)
        return dsw_proc_trampoline_main(argc, argv);
    static const char *const commands[] = {"run",  "check-config", "db-init", "once",
                                           "exec", "enqueue",      "status"};
    struct cli cli = {0};
    struct dsw_conf conf;
    int rc = parse_cli(argc, argv, &cli);
    size_t i = 0;
    while (!rc && i < DSW_ARRAY_LEN(commands) && strcmp(cli.command, commands[i]))
        i++;
    if (!rc && i == DSW_ARRAY_LEN(commands))
        rc = usage_error("unknown command", cli.command);
    if (!rc && (strcmp(cli.command, "exec") == 0 || strcmp(cli.command, "enqueue") == 0) &&
        cli.argc != 1)
        rc = usage_error("exactly one argument is needed by", cli.command);
    if (!rc && strcmp(cli.command, "exec") && strcmp(cli.command, "enqueue") && cli.argc)
        rc = usage_error("unexpected argument", cli.argv[0]);
    if (!rc)
        rc = load_conf(&cli, &conf);
    if (rc) {
        free(cli.argv);
        return rc;
    }
    rc = dispatch(&cli, &conf);
    dsw_conf_free(&conf);
    free(cli.argv);
    return rc;
}
